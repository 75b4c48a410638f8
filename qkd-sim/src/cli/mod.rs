//! Subcommands of `qkd-sim`, one module each, plus the parameter options they share.

pub mod bench;
pub mod rate;
pub mod run;
pub mod sweep;

use anyhow::Context as _;
use qsi_qkd_sim::LinkParams;

/// Options that choose and adjust the link parameters.
#[derive(clap::Args, Debug, Clone)]
pub struct ParamArgs {
    /// Parameter set: gys, lmc05, modern, or a TOML file (see qkd-sim/params/example.toml).
    #[arg(long, default_value = "gys")]
    pub params: String,
    /// Fibre length in km (overrides the set).
    #[arg(long, allow_negative_numbers = true)]
    pub distance_km: Option<f64>,
    /// Signal intensity mu (overrides the set).
    #[arg(long, allow_negative_numbers = true)]
    pub mu: Option<f64>,
    /// Weak decoy intensity nu (overrides the set).
    #[arg(long, allow_negative_numbers = true)]
    pub nu: Option<f64>,
    /// Apply the finite-size correction in the Monte Carlo.
    #[arg(long)]
    pub finite_key: bool,
}

impl ParamArgs {
    /// Loads the set (named or TOML), applies the overrides and validates.
    pub fn load(&self) -> anyhow::Result<LinkParams> {
        let mut p = if self.params.ends_with(".toml") || self.params.contains('/') {
            let text = std::fs::read_to_string(&self.params).with_context(|| {
                format!(
                    "could not read parameter file {}: check the path",
                    self.params
                )
            })?;
            LinkParams::from_toml(&text, &self.params)
                .with_context(|| format!("parameter file {} is not valid", self.params))?
        } else {
            LinkParams::named(&self.params)?
        };
        if let Some(d) = self.distance_km {
            p.fibre.length_km = d;
        }
        if let Some(m) = self.mu {
            p.source.mu = m;
        }
        if let Some(n) = self.nu {
            p.source.nu = n;
        }
        p.post.finite_key |= self.finite_key;
        p.validate()
            .context("invalid parameters (from the set or the command line)")?;
        Ok(p)
    }
}
