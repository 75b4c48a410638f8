//! Each profile's extensions against the FPKI worksheet rows, read back with x509-parser (a parser
//! we did not write), and every certificate through `openssl verify -policy_check
//! -explicit_policy -x509_strict`.
//!
//! The expected rows below are written from the FPKI documents (CP-SSP 2.2 worksheets, FBCA
//! cross-certificate profile, PIV-I profile 1.1), as dotted OIDs and flag names, not taken from
//! the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use qsi_pki::ca::issue::{Issuer, Template, issue, self_signed_root};
use qsi_pki::ca::signer::{CaSigner, SigAlg, SoftSigner};
use qsi_pki::fascn::Fascn;
use qsi_pki::profiles::{CrossParamsFile, Profile, Publication, SubjectIds};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::serial_number::SerialNumber;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const DAY: Duration = Duration::from_secs(86_400);

struct Chain {
    root_key: SoftSigner,
    root: Certificate,
    ca_key: SoftSigner,
    ca: Certificate,
    publication: Publication,
}

fn serial(n: u8) -> SerialNumber {
    SerialNumber::new(&[0x40, n, 1, 2, 3, 4, 5, 6, 7]).unwrap()
}

const ALL_EE_POLICIES: [&str; 9] = [
    "2.16.840.1.101.3.2.1.3.7",
    "2.16.840.1.101.3.2.1.3.13",
    "2.16.840.1.101.3.2.1.3.17",
    "2.16.840.1.101.3.2.1.3.39",
    "2.16.840.1.101.3.2.1.3.36",
    "2.16.840.1.101.3.2.1.3.18",
    "2.16.840.1.101.3.2.1.3.19",
    "2.16.840.1.101.3.2.1.3.20",
    "2.16.840.1.101.3.2.1.3.8",
];

fn chain(alg: SigAlg) -> Chain {
    let now = SystemTime::now();
    let publication = Publication {
        base_url: "http://pki.qsi.test".into(),
    };
    let root_key = SoftSigner::generate(alg).unwrap();
    let root = self_signed_root(
        &root_key,
        "CN=QSI Root CA,OU=PKI,O=QSI,C=US".parse().unwrap(),
        "qsi-root",
        &publication,
        serial(1),
        now - DAY,
        now + 3650 * DAY,
    )
    .unwrap();
    let ca_key = SoftSigner::generate(alg).unwrap();
    let issuer = Issuer {
        cert: &root,
        signer: &root_key,
        name: "qsi-root",
        publication: &publication,
    };
    let t = Template {
        profile: Profile::IssuingCa,
        subject: "CN=QSI Issuing CA,OU=PKI,O=QSI,C=US".parse().unwrap(),
        spki: ca_key.public_key().clone(),
        ids: SubjectIds::default(),
        not_before: now - DAY,
        not_after: now + 1800 * DAY,
        serial: serial(2),
        cross: None,
        ca_policies: ALL_EE_POLICIES.iter().map(|p| p.parse().unwrap()).collect(),
        subject_ca_name: Some("qsi-issuing".into()),
    };
    let ca = issue(&issuer, &t, now).unwrap();
    Chain {
        root_key,
        root,
        ca_key,
        ca,
        publication,
    }
}

fn card_ids() -> SubjectIds {
    SubjectIds {
        fascn: Some("S9999F9999F999999F0F1F0000000000300001E".parse().unwrap()),
        uuid: Some("5b2a6f1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b".parse().unwrap()),
        upn: None,
        emails: vec!["alice@qsi.test".into()],
        dns: vec!["site-a.qsi.test".into()],
        ips: vec![],
    }
}

fn issue_ee(c: &Chain, profile: Profile, key_alg: SigAlg) -> Certificate {
    let key = SoftSigner::generate(key_alg).unwrap();
    let issuer = Issuer {
        cert: &c.ca,
        signer: &c.ca_key,
        name: "qsi-issuing",
        publication: &c.publication,
    };
    let now = SystemTime::now();
    let t = Template {
        profile,
        subject: "CN=Alice Example,OU=People,O=QSI,C=US".parse().unwrap(),
        spki: key.public_key().clone(),
        ids: card_ids(),
        not_before: now - DAY,
        not_after: now + 365 * DAY,
        serial: serial(10),
        cross: None,
        ca_policies: vec![],
        subject_ca_name: None,
    };
    issue(&issuer, &t, now).unwrap()
}

fn der(c: &Certificate) -> Vec<u8> {
    use der::Encode;
    c.to_der().unwrap()
}

/// One worksheet's rows as this test checks them.
struct Expect {
    key_usage: &'static [&'static str],
    eku: Option<(bool, &'static [&'static str])>,
    policies: &'static [&'static str],
    fascn: bool,
    uuid: bool,
    ocsp_nocheck: bool,
}

fn expected(p: Profile) -> Expect {
    let e = |key_usage, eku, policies, fascn, uuid| Expect {
        key_usage,
        eku,
        policies,
        fascn,
        uuid,
        ocsp_nocheck: false,
    };
    const PIV_AUTH_EKU: &[&str] = &[
        "1.3.6.1.5.5.7.3.2",
        "1.3.6.1.5.2.3.4",
        "1.3.6.1.4.1.311.20.2.2",
    ];
    match p {
        // CP-SSP 2.2 PIV Authentication: KU digitalSignature (critical); policy
        // id-fpki-common-authentication; SAN with FASC-N and UUID.
        Profile::PivAuth => e(
            &["digitalSignature"],
            Some((false, PIV_AUTH_EKU)),
            &["2.16.840.1.101.3.2.1.3.13"],
            true,
            true,
        ),
        // CP-SSP 2.2 Card Authentication: KU digitalSignature; EKU id-PIV-cardAuth critical;
        // policy id-fpki-common-cardAuth; SAN FASC-N and UUID.
        Profile::PivCardAuth => e(
            &["digitalSignature"],
            Some((true, &["2.16.840.1.101.3.6.8"])),
            &["2.16.840.1.101.3.2.1.3.17"],
            true,
            true,
        ),
        // CP-SSP 2.2 End Entity Signature: KU digitalSignature, nonRepudiation; id-fpki-common-hardware.
        Profile::PivDigitalSignature => e(
            &["digitalSignature", "nonRepudiation"],
            Some((false, &["1.3.6.1.5.5.7.3.4", "1.3.6.1.4.1.311.10.3.12"])),
            &["2.16.840.1.101.3.2.1.3.7"],
            false,
            false,
        ),
        // CP-SSP 2.2 Key Management (EC key): KU keyAgreement; id-fpki-common-hardware.
        Profile::PivKeyManagement => e(
            &["keyAgreement"],
            Some((false, &["1.3.6.1.5.5.7.3.4"])),
            &["2.16.840.1.101.3.2.1.3.7"],
            false,
            false,
        ),
        // CP-SSP 2.2 PIV Content Signing: EKU id-PIV-content-signing critical;
        // id-fpki-common-piv-contentSigning.
        Profile::PivContentSigning => e(
            &["digitalSignature"],
            Some((true, &["2.16.840.1.101.3.6.7"])),
            &["2.16.840.1.101.3.2.1.3.39"],
            false,
            false,
        ),
        // PIV-I 1.1 Authentication: id-fpki-certpcy-pivi-hardware; UUID mandatory.
        Profile::PiviAuth => e(
            &["digitalSignature"],
            Some((false, PIV_AUTH_EKU)),
            &["2.16.840.1.101.3.2.1.3.18"],
            true,
            true,
        ),
        // PIV-I 1.1 Card Authentication: EKU id-PIV-cardAuth critical; id-fpki-certpcy-pivi-cardAuth.
        Profile::PiviCardAuth => e(
            &["digitalSignature"],
            Some((true, &["2.16.840.1.101.3.6.8"])),
            &["2.16.840.1.101.3.2.1.3.19"],
            true,
            true,
        ),
        Profile::PiviDigitalSignature => e(
            &["digitalSignature", "nonRepudiation"],
            Some((false, &["1.3.6.1.5.5.7.3.4", "1.3.6.1.4.1.311.10.3.12"])),
            &["2.16.840.1.101.3.2.1.3.18"],
            false,
            false,
        ),
        Profile::PiviKeyManagement => e(
            &["keyAgreement"],
            Some((false, &["1.3.6.1.5.5.7.3.4"])),
            &["2.16.840.1.101.3.2.1.3.18"],
            false,
            false,
        ),
        // PIV-I 1.1 Content Signing: id-fpki-certpcy-pivi-contentSigning.
        Profile::PiviContentSigning => e(
            &["digitalSignature"],
            Some((true, &["2.16.840.1.101.3.6.7"])),
            &["2.16.840.1.101.3.2.1.3.20"],
            false,
            false,
        ),
        // CP-SSP 2.2 device certificates: id-fpki-common-devicesHardware, serverAuth / clientAuth.
        Profile::TlsServer => e(
            &["digitalSignature"],
            Some((false, &["1.3.6.1.5.5.7.3.1"])),
            &["2.16.840.1.101.3.2.1.3.36"],
            false,
            false,
        ),
        Profile::TlsClient => e(
            &["digitalSignature"],
            Some((false, &["1.3.6.1.5.5.7.3.2"])),
            &["2.16.840.1.101.3.2.1.3.36"],
            false,
            false,
        ),
        // CP-SSP 2.2 OCSP Responder: EKU id-kp-OCSPSigning; id-pkix-ocsp-nocheck; no CRLDP/AIA.
        Profile::OcspSigner => Expect {
            ocsp_nocheck: true,
            ..e(
                &["digitalSignature"],
                Some((false, &["1.3.6.1.5.5.7.3.9"])),
                &["2.16.840.1.101.3.2.1.3.36"],
                false,
                false,
            )
        },
        _ => unreachable!(),
    }
}

fn key_usage_names(ku: &x509_parser::extensions::KeyUsage) -> BTreeSet<&'static str> {
    let mut s = BTreeSet::new();
    if ku.digital_signature() {
        s.insert("digitalSignature");
    }
    if ku.non_repudiation() {
        s.insert("nonRepudiation");
    }
    if ku.key_encipherment() {
        s.insert("keyEncipherment");
    }
    if ku.data_encipherment() {
        s.insert("dataEncipherment");
    }
    if ku.key_agreement() {
        s.insert("keyAgreement");
    }
    if ku.key_cert_sign() {
        s.insert("keyCertSign");
    }
    if ku.crl_sign() {
        s.insert("cRLSign");
    }
    s
}

fn eku_oids(e: &x509_parser::extensions::ExtendedKeyUsage) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = e.other.iter().map(|o| o.to_id_string()).collect();
    if e.server_auth {
        s.insert("1.3.6.1.5.5.7.3.1".into());
    }
    if e.client_auth {
        s.insert("1.3.6.1.5.5.7.3.2".into());
    }
    if e.email_protection {
        s.insert("1.3.6.1.5.5.7.3.4".into());
    }
    if e.ocsp_signing {
        s.insert("1.3.6.1.5.5.7.3.9".into());
    }
    if e.any {
        s.insert("2.5.29.37.0".into());
    }
    s
}

fn check_end_entity(profile: Profile, cert_der: &[u8]) {
    let want = expected(profile);
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
    let mut seen = BTreeSet::new();
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        seen.insert(oid.clone());
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "{profile}: keyUsage must be critical");
                let want_ku: BTreeSet<_> = want.key_usage.iter().copied().collect();
                assert_eq!(key_usage_names(ku), want_ku, "{profile}: keyUsage");
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                let (crit, oids) = want.eku.unwrap();
                assert_eq!(ext.critical, crit, "{profile}: EKU criticality");
                let want_eku: BTreeSet<String> = oids.iter().map(|s| s.to_string()).collect();
                assert_eq!(eku_oids(e), want_eku, "{profile}: EKU");
            }
            ParsedExtension::CertificatePolicies(cp) => {
                assert!(!ext.critical);
                let got: Vec<String> = cp.iter().map(|p| p.policy_id.to_id_string()).collect();
                assert_eq!(got, want.policies, "{profile}: policies");
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(!ext.critical);
                let mut has_fascn = false;
                let mut has_uuid = false;
                for n in &san.general_names {
                    match n {
                        GeneralName::OtherName(oid, value)
                            if oid.to_id_string() == "2.16.840.1.101.3.6.6" =>
                        {
                            // [0] EXPLICIT { OCTET STRING (25) }: the last 25 bytes are the FASC-N.
                            let fascn = &value[value.len() - 25..];
                            assert_eq!(
                                Fascn::decode(fascn).unwrap().to_string(),
                                "S9999F9999F999999F0F1F0000000000300001E"
                            );
                            assert!(
                                value.windows(2).any(|w| w == [0x04, 0x19]),
                                "FASC-N is an OCTET STRING"
                            );
                            has_fascn = true;
                        }
                        GeneralName::URI(u) if u.starts_with("urn:uuid:") => {
                            assert_eq!(*u, "urn:uuid:5b2a6f1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b");
                            has_uuid = true;
                        }
                        _ => {}
                    }
                }
                assert_eq!(has_fascn, want.fascn, "{profile}: FASC-N in SAN");
                assert_eq!(has_uuid, want.uuid, "{profile}: UUID in SAN");
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                let methods: Vec<String> = aia
                    .accessdescs
                    .iter()
                    .map(|a| a.access_method.to_id_string())
                    .collect();
                assert!(
                    methods.contains(&"1.3.6.1.5.5.7.48.2".to_string()),
                    "{profile}: AIA caIssuers"
                );
                assert!(
                    methods.contains(&"1.3.6.1.5.5.7.48.1".to_string()),
                    "{profile}: AIA OCSP"
                );
                for a in &aia.accessdescs {
                    if a.access_method.to_id_string() == "1.3.6.1.5.5.7.48.2" {
                        let GeneralName::URI(u) = a.access_location else {
                            panic!("caIssuers not a URI")
                        };
                        assert!(
                            u.starts_with("http://") && u.ends_with(".p7c"),
                            "{profile}: caIssuers {u}"
                        );
                    }
                }
            }
            ParsedExtension::CRLDistributionPoints(_) => assert!(!ext.critical),
            ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca),
            _ => {}
        }
    }
    // Mandatory rows: AKI 2.5.29.35, SKI 2.5.29.14, KU 2.5.29.15, policies 2.5.29.32.
    for must in ["2.5.29.35", "2.5.29.14", "2.5.29.15", "2.5.29.32"] {
        assert!(seen.contains(must), "{profile}: missing {must}");
    }
    assert_eq!(
        seen.contains("2.5.29.37"),
        want.eku.is_some(),
        "{profile}: EKU presence"
    );
    assert_eq!(
        seen.contains("2.5.29.17"),
        want.fascn
            || want.uuid
            || matches!(
                profile,
                Profile::TlsServer
                    | Profile::TlsClient
                    | Profile::PivDigitalSignature
                    | Profile::PivKeyManagement
                    | Profile::PiviDigitalSignature
                    | Profile::PiviKeyManagement
            ),
        "{profile}: SAN presence"
    );
    assert_eq!(
        seen.contains("1.3.6.1.5.5.7.48.1.5"),
        want.ocsp_nocheck,
        "{profile}: ocsp-nocheck"
    );
    assert_eq!(
        seen.contains("2.5.29.31"),
        !want.ocsp_nocheck,
        "{profile}: CRLDP"
    );
    assert_eq!(
        seen.contains("1.3.6.1.5.5.7.1.1"),
        !want.ocsp_nocheck,
        "{profile}: AIA"
    );
}

fn openssl() -> String {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "openssl is required for this test: apt-get install openssl"
    );
    "openssl".into()
}

fn pem(path: &std::path::Path, certs: &[&Certificate]) {
    use der::EncodePem;
    let mut s = String::new();
    for c in certs {
        s.push_str(&c.to_pem(der::pem::LineEnding::LF).unwrap());
    }
    std::fs::write(path, s).unwrap();
}

fn openssl_verify(
    dir: &std::path::Path,
    c: &Chain,
    leaf: &Certificate,
    policy: Option<&str>,
) -> (bool, String) {
    let root = dir.join("root.pem");
    let inter = dir.join("inter.pem");
    let leaf_path = dir.join("leaf.pem");
    pem(&root, &[&c.root]);
    pem(&inter, &[&c.ca]);
    pem(&leaf_path, &[leaf]);
    let mut cmd = Command::new(openssl());
    cmd.args([
        "verify",
        "-x509_strict",
        "-policy_check",
        "-explicit_policy",
        "-CAfile",
    ])
    .arg(&root)
    .arg("-untrusted")
    .arg(&inter);
    if let Some(p) = policy {
        cmd.args(["-policy", p]);
    }
    let out = cmd
        .arg("-purpose")
        .arg("any")
        .arg(&leaf_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_end_entity_profile_matches_its_worksheet_and_openssl_verifies_it() {
    let c = chain(SigAlg::EcdsaP384Sha384);
    let dir = tempfile::tempdir().unwrap();
    for profile in Profile::ALL.into_iter().filter(|p| !p.is_ca()) {
        let cert = issue_ee(&c, profile, SigAlg::EcdsaP256Sha256);
        check_end_entity(profile, &der(&cert));
        let want = expected(profile);
        let (ok, text) = openssl_verify(dir.path(), &c, &cert, Some(want.policies[0]));
        assert!(ok, "{profile}: openssl verify failed: {text}");
        // A policy the certificate does not assert must fail under -explicit_policy.
        let (ok, _) = openssl_verify(dir.path(), &c, &cert, Some("1.2.3.4.5"));
        assert!(!ok, "{profile}: openssl accepted an unasserted policy");
    }
}

#[test]
fn ca_certificates_match_the_ca_worksheets() {
    let c = chain(SigAlg::EcdsaP384Sha384);
    let (root_der, ca_der) = (der(&c.root), der(&c.ca));
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    for (name, cert, path_len, has_policies) in [
        ("root", &root, None, false),
        ("issuing", &ca, Some(0), true),
    ] {
        let mut seen = BTreeSet::new();
        for ext in cert.extensions() {
            seen.insert(ext.oid.to_id_string());
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(
                        ext.critical && bc.ca,
                        "{name}: basicConstraints critical cA"
                    );
                    assert_eq!(bc.path_len_constraint, path_len, "{name}: pathLen");
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical);
                    assert_eq!(
                        key_usage_names(ku),
                        BTreeSet::from(["keyCertSign", "cRLSign"]),
                        "{name}"
                    );
                }
                ParsedExtension::SubjectInfoAccess(sia) => {
                    assert_eq!(
                        sia.accessdescs[0].access_method.to_id_string(),
                        "1.3.6.1.5.5.7.48.5"
                    );
                    let GeneralName::URI(u) = sia.accessdescs[0].access_location else {
                        panic!()
                    };
                    assert!(u.ends_with(".p7c"));
                }
                _ => {}
            }
        }
        assert!(seen.contains("2.5.29.14"), "{name}: SKI");
        assert!(seen.contains("1.3.6.1.5.5.7.1.11"), "{name}: SIA {seen:?}");
        assert_eq!(seen.contains("2.5.29.32"), has_policies, "{name}: policies");
        assert_eq!(seen.contains("2.5.29.31"), has_policies, "{name}: CRLDP");
    }
}

#[test]
fn cross_certificate_carries_mappings_constraints_and_p7c_pointers() {
    let c = chain(SigAlg::EcdsaP384Sha384);
    let bridge_key = SoftSigner::generate(SigAlg::EcdsaP384Sha384).unwrap();
    let file: CrossParamsFile = toml_like();
    let params = file.validate().unwrap();
    let issuer = Issuer {
        cert: &c.root,
        signer: &c.root_key,
        name: "qsi-root",
        publication: &c.publication,
    };
    let now = SystemTime::now();
    let t = Template {
        profile: Profile::CrossCertificate,
        subject: "CN=Test Bridge CA,OU=Bridge,O=Bridge Org,C=US"
            .parse()
            .unwrap(),
        spki: bridge_key.public_key().clone(),
        ids: SubjectIds::default(),
        not_before: now,
        not_after: now + 365 * DAY,
        serial: serial(3),
        cross: Some(params),
        ca_policies: vec![],
        subject_ca_name: None,
    };
    let x = issue(&issuer, &t, now).unwrap();
    let x_der = der(&x);
    let (_, cert) = x509_parser::parse_x509_certificate(&x_der).unwrap();
    let mut seen = BTreeSet::new();
    for ext in cert.extensions() {
        seen.insert(ext.oid.to_id_string());
        match ext.parsed_extension() {
            ParsedExtension::PolicyMappings(pm) => {
                assert!(
                    !ext.critical,
                    "FPKI cross-certificates carry policyMappings non-critical"
                );
                let got: Vec<(String, String)> = pm
                    .mappings
                    .iter()
                    .map(|m| {
                        (
                            m.issuer_domain_policy.to_id_string(),
                            m.subject_domain_policy.to_id_string(),
                        )
                    })
                    .collect();
                assert_eq!(
                    got,
                    vec![(
                        "2.16.840.1.101.3.2.1.3.13".to_string(),
                        "1.3.6.1.4.1.99999.1.13".to_string()
                    )]
                );
            }
            ParsedExtension::NameConstraints(nc) => {
                assert!(ext.critical);
                let permitted = nc.permitted_subtrees.as_ref().unwrap();
                let GeneralName::DirectoryName(dn) = &permitted[0].base else {
                    panic!("not a directoryName")
                };
                assert_eq!(dn.to_string(), "C=US, O=Bridge Org");
                let excluded = nc.excluded_subtrees.as_ref().unwrap();
                assert!(matches!(&excluded[0].base, GeneralName::DirectoryName(_)));
            }
            ParsedExtension::PolicyConstraints(pc) => {
                assert!(ext.critical);
                assert_eq!(pc.require_explicit_policy, Some(0));
                assert_eq!(pc.inhibit_policy_mapping, Some(1));
            }
            ParsedExtension::InhibitAnyPolicy(i) => {
                assert!(ext.critical);
                assert_eq!(i.skip_certs, 0);
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                let GeneralName::URI(u) = aia.accessdescs[0].access_location else {
                    panic!()
                };
                assert_eq!(u, "http://pki.qsi.test/p7c/issued-to-qsi-root.p7c");
            }
            ParsedExtension::SubjectInfoAccess(sia) => {
                let GeneralName::URI(u) = sia.accessdescs[0].access_location else {
                    panic!()
                };
                assert_eq!(u, "http://pki.qsi.test/p7c/issued-by-test-bridge.p7c");
            }
            _ => {}
        }
    }
    for must in [
        "2.5.29.33",
        "2.5.29.30",
        "2.5.29.36",
        "2.5.29.54",
        "1.3.6.1.5.5.7.1.1",
        "1.3.6.1.5.5.7.1.11",
        "2.5.29.32",
    ] {
        assert!(seen.contains(must), "cross-certificate misses {must}");
    }
    // OpenSSL validates it as a CA under our root, with our policy explicitly required.
    let dir = tempfile::tempdir().unwrap();
    pem(&dir.path().join("root.pem"), &[&c.root]);
    pem(&dir.path().join("x.pem"), &[&x]);
    let out = Command::new(openssl())
        .args([
            "verify",
            "-x509_strict",
            "-policy_check",
            "-explicit_policy",
            "-policy",
            "2.16.840.1.101.3.2.1.3.13",
            "-CAfile",
        ])
        .arg(dir.path().join("root.pem"))
        .arg(dir.path().join("x.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn toml_like() -> CrossParamsFile {
    CrossParamsFile {
        policies: vec!["2.16.840.1.101.3.2.1.3.13".into()],
        mappings: vec![(
            "2.16.840.1.101.3.2.1.3.13".into(),
            "1.3.6.1.4.1.99999.1.13".into(),
        )],
        permitted_dn: vec!["O=Bridge Org,C=US".into()],
        excluded_dn: vec!["O=Evil,C=US".into()],
        require_explicit_policy: Some(0),
        inhibit_policy_mapping: Some(1),
        inhibit_any_policy: Some(0),
        subject_name: Some("test-bridge".into()),
        ..Default::default()
    }
}

#[test]
fn cross_params_refuse_mapping_any_policy() {
    let mut f = toml_like();
    f.mappings = vec![("2.5.29.32.0".into(), "1.2.3".into())];
    assert!(f.validate().is_err());
    f.mappings = vec![("not-an-oid".into(), "1.2.3".into())];
    assert!(f.validate().is_err());
}

#[test]
fn card_profiles_refuse_missing_identity_and_key_management_refuses_ml_dsa() {
    let c = chain(SigAlg::EcdsaP256Sha256);
    let issuer = Issuer {
        cert: &c.ca,
        signer: &c.ca_key,
        name: "qsi-issuing",
        publication: &c.publication,
    };
    let key = SoftSigner::generate(SigAlg::EcdsaP256Sha256).unwrap();
    let now = SystemTime::now();
    let mut t = Template {
        profile: Profile::PivAuth,
        subject: "CN=Bob".parse().unwrap(),
        spki: key.public_key().clone(),
        ids: SubjectIds {
            uuid: card_ids().uuid,
            ..Default::default()
        },
        not_before: now,
        not_after: now + DAY,
        serial: serial(9),
        cross: None,
        ca_policies: vec![],
        subject_ca_name: None,
    };
    let err = issue(&issuer, &t, now).unwrap_err().to_string();
    assert!(err.contains("FASC-N"), "{err}");
    t.profile = Profile::PiviCardAuth;
    t.ids = SubjectIds::default();
    let err = issue(&issuer, &t, now).unwrap_err().to_string();
    assert!(err.contains("UUID"), "{err}");
    t.profile = Profile::PivKeyManagement;
    t.spki = SoftSigner::generate(SigAlg::MlDsa65)
        .unwrap()
        .public_key()
        .clone();
    assert!(issue(&issuer, &t, now).is_err());
}

#[test]
fn an_expired_ca_refuses_to_issue() {
    let c = chain(SigAlg::EcdsaP256Sha256);
    let issuer = Issuer {
        cert: &c.ca,
        signer: &c.ca_key,
        name: "qsi-issuing",
        publication: &c.publication,
    };
    let key = SoftSigner::generate(SigAlg::EcdsaP256Sha256).unwrap();
    let later = SystemTime::now() + 4000 * DAY;
    let t = Template {
        profile: Profile::TlsClient,
        subject: "CN=late".parse().unwrap(),
        spki: key.public_key().clone(),
        ids: SubjectIds::default(),
        not_before: later,
        not_after: later + DAY,
        serial: serial(9),
        cross: None,
        ca_policies: vec![],
        subject_ca_name: None,
    };
    let err = issue(&issuer, &t, later).unwrap_err();
    assert!(
        matches!(err, qsi_pki::ca::issue::IssueError::CaNotValid { .. }),
        "{err}"
    );
}

#[test]
fn ml_dsa_chain_signs_with_rfc9881_identifiers() {
    let c = chain(SigAlg::MlDsa65);
    let cert = issue_ee(&c, Profile::PivAuth, SigAlg::MlDsa65);
    assert_eq!(
        cert.signature_algorithm().oid.to_string(),
        "2.16.840.1.101.3.4.3.18"
    );
    assert!(cert.signature_algorithm().parameters.is_none());
    qsi_pki::ca::issue::verify_cert_signature(
        &cert,
        c.ca.tbs_certificate().subject_public_key_info(),
    )
    .unwrap();
    check_end_entity(Profile::PivAuth, &der(&cert));
    let _ = &c.root_key;
}
