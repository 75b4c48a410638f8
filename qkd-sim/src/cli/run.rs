//! `qkd-sim run`: the Monte Carlo pipeline, block by block, with JSON-lines statistics.

use std::io::Write as _;

use anyhow::Context as _;
use qsi_qkd_sim::{BlockOutcome, Link};

use super::ParamArgs;

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    params: ParamArgs,
    /// Number of blocks.
    #[arg(long, default_value_t = 1)]
    blocks: u64,
    /// Pulses per block (default: enough for about 2^20 sifted signal bits, at most 10^11).
    #[arg(long)]
    pulses: Option<u64>,
    /// Fraction of pulses an intercept-resend eavesdropper attacks, in [0, 1].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    eve: f64,
    /// Cut the fibre from this block on (0-based).
    #[arg(long)]
    cut_fibre_at: Option<u64>,
    /// Seed of all randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write one JSON line of statistics per block to this file.
    #[arg(long)]
    stats: Option<std::path::PathBuf>,
    /// Print each block's statistics as a JSON line instead of the text summary.
    #[arg(long)]
    json: bool,
}

/// Pulses for about `sifted` sifted signal bits at the link's expected gain.
pub fn pulses_for(p: &qsi_qkd_sim::LinkParams, sifted: f64) -> u64 {
    let q = qsi_qkd_sim::analytic::gain(p.detector.dark_count, p.eta(), p.source.mu);
    let per_pulse = q * p.source.p_signal * qsi_qkd_sim::analytic::sifting_factor(p);
    ((sifted / per_pulse.max(1e-12)).ceil() as u64).clamp(1000, 100_000_000_000)
}

pub fn main(a: &Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.eve) {
        anyhow::bail!(
            "--eve {} is out of range: give the attacked fraction as a probability in [0, 1]",
            a.eve
        );
    }
    let p = a.params.load()?;
    let pulses = a
        .pulses
        .unwrap_or_else(|| pulses_for(&p, f64::from(1u32 << 20)));
    if pulses == 0 {
        anyhow::bail!("--pulses 0: a block needs at least one pulse");
    }
    let mut stats_file = match &a.stats {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("could not create stats file {}", path.display()))?,
        )),
        None => None,
    };
    let mut link = Link::new(p, a.seed)?;
    // Long runs show progress on stderr (hidden when stderr is not a terminal, and for --json).
    let bar = indicatif::ProgressBar::new(a.blocks);
    if a.json || a.blocks < 2 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} blocks [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut total_bits, mut ok_blocks) = (0u64, 0u64);
    for b in 0..a.blocks {
        if a.cut_fibre_at.is_some_and(|c| b >= c) {
            link.set_fibre_cut(true);
        }
        let out = link.run_block(pulses, a.eve)?;
        bar.inc(1);
        let st = out.stats();
        let line = serde_json::to_string(st)?;
        if let Some(f) = stats_file.as_mut() {
            writeln!(f, "{line}").context("could not write the stats file")?;
        }
        if a.json {
            println!("{line}");
        }
        match &out {
            BlockOutcome::Key { stats, .. } => {
                total_bits += stats.final_key_bits;
                ok_blocks += 1;
                if !a.json {
                    bar.suspend(|| println!(
                        "block {b}: {} final key bits  (QBER {:.2}%, sifted {}, Cascade leak {} f={:.3}, PA {} -> {}, auth {} bits)",
                        stats.final_key_bits,
                        stats.qber.signal * 100.0,
                        stats.key_bits_in,
                        stats.ec_leak_bits,
                        stats.ec_efficiency,
                        stats.key_bits_in,
                        stats.pa_output_bits,
                        stats.auth_bits
                    ));
                }
            }
            BlockOutcome::Aborted { reason, stats } => {
                if !a.json {
                    bar.suspend(|| {
                        println!(
                            "block {b}: ABORTED: {reason}  (QBER {:.2}%, detections {})",
                            stats.qber.signal * 100.0,
                            stats.detections.signal
                                + stats.detections.decoy
                                + stats.detections.vacuum
                        )
                    });
                }
            }
        }
    }
    bar.finish_and_clear();
    if let Some(mut f) = stats_file {
        f.flush().context("could not write the stats file")?;
    }
    if !a.json {
        let t = link.link_time_s();
        println!(
            "total: {total_bits} final key bits from {ok_blocks}/{} blocks, {:.3e} pulses each, link time {t:.3} s ({:.1} bit/s)",
            a.blocks,
            pulses as f64,
            if t > 0.0 { total_bits as f64 / t } else { 0.0 }
        );
    }
    Ok(())
}
