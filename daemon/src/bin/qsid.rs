//! `qsid`, the site daemon: tunnels to peer sites over post-quantum TLS 1.3 and QUIC.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "qsid",
    version,
    about = "QSI site daemon: post-quantum tunnels over TLS 1.3 and QUIC"
)]
struct Args {
    /// Site configuration (TOML); see config/ for examples
    #[arg(long, short, env = "QSID_CONFIG")]
    config: PathBuf,
    /// Validate the configuration (files, addresses, key/certificate match) and exit
    #[arg(long)]
    check_config: bool,
    /// Log as JSON lines
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // cryptoki logs an ERROR for every mechanism a token lists that it has no name for (dozens per token
    // with a pkcs11: site key); they are not errors of ours, so keep them out of the operator's log.
    let filter = match "cryptoki::mechanism=off".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    if args.check_config {
        let cfg = qsi_daemon::config::Config::load(&args.config)?;
        println!(
            "{}: configuration of site {} is valid ({} peers, {} forwards, {} exposed services)",
            args.config.display(),
            cfg.site,
            cfg.peers.len(),
            cfg.forwards.len(),
            cfg.exposes.len()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(qsi_daemon::server::run(&args.config))
}
