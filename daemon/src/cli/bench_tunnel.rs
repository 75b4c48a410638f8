//! `qsi bench tunnel`: direct TCP, stunnel4, qsid over TLS and qsid over QUIC, side by side.

/// Options of `qsi bench tunnel`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): small transfers, few samples
    #[arg(long)]
    pub quick: bool,
}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`qsi bench tunnel` is not built yet in this version of qsi")
}
