//! `qsi`, the operator CLI. Each area (tunnel, hsm, pki, ca, kms, ...) lives in its own module under
//! `qsi_daemon::cli` and plugs in here with one enum variant and one match arm.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use qsi_daemon::cli;

#[derive(Parser)]
#[command(
    name = "qsi",
    version,
    about = "Operator CLI of QSI, the quantum-safe intranet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Top-level areas. Add one variant per area; keep the arms one line each so rebases stay trivial.
#[derive(Subcommand)]
enum Command {
    /// Inspect and steer the tunnels of a running qsid (admin socket)
    #[command(subcommand)]
    Tunnel(cli::tunnel::Command),
    /// Keys in PKCS#11 tokens: init-token, list, keygen, pubkey, test
    #[command(subcommand)]
    Hsm(cli::hsm::Command),
    /// Log in to a site's portal with a smart card (PIV/PIV-I through PKCS#11)
    Login(cli::login::Args),
    /// Clearances: bootstrap the first officer, grant, revoke, show (signed with the officer's card); run the portal
    #[command(subcommand)]
    Access(cli::access::Command),
    /// Run two sites on loopback with throw-away credentials and prove the tunnels are post-quantum
    Demo(cli::demo::Args),
    /// Run the site daemon in this process (as `qsid`; lets `cargo run --bin qsi -- demo` work alone)
    #[command(hide = true)]
    Qsid(cli::tunnel::QsidArgs),
    /// Run the QKD simulator's serve/certs/status in this process (as `qkd-sim`; for `qsi demo`)
    #[command(subcommand, hide = true, name = "qkd-sim")]
    QkdSim(cli::demo::QkdSimCommand),
    /// Run the CA: init, issue, cross-certify, revoke, crl, list, serve
    #[command(subcommand)]
    Ca(cli::ca::Command),
    /// The key management service: serve, status, keys, audit (admin socket)
    #[command(subcommand)]
    Kms(cli::kms::Command),
    /// Benchmark programs (each runs its comparison peer in the same run and prints the ratio)
    #[command(subcommand)]
    Bench(cli::bench::Command),
    /// Validate certificate paths (RFC 5280, policies, bridges, CRLs, OCSP)
    #[command(subcommand)]
    Pki(cli::pki::Command),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli::init_tracing();
    match cli.command {
        Command::Tunnel(cmd) => cli::tunnel::run(cmd),
        Command::Hsm(cmd) => cli::hsm::run(cmd),
        Command::Login(args) => cli::login::run(args),
        Command::Access(cmd) => cli::access::run(cmd),
        Command::Demo(args) => cli::demo::run(args),
        Command::Qsid(args) => cli::tunnel::run_qsid(args),
        Command::QkdSim(cmd) => cli::demo::run_qkd_sim(cmd),
        Command::Ca(cmd) => cli::ca::run(cmd),
        Command::Kms(cmd) => cli::kms::run(cmd),
        Command::Bench(cmd) => cli::bench::run(cmd),
        Command::Pki(cmd) => cli::pki::run(cmd),
    }
}
