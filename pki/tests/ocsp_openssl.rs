//! OCSP as revocation evidence, with OpenSSL as the responder we did not write: `openssl ocsp` signs
//! responses from an index file, by the CA itself or by a delegated responder certificate (id-kp-
//! OCSPSigning) that the CA issued. Our validator, with no CRL at all, accepts "good", refuses "revoked"
//! naming the end entity, and ignores a response signed by a key the CA never authorised.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use qsi_pki::revocation::OcspResponse;
use qsi_pki::validate::{
    Cert, FailureReason, RevocationStatus, TrustAnchor, ValidationInput, ValidationOptions,
    validate,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

fn params(cn: &str, serial: u8) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(SerialNumber::from_slice(&[serial]));
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    p
}

struct Pki {
    ca: Vec<u8>,
    ee: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is required for this test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA, EE, a delegated responder and a rogue responder, written as PEM files into `dir`.
fn make(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_p = params("OCSP Test CA", 1);
    ca_p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_p.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_p, &ca_key);
    let ee_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ee = params("OCSP Test EE", 0x21)
        .signed_by(&ee_key, &issuer)
        .unwrap();
    let resp_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut resp_p = params("OCSP Responder", 3);
    resp_p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    resp_p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let responder = resp_p.signed_by(&resp_key, &issuer).unwrap();
    let rogue_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rogue = params("Rogue Responder", 4)
        .self_signed(&rogue_key)
        .unwrap();
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("ee.pem", ee.pem()),
        ("resp.pem", responder.pem()),
        ("resp.key", resp_key.serialize_pem()),
        ("rogue.pem", rogue.pem()),
        ("rogue.key", rogue_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    Pki {
        ca: ca.der().to_vec(),
        ee: ee.der().to_vec(),
    }
}

/// Writes the index (EE valid or revoked) and asks OpenSSL for a response signed by `signer`.
fn response(dir: &Path, revoked: bool, signer: &str) -> Vec<u8> {
    let line = if revoked {
        "R\t350101000000Z\t250601000000Z,keyCompromise\t21\tunknown\t/CN=OCSP Test EE\n"
    } else {
        "V\t350101000000Z\t\t21\tunknown\t/CN=OCSP Test EE\n"
    };
    std::fs::write(dir.join("index.txt"), line).unwrap();
    openssl(
        dir,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "ee.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
    );
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            &format!("{signer}.pem"),
            "-rkey",
            &format!("{signer}.key"),
            "-reqin",
            "req.der",
            "-respout",
            "resp.der",
            "-ndays",
            "1",
        ],
    );
    std::fs::read(dir.join("resp.der")).unwrap()
}

fn check(
    pki: &Pki,
    resp: &[u8],
) -> Result<qsi_pki::validate::ValidatedPath, qsi_pki::validate::ValidationError> {
    let anchors = [TrustAnchor::from_cert(Cert::from_der(&pki.ca).unwrap())];
    let ee = Cert::from_der(&pki.ee).unwrap();
    let ocsp = [OcspResponse::from_der(resp).unwrap()];
    let opts = ValidationOptions::default();
    let mut input = ValidationInput::new(&anchors, &ee, SystemTime::now(), &opts);
    input.ocsp = &ocsp;
    validate(&input)
}

#[test]
fn openssl_ocsp_responses_decide_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make(dir.path());

    let good_by_ca = response(dir.path(), false, "ca");
    let v = check(&pki, &good_by_ca).unwrap();
    assert_eq!(v.revocation, [RevocationStatus::GoodByOcsp]);

    let good_delegated = response(dir.path(), false, "resp");
    let v = check(&pki, &good_delegated).unwrap();
    assert_eq!(v.revocation, [RevocationStatus::GoodByOcsp]);

    let revoked = response(dir.path(), true, "resp");
    let e = check(&pki, &revoked).unwrap_err();
    let f = e.failure().unwrap();
    assert!(
        matches!(&f.reason, FailureReason::Revoked(r) if r.contains("KeyCompromise")),
        "{e}"
    );
    assert_eq!(f.subject, "CN=OCSP Test EE");

    // A responder the CA never authorised speaks for nobody: no status, so Require fails.
    let rogue = response(dir.path(), true, "rogue");
    let e = check(&pki, &rogue).unwrap_err();
    assert!(
        matches!(
            e.failure().unwrap().reason,
            FailureReason::RevocationUnknown(_)
        ),
        "{e}"
    );
}
