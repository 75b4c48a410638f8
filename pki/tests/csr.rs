//! PKCS#10 requests made by OpenSSL (a tool we did not write) and by our own builder: accepted
//! when well signed, refused when malformed, badly signed, or asking for forbidden extensions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use qsi_pki::ca::csr::{CsrError, build, check_requested, parse_and_verify};
use qsi_pki::ca::signer::{CaSigner, SigAlg, SoftSigner};
use qsi_pki::profiles::Profile;
use std::process::Command;

fn openssl_csr(dir: &std::path::Path, key_args: &[&str], extra: &[&str]) -> Vec<u8> {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "openssl is required for this test: apt-get install openssl"
    );
    let key = dir.join("key.pem");
    let csr = dir.join("req.der");
    let st = Command::new("openssl")
        .arg("genpkey")
        .args(key_args)
        .arg("-out")
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-subj",
            "/C=US/O=QSI/CN=site-a.qsi.test",
            "-outform",
            "DER",
            "-key",
        ])
        .arg(&key)
        .args(extra)
        .arg("-out")
        .arg(&csr)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(csr).unwrap()
}

#[test]
fn openssl_requests_verify_for_p256_p384_and_rsa() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"][..],
    ] {
        let der = openssl_csr(dir.path(), args, &[]);
        let csr = parse_and_verify(&der).unwrap();
        assert_eq!(csr.subject.to_string(), "CN=site-a.qsi.test,O=QSI,C=US");
    }
}

#[test]
fn a_tampered_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut der = openssl_csr(
        dir.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    // Flip one byte of the subject's CN ("site-a" -> "site-b"): same structure, wrong signature.
    let pos = der.windows(6).position(|w| w == b"site-a").unwrap();
    der[pos + 5] = b'b';
    assert!(matches!(
        parse_and_verify(&der),
        Err(CsrError::BadSignature(_))
    ));
}

#[test]
fn malformed_requests_are_refused_without_panic() {
    assert!(matches!(
        parse_and_verify(b"not a csr"),
        Err(CsrError::Malformed(_))
    ));
    assert!(matches!(
        parse_and_verify(&[0x30, 0x03, 0x02, 0x01]),
        Err(CsrError::Malformed(_))
    ));
    assert!(
        parse_and_verify(
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err()
    );
    let dir = tempfile::tempdir().unwrap();
    let der = openssl_csr(
        dir.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    for cut in [1, 10, der.len() / 2, der.len() - 1] {
        assert!(parse_and_verify(&der[..cut]).is_err());
    }
}

#[test]
fn a_request_for_ca_powers_is_refused_for_every_profile() {
    let dir = tempfile::tempdir().unwrap();
    let der = openssl_csr(
        dir.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let csr = parse_and_verify(&der).unwrap();
    for p in Profile::ALL.into_iter().filter(|p| !p.is_ca()) {
        let err = check_requested(p, &csr, &[]).unwrap_err();
        assert!(
            matches!(err, CsrError::ForbiddenExtension { .. }),
            "{p}: {err}"
        );
        assert!(err.to_string().contains("2.5.29.19"), "{err}");
    }
}

#[test]
fn a_tls_request_may_carry_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let der = openssl_csr(
        dir.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &["-addext", "subjectAltName=DNS:site-a.qsi.test,IP:127.0.0.1"],
    );
    let csr = parse_and_verify(&der).unwrap();
    check_requested(Profile::TlsServer, &csr, &[]).unwrap();
    let (dns, ips) = csr.requested_names();
    assert_eq!(dns, vec!["site-a.qsi.test"]);
    assert_eq!(ips, vec![std::net::IpAddr::from([127, 0, 0, 1])]);
    // A card profile takes the card identity from the operator, never from the request.
    assert!(check_requested(Profile::PivAuth, &csr, &[]).is_err());
}

#[test]
fn our_builder_makes_verifiable_ml_dsa_requests() {
    for alg in [SigAlg::MlDsa65, SigAlg::MlDsa87, SigAlg::EcdsaP384Sha384] {
        let key = SoftSigner::generate(alg).unwrap();
        let der = build(&key, "CN=card".parse().unwrap(), vec![]).unwrap();
        let csr = parse_and_verify(&der).unwrap();
        assert_eq!(&csr.spki, key.public_key());
    }
}
