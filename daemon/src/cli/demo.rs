//! `qsi demo`: two sites on loopback with throw-away credentials.

/// Options of `qsi demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep the temporary directory (credentials, configs, logs) instead of deleting it
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`qsi demo` is not built yet in this version of qsi")
}
