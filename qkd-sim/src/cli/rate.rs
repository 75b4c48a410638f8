//! `qkd-sim rate`: the analytic key rate at one distance.

use qsi_qkd_sim::analytic::{self, DecoyMethod, RatePoint};
use serde::Serialize;

use super::ParamArgs;

/// Arguments of `rate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    params: ParamArgs,
    /// Decoy analysis for the top-level figures: infinite or vacuum-weak (both are always in `methods`).
    #[arg(long, default_value = "infinite", value_parser = ["infinite", "vacuum-weak"])]
    method: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct MethodOut {
    #[serde(flatten)]
    point: RatePoint,
    mu_opt: f64,
    max_distance_km: f64,
}

#[derive(Serialize)]
struct Out {
    params: String,
    distance_km: f64,
    method: DecoyMethod,
    secret_key_rate_per_pulse: f64,
    secret_key_rate_bps: f64,
    qber: f64,
    gain: f64,
    mu_opt: f64,
    max_distance_km: f64,
    methods: std::collections::BTreeMap<&'static str, MethodOut>,
}

fn one(p: &qsi_qkd_sim::LinkParams, m: DecoyMethod) -> MethodOut {
    let point = analytic::optimal_rate(p, m);
    MethodOut {
        mu_opt: point.mu,
        max_distance_km: analytic::max_distance_km(p, m),
        point,
    }
}

pub fn main(a: &Args) -> anyhow::Result<()> {
    let p = a.params.load()?;
    let inf = one(&p, DecoyMethod::Infinite);
    let vw = one(&p, DecoyMethod::VacuumWeak);
    let top = if a.method == "infinite" { &inf } else { &vw };
    let out = Out {
        params: p.name.clone(),
        distance_km: p.fibre.length_km,
        method: top.point.method,
        secret_key_rate_per_pulse: top.point.secret_key_rate_per_pulse,
        secret_key_rate_bps: top.point.secret_key_rate_bps,
        qber: top.point.qber,
        gain: top.point.gain,
        mu_opt: top.mu_opt,
        max_distance_km: top.max_distance_km,
        methods: Default::default(),
    };
    let mut out = out;
    if a.json {
        out.methods.insert("infinite", inf);
        out.methods.insert("vacuum_weak", vw);
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "parameters {} at {:.1} km (eta = {:.3e})",
        p.name,
        p.fibre.length_km,
        p.eta()
    );
    for (name, m) in [("infinite decoys", &inf), ("vacuum + weak", &vw)] {
        println!(
            "  {name:16} R = {:.3e} /pulse = {:.3e} bit/s  QBER {:.2}%  gain {:.3e}  mu_opt {:.3}  max distance {:.1} km",
            m.point.secret_key_rate_per_pulse,
            m.point.secret_key_rate_bps,
            m.point.qber * 100.0,
            m.point.gain,
            m.mu_opt,
            m.max_distance_km
        );
    }
    Ok(())
}
