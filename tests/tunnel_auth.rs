//! Peer authentication end to end, with real `qsid` processes on loopback: the PKI validator refuses a
//! revoked site certificate (CRL fetched over HTTP from the certificate's distribution point), accepts a
//! peer through a bridge cross-certificate with a mapped policy and refuses one through a bridge its anchor
//! never cross-certified, site keys live in SoftHSM2 tokens (PKCS#11 URI in the config), and the CNSA 2.0
//! profile authenticates with ML-DSA-87 (negotiated scheme asserted) and refuses a P-256 peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use qsi_daemon::testbed::{self, PkiOptions, Qsid, SiteToml};
use qsi_hsm::{HsmRcgenKey, KeyAlgorithm, KeyStore, SoftHsmToken};
use qsi_pki::path::bridge_fixture;

/// A one-file HTTP server (what a CA's CRL endpoint is to qsid): serves `body` at any path and counts the
/// requests.
struct CrlServer {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    hits: Arc<Mutex<usize>>,
}

impl CrlServer {
    fn start() -> CrlServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let body = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(Mutex::new(0));
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                // Read the whole request head (the client may write it in pieces).
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                *h.lock().unwrap() += 1;
                let body = b.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        CrlServer { addr, body, hits }
    }

    fn uri(&self) -> String {
        format!("http://{}/ca.crl", self.addr)
    }
}

fn peers(site: &SiteToml) -> serde_json::Value {
    testbed::admin(site.admin.as_ref().unwrap(), "peers").unwrap()
}

fn log_of(q: &Qsid) -> String {
    std::fs::read_to_string(&q.log).unwrap_or_default()
}

/// Waits (up to 5 s: the log is copied from a pipe) for a log line holding every one of `parts` (the log
/// has colour escapes between a field's name and value, so match the value alone).
fn log_line(q: &Qsid, parts: &[&str]) -> bool {
    testbed::wait_until(Duration::from_secs(5), || {
        log_of(q)
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    })
}

/// Starts B then A (A dials) and waits up to `secs` for `done(A's peers)`.
fn run_pair(
    dir: &Path,
    a: &SiteToml,
    b: &SiteToml,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (Qsid, Qsid, bool) {
    let qb = Qsid::start(QSID.as_ref(), &b.write(dir).unwrap()).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &a.write(dir).unwrap()).unwrap();
    let ok = testbed::wait_until(Duration::from_secs(secs), || done(&peers(a)));
    (qa, qb, ok)
}

fn connected(p: &serde_json::Value) -> bool {
    p[0]["state"] == "connected"
}

#[test]
fn revoked_site_certificate_is_refused_with_the_reason_in_status_logs_and_metrics() {
    let crl = CrlServer::start();
    for (transport, revoke) in [
        ("tls", None),
        ("tls", Some("site-b")),
        ("quic", Some("site-b")),
        ("tls", Some("site-a")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions {
            crl_uri: Some(crl.uri()),
            ..Default::default()
        };
        let ca = testbed::write_test_pki(dir.path(), &["site-a", "site-b"], &opts).unwrap();
        *crl.body.lock().unwrap() = ca.crl(revoke.as_slice()).unwrap();
        let hits_before = *crl.hits.lock().unwrap();
        let (mut a, mut b) = testbed::pair_configs(dir.path(), transport).unwrap();
        // No CRL file: the only revocation source is the distribution point in the certificates.
        a.tls_extra = vec!["crls = []".into()];
        b.tls_extra = vec!["crls = []".into()];
        match revoke {
            None => {
                // Control: the same PKI and CRL endpoint with nothing revoked gives a tunnel.
                let (qa, qb, ok) = run_pair(dir.path(), &a, &b, 15, connected);
                assert!(ok, "A:\n{}\nB:\n{}", qa.log_tail(), qb.log_tail());
                assert!(
                    *crl.hits.lock().unwrap() > hits_before,
                    "qsid never fetched the CRL"
                );
                // Fetched at start from our own certificate's distribution point, before any handshake.
                assert!(log_line(&qa, &["CRLs of our own chain", "prefetched"]));
            }
            Some("site-b") => {
                // A dials B and refuses B's server certificate.
                let (qa, qb, ok) = run_pair(dir.path(), &a, &b, 15, |p| {
                    p[0]["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("Revoked"))
                });
                let p = peers(&a);
                assert!(
                    ok,
                    "A's status: {p}\nA:\n{}\nB:\n{}",
                    qa.log_tail(),
                    qb.log_tail()
                );
                assert!(!connected(&p), "{p}");
                assert!(
                    log_line(&qa, &["peer certificate refused", "CN=site-b", "revoked"]),
                    "{}",
                    qa.log_tail()
                );
                let m = metrics(a.metrics.unwrap());
                assert!(
                    m.contains("reason=\"certificate_revoked\""),
                    "{transport}: {m}"
                );
                // What the operator sees with `qsi tunnel status`.
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_qsi"))
                    .args(["tunnel", "status", "--socket"])
                    .arg(a.admin.as_ref().unwrap())
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.contains("last error") && text.contains("Revoked"),
                    "qsi tunnel status:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Some(_) => {
                // B refuses A's client certificate; A is told so by the alert.
                let (qa, qb, ok) = run_pair(dir.path(), &a, &b, 15, |p| {
                    p[0]["last_error"]
                        .as_str()
                        .is_some_and(|e| e.to_ascii_lowercase().contains("revoked"))
                });
                assert!(
                    ok,
                    "A: {}\nA:\n{}\nB:\n{}",
                    peers(&a),
                    qa.log_tail(),
                    qb.log_tail()
                );
                assert!(
                    log_line(&qb, &["peer certificate refused", "CN=site-a", "revoked"]),
                    "{}",
                    qb.log_tail()
                );
                let m = metrics(b.metrics.unwrap());
                assert!(m.contains("certificate"), "{m}");
            }
        }
    }
}

fn pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap()
}

/// Site A is agency A's end entity of the bridge fixture; site B (a throw-away CA's site) anchors at agency
/// B's root and reaches A through B -> bridge -> A cross-certificates, accepting B's policy only (mapped
/// from A's through the bridge). `b_cross` is the B -> bridge cross-certificate B holds.
fn bridge_pair(
    dir: &Path,
    fx: &bridge_fixture::BridgeFixture,
    b_cross: &[u8],
    transport: &str,
) -> (SiteToml, SiteToml) {
    testbed::write_pki(dir, &["site-b"]).unwrap();
    let item = |n: &str| &fx.intermediates.iter().find(|i| i.name == n).unwrap().der;
    std::fs::write(dir.join("site-a.crt"), pem(&fx.ee) + &pem(item("a-ca"))).unwrap();
    std::fs::write(dir.join("site-a.key"), fx.ee_key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("b-root.crt"), pem(&fx.b_root)).unwrap();
    let inter = pem(b_cross) + &pem(item("bridge-to-a"));
    std::fs::write(dir.join("bridge.pem"), inter).unwrap();
    let mut crl_files = Vec::new();
    for c in &fx.crls {
        let f = format!("{}.crl", c.name);
        std::fs::write(dir.join(&f), &c.der).unwrap();
        crl_files.push(format!("{f:?}"));
    }
    let (mut a, mut b) = testbed::pair_configs(dir, transport).unwrap();
    // A trusts B's throw-away CA directly; B validates A through the bridge with policy processing.
    b.tls_extra = vec![
        format!("crls = [{}]", crl_files.join(", ")),
        "intermediates = [\"bridge.pem\"]".into(),
        format!("policies = [\"{}\"]", bridge_fixture::B_POLICY),
        "crl_fetch = false".into(),
    ];
    a.tls_extra = vec![];
    (a, b)
}

/// The configs with A's identity as the fixture's end entity names it (B's `[[peer]]` for A) and B's
/// anchor replaced by agency B's root.
fn write_bridge_configs(
    dir: &Path,
    a: &SiteToml,
    b: &SiteToml,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let pa = a.write(dir).unwrap();
    let pb = dir.join("site-b.toml");
    let text = b
        .render()
        .replace("site-a.qsi.test", bridge_fixture::EE_DNS)
        .replace(
            "trust_anchors = [\"ca.crt\"]",
            "trust_anchors = [\"b-root.crt\"]",
        );
    std::fs::write(&pb, text).unwrap();
    (pa, pb)
}

/// The B -> bridge cross-certificate of a fixture.
fn b_to_bridge(fx: &bridge_fixture::BridgeFixture) -> Vec<u8> {
    let item = fx.intermediates.iter().find(|i| i.name == "b-to-bridge");
    item.unwrap().der.clone()
}

/// Writes the bridge pair's configs (over QUIC) and starts B then A.
fn start_bridge_pair(
    dir: &Path,
    fx: &bridge_fixture::BridgeFixture,
    b_cross: &[u8],
) -> (SiteToml, Qsid, Qsid) {
    let (a, b) = bridge_pair(dir, fx, b_cross, "quic");
    let (pa, pb) = write_bridge_configs(dir, &a, &b);
    let qb = Qsid::start(QSID.as_ref(), &pb).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &pa).unwrap();
    (a, qa, qb)
}

#[test]
fn peer_through_a_bridge_with_a_mapped_policy_is_accepted_and_an_untrusted_bridge_is_refused() {
    let fx = bridge_fixture::build(&bridge_fixture::BridgeOptions::default()).unwrap();
    // Accepted: B -> bridge -> A with B_POLICY <- BRIDGE_POLICY <- A_POLICY.
    let dir = tempfile::tempdir().unwrap();
    let (a, qa, qb) = start_bridge_pair(dir.path(), &fx, &b_to_bridge(&fx));
    let ok = testbed::wait_until(Duration::from_secs(15), || connected(&peers(&a)));
    assert!(ok, "A:\n{}\nB:\n{}", qa.log_tail(), qb.log_tail());
    drop((qa, qb));

    // Refused: B's cross-certificate goes to another bridge with the same name (B never cross-certified
    // this one), so A's path through it does not verify.
    let other = bridge_fixture::build(&bridge_fixture::BridgeOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, _qa, qb) = start_bridge_pair(dir.path(), &fx, &b_to_bridge(&other));
    let refused = testbed::wait_until(Duration::from_secs(15), || {
        log_of(&qb).contains("peer certificate refused")
    });
    assert!(refused, "B:\n{}", qb.log_tail());
    assert!(!connected(&peers(&a)), "{}", peers(&a));
    assert!(
        log_line(
            &qb,
            &["peer certificate refused", "CN=Bridge CA", "bad signature"]
        ),
        "the refusal names the certificate: {}",
        qb.log_tail()
    );
}

/// A SoftHSM2 token with one signing key `tls-2026`, its certificate issued by `ca`, and the `[tls]`
/// lines that point qsid at it.
fn site_key_in_token(
    dir: &Path,
    ca: &mut testbed::TestCa<rcgen::KeyPair>,
    site: &str,
    alg: KeyAlgorithm,
) -> (SoftHsmToken, Vec<String>) {
    let token = SoftHsmToken::create(&format!("q9auth-{site}"))
        .expect("SoftHSM2 is needed for this test: apt-get install softhsm2 (.ci/run installs it)");
    let store: Arc<dyn KeyStore> = Arc::new(token.open().unwrap());
    let info = store.generate("tls-2026", alg).unwrap();
    let key = HsmRcgenKey::new(store, info).unwrap();
    ca.issue(dir, site, &key, &PkiOptions::default()).unwrap();
    let pin = dir.join(format!("{site}.pin"));
    std::fs::write(&pin, token.user_pin.expose()).unwrap();
    let lines = vec![
        format!(
            "private_key = \"pkcs11:token={};object=tls-2026;type=private\"",
            token.label
        ),
        "[tls.pkcs11]".into(),
        format!("pin = \"file:{site}.pin\""),
    ];
    (token, lines)
}

#[test]
fn site_keys_in_softhsm_tokens_carry_a_forwarded_service() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut ca = testbed::write_test_pki(dir.path(), &[], &PkiOptions::default()).unwrap();
    let (_ta, a_tls) = site_key_in_token(dir.path(), &mut ca, "site-a", KeyAlgorithm::EcP384);
    // B's key is ML-DSA-65, sealed in the token (SoftHSM2 2.6 has no ML-DSA mechanism).
    let (_tb, b_tls) = site_key_in_token(dir.path(), &mut ca, "site-b", KeyAlgorithm::MlDsa65);
    // No key files exist: the handshake signatures can only come from the tokens.
    assert!(!dir.path().join("site-a.key").exists());
    let (mut a, mut b) = testbed::pair_configs(dir.path(), "tls").unwrap();
    a.tls_extra = a_tls;
    b.tls_extra = b_tls;
    let echo = echo_server(&rt);
    let listen = testbed::free_addr().unwrap();
    testbed::carry(&mut a, &mut b, "echo", listen, echo);
    let (qa, qb) = testbed::start_pair(
        &testbed::Launcher {
            program: QSID.into(),
            pre_args: vec![],
        },
        dir.path(),
        &a,
        &b,
    )
    .unwrap();
    rt.block_on(roundtrip(listen, 256 * 1024))
        .unwrap_or_else(|e| panic!("{e}\nA:\n{}\nB:\n{}", qa.log_tail(), qb.log_tail()));
    assert!(
        log_line(&qa, &["site key is in the token"]),
        "{}",
        qa.log_tail()
    );
    assert!(
        log_line(&qa, &["peer authenticated", "ML-DSA-65", "ML_DSA_65"]),
        "A verified B's ML-DSA-65 signature"
    );
    assert!(
        log_line(&qb, &["peer authenticated", "ECDSA_NISTP384_SHA384"]),
        "B verified A's P-384 signature"
    );
}

#[test]
fn cnsa_profile_authenticates_with_ml_dsa_87_and_refuses_a_p256_peer() {
    for transport in ["tls", "quic"] {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions {
            ca_alg: Some(&rcgen::PKCS_ML_DSA_87),
            site_algs: vec![("site-b".into(), &rcgen::PKCS_ML_DSA_87)],
            ..Default::default()
        };
        let mut ca = testbed::write_test_pki(dir.path(), &["site-b"], &opts).unwrap();
        // Site A's ML-DSA-87 key is in a SoftHSM2 token (sealed under the token's AES key: SoftHSM2 2.6
        // has no ML-DSA mechanism), site B's in a PEM file.
        let (_ta, a_tls) = site_key_in_token(dir.path(), &mut ca, "site-a", KeyAlgorithm::MlDsa87);
        let (mut a, mut b) = testbed::pair_configs(dir.path(), transport).unwrap();
        a.tls_extra = a_tls;
        a.key_exchange = Some(vec!["mlkem1024".into()]);
        b.key_exchange = Some(vec!["mlkem1024".into()]);
        let (qa, qb, ok) = run_pair(dir.path(), &a, &b, 15, connected);
        assert!(
            ok,
            "{transport}\nA:\n{}\nB:\n{}",
            qa.log_tail(),
            qb.log_tail()
        );
        assert_eq!(peers(&a)[0]["group"], "MLKEM1024");
        // Each side verified the other's CertificateVerify with ML-DSA-87.
        for (q, who) in [(&qa, "A"), (&qb, "B")] {
            assert!(
                log_line(q, &["peer authenticated", "ML-DSA-87", "ML_DSA_87"]),
                "{transport}: {who} did not verify an ML-DSA-87 signature:\n{}",
                q.log_tail()
            );
        }
    }

    // A P-256 site cannot be configured for a CNSA peer...
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    let (mut a, mut b) = testbed::pair_configs(dir.path(), "tls").unwrap();
    a.key_exchange = Some(vec!["mlkem1024".into()]);
    let e = qsi_daemon::config::Config::load(&a.write(dir.path()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("peer[0].key_exchange") && e.contains("ML-DSA-87") && e.contains("ECDSA P-256"),
        "{e}"
    );
    // ...and a P-256 peer is refused by a CNSA site even when it offers ML-KEM-1024 among other groups.
    let opts = PkiOptions {
        site_algs: vec![("site-b".into(), &rcgen::PKCS_ML_DSA_87)],
        ..Default::default()
    };
    testbed::write_test_pki(dir.path(), &["site-a", "site-b"], &opts).unwrap();
    a.key_exchange = Some(vec!["mlkem1024".into(), "x25519mlkem768".into()]);
    b.key_exchange = Some(vec!["mlkem1024".into()]);
    let (qa, qb, _) = run_pair(dir.path(), &a, &b, 0, connected);
    let refused = testbed::wait_until(Duration::from_secs(15), || {
        log_of(&qb).lines().any(|l| {
            l.contains("peer certificate refused") && l.contains("outside the CNSA 2.0 profile")
        })
    });
    assert!(refused, "A:\n{}\nB:\n{}", qa.log_tail(), qb.log_tail());
    assert!(!connected(&peers(&a)));
}

#[test]
fn tls_section_refusals_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    let (a, _) = testbed::pair_configs(dir.path(), "quic").unwrap();
    let refusal = |extra: &[&str]| {
        let mut s = a.clone();
        s.tls_extra = extra.iter().map(|l| l.to_string()).collect();
        let e = qsi_daemon::config::Config::load(&s.write(dir.path()).unwrap())
            .expect_err("config must be refused")
            .to_string();
        // Every refusal says what to do.
        assert!(e.contains("; "), "no fix in: {e}");
        e
    };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["revocation = \"sometimes\""],
            &["tls.revocation", "best-effort"],
        ),
        (
            &["policies = [\"not-an-oid\"]"],
            &["tls.policies[0]", "dotted OID"],
        ),
        (
            &["crls = [\"missing.crl\"]"],
            &["tls.crls[0]", "missing.crl"],
        ),
        (&["crls = [\"site-a.crt\"]"], &["tls.crls[0]", "CRL"]),
        (
            &["intermediates = [\"site-a.key\"]"],
            &["tls.intermediates[0]", ".p7c"],
        ),
        (
            &["crls = []"],
            &["tls.revocation", "no CRL source", "tls.crls"],
        ),
        (
            &["private_key = \"pkcs11:object=tls-2026\""],
            &["tls.private_key", "token="],
        ),
        (
            &["private_key = \"pkcs11:token=x;type=private\""],
            &["tls.private_key", "object="],
        ),
        (
            &["private_key = \"pkcs11:token=x;object=y\""],
            &["tls.pkcs11.pin", "file:"],
        ),
        (
            &["[tls.pkcs11]", "pin = \"env:QSI_NO_SUCH_PIN_VAR\""],
            &["tls.pkcs11", "private_key"],
        ),
    ];
    for (extra, want) in cases {
        let e = refusal(extra);
        for w in *want {
            assert!(e.contains(w), "{extra:?}: {e:?} lacks {w:?}");
        }
    }
    // The good config with the same PKI loads (the refusals above are the lines' doing).
    let ok = a.clone();
    qsi_daemon::config::Config::load(&ok.write(dir.path()).unwrap()).unwrap();
    // Intermediates may come as a .p7c bundle (what an FPKI repository publishes), PEM or DER.
    let fx = bridge_fixture::build(&bridge_fixture::BridgeOptions::default()).unwrap();
    let ders: Vec<Vec<u8>> = fx.intermediates.iter().map(|i| i.der.clone()).collect();
    std::fs::write(
        dir.path().join("bridge.p7c"),
        qsi_pki::ca::p7c::certs_only(&ders),
    )
    .unwrap();
    std::fs::write(dir.path().join("one.der"), &ders[0]).unwrap();
    let mut with = a.clone();
    with.tls_extra = vec!["intermediates = [\"bridge.p7c\", \"one.der\"]".into()];
    let cfg = qsi_daemon::config::Config::load(&with.write(dir.path()).unwrap()).unwrap();
    assert_eq!(cfg.trust.intermediates.len(), ders.len() + 1);
    // (A .p7c holds a DER SET OF: its order is the encoding's, not ours.)
    let mut got = cfg.trust.intermediates[..ders.len()].to_vec();
    let mut want = ders.clone();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "the bundle's certificates differ from the fixture's"
    );
}

#[test]
fn a_crl_file_revoking_a_connected_peer_takes_effect_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PkiOptions::default();
    let ca = testbed::write_test_pki(dir.path(), &["site-a", "site-b"], &opts).unwrap();
    let (a, b) = testbed::pair_configs(dir.path(), "quic").unwrap();
    let (qa, qb, ok) = run_pair(dir.path(), &a, &b, 15, connected);
    assert!(ok, "A:\n{}\nB:\n{}", qa.log_tail(), qb.log_tail());
    // The CA revokes B; the operator installs the new CRL at A and reloads: A's tunnel to B is rebuilt
    // (its trust settings changed) and B's certificate is refused. (With a CRL revoking nobody the same
    // reload reconnects: checked by hand when this test was written.)
    std::fs::write(dir.path().join("ca.crl"), ca.crl(&["site-b"]).unwrap()).unwrap();
    let summary = testbed::admin(a.admin.as_ref().unwrap(), "reload").unwrap();
    assert!(summary.to_string().contains("site-b"), "{summary}");
    let refused = testbed::wait_until(Duration::from_secs(15), || {
        peers(&a)[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Revoked"))
    });
    assert!(refused, "{}\nA:\n{}", peers(&a), qa.log_tail());
    assert!(!connected(&peers(&a)));
}
