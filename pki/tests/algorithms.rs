//! Every signature algorithm the validator accepts, on a CA -> end-entity path: ECDSA P-256/P-384/P-521,
//! Ed25519, RSA PKCS #1 v1.5, ML-DSA-44/65/87 (rcgen through aws-lc-rs), and RSA-PSS made by OpenSSL
//! (an issuer we did not write). A flipped bit in the end entity's signature must fail each time.
//! (DSA is covered by PKITS 4.1.4-4.1.6.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::SystemTime;

use qsi_pki::validate::{
    Cert, FailureReason, RevocationMode, TrustAnchor, ValidationInput, ValidationOptions, validate,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SignatureAlgorithm,
};

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    p
}

fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    if std::ptr::eq(alg, &rcgen::PKCS_RSA_SHA256) {
        KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    }
}

fn check(ca: &[u8], ee: &[u8]) -> Result<(), FailureReason> {
    let anchors = [TrustAnchor::from_cert(Cert::from_der(ca).unwrap())];
    let ee = Cert::from_der(ee).unwrap();
    let opts = ValidationOptions {
        revocation: RevocationMode::Off,
        ..ValidationOptions::default()
    };
    let input = ValidationInput::new(&anchors, &ee, SystemTime::now(), &opts);
    validate(&input).map(|_| ()).map_err(|e| {
        e.failure()
            .map(|f| f.reason.clone())
            .unwrap_or(FailureReason::NameChaining)
    })
}

fn tamper(der: &[u8]) -> Vec<u8> {
    let mut d = der.to_vec();
    let n = d.len();
    d[n - 3] ^= 0x01; // inside the signature BIT STRING
    d
}

#[test]
fn each_algorithm_validates_and_a_bad_signature_fails() {
    let algs: [(&str, &'static SignatureAlgorithm); 8] = [
        ("ECDSA P-256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ECDSA P-384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ECDSA P-521", &rcgen::PKCS_ECDSA_P521_SHA512),
        ("Ed25519", &rcgen::PKCS_ED25519),
        ("RSA PKCS#1 SHA-256", &rcgen::PKCS_RSA_SHA256),
        ("ML-DSA-44", &rcgen::PKCS_ML_DSA_44),
        ("ML-DSA-65", &rcgen::PKCS_ML_DSA_65),
        ("ML-DSA-87", &rcgen::PKCS_ML_DSA_87),
    ];
    for (name, alg) in algs {
        let ca_key = key(alg);
        let mut ca_p = params(&format!("{name} CA"));
        ca_p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_p.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_p, &ca_key);
        let ee_key = key(alg);
        let ee = params(&format!("{name} EE"))
            .signed_by(&ee_key, &issuer)
            .unwrap();
        check(ca.der(), ee.der()).unwrap_or_else(|r| panic!("{name}: {r}"));
        let bad = tamper(ee.der());
        match check(ca.der(), &bad) {
            Err(FailureReason::Signature(_)) => {}
            other => panic!("{name}: tampered signature gave {other:?}"),
        }
    }
}

#[test]
fn rsa_pss_from_openssl_validates() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("openssl is required for this test (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pss = [
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
        "-sha256",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "30",
        "-subj",
        "/CN=PSS CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    a.extend(pss);
    run(&a);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ee.key",
        "-out",
        "ee.csr",
        "-subj",
        "/CN=PSS EE",
    ]);
    let mut b = vec![
        "x509",
        "-req",
        "-in",
        "ee.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "7",
        "-days",
        "30",
        "-outform",
        "DER",
        "-out",
        "ee.der",
    ];
    b.extend(pss);
    run(&b);
    run(&["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"]);
    let ca = std::fs::read(dir.path().join("ca.der")).unwrap();
    let ee = std::fs::read(dir.path().join("ee.der")).unwrap();
    assert_eq!(
        Cert::from_der(&ee)
            .unwrap()
            .x509()
            .signature_algorithm()
            .oid
            .to_string(),
        "1.2.840.113549.1.1.10",
        "OpenSSL made an RSASSA-PSS signature"
    );
    check(&ca, &ee).unwrap();
    assert!(matches!(
        check(&ca, &tamper(&ee)),
        Err(FailureReason::Signature(_))
    ));
}
