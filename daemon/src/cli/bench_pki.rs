//! `qsi bench pki`: chains validated per second on a 4-certificate bridge path with CRLs
//! (B root -> B->bridge -> bridge->A root -> A root->A CA -> A CA->EE; policy mappings at both cross-
//! certificates, explicit policy required, a CRL checked for every certificate), our validator beside
//! `openssl verify` doing the same in the same run. Both build the path from the same pool (both
//! directions of cross-certification and the self-signed roots).
//!
//! OpenSSL is run once per round with the end entity repeated N times on the command line, so its
//! process start-up is amortised; one single-chain invocation is timed too and reported separately.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use qsi_pki::path::bridge_fixture::{self, B_POLICY, BridgeOptions};
use qsi_pki::revocation::Crl;
use qsi_pki::validate::{Cert, TrustAnchor, ValidationInput, ValidationOptions, validate};
use serde_json::json;

/// Options of `qsi bench pki`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): few chains, few rounds
    #[arg(long)]
    pub quick: bool,
}

fn pem(label: &str, der: &[u8]) -> anyhow::Result<String> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .map_err(|e| anyhow::anyhow!("PEM encoding: {e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// 2026-06-01T00:00:00Z, inside the fixture's validity.
const AT: u64 = 1_780_272_000;

struct Setup {
    anchors: Vec<TrustAnchor>,
    ee: Cert,
    pool: Vec<Cert>,
    crls: Vec<Crl>,
}

fn setup(ml_dsa: bool, dir: Option<&Path>) -> anyhow::Result<Setup> {
    let f = bridge_fixture::build(&BridgeOptions {
        ml_dsa_65: ml_dsa,
        ..Default::default()
    })?;
    let mut pool: Vec<Cert> = Vec::new();
    for i in &f.intermediates {
        pool.push(Cert::from_der(&i.der)?);
    }
    pool.push(Cert::from_der(&f.a_root)?);
    pool.push(Cert::from_der(&f.bridge)?);
    let crls = f
        .crls
        .iter()
        .map(|c| Crl::from_der(&c.der))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = dir {
        std::fs::write(d.join("anchor.pem"), pem("CERTIFICATE", &f.b_root)?)?;
        std::fs::write(d.join("ee.pem"), pem("CERTIFICATE", &f.ee)?)?;
        let mut untrusted = String::new();
        for c in &pool {
            untrusted.push_str(&pem("CERTIFICATE", c.der())?);
        }
        std::fs::write(d.join("untrusted.pem"), untrusted)?;
        let mut crl_pem = String::new();
        for c in &f.crls {
            crl_pem.push_str(&pem("X509 CRL", &c.der)?);
        }
        std::fs::write(d.join("crls.pem"), crl_pem)?;
    }
    Ok(Setup {
        anchors: vec![TrustAnchor::from_cert(Cert::from_der(&f.b_root)?)],
        ee: Cert::from_der(&f.ee)?,
        pool,
        crls,
    })
}

fn options() -> ValidationOptions {
    ValidationOptions {
        initial_policy_set: vec![B_POLICY],
        explicit_policy: true,
        ..ValidationOptions::default()
    }
}

/// Validates `n` times; returns chains per second.
fn ours(s: &Setup, n: usize) -> anyhow::Result<f64> {
    let opts = options();
    let time = UNIX_EPOCH + Duration::from_secs(AT);
    let start = Instant::now();
    for _ in 0..n {
        let mut input = ValidationInput::new(&s.anchors, &s.ee, time, &opts);
        input.candidates = &s.pool;
        input.crls = &s.crls;
        let v = validate(&input).context("our validator rejected the benchmark path")?;
        if v.certs.len() != 4 {
            bail!("expected a 4-certificate path, got {}", v.certs.len());
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn openssl_cmd(dir: &Path) -> Command {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args([
        "verify",
        "-CAfile",
        "anchor.pem",
        "-untrusted",
        "untrusted.pem",
        "-CRLfile",
        "crls.pem",
        "-crl_check_all",
        "-policy_check",
        "-explicit_policy",
        "-policy",
        &B_POLICY.to_string(),
        "-attime",
        &AT.to_string(),
    ]);
    c
}

/// `openssl verify` of `n` copies of the end entity in one process; returns chains per second.
fn openssl(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let mut c = openssl_cmd(dir);
    for _ in 0..n {
        c.arg("ee.pem");
    }
    let start = Instant::now();
    let out = c
        .output()
        .context("running openssl (install it: apt-get install openssl)")?;
    let el = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let oks = stdout.lines().filter(|l| l.ends_with(": OK")).count();
    if !out.status.success() || oks != n {
        bail!(
            "openssl verify did not accept the path ({oks} of {n} OK): {}{}",
            stdout.lines().next().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(n as f64 / el)
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (n, rounds) = if args.quick { (50, 3) } else { (2000, 7) };
    let dir = tempfile::tempdir().context("temporary directory")?;
    let s = setup(false, Some(dir.path()))?;
    let s_ml = setup(true, None)?;
    // Warm up both.
    ours(&s, 5)?;
    openssl(dir.path(), 5)?;
    let mut ours_r = Vec::new();
    let mut ssl_r = Vec::new();
    let mut ml_r = Vec::new();
    for _ in 0..rounds {
        ours_r.push(ours(&s, n)?);
        ssl_r.push(openssl(dir.path(), n)?);
        ml_r.push(ours(&s_ml, n / 4 + 1)?);
    }
    // One chain per openssl process (start-up included), for reference.
    let mut single = Vec::new();
    for _ in 0..rounds {
        single.push(openssl(dir.path(), 1)?);
    }
    let (o, p, m, one) = (median(ours_r), median(ssl_r), median(ml_r), median(single));
    let ratio = if p > 0.0 { o / p } else { 0.0 };
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if args.json {
        println!(
            "{}",
            json!({
                "benchmark": "pki",
                "path": "4 certificates via a bridge, policy mappings, explicit policy, CRL per certificate",
                "chains_per_round": n,
                "rounds": rounds,
                "qsi_chains_per_s": o,
                "openssl_chains_per_s": p,
                "ratio_qsi_over_openssl": ratio,
                "openssl_single_process_chains_per_s": one,
                "qsi_ml_dsa_65_chains_per_s": m,
                "unix_time": date,
            })
        );
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "qsi bench pki: 4-certificate bridge path with CRLs, {rounds} rounds of {n} chains (medians)"
        )?;
        writeln!(out, "  qsi validator (ECDSA P-256)      {o:>10.0} chains/s")?;
        writeln!(
            out,
            "  openssl verify (same path, same pool) {p:>5.0} chains/s"
        )?;
        writeln!(out, "  ratio qsi / openssl              {ratio:>10.2}")?;
        writeln!(
            out,
            "  openssl, one chain per process   {one:>10.1} chains/s"
        )?;
        writeln!(
            out,
            "  qsi validator (ML-DSA-65 path)   {m:>10.0} chains/s (openssl 3.0 has no ML-DSA)"
        )?;
    }
    Ok(())
}
