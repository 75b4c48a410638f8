//! `qsi bench <area>`: benchmark programs. Each area adds one variant and one match arm; the program itself
//! lives in the area's module (e.g. `bench_tunnel.rs`).

use clap::Subcommand;

/// One benchmark per area.
#[derive(Subcommand)]
pub enum Command {
    /// Tunnel throughput, flow setup latency, handshakes/s and CPU per GB: direct TCP, stunnel4, qsid
    /// over TLS and over QUIC, side by side
    Tunnel(super::bench_tunnel::Args),
    /// Signatures/s for P-256, P-384 and ML-DSA-65 through SoftHSM2 beside aws-lc-rs directly, with the ratio
    Hsm(super::bench_hsm::Args),
    /// Chains validated per second on a 4-certificate bridge path with CRLs, beside `openssl verify`
    Pki(super::bench_pki::Args),
    /// Smart-card logins/s through the portal beside the same mutual TLS without the portal's checks
    Login(super::bench_login::Args),
    /// KMS: keys/s and p50/p99 to 32 local SAE clients over ETSI 014 with mutual TLS, durable; peer: a KME
    /// directly; in-process handover latency
    Kms(super::bench_kms::Args),
    /// Certificates/s (SoftHSM2 P-384 and ML-DSA-65 CA keys) and OCSP responses/s beside OpenSSL
    Ca(super::bench_ca::Args),
}

/// Runs the chosen benchmark.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Tunnel(args) => super::bench_tunnel::run(args),
        Command::Hsm(args) => super::bench_hsm::run(args),
        Command::Pki(args) => super::bench_pki::run(args),
        Command::Login(args) => super::bench_login::run(args),
        Command::Kms(args) => super::bench_kms::run(args),
        Command::Ca(args) => super::bench_ca::run(args),
    }
}
