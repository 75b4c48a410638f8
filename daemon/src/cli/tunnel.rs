//! `qsi tunnel status|peers|flows|reload`: talks to a running qsid over its admin socket.

use clap::Subcommand;

/// Tunnel operations on a running qsid.
#[derive(Subcommand)]
pub enum Command {
    /// Site, uptime and a one-line summary per peer
    Status(Common),
    /// Each peer: transport, state, negotiated group, reconnects
    Peers(Common),
    /// Each open flow: service, direction, bytes
    Flows(Common),
    /// Re-read the config file; tunnels that did not change stay up
    Reload(Common),
}

/// Options every tunnel command takes.
#[derive(clap::Args)]
pub struct Common {
    /// Admin socket of the running qsid (its config's `admin.socket`)
    #[arg(long, env = "QSI_ADMIN_SOCKET", default_value = "/run/qsi/qsid.sock")]
    pub socket: std::path::PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs one tunnel command.
pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`qsi tunnel` is not built yet in this version of qsi")
}
