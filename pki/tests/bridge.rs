//! A bridge scenario of our own (path::bridge_fixture): agency A's end entity validates at agency B
//! under B's policy through B -> bridge -> A cross-certificates with policy mappings, and fails when the
//! mapping is inhibited (by the relying party or by B's cross-certificate) or A's names are excluded.
//! Also: both directions of cross-certification and self-signed roots in the pool (loops), a revoked
//! end entity, AIA caIssuers .p7c fetched over real HTTP, and the runtime CRL cache over real HTTP
//! with its stale policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qsi_pki::path::bridge_fixture::{self, B_POLICY, BridgeFixture, BridgeOptions};
use qsi_pki::path::fetch::HttpBundleFetcher;
use qsi_pki::revocation::{Crl, CrlCache, HttpSource, StalePolicy};
use qsi_pki::validate::{
    Cert, FailureReason, PolicySet, RevocationStatus, TrustAnchor, ValidationError,
    ValidationInput, ValidationOptions, validate,
};

/// 2026-06-01T00:00:00Z.
fn t2026() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_272_000)
}

fn cert(der: &[u8]) -> Cert {
    Cert::from_der(der).unwrap()
}

/// Everything but the anchor and the EE, plus the other roots: the pool a relying party would have.
fn pool(f: &BridgeFixture) -> Vec<Cert> {
    let mut v: Vec<Cert> = f.intermediates.iter().map(|i| cert(&i.der)).collect();
    v.push(cert(&f.a_root));
    v.push(cert(&f.bridge));
    v.reverse(); // the builder must not depend on the order
    v
}

fn crls(f: &BridgeFixture) -> Vec<Crl> {
    f.crls
        .iter()
        .map(|c| Crl::from_der(&c.der).unwrap())
        .collect()
}

fn b_options() -> ValidationOptions {
    ValidationOptions {
        initial_policy_set: vec![B_POLICY],
        explicit_policy: true,
        ..ValidationOptions::default()
    }
}

fn run(
    f: &BridgeFixture,
    opts: &ValidationOptions,
) -> Result<qsi_pki::validate::ValidatedPath, ValidationError> {
    let anchors = [TrustAnchor::from_cert(cert(&f.b_root))];
    let ee = cert(&f.ee);
    let candidates = pool(f);
    let crls = crls(f);
    let mut input = ValidationInput::new(&anchors, &ee, t2026(), opts);
    input.candidates = &candidates;
    input.crls = &crls;
    validate(&input)
}

#[test]
fn agency_a_validates_at_agency_b_under_b_policy() {
    let f = bridge_fixture::build(&BridgeOptions::default()).unwrap();
    let v = run(&f, &b_options()).unwrap();
    let subjects: Vec<String> = v.certs.iter().map(Cert::subject_string).collect();
    assert_eq!(
        subjects,
        [
            "CN=Bridge CA,O=Bridge,C=US",
            "CN=Agency A Root CA,O=Agency A,C=US",
            "CN=Agency A Issuing CA,O=Agency A,C=US",
            "CN=Alice,O=Agency A,C=US"
        ]
    );
    assert_eq!(
        v.valid_policy_set,
        PolicySet::Set([B_POLICY.to_string()].into())
    );
    assert!(
        v.revocation
            .iter()
            .all(|s| *s == RevocationStatus::GoodByCrl),
        "{:?}",
        v.revocation
    );
    // A policy B does not map to is not granted.
    let other = ValidationOptions {
        initial_policy_set: vec!["1.3.6.1.4.1.55555.2.99".parse().unwrap()],
        ..b_options()
    };
    let e = run(&f, &other).unwrap_err();
    assert_eq!(
        e.failure().unwrap().reason,
        FailureReason::NoValidPolicy,
        "{e}"
    );
}

#[test]
fn fails_when_the_relying_party_inhibits_mapping() {
    let f = bridge_fixture::build(&BridgeOptions::default()).unwrap();
    let opts = ValidationOptions {
        inhibit_policy_mapping: true,
        ..b_options()
    };
    let e = run(&f, &opts).unwrap_err();
    let fail = e.failure().unwrap();
    assert_eq!(fail.reason, FailureReason::NoValidPolicy, "{e}");
}

#[test]
fn fails_when_b_cross_certificate_inhibits_mapping() {
    let f = bridge_fixture::build(&BridgeOptions {
        inhibit_mapping_in_b_cross: true,
        ..Default::default()
    })
    .unwrap();
    let e = run(&f, &b_options()).unwrap_err();
    let fail = e.failure().unwrap();
    assert_eq!(fail.reason, FailureReason::NoValidPolicy, "{e}");
    // The bridge's own mapping (bridge -> A) is the one that can no longer apply.
    assert!(fail.index >= 1, "{e}");
}

#[test]
fn fails_when_agency_a_names_are_excluded() {
    let f = bridge_fixture::build(&BridgeOptions {
        exclude_agency_a: true,
        ..Default::default()
    })
    .unwrap();
    let e = run(&f, &b_options()).unwrap_err();
    let fail = e.failure().unwrap();
    assert!(
        matches!(fail.reason, FailureReason::NameExcluded { .. }),
        "{e}"
    );
    assert!(fail.subject.contains("O=Agency A"), "{e}");
}

#[test]
fn revoked_end_entity_is_refused_naming_it() {
    let f = bridge_fixture::build(&BridgeOptions {
        revoke_ee: true,
        ..Default::default()
    })
    .unwrap();
    let e = run(&f, &b_options()).unwrap_err();
    let fail = e.failure().unwrap();
    assert!(matches!(fail.reason, FailureReason::Revoked(_)), "{e}");
    assert_eq!(fail.subject, "CN=Alice,O=Agency A,C=US");
    assert_eq!(fail.index, 3);
}

#[test]
fn missing_crl_is_refused_and_best_effort_accepts() {
    let f = bridge_fixture::build(&BridgeOptions::default()).unwrap();
    let anchors = [TrustAnchor::from_cert(cert(&f.b_root))];
    let ee = cert(&f.ee);
    let candidates = pool(&f);
    let crls: Vec<Crl> = crls(&f)
        .into_iter()
        .filter(|c| !c.issuer_string().contains("Issuing"))
        .collect();
    let opts = b_options();
    let mut input = ValidationInput::new(&anchors, &ee, t2026(), &opts);
    input.candidates = &candidates;
    input.crls = &crls;
    let e = validate(&input).unwrap_err();
    assert!(
        matches!(
            e.failure().unwrap().reason,
            FailureReason::RevocationUnknown(_)
        ),
        "{e}"
    );
    let lenient = ValidationOptions {
        revocation: qsi_pki::validate::RevocationMode::BestEffort,
        ..b_options()
    };
    input.options = &lenient;
    let v = validate(&input).unwrap();
    assert_eq!(v.revocation.last(), Some(&RevocationStatus::Unknown));
}

/// A tiny HTTP/1.1 server on loopback serving `files` (path -> body), counting requests.
fn serve(
    listener: TcpListener,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            hits.lock().unwrap().push(path.clone());
            let body = files.lock().unwrap().get(&path).cloned();
            let _ = match body {
                Some(b) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    );
                    s.write_all(&b)
                }
                None => write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            };
        }
    });
}

fn p7c_of(ders: &[&[u8]]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut pem = String::new();
    for d in ders {
        let b64 = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, d).unwrap();
        pem.push_str(&b64);
    }
    let inp = dir.path().join("in.pem");
    let out = dir.path().join("out.p7c");
    std::fs::write(&inp, pem).unwrap();
    let st = std::process::Command::new("openssl")
        .args(["crl2pkcs7", "-nocrl", "-certfile"])
        .arg(&inp)
        .args(["-outform", "DER", "-out"])
        .arg(&out)
        .status()
        .expect("openssl is required for this test (apt-get install openssl)");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

#[test]
fn aia_bundle_and_crls_are_fetched_over_http() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(Mutex::new(HashMap::new()));
    let hits = Arc::new(Mutex::new(Vec::new()));
    serve(listener, files.clone(), hits.clone());
    let f = bridge_fixture::build(&BridgeOptions {
        crl_base: Some(base.clone()),
        aia_base: Some(base.clone()),
        sia_base: Some(base.clone()),
        ..Default::default()
    })
    .unwrap();
    {
        let mut m = files.lock().unwrap();
        for c in &f.crls {
            m.insert(format!("/{}.crl", c.name), c.der.clone());
        }
        let a_ca = f.intermediates.iter().find(|i| i.name == "a-ca").unwrap();
        m.insert("/a-ca.p7c".into(), p7c_of(&[&a_ca.der]));
        let b_cross = f
            .intermediates
            .iter()
            .find(|i| i.name == "b-to-bridge")
            .unwrap();
        m.insert("/b-issued.p7c".into(), p7c_of(&[&b_cross.der]));
    }
    // B's cross-certificate to the bridge is missing too: only B's SIA caRepository bundle has it.
    // The pool lacks A's issuing CA: only the AIA bundle has it.
    let anchors = [TrustAnchor::from_cert(cert(&f.b_root))];
    let ee = cert(&f.ee);
    let candidates: Vec<Cert> = f
        .intermediates
        .iter()
        .filter(|i| i.name != "a-ca" && i.name != "b-to-bridge")
        .map(|i| cert(&i.der))
        .collect();
    let fetcher = HttpBundleFetcher::new(Duration::from_secs(5));
    // CRLs come from the runtime cache, fetched from the distribution points of the path.
    let cache = CrlCache::new(
        Arc::new(HttpSource::default()),
        Duration::from_secs(3600),
        StalePolicy::Refuse,
    );
    let all: Vec<Cert> = f
        .intermediates
        .iter()
        .map(|i| cert(&i.der))
        .chain([ee.clone()])
        .collect();
    let crls = cache.crls_for(&all, t2026());
    assert_eq!(crls.len(), 4, "one CRL per CA, fetched");
    let opts = b_options();
    let mut input = ValidationInput::new(&anchors, &ee, t2026(), &opts);
    input.candidates = &candidates;
    input.crls = &crls;
    input.fetcher = Some(&fetcher);
    let v = validate(&input).unwrap();
    assert_eq!(v.certs.len(), 4);
    assert!(hits.lock().unwrap().contains(&"/a-ca.p7c".to_string()));
    assert!(hits.lock().unwrap().contains(&"/b-issued.p7c".to_string()));
    // Without the fetcher there is no path.
    input.fetcher = None;
    assert!(matches!(
        validate(&input),
        Err(ValidationError::NoPath { .. })
    ));

    // A second call within the CRLs' lifetime is served from the cache.
    let before = hits.lock().unwrap().len();
    let again = cache.crls_for(&all, t2026());
    assert_eq!(again.len(), 4);
    assert_eq!(
        hits.lock().unwrap().len(),
        before,
        "no refetch before nextUpdate"
    );

    // The background refresher's step: nothing is due now; everything is due near nextUpdate.
    assert_eq!(cache.refresh_due(t2026()), 0);
    let near = UNIX_EPOCH + Duration::from_secs(2_048_520_000); // 2034-11-30T17:20Z, 6.7 h before
    assert_eq!(
        cache.refresh_due(near),
        0,
        "hours before nextUpdate is outside the 1-hour margin"
    );
    let due = UNIX_EPOCH + Duration::from_secs(2_048_541_000); // 2034-11-30T23:10Z, 50 min before
    let before_refresh = hits.lock().unwrap().len();
    assert_eq!(
        cache.refresh_due(due),
        4,
        "every CRL refreshed inside the margin"
    );
    assert_eq!(hits.lock().unwrap().len(), before_refresh + 4);
    let before = hits.lock().unwrap().len();

    // Past nextUpdate (2034-12-01) the cache refetches; the server still serves the same (stale) CRLs.
    let late = UNIX_EPOCH + Duration::from_secs(2_049_000_000); // 2034-12-05
    let refused = cache.crls_for(&all, late);
    assert!(
        refused.is_empty(),
        "stale CRLs are refused under StalePolicy::Refuse"
    );
    assert!(
        hits.lock().unwrap().len() > before,
        "stale CRLs were refetched"
    );
    input.crls = &refused;
    input.fetcher = Some(&fetcher);
    input.time = late;
    let e = validate(&input).unwrap_err();
    assert!(
        matches!(
            e.failure().unwrap().reason,
            FailureReason::RevocationUnknown(_)
        ),
        "{e}"
    );

    let grace = CrlCache::new(
        Arc::new(HttpSource::default()),
        Duration::from_secs(3600),
        StalePolicy::Grace(Duration::from_secs(30 * 86400)),
    );
    let stale = grace.crls_for(&all, late);
    assert_eq!(
        stale.len(),
        4,
        "stale CRLs are handed out within the grace period"
    );
    let graced = ValidationOptions {
        crl_grace_secs: grace.stale_policy().grace_secs(),
        ..b_options()
    };
    input.crls = &stale;
    input.options = &graced;
    validate(&input).unwrap();
}

#[test]
fn the_seam_validates_a_presented_chain() {
    use qsi_pki::validate::{CertificateValidator, ConfiguredValidator};
    let f = bridge_fixture::build(&BridgeOptions::default()).unwrap();
    let mut v =
        ConfiguredValidator::new(vec![TrustAnchor::from_cert(cert(&f.b_root))], b_options());
    v.crls = crls(&f);
    // The peer presents its own CA; the relying party knows the bridge cross-certificates.
    v.intermediates = f
        .intermediates
        .iter()
        .filter(|i| i.name != "a-ca")
        .map(|i| cert(&i.der))
        .collect();
    let a_ca = f
        .intermediates
        .iter()
        .find(|i| i.name == "a-ca")
        .unwrap()
        .der
        .clone();
    let ok = v.validate_chain(&[f.ee.clone(), a_ca], t2026()).unwrap();
    assert_eq!(
        ok.valid_policy_set,
        PolicySet::Set([B_POLICY.to_string()].into())
    );
    assert!(
        v.validate_chain(std::slice::from_ref(&f.ee), t2026())
            .is_err(),
        "without A's CA there is no path"
    );
    assert!(matches!(
        v.validate_chain(&[vec![1, 2, 3]], t2026()),
        Err(qsi_pki::validate::ChainError::Parse { .. })
    ));
}
