//! `qkd-sim`: the QKD link simulator's command line. Each subcommand lives in its own module under
//! `cli/`; adding one is a variant here and a line in `main`.

#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rate(a) => cli::rate::main(&a),
        Command::Run(a) => cli::run::main(&a),
        Command::Sweep(a) => cli::sweep::main(&a),
        Command::Bench(a) => cli::bench::main(&a),
    }
}
