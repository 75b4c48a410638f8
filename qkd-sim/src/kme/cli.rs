//! The `qkd-sim serve | certs | eve | status | bench --kme` subcommands (main.rs dispatches here).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::config::ServeConfig;
use super::{bench, certs, serve};

/// `qkd-sim serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The link and KME configuration (`qkd-sim certs DIR` writes one).
    #[arg(long)]
    pub config: PathBuf,
    /// FAULT INJECTOR for tests: make Bob's KME misbehave (`wrong-key`: dec_keys returns the right key
    /// IDs with wrong key bytes). Never use it outside a test.
    #[arg(long, value_enum)]
    pub fault: Option<super::api::Fault>,
}

/// `qkd-sim certs`.
#[derive(Args)]
pub struct CertsArgs {
    /// Directory to write into.
    pub outdir: PathBuf,
    /// Port of Alice's KME in the generated link.toml (0: any free port).
    #[arg(long, default_value_t = 8443)]
    pub alice_port: u16,
    /// Port of Bob's KME in the generated link.toml (0: any free port).
    #[arg(long, default_value_t = 8444)]
    pub bob_port: u16,
}

/// `qkd-sim eve`.
#[derive(Args)]
pub struct EveArgs {
    /// Fraction of pulses the intercept-resend eavesdropper attacks, 0 to 1 (0: off).
    #[arg(long)]
    pub fraction: f64,
    /// The running server's config (to find its admin socket).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin socket, if not from --config.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// `qkd-sim status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The running server's config (to find its admin socket).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin socket, if not from --config.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `qkd-sim serve --config link.toml`: runs until Ctrl-C or SIGTERM.
pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = ServeConfig::load(&a.config)?;
    if let Some(f) = a.fault {
        tracing::warn!(fault = ?f, "FAULT INJECTOR on: Bob's KME will misbehave on purpose");
        cfg.fault = Some(f);
    }
    let supply = super::link_supply::from_config(&cfg.link)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let running = serve::start(&cfg, supply, true).await?;
        // Announce where we listen; a closed stdout must not stop the server.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "{} (alice) listening on https://{}",
            cfg.alice.kme_id, running.alice
        );
        let _ = writeln!(
            out,
            "{} (bob) listening on https://{}",
            cfg.bob.kme_id, running.bob
        );
        if let Some(s) = &running.admin_socket {
            let _ = writeln!(out, "admin socket {}", s.display());
        }
        let _ = out.flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown();
        Ok(())
    })
}

/// `qkd-sim certs OUTDIR`.
pub fn certs(a: &CertsArgs) -> anyhow::Result<()> {
    let out = &a.outdir;
    certs::generate(out, a.alice_port, a.bob_port)?;
    println!(
        "wrote a throw-away CA, KME and SAE certificates and link.toml to {}\nnext: qkd-sim serve --config {}",
        out.display(),
        out.join("link.toml").display()
    );
    Ok(())
}

fn socket_of(config: Option<&Path>, socket: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (socket, config) {
        (Some(s), _) => Ok(s),
        (None, Some(c)) => Ok(ServeConfig::load(c)?.admin_socket),
        (None, None) => {
            anyhow::bail!("give --config link.toml (of the running server) or --socket PATH")
        }
    }
}

/// `qkd-sim eve --fraction F`: sets the eavesdropper of a running server.
pub fn eve(a: &EveArgs) -> anyhow::Result<()> {
    let fraction = a.fraction;
    if !(0.0..=1.0).contains(&fraction) {
        anyhow::bail!(
            "--fraction {fraction}: give the fraction of pulses attacked, 0 to 1 (0 switches Eve off)"
        );
    }
    let reply = serve::admin_request(
        &socket_of(a.config.as_deref(), a.socket.clone())?,
        &format!("eve {fraction}"),
    )?;
    println!("{reply}");
    Ok(())
}

/// `qkd-sim status`: the running link's state, QBER and pool.
pub fn status(a: &StatusArgs) -> anyhow::Result<()> {
    let socket = socket_of(a.config.as_deref(), a.socket.clone())?;
    println!("{}", serve::admin_request(&socket, "status")?);
    Ok(())
}

/// `qkd-sim bench --kme [--json] [--quick]`.
pub fn bench(json: bool, quick: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = rt.block_on(bench::run(quick))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        bench::print(&report);
    }
    Ok(())
}
