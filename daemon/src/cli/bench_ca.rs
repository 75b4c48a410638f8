//! `qsi bench ca`: certificates issued per second (CA key in SoftHSM2: P-384, and ML-DSA-65 sealed
//! by the token) and OCSP responses per second, each beside OpenSSL doing the same in the same run.
//!
//! - Issuance: the whole path of `qsi ca issue` in process (CSR signature check, profile, serial
//!   reserved in redb, signature by the token, record in redb), against an `openssl x509 -req`
//!   loop (one process per certificate, the way OpenSSL-based CA scripts issue) with a P-384 key
//!   file. OpenSSL 3.0 has no ML-DSA, so the ML-DSA-65 row has no peer.
//! - OCSP: both responders as HTTP servers on loopback (`qsi ca serve`'s router, `openssl ocsp
//!   -port`), asked the same request by the same sequential client, one connection per request.
//!
//! Rounds alternate between us and the peer so noise on a shared machine hits both alike; figures
//! are medians of the rounds.

use anyhow::{Context, Result, anyhow, bail};
use der::Encode;
use qsi_hsm::{KeyStore, SoftHsmToken};
use qsi_pki::ca::authority::{Authority, IssueRequest};
use qsi_pki::ca::csr;
use qsi_pki::ca::db::CaDb;
use qsi_pki::ca::hsm_signer::HsmSigner;
use qsi_pki::ca::issue::self_signed_root;
use qsi_pki::ca::signer::{SigAlg, SoftSigner};
use qsi_pki::profiles::Publication;
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Options of `qsi bench ca`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): one short round per figure
    #[arg(long)]
    pub quick: bool,
}

const CHILD_MARK: &str = "QSI_BENCH_CA_CHILD";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `op` repeatedly for `d`; returns operations per second.
fn rate(d: Duration, mut op: impl FnMut(u64) -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d || n == 0 {
        op(n)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !o.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

struct Ca {
    authority: Arc<Authority>,
    _dir: tempfile::TempDir,
}

fn make_ca(store: Arc<dyn KeyStore>, alg: SigAlg, label: &str) -> Result<Ca> {
    let dir = tempfile::tempdir()?;
    let signer = HsmSigner::generate(store, label, alg).map_err(|e| anyhow!("{e}"))?;
    let publication = Publication {
        base_url: "http://127.0.0.1:1".into(),
    };
    let now = SystemTime::now();
    let cert = self_signed_root(
        &signer,
        "CN=Bench CA,O=QSI,C=US".parse()?,
        "bench",
        &publication,
        x509_cert::serial_number::SerialNumber::new(&[0x41, 1, 2, 3, 4, 5, 6, 7, 8])?,
        now - Duration::from_secs(60),
        now + Duration::from_secs(365 * 86_400),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let db = CaDb::open(&dir.path().join("ca.redb")).map_err(|e| anyhow!("{e}"))?;
    let authority = Authority::new(
        "bench".into(),
        cert,
        vec![],
        Box::new(signer),
        db,
        publication,
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(Ca {
        authority: Arc::new(authority),
        _dir: dir,
    })
}

fn issue_rate(ca: &Ca, csr_hex: &str, d: Duration, round: usize) -> Result<f64> {
    rate(d, |i| {
        let req = IssueRequest {
            profile: "tls-client".into(),
            csr_hex: Some(csr_hex.to_string()),
            subject: Some(format!("CN=bench {round}-{i},O=QSI,C=US")),
            ..Default::default()
        };
        ca.authority
            .issue(&req, SystemTime::now())
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    })
}

fn openssl_issue_rate(dir: &Path, d: Duration) -> Result<f64> {
    rate(d, |i| {
        let serial = format!("0x{:x}", 0x4000_0000_0000u64 + i);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "ee.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "365",
                "-sha384",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "ee",
                "-out",
                "ee.pem",
            ],
            dir,
        )
    })
}

fn post_ocsp(port: u16, body: &[u8]) -> Result<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write: `openssl ocsp -port` reads the request in one go.
    let mut req = format!(
        "POST /ocsp HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let ok = buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200");
    if !ok || buf.len() < 100 {
        bail!(
            "OCSP responder answered {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        );
    }
    Ok(())
}

fn wait_port(port: u16) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("responder on port {port} did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if std::env::var_os("SOFTHSM2_CONF").is_none() && std::env::var_os(CHILD_MARK).is_none() {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("qsi-bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .env(CHILD_MARK, "1")
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        if !status?.success() {
            bail!("qsi bench ca failed");
        }
        return Ok(());
    }
    let (rounds, per) = if args.quick {
        (1, Duration::from_millis(300))
    } else {
        (5, Duration::from_secs(3))
    };
    let token = SoftHsmToken::create("bench-ca")
        .context("creating a SoftHSM2 token (apt-get install softhsm2)")?;
    let store: Arc<dyn KeyStore> = Arc::new(token.open()?);

    // The subscriber's request (P-256), shared by both issuers.
    let ee_key = SoftSigner::generate(SigAlg::EcdsaP256Sha256).map_err(|e| anyhow!("{e}"))?;
    let csr_der =
        csr::build(&ee_key, "CN=bench,O=QSI,C=US".parse()?, vec![]).map_err(|e| anyhow!("{e}"))?;
    let csr_hex = hex::encode(&csr_der);

    let p384 = make_ca(store.clone(), SigAlg::EcdsaP384Sha384, "bench-ca-p384")?;
    let mldsa = make_ca(store.clone(), SigAlg::MlDsa65, "bench-ca-mldsa65")?;

    // OpenSSL's CA: a P-384 key file, the same kind of extensions.
    let work = tempfile::tempdir()?;
    let w = work.path();
    std::fs::write(
        w.join("ee.csr"),
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &csr_der)
            .map_err(|e| anyhow!("{e}"))?,
    )?;
    std::fs::write(
        w.join("ext.cnf"),
        "[ee]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\ncertificatePolicies=2.16.840.1.101.3.2.1.3.36\n\
         crlDistributionPoints=URI:http://127.0.0.1/crl/bench.crl\n\
         authorityInfoAccess=OCSP;URI:http://127.0.0.1/ocsp,caIssuers;URI:http://127.0.0.1/p7c/bench.p7c\n",
    )?;
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "ca.key",
        ],
        w,
    )?;
    openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "ca.key",
            "-subj",
            "/CN=OpenSSL Bench CA",
            "-days",
            "365",
            "-out",
            "ca.pem",
        ],
        w,
    )?;

    let (mut ours_p384, mut ours_mldsa, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        tracing::debug!(round, "issuance: qsi P-384");
        ours_p384.push(issue_rate(&p384, &csr_hex, per, round)?);
        tracing::debug!(round, "issuance: openssl x509 -req");
        theirs.push(openssl_issue_rate(w, per)?);
        tracing::debug!(round, "issuance: qsi ML-DSA-65");
        ours_mldsa.push(issue_rate(&mldsa, &csr_hex, per, round)?);
    }

    // OCSP: our router and `openssl ocsp -port`, same request, same client.
    let issued = p384.authority.list().map_err(|e| anyhow!("{e}"))?;
    let first = issued
        .first()
        .ok_or_else(|| anyhow!("nothing issued"))?
        .0
        .der()
        .map_err(|e| anyhow!("{e}"))?;
    std::fs::write(w.join("ee.der"), &first)?;
    std::fs::write(w.join("ourca.der"), p384.authority.cert.to_der()?)?;
    openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "ourca.der",
            "-out",
            "ourca.pem",
        ],
        w,
    )?;
    openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "ee.der",
            "-out",
            "ee-ours.pem",
        ],
        w,
    )?;
    openssl(
        &[
            "ocsp",
            "-issuer",
            "ourca.pem",
            "-cert",
            "ee-ours.pem",
            "-no_nonce",
            "-reqout",
            "req-ours.der",
        ],
        w,
    )?;
    openssl(
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "ee.pem",
            "-no_nonce",
            "-reqout",
            "req-openssl.der",
        ],
        w,
    )?;
    std::fs::write(w.join("index.txt"), "")?;
    let ours_req = std::fs::read(w.join("req-ours.der"))?;
    let their_req = std::fs::read(w.join("req-openssl.der"))?;

    let our_port = free_port()?;
    let their_port = free_port()?;
    // The CRL/p7c routes need a directory; the benchmark only uses /ocsp.
    let router = super::ca_serve::router(
        Arc::try_unwrap(p384.authority).map_err(|_| anyhow!("authority still shared"))?,
        w.to_path_buf(),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", our_port)))?;
    rt.spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut openssl_ocsp = Command::new("openssl")
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-port",
        ])
        .arg(their_port.to_string())
        .current_dir(w)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting openssl ocsp -port")?;
    let result = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        wait_port(our_port)?;
        // `openssl ocsp -port` spins on a connection closed without a request, so it is probed
        // with a real request rather than a bare connect.
        let start = Instant::now();
        while post_ocsp(their_port, &their_req).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("openssl ocsp -port did not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (mut o, mut t) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            tracing::debug!("OCSP: qsi");
            o.push(rate(per, |_| post_ocsp(our_port, &ours_req))?);
            tracing::debug!("OCSP: openssl");
            t.push(rate(per, |_| post_ocsp(their_port, &their_req))?);
        }
        Ok((o, t))
    })();
    let _ = openssl_ocsp.kill();
    let _ = openssl_ocsp.wait();
    let (mut ocsp_ours, mut ocsp_theirs) = result?;
    drop(rt);
    drop(mldsa);

    let (a, b, c) = (
        median(&mut ours_p384),
        median(&mut theirs),
        median(&mut ours_mldsa),
    );
    let (d, e) = (median(&mut ocsp_ours), median(&mut ocsp_theirs));
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
    if args.json {
        println!(
            "{}",
            json!({
                "rounds": rounds, "seconds_per_round": per.as_secs_f64(),
                "issue_p384_softhsm_per_s": a, "issue_openssl_x509_req_p384_per_s": b,
                "issue_p384_ratio": ratio(a, b),
                "issue_ml_dsa_65_softhsm_per_s": c, "issue_ml_dsa_65_openssl": null,
                "ocsp_qsi_per_s": d, "ocsp_openssl_per_s": e, "ocsp_ratio": ratio(d, e),
            })
        );
    } else {
        println!(
            "qsi bench ca ({rounds} rounds of {:.1} s, medians)",
            per.as_secs_f64()
        );
        println!("{:<44} {:>12} {:>14} {:>8}", "", "qsi", "openssl", "ratio");
        println!(
            "{:<44} {:>12.0} {:>14.0} {:>8.2}",
            "certificates/s, CA key P-384 (SoftHSM2)",
            a,
            b,
            ratio(a, b)
        );
        println!(
            "{:<44} {:>12.0} {:>14} {:>8}",
            "certificates/s, CA key ML-DSA-65 (sealed)", c, "n/a (3.0)", "-"
        );
        println!(
            "{:<44} {:>12.0} {:>14.0} {:>8.2}",
            "OCSP responses/s over HTTP (P-384)",
            d,
            e,
            ratio(d, e)
        );
    }
    Ok(())
}
