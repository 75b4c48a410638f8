//! No panic on malformed input: every PKITS certificate and CRL and every FPKI bundle, truncated and with
//! bytes flipped (a fixed-seed xorshift, so failures reproduce), goes through the certificate, CRL,
//! bundle and OCSP parsers, and what still parses through validation. The cargo-fuzz target
//! fuzz/fuzz_targets/pki_parse.rs explores further; this runs in every CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use qsi_pki::revocation::{Crl, OcspResponse};
use qsi_pki::validate::{
    Cert, TrustAnchor, ValidationInput, ValidationOptions, load_certs, validate,
};

fn exercise(data: &[u8], anchor: &[TrustAnchor]) {
    let certs = load_certs(data).unwrap_or_default();
    let crls = Crl::load(data).unwrap_or_default();
    let _ = OcspResponse::from_der(data);
    let _ = qsi_pki::path::bundle::crls_from_p7c(data);
    if let Ok(c) = Cert::from_der(data) {
        let opts = ValidationOptions::default();
        let mut input = ValidationInput::new(anchor, &c, std::time::SystemTime::now(), &opts);
        input.candidates = &certs;
        input.crls = &crls;
        let _ = validate(&input);
    }
}

#[test]
fn mutated_certificates_crls_and_bundles_never_panic() {
    let base = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ));
    let mut files = Vec::new();
    for sub in ["pkits/certs", "pkits/crls", "fpki"] {
        for e in std::fs::read_dir(base.join(sub)).unwrap() {
            files.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    let ta = Cert::from_der(
        &std::fs::read(base.join("pkits/certs/TrustAnchorRootCertificate.crt")).unwrap(),
    )
    .unwrap();
    let anchors = [TrustAnchor::from_cert(ta)];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut runs = 0;
    for f in files.iter().step_by(3) {
        exercise(f, &anchors);
        for cut in [1, f.len() / 3, f.len() / 2, f.len().saturating_sub(1)] {
            exercise(&f[..cut.min(f.len())], &anchors);
        }
        for _ in 0..12 {
            let mut m = f.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % m.len();
                m[i] ^= 1 << (next() % 8);
            }
            exercise(&m, &anchors);
            runs += 1;
        }
    }
    exercise(&[], &anchors);
    exercise(&[0x30, 0x80, 0x00, 0x00], &anchors);
    exercise(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], &anchors);
    println!("{runs} mutated inputs parsed without panic");
}
