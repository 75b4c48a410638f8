//! A CHUID signed by a PIV content signer verifies with `openssl cms -verify` (detached content,
//! chain to our root), and a changed data element does not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use der::EncodePem;
use qsi_pki::ca::issue::{Issuer, Template, issue, self_signed_root};
use qsi_pki::ca::signer::{CaSigner, SigAlg, SoftSigner};
use qsi_pki::chuid::{Chuid, VerifiedChuid};
use qsi_pki::profiles::{Profile, Publication, SubjectIds};
use std::process::Command;
use std::time::{Duration, SystemTime};
use x509_cert::serial_number::SerialNumber;

#[test]
fn openssl_verifies_the_chuid_signature_and_refuses_a_changed_chuid() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "openssl is required for this test: apt-get install openssl"
    );
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let publication = Publication {
        base_url: "http://pki.qsi.test".into(),
    };
    let root_key = SoftSigner::generate(SigAlg::EcdsaP384Sha384).unwrap();
    let root = self_signed_root(
        &root_key,
        "CN=Root,O=QSI,C=US".parse().unwrap(),
        "root",
        &publication,
        SerialNumber::new(&[0x41, 1, 2, 3, 4, 5, 6, 7]).unwrap(),
        now - day,
        now + 900 * day,
    )
    .unwrap();
    let signer_key = SoftSigner::generate(SigAlg::EcdsaP256Sha256).unwrap();
    let issuer = Issuer {
        cert: &root,
        signer: &root_key,
        name: "root",
        publication: &publication,
    };
    let t = Template {
        profile: Profile::PivContentSigning,
        subject: "CN=PIV Content Signer,O=QSI,C=US".parse().unwrap(),
        spki: signer_key.public_key().clone(),
        ids: SubjectIds::default(),
        not_before: now - day,
        not_after: now + 300 * day,
        serial: SerialNumber::new(&[0x42, 9, 8, 7, 6, 5, 4, 3]).unwrap(),
        cross: None,
        ca_policies: vec![],
        subject_ca_name: None,
    };
    let signer_cert = issue(&issuer, &t, now).unwrap();
    let chuid = Chuid {
        fascn: "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap(),
        guid: "5b2a6f1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap(),
        expiry: "20300101".into(),
    };
    let buf = chuid.sign(&signer_key, &signer_cert).unwrap();
    let content = chuid.signed_content().unwrap();
    assert!(buf.starts_with(&content));
    assert_eq!(&buf[buf.len() - 2..], &[0xfe, 0x00]);
    // The 0x3E element: tag, long-form length, CMS.
    let rest = &buf[content.len()..buf.len() - 2];
    assert_eq!(rest[0], 0x3e);
    let (len, hdr) = match rest[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (rest[2] as usize, 3),
        0x82 => (((rest[2] as usize) << 8) | rest[3] as usize, 4),
        _ => panic!("length"),
    };
    let cms = &rest[hdr..hdr + len];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cms.der"), cms).unwrap();
    std::fs::write(dir.path().join("content.bin"), &content).unwrap();
    std::fs::write(
        dir.path().join("root.pem"),
        root.to_pem(der::pem::LineEnding::LF).unwrap(),
    )
    .unwrap();
    let verify = |content: &str| {
        Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                "cms.der",
                "-binary",
                "-purpose",
                "any",
                "-CAfile",
                "root.pem",
                "-out",
                "/dev/null",
                "-content",
                content,
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let o = verify("content.bin");
    assert!(
        o.status.success(),
        "openssl cms -verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut changed = content.clone();
    let last = changed.len() - 1;
    changed[last] = b'2'; // expiry 2030010 1 -> 2
    std::fs::write(dir.path().join("changed.bin"), &changed).unwrap();
    assert!(
        !verify("changed.bin").status.success(),
        "a changed CHUID verified"
    );

    // Our verifier agrees with openssl: the original verifies and names its signer; the changed one,
    // a truncated one and one whose included certificate is not the signer's are refused.
    let v = VerifiedChuid::verify(&buf).unwrap();
    assert_eq!(v.chuid, chuid);
    assert_eq!(v.signer, signer_cert);
    assert_eq!(v.fascn_bytes, chuid.fascn.encode().unwrap());
    let mut changed_buf = buf.clone();
    changed_buf[content.len() - 1] = b'2';
    let e = VerifiedChuid::verify(&changed_buf).unwrap_err();
    assert!(e.to_string().contains("message digest"), "{e}");
    assert!(VerifiedChuid::verify(&buf[..buf.len() / 2]).is_err());
    let other_key = SoftSigner::generate(SigAlg::EcdsaP256Sha256).unwrap();
    let forged = Chuid {
        guid: uuid::Uuid::nil(),
        ..chuid.clone()
    };
    // Signed by another key but carrying the real content signer's certificate.
    let cms =
        qsi_pki::chuid::signed_data(&forged.signed_content().unwrap(), &other_key, &signer_cert)
            .unwrap();
    let mut forged_buf = forged.signed_content().unwrap();
    forged_buf.push(0x3e);
    forged_buf.push(0x82);
    forged_buf.extend((cms.len() as u16).to_be_bytes());
    forged_buf.extend(&cms);
    let e = VerifiedChuid::verify(&forged_buf).unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
}
