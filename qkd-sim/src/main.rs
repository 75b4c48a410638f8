//! `qkd-sim`: the QKD link simulator's command line. Each subcommand lives in its own module under
//! `cli/`; adding one is a variant here and a line in `main`.

#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use qsi_qkd_sim::kme::cli as kme;

/// Decoy-state BB84 QKD link simulator.
#[derive(Parser)]
#[command(name = "qkd-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analytic decoy-state key rate at one distance (mu optimised) and the maximum distance.
    Rate(cli::rate::Args),
    /// Run the Monte Carlo link block by block: pulses, sifting, estimation, Cascade, PA, authentication.
    Run(cli::run::Args),
    /// Key rate and QBER versus distance: analytic curves and Monte Carlo points, optionally plotted.
    Sweep(cli::sweep::Args),
    /// Throughput of Cascade and Toeplitz hashing on one core (Mbit/s of input key), with f achieved.
    Bench(cli::bench::Args),
    /// Run a simulated device pair: the link and two KMEs serving ETSI GS QKD 014 over mutual TLS.
    Serve(kme::ServeArgs),
    /// Write a throw-away CA, KME and SAE certificates and a link.toml into OUTDIR.
    Certs(kme::CertsArgs),
    /// Switch the eavesdropper of a running `serve` on (fraction > 0) or off (0).
    Eve(kme::EveArgs),
    /// Show a running `serve`'s link state, QBER and pool.
    Status(kme::StatusArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rate(a) => cli::rate::main(&a),
        Command::Run(a) => cli::run::main(&a),
        Command::Sweep(a) => cli::sweep::main(&a),
        Command::Bench(a) if a.kme => kme::bench(a.json, a.quick),
        Command::Bench(a) => cli::bench::main(&a),
        Command::Serve(a) => kme::serve(&a),
        Command::Certs(a) => kme::certs(&a),
        Command::Eve(a) => kme::eve(&a),
        Command::Status(a) => kme::status(&a),
    }
}
