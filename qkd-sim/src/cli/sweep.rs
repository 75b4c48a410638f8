//! `qkd-sim sweep`: key rate and QBER versus distance, analytic curves with Monte Carlo points.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use qsi_qkd_sim::analytic::{self, DecoyMethod};
use qsi_qkd_sim::{BlockOutcome, Link, LinkParams};
use serde::Serialize;

use super::ParamArgs;
use super::run::pulses_for;

/// Arguments of `sweep`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    params: ParamArgs,
    /// First distance, km.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    from: f64,
    /// Last distance, km.
    #[arg(long, default_value_t = 150.0, allow_negative_numbers = true)]
    to: f64,
    /// Step of the analytic curves, km.
    #[arg(long, default_value_t = 2.0)]
    step: f64,
    /// Step between Monte Carlo points, km (0: no Monte Carlo).
    #[arg(long, default_value_t = 15.0)]
    mc_step: f64,
    /// Monte Carlo blocks per point.
    #[arg(long, default_value_t = 4)]
    mc_blocks: u64,
    /// Sifted signal bits per Monte Carlo block (sets the pulses per block).
    #[arg(long, default_value_t = 1 << 18)]
    mc_sifted: u64,
    /// Intercept-resend fraction in the Monte Carlo.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    eve: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a PNG plot here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Clone)]
struct CurvePoint {
    distance_km: f64,
    rate_infinite: f64,
    rate_vacuum_weak: f64,
    /// QBER at the optimal mu.
    qber: f64,
    /// QBER at the set's mu (what the Monte Carlo runs).
    qber_at_mu: f64,
    mu_opt: f64,
}

#[derive(Serialize, Clone)]
struct McPoint {
    distance_km: f64,
    blocks: u64,
    aborted: u64,
    pulses_per_block: u64,
    rate_per_pulse: f64,
    rate_stderr: f64,
    qber: f64,
    qber_stderr: f64,
    analytic_qber_at_mu: f64,
    gain_signal: f64,
    analytic_gain_at_mu: f64,
    cascade_f: f64,
}

#[derive(Serialize)]
struct Out {
    params: String,
    mu: f64,
    max_distance_infinite_km: f64,
    max_distance_vacuum_weak_km: f64,
    analytic: Vec<CurvePoint>,
    monte_carlo: Vec<McPoint>,
}

fn at(p: &LinkParams, d: f64) -> LinkParams {
    let mut q = p.clone();
    q.fibre.length_km = d;
    q
}

fn grid(from: f64, to: f64, step: f64) -> Vec<f64> {
    let n = ((to - from) / step).floor() as usize;
    (0..=n).map(|i| from + step * i as f64).collect()
}

pub fn main(a: &Args) -> anyhow::Result<()> {
    if !(a.from >= 0.0 && a.to > a.from && a.from.is_finite() && a.to.is_finite()) {
        anyhow::bail!(
            "--from {} --to {}: give distances in km with 0 <= from < to",
            a.from,
            a.to
        );
    }
    if !(a.step > 0.0 && a.mc_step >= 0.0) {
        anyhow::bail!(
            "--step {} --mc-step {}: steps must be positive (mc-step 0 disables Monte Carlo)",
            a.step,
            a.mc_step
        );
    }
    if !(0.0..=1.0).contains(&a.eve) {
        anyhow::bail!("--eve {} is out of range: a probability in [0, 1]", a.eve);
    }
    let p = a.params.load()?;
    let analytic: Vec<CurvePoint> = grid(a.from, a.to, a.step)
        .into_iter()
        .map(|d| {
            let q = at(&p, d);
            let inf = analytic::optimal_rate(&q, DecoyMethod::Infinite);
            let vw = analytic::optimal_rate(&q, DecoyMethod::VacuumWeak);
            CurvePoint {
                distance_km: d,
                rate_infinite: inf.secret_key_rate_per_pulse,
                rate_vacuum_weak: vw.secret_key_rate_per_pulse,
                qber: inf.qber,
                qber_at_mu: analytic::qber(
                    q.detector.dark_count,
                    q.eta(),
                    q.detector.misalignment,
                    q.source.mu,
                ),
                mu_opt: inf.mu,
            }
        })
        .collect();
    let mc_d = if a.mc_step > 0.0 {
        grid(a.from, a.to, a.mc_step)
    } else {
        Vec::new()
    };
    let bar = ProgressBar::new(mc_d.len() as u64 * a.mc_blocks);
    if a.json || mc_d.is_empty() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} blocks  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut mc = Vec::new();
    for (i, &d) in mc_d.iter().enumerate() {
        let q = at(&p, d);
        let pulses = pulses_for(&q, a.mc_sifted as f64);
        let mut link = Link::new(q.clone(), a.seed.wrapping_add(i as u64 * 7919))?;
        let (mut rates, mut aborted) = (Vec::new(), 0u64);
        let (mut err, mut sift, mut det, mut sent, mut fsum, mut fn_) =
            (0u64, 0u64, 0u64, 0u64, 0.0, 0u64);
        bar.set_message(format!("{d:.0} km, {pulses:.2e} pulses/block"));
        for _ in 0..a.mc_blocks {
            let out = link.run_block(pulses, a.eve)?;
            let st = out.stats();
            err += st.errors.signal;
            sift += st.sifted.signal;
            det += st.detections.signal;
            sent += st.sent.signal;
            if st.ec_leak_bits > 0 {
                fsum += st.ec_efficiency;
                fn_ += 1;
            }
            if let BlockOutcome::Key { stats, .. } = &out {
                rates.push(stats.final_key_bits as f64 / pulses as f64);
            } else {
                aborted += 1;
                rates.push(0.0);
            }
            bar.inc(1);
        }
        let nb = rates.len() as f64;
        let mean = rates.iter().sum::<f64>() / nb;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (nb - 1.0).max(1.0);
        let e = if sift > 0 {
            err as f64 / sift as f64
        } else {
            0.0
        };
        let (y0, eta, ed, mu) = (
            q.detector.dark_count,
            q.eta(),
            q.detector.misalignment,
            q.source.mu,
        );
        mc.push(McPoint {
            distance_km: d,
            blocks: a.mc_blocks,
            aborted,
            pulses_per_block: pulses,
            rate_per_pulse: mean,
            rate_stderr: (var / nb).sqrt(),
            qber: e,
            qber_stderr: if sift > 0 {
                (e * (1.0 - e) / sift as f64).sqrt()
            } else {
                0.0
            },
            analytic_qber_at_mu: analytic::qber(y0, eta, ed, mu),
            gain_signal: if sent > 0 {
                det as f64 / sent as f64
            } else {
                0.0
            },
            analytic_gain_at_mu: analytic::gain(y0, eta, mu),
            cascade_f: if fn_ > 0 { fsum / fn_ as f64 } else { 0.0 },
        });
    }
    bar.finish_and_clear();
    let out = Out {
        params: p.name.clone(),
        mu: p.source.mu,
        max_distance_infinite_km: analytic::max_distance_km(&p, DecoyMethod::Infinite),
        max_distance_vacuum_weak_km: analytic::max_distance_km(&p, DecoyMethod::VacuumWeak),
        analytic,
        monte_carlo: mc,
    };
    if let Some(path) = &a.plot {
        plot(&out, path).with_context(|| format!("could not draw the plot {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: maximum distance {:.1} km (infinite decoys), {:.1} km (vacuum + weak)",
        out.params, out.max_distance_infinite_km, out.max_distance_vacuum_weak_km
    );
    println!("distance_km  R_infinite   R_vac+weak   QBER% (mu_opt)  mu_opt");
    for c in &out.analytic {
        println!(
            "{:10.1}  {:10.3e}  {:10.3e}  {:6.2}  {:6.3}",
            c.distance_km,
            c.rate_infinite,
            c.rate_vacuum_weak,
            c.qber * 100.0,
            c.mu_opt
        );
    }
    if !out.monte_carlo.is_empty() {
        println!("Monte Carlo (mu = {}, nu = {}):", p.source.mu, p.source.nu);
        println!(
            "distance_km  R/pulse (+-)            QBER% (+-)      analytic QBER%  gain / analytic   f     aborted"
        );
        for m in &out.monte_carlo {
            println!(
                "{:10.1}  {:10.3e} ({:8.1e})  {:6.3} ({:5.3})  {:6.3}          {:.4}         {:5.3}  {}/{}",
                m.distance_km,
                m.rate_per_pulse,
                m.rate_stderr,
                m.qber * 100.0,
                m.qber_stderr * 100.0,
                m.analytic_qber_at_mu * 100.0,
                if m.analytic_gain_at_mu > 0.0 {
                    m.gain_signal / m.analytic_gain_at_mu
                } else {
                    0.0
                },
                m.cascade_f,
                m.aborted,
                m.blocks
            );
        }
    }
    if let Some(path) = &a.plot {
        println!("plot written to {}", path.display());
    }
    Ok(())
}

/// Font files tried in order (Debian's fonts-dejavu-core first); QKD_SIM_FONT overrides.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let candidates: Vec<String> = std::env::var("QKD_SIM_FONT")
        .into_iter()
        .chain(FONTS.iter().map(|s| (*s).to_owned()))
        .collect();
    let path = candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .with_context(|| {
            format!(
                "no TrueType font found (tried {}): install fonts-dejavu-core or set QKD_SIM_FONT",
                candidates.join(", ")
            )
        })?;
    let bytes = std::fs::read(path).with_context(|| format!("could not read font {path}"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable TrueType font"))?;
    Ok(())
}

fn plot(out: &Out, path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let root = BitMapBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(560);
    let x0 = out.analytic.first().map_or(0.0, |c| c.distance_km);
    let x1 = out
        .analytic
        .last()
        .map_or(1.0, |c| c.distance_km)
        .max(x0 + 1.0);
    let positives = out
        .analytic
        .iter()
        .flat_map(|c| [c.rate_infinite, c.rate_vacuum_weak])
        .chain(out.monte_carlo.iter().map(|m| m.rate_per_pulse))
        .filter(|&r| r > 0.0);
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for r in positives {
        lo = lo.min(r);
        hi = hi.max(r);
    }
    if !(lo.is_finite() && hi > 0.0) {
        (lo, hi) = (1e-8, 1e-1);
    }
    let (lo, hi) = ((lo / 3.0).max(1e-12), hi * 3.0);
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!("secret key rate vs distance ({})", out.params),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("distance (km)")
        .y_desc("key rate per pulse")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let line = |f: fn(&CurvePoint) -> f64| -> Vec<(f64, f64)> {
        out.analytic
            .iter()
            .filter(|c| f(c) > 0.0)
            .map(|c| (c.distance_km, f(c)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(
            line(|c| c.rate_infinite),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(format!(
            "analytic, infinite decoys (max {:.1} km)",
            out.max_distance_infinite_km
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            line(|c| c.rate_vacuum_weak),
            GREEN.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(format!(
            "analytic, vacuum + weak decoy (max {:.1} km)",
            out.max_distance_vacuum_weak_km
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], GREEN.stroke_width(2)));
    let mc: Vec<&McPoint> = out
        .monte_carlo
        .iter()
        .filter(|m| m.rate_per_pulse > 0.0)
        .collect();
    chart
        .draw_series(mc.iter().map(|m| {
            let y = m.rate_per_pulse;
            let e = m.rate_stderr;
            ErrorBar::new_vertical(m.distance_km, (y - e).max(lo), y, y + e, RED.filled(), 8)
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            mc.iter()
                .map(|m| Circle::new((m.distance_km, m.rate_per_pulse), 4, RED.filled())),
        )
        .map_err(|e| err(&e))?
        .label("Monte Carlo: final key per pulse sent (decoys included; Cascade, PA, auth paid)")
        .legend(|(x, y)| Circle::new((x + 12, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;

    let qmax = out
        .analytic
        .iter()
        .map(|c| c.qber_at_mu)
        .chain(out.monte_carlo.iter().map(|m| m.qber + m.qber_stderr))
        .fold(0.0f64, f64::max)
        * 100.0
        * 1.15;
    let mut q = ChartBuilder::on(&lower)
        .caption("QBER of the signal pulses", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0.0..qmax.max(1.0))
        .map_err(|e| err(&e))?;
    q.configure_mesh()
        .x_desc("distance (km)")
        .y_desc("QBER (%)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    q.draw_series(LineSeries::new(
        out.analytic
            .iter()
            .map(|c| (c.distance_km, c.qber_at_mu * 100.0)),
        BLUE.stroke_width(2),
    ))
    .map_err(|e| err(&e))?
    .label(format!("analytic at mu = {}", out.mu))
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLUE.stroke_width(2)));
    q.draw_series(out.monte_carlo.iter().filter(|m| m.qber > 0.0).map(|m| {
        let (y, e) = (m.qber * 100.0, m.qber_stderr * 100.0);
        ErrorBar::new_vertical(m.distance_km, y - e, y, y + e, RED.filled(), 8)
    }))
    .map_err(|e| err(&e))?;
    q.draw_series(
        out.monte_carlo
            .iter()
            .filter(|m| m.qber > 0.0)
            .map(|m| Circle::new((m.distance_km, m.qber * 100.0), 4, RED.filled())),
    )
    .map_err(|e| err(&e))?
    .label("Monte Carlo")
    .legend(|(x, y)| Circle::new((x + 12, y), 4, RED.filled()));
    q.configure_series_labels()
        .label_font(("sans-serif", 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
