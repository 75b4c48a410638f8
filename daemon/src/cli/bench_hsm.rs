//! `qsi bench hsm`: signatures per second through SoftHSM2 (PKCS#11) beside the same operation in
//! aws-lc-rs directly, in the same run, with the ratio; and ML-DSA-65/87 signed natively by a PKCS#11 3.2
//! token (Kryoptic, `scripts/install-kryoptic`) beside aws-lc-rs.
//!
//! Rounds alternate between the two so that noise on a shared machine hits both alike; the figure is the
//! median of the rounds. The tokens are throw-away tokens; without SOFTHSM2_CONF or KRYOPTIC_CONF in the
//! environment the program re-runs itself with private configurations in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, PqdsaKeyPair};
use qsi_hsm::{KeyAlgorithm, KeyStorage, KeyStore, KryopticToken, SoftHsmToken, verify_signature};
use serde_json::json;

/// Options of `qsi bench hsm`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): one short round per algorithm
    #[arg(long)]
    pub quick: bool,
}

const CHILD_MARK: &str = "QSI_BENCH_HSM_CHILD";

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let unconfigured = ["SOFTHSM2_CONF", "KRYOPTIC_CONF"]
        .iter()
        .any(|v| std::env::var_os(v).is_none());
    if unconfigured && std::env::var_os(CHILD_MARK).is_none() {
        return rerun_with_private_tokens();
    }
    let (rounds, per_round) = if args.quick {
        (1, Duration::from_millis(200))
    } else {
        (5, Duration::from_secs(2))
    };
    let token = SoftHsmToken::create("bench-hsm").context(
        "could not create a SoftHSM2 token for the benchmark (is softhsm2 installed? `apt-get install softhsm2`)",
    )?;
    let store = token.open()?;
    let message =
        b"qsi bench hsm: a message of about the size of a TBSCertificate digest input....";
    let mut rows = Vec::new();
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::MlDsa65,
    ] {
        let key = store.generate(&format!("bench-{}", alg.name()), alg)?;
        let (hsm, hsm_rates, lc, direct_rates) = measure(&store, &key, message, rounds, per_round)?;
        rows.push(json!({
            "algorithm": alg.name(),
            "storage": key.storage,
            "softhsm2_sigs_per_s": hsm,
            "aws_lc_rs_sigs_per_s": lc,
            "softhsm2_us_per_sig": 1e6 / hsm,
            "aws_lc_rs_us_per_sig": 1e6 / lc,
            "ratio_softhsm2_over_aws_lc_rs": hsm / lc,
            "softhsm2_rounds": hsm_rates,
            "aws_lc_rs_rounds": direct_rates,
        }));
        store.delete(&key)?;
    }
    let native = native_rows(message, rounds, per_round);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let info = store.info();
    let report = json!({
        "benchmark": "hsm",
        "date": date,
        "quick": args.quick,
        "rounds": rounds,
        "seconds_per_round": per_round.as_secs_f64(),
        "token": info.description,
        "threads": 1,
        "results": rows,
        "native_ml_dsa": native,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "qsi bench hsm ({}; {} round{} of {:.1} s each, median; one thread)",
        info.description,
        rounds,
        if rounds == 1 { "" } else { "s" },
        per_round.as_secs_f64()
    );
    println!(
        "{:<10} {:>16} {:>16} {:>10} {:>14} {:>14}",
        "algorithm", "SoftHSM2 sig/s", "aws-lc-rs sig/s", "ratio", "SoftHSM2 us", "aws-lc-rs us"
    );
    for r in report["results"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:>16.0} {:>16.0} {:>10.3} {:>14.1} {:>14.1}",
            r["algorithm"].as_str().unwrap_or(""),
            r["softhsm2_sigs_per_s"].as_f64().unwrap_or(0.0),
            r["aws_lc_rs_sigs_per_s"].as_f64().unwrap_or(0.0),
            r["ratio_softhsm2_over_aws_lc_rs"].as_f64().unwrap_or(0.0),
            r["softhsm2_us_per_sig"].as_f64().unwrap_or(0.0),
            r["aws_lc_rs_us_per_sig"].as_f64().unwrap_or(0.0),
        );
    }
    println!("ratio = SoftHSM2 / aws-lc-rs (1.0 = no cost for keeping the key in the token)");
    match report["native_ml_dsa"]["results"].as_array() {
        Some(rows) => {
            println!(
                "\nnative ML-DSA on {} (PKCS#11 3.2 CKM_ML_DSA, key on the token)",
                report["native_ml_dsa"]["token"].as_str().unwrap_or("")
            );
            println!(
                "{:<10} {:>16} {:>16} {:>10} {:>14} {:>14}",
                "algorithm", "token sig/s", "aws-lc-rs sig/s", "ratio", "token us", "aws-lc-rs us"
            );
            for r in rows {
                println!(
                    "{:<10} {:>16.0} {:>16.0} {:>10.3} {:>14.1} {:>14.1}",
                    r["algorithm"].as_str().unwrap_or(""),
                    r["token_sigs_per_s"].as_f64().unwrap_or(0.0),
                    r["aws_lc_rs_sigs_per_s"].as_f64().unwrap_or(0.0),
                    r["ratio_token_over_aws_lc_rs"].as_f64().unwrap_or(0.0),
                    r["token_us_per_sig"].as_f64().unwrap_or(0.0),
                    r["aws_lc_rs_us_per_sig"].as_f64().unwrap_or(0.0),
                );
            }
        }
        None => println!(
            "\nnative ML-DSA NOT MEASURED: {}",
            report["native_ml_dsa"]["error"].as_str().unwrap_or("")
        ),
    }
    Ok(())
}

type Measured = (f64, Vec<f64>, f64, Vec<f64>);

/// Median signatures per second of `key` in `store` and of aws-lc-rs directly (same algorithm), in
/// alternating rounds, after checking both make valid signatures.
fn measure(
    store: &dyn KeyStore,
    key: &qsi_hsm::KeyInfo,
    message: &[u8],
    rounds: usize,
    per_round: Duration,
) -> anyhow::Result<Measured> {
    let spki = store.public_key_spki(key)?;
    let scheme = key
        .algorithm
        .default_scheme()
        .context("signing algorithm")?;
    let direct = Direct::new(key.algorithm)?;
    // Both must produce valid signatures before they are timed.
    verify_signature(&spki, scheme, message, &store.sign(key, message)?)?;
    direct.check(message)?;
    let (mut hsm_rates, mut direct_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        hsm_rates.push(rate(per_round, || {
            store
                .sign(key, message)
                .map(|_| ())
                .map_err(anyhow::Error::from)
        })?);
        direct_rates.push(rate(per_round, || direct.sign(message).map(|_| ()))?);
    }
    let hsm = median(&mut hsm_rates);
    let lc = median(&mut direct_rates);
    Ok((hsm, hsm_rates, lc, direct_rates))
}

/// ML-DSA-65/87 signed by a token with native ML-DSA (Kryoptic), or why that could not be measured.
fn native_rows(message: &[u8], rounds: usize, per_round: Duration) -> serde_json::Value {
    let run = || -> anyhow::Result<serde_json::Value> {
        let token = KryopticToken::create("bench-native").context(
            "no PKCS#11 token with native ML-DSA: build Kryoptic with scripts/install-kryoptic",
        )?;
        let store = token.open()?;
        let mut rows = Vec::new();
        for alg in [KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa87] {
            let key = store.generate(&format!("bench-native-{}", alg.name()), alg)?;
            if key.storage != KeyStorage::Token {
                bail!("{} did not take the native ML-DSA path", token.label);
            }
            let (hsm, hsm_rates, lc, direct_rates) =
                measure(&store, &key, message, rounds, per_round)?;
            rows.push(json!({
                "algorithm": alg.name(),
                "storage": key.storage,
                "token_sigs_per_s": hsm,
                "aws_lc_rs_sigs_per_s": lc,
                "token_us_per_sig": 1e6 / hsm,
                "aws_lc_rs_us_per_sig": 1e6 / lc,
                "ratio_token_over_aws_lc_rs": hsm / lc,
                "token_rounds": hsm_rates,
                "aws_lc_rs_rounds": direct_rates,
            }));
            store.delete(&key)?;
        }
        Ok(json!({ "token": store.info().description, "module": token.module, "results": rows }))
    };
    run().unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
}

/// Re-runs this command with SOFTHSM2_CONF and KRYOPTIC_CONF (those not set) pointing at private
/// configurations in a temporary directory.
fn rerun_with_private_tokens() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("qsi-bench-hsm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding the qsi executable")?;
    let mut child = std::process::Command::new(exe);
    child.args(std::env::args_os().skip(1)).env(CHILD_MARK, "1");
    for (var, file) in [
        ("SOFTHSM2_CONF", "softhsm2.conf"),
        ("KRYOPTIC_CONF", "kryoptic.conf"),
    ] {
        if std::env::var_os(var).is_none() {
            child.env(var, dir.join(file));
        }
    }
    let status = child
        .status()
        .context("re-running qsi bench hsm with private token configurations");
    let _ = std::fs::remove_dir_all(&dir);
    if !status?.success() {
        bail!("qsi bench hsm failed");
    }
    Ok(())
}

enum Direct {
    Ec(
        EcdsaKeyPair,
        &'static signature::EcdsaVerificationAlgorithm,
        SystemRandom,
    ),
    MlDsa(
        PqdsaKeyPair,
        &'static signature::PqdsaSigningAlgorithm,
        &'static signature::PqdsaVerificationAlgorithm,
    ),
}

impl Direct {
    fn new(alg: KeyAlgorithm) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let ec = |signing: &'static signature::EcdsaSigningAlgorithm,
                  verify|
         -> anyhow::Result<Direct> {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng)
                .map_err(|_| anyhow::anyhow!("EC key generation"))?;
            let kp = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("EC key parse"))?;
            Ok(Direct::Ec(kp, verify, SystemRandom::new()))
        };
        match alg {
            KeyAlgorithm::EcP256 => ec(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P256_SHA256_ASN1,
            ),
            KeyAlgorithm::EcP384 => ec(
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1,
            ),
            KeyAlgorithm::MlDsa65 => Ok(Direct::MlDsa(
                PqdsaKeyPair::generate(&signature::ML_DSA_65_SIGNING)
                    .map_err(|_| anyhow::anyhow!("ML-DSA key generation"))?,
                &signature::ML_DSA_65_SIGNING,
                &signature::ML_DSA_65,
            )),
            KeyAlgorithm::MlDsa87 => Ok(Direct::MlDsa(
                PqdsaKeyPair::generate(&signature::ML_DSA_87_SIGNING)
                    .map_err(|_| anyhow::anyhow!("ML-DSA key generation"))?,
                &signature::ML_DSA_87_SIGNING,
                &signature::ML_DSA_87,
            )),
            other => bail!("no direct peer for {other}"),
        }
    }

    fn sign(&self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Direct::Ec(kp, _, rng) => Ok(kp
                .sign(rng, msg)
                .map_err(|_| anyhow::anyhow!("ECDSA sign"))?
                .as_ref()
                .to_vec()),
            Direct::MlDsa(kp, signing, _) => {
                let mut sig = vec![0u8; signing.signature_len()];
                kp.sign(msg, &mut sig)
                    .map_err(|_| anyhow::anyhow!("ML-DSA sign"))?;
                Ok(sig)
            }
        }
    }

    fn check(&self, msg: &[u8]) -> anyhow::Result<()> {
        let sig = self.sign(msg)?;
        let ok = match self {
            Direct::Ec(kp, verify, _) => {
                signature::UnparsedPublicKey::new(*verify, kp.public_key().as_ref())
                    .verify(msg, &sig)
                    .is_ok()
            }
            Direct::MlDsa(kp, _, verify) => {
                signature::UnparsedPublicKey::new(*verify, kp.public_key().as_ref())
                    .verify(msg, &sig)
                    .is_ok()
            }
        };
        if !ok {
            bail!("aws-lc-rs signature did not verify");
        }
        Ok(())
    }
}

/// Operations per second of `op`, run for `duration` after a short warm-up.
fn rate(duration: Duration, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        op()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        op()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
