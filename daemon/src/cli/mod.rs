//! The `qsi` operator CLI, one module per area. `src/bin/qsi.rs` holds the top-level clap enum and
//! dispatches to `<area>::run`. Each area module exposes a clap type (`Command` for a subcommand enum or
//! `Args` for a flat command) and a synchronous `pub fn run(..) -> anyhow::Result<()>`; an area that needs
//! async builds its runtime with [`block_on`].

pub mod access;
pub mod bench;
pub mod bench_ca;
pub mod bench_hsm;
pub mod bench_kms;
pub mod bench_login;
pub mod bench_pki;
pub mod bench_tunnel;
pub mod bench_tunnel_qkd;
pub mod ca;
pub mod ca_serve;
pub mod card;
pub mod demo;
pub mod hsm;
pub mod kms;
pub mod login;
pub mod pki;
pub mod tunnel;

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`), so stdout stays clean for `--json` output.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // cryptoki logs every mechanism id it has no name for (PKCS#11 3.x ids) as an error: not ours to show.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cryptoki::mechanism=off"));
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a future to completion on a fresh multi-threaded tokio runtime (for areas whose work is async).
pub fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("could not start the async runtime: {e}"))?;
    Ok(rt.block_on(fut))
}
