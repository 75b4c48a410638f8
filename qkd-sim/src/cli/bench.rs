//! `qkd-sim bench`: Cascade and Toeplitz throughput on one core, against the published Toshiba engine
//! (Dixon et al., arXiv 1807.04484: 55 Mbit/s error correction, 108 Mbit/s privacy amplification) and,
//! in the same run, a quadratic word-parallel Toeplitz hash on the same input.

use std::time::Instant;

use qsi_qkd_sim::analytic::h2;
use qsi_qkd_sim::bits::BitVec;
use qsi_qkd_sim::cascade::Cascade;
use qsi_qkd_sim::toeplitz::Toeplitz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Toshiba's published error-correction throughput, Mbit/s.
const TOSHIBA_EC_MBPS: f64 = 55.0;
/// Toshiba's published privacy-amplification throughput, Mbit/s.
const TOSHIBA_PA_MBPS: f64 = 108.0;

/// Arguments of `bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Block length in bits (at least 2^20 for the published comparison).
    #[arg(long, default_value_t = 1 << 20)]
    bits: usize,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Short run for CI: 2^16-bit blocks, one repetition (figures not comparable).
    #[arg(long)]
    pub quick: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Benchmark the key managers instead (ETSI GS QKD 014 over mutual TLS; qkd-sim/src/kme/bench.rs).
    #[arg(long)]
    pub kme: bool,
    /// Cascade passes (the link's default is 4, Brassard-Salvail's original).
    #[arg(long, default_value_t = 4)]
    passes: u32,
    /// Skip the quadratic Toeplitz peer (for profiling the engines alone).
    #[arg(long)]
    no_peer: bool,
}

#[derive(Serialize)]
struct QberRow {
    qber: f64,
    bits: usize,
    cascade_mbps: f64,
    cascade_wall_mbps: f64,
    cascade_cold_mbps: f64,
    cascade_efficiency_f: f64,
    cascade_leak_bits: u64,
    cascade_ratio_to_toshiba: f64,
    pa_output_bits: usize,
    toeplitz_fft_mbps: f64,
    toeplitz_fft_wall_mbps: f64,
    toeplitz_ratio_to_toshiba: f64,
    toeplitz_quadratic_mbps: f64,
    toeplitz_fft_over_quadratic: f64,
}

#[derive(Serialize)]
struct Report {
    build: &'static str,
    reps: usize,
    toshiba_ec_mbps: f64,
    toshiba_pa_mbps: f64,
    rows: Vec<QberRow>,
}

/// CPU time of this thread in seconds (Linux schedstat), so figures hold on a loaded machine; falls back
/// to wall time where it is unavailable.
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
}

fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu_s(),
        }
    }

    /// (cpu seconds, wall seconds).
    fn elapsed(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        // schedstat advances at scheduler ticks and switches: a run shorter than a tick can read 0, and
        // then only wall time is meaningful.
        let cpu = match (self.cpu, thread_cpu_s()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => wall,
        };
        (cpu, wall)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn random_bits(n: usize, rng: &mut ChaCha8Rng) -> BitVec {
    BitVec::from_words((0..n.div_ceil(64)).map(|_| rng.random()).collect(), n)
}

/// Quadratic Toeplitz hash, 64 columns per word operation: the peer the FFT replaces.
fn toeplitz_quadratic(x: &BitVec, seed: &BitVec, l: usize) -> BitVec {
    let n = x.len();
    let mut out = BitVec::zeros(l);
    // Row i is seed bits [i, i + n) reversed against x: y_i = parity(sum_j x_j t_{i+n-1-j}).
    // Reverse x once so row i is the window seed[i .. i + n) ANDed with rev(x).
    let mut rx = BitVec::zeros(n);
    for j in 0..n {
        rx.set(n - 1 - j, x.get(j));
    }
    let sw = seed.words();
    let rw = rx.words();
    for i in 0..l {
        let (q, r) = (i / 64, i % 64);
        let mut acc = 0u64;
        for (k, &w) in rw.iter().enumerate() {
            let lo = sw.get(q + k).copied().unwrap_or(0) >> r;
            let hi = if r == 0 {
                0
            } else {
                sw.get(q + k + 1).copied().unwrap_or(0) << (64 - r)
            };
            acc ^= (lo | hi) & w;
        }
        out.set(i, acc.count_ones() & 1 == 1);
    }
    out
}

pub fn main(a: &Args) -> anyhow::Result<()> {
    let n = if a.quick { 1 << 16 } else { a.bits };
    let reps = if a.quick { 1 } else { a.reps.max(1) };
    if n < 1024 {
        anyhow::bail!(
            "--bits {n} is too small: use at least 1024 (2^20 for the published comparison)"
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut rows = Vec::new();
    for qber in [0.02, 0.05] {
        let alice = random_bits(n, &mut rng);
        let mut bob0 = alice.clone();
        for i in 0..n {
            if rng.random::<f64>() < qber {
                bob0.flip(i);
            }
        }
        // Cascade: the first run pays for the permutations (cold), later runs reuse them.
        let mut engine = Cascade::new(a.passes, 7);
        let mut times = Vec::new();
        let mut walls = Vec::new();
        let mut f = 0.0;
        let mut leak = 0;
        let mut cold = 0.0;
        for r in 0..=reps {
            let mut bob = bob0.clone();
            let t = Clock::start();
            let rep = engine.reconcile(&alice, &mut bob, qber)?;
            let (dt, w) = t.elapsed();
            if bob != alice {
                anyhow::bail!(
                    "Cascade left {} errors at QBER {qber}: the benchmark is void",
                    bob.hamming(&alice)
                );
            }
            if r == 0 {
                cold = dt;
            } else {
                times.push(dt);
                walls.push(w);
            }
            f = rep.efficiency();
            leak = rep.leak_bits;
        }
        let cascade = n as f64 / median(times) / 1e6;
        let cascade_wall = n as f64 / median(walls) / 1e6;
        // Toeplitz to the length an asymptotic key would have after f = 1.2 error correction.
        let l = ((n as f64) * (1.0 - h2(qber) - 1.2 * h2(qber))).max(64.0) as usize;
        let seed = random_bits(n + l - 1, &mut rng);
        let mut tz = Toeplitz::new();
        let mut times = Vec::new();
        let mut walls = Vec::new();
        let mut y = BitVec::default();
        for _ in 0..=reps {
            let t = Clock::start();
            y = tz.hash(&alice, &seed, l)?;
            let (c, w) = t.elapsed();
            times.push(c);
            walls.push(w);
        }
        times.remove(0);
        walls.remove(0);
        let fft = n as f64 / median(times) / 1e6;
        let fft_wall = n as f64 / median(walls) / 1e6;
        // The quadratic peer on the same input (once: it is slow), checked equal.
        let t = Clock::start();
        let yq = if a.no_peer {
            y.clone()
        } else {
            toeplitz_quadratic(&alice, &seed, l)
        };
        let quad = if a.no_peer {
            f64::NAN
        } else {
            n as f64 / t.elapsed().0 / 1e6
        };
        if yq != y {
            anyhow::bail!("FFT and quadratic Toeplitz hashes differ: the benchmark is void");
        }
        rows.push(QberRow {
            qber,
            bits: n,
            cascade_mbps: cascade,
            cascade_wall_mbps: cascade_wall,
            cascade_cold_mbps: n as f64 / cold / 1e6,
            cascade_efficiency_f: f,
            cascade_leak_bits: leak,
            cascade_ratio_to_toshiba: cascade / TOSHIBA_EC_MBPS,
            pa_output_bits: l,
            toeplitz_fft_mbps: fft,
            toeplitz_fft_wall_mbps: fft_wall,
            toeplitz_ratio_to_toshiba: fft / TOSHIBA_PA_MBPS,
            toeplitz_quadratic_mbps: quad,
            toeplitz_fft_over_quadratic: fft / quad,
        });
    }
    let report = Report {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        reps,
        toshiba_ec_mbps: TOSHIBA_EC_MBPS,
        toshiba_pa_mbps: TOSHIBA_PA_MBPS,
        rows,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "qkd-sim bench ({} build, {} bits, median of {} runs, one core; Mbit/s of input key per CPU second, wall in the JSON)",
        report.build, n, reps
    );
    for r in &report.rows {
        println!(
            "QBER {:.0}%: Cascade {:.1} Mbit/s (cold {:.1}), f = {:.3}, {:.2}x Toshiba 55 | Toeplitz {} -> {} bits {:.1} Mbit/s, {:.2}x Toshiba 108, {:.0}x quadratic ({:.2} Mbit/s)",
            r.qber * 100.0,
            r.cascade_mbps,
            r.cascade_cold_mbps,
            r.cascade_efficiency_f,
            r.cascade_ratio_to_toshiba,
            r.bits,
            r.pa_output_bits,
            r.toeplitz_fft_mbps,
            r.toeplitz_ratio_to_toshiba,
            r.toeplitz_fft_over_quadratic,
            r.toeplitz_quadratic_mbps
        );
    }
    Ok(())
}
