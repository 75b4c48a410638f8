//! The real Federal PKI bundles of shared/testdata/fpki parse, and their policy mappings, name
//! constraints, policy constraints, inhibitAnyPolicy and certificate policies, as our API reports them,
//! match OpenSSL's reading of the same certificates (`openssl pkcs7 -print_certs`, `openssl x509 -text`).
//! For ML-DSA certificates, which OpenSSL 3.0 cannot print, PyPI `cryptography` is the peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use qsi_pki::validate::{Cert, load_certs};
use x509_cert::ext::pkix::name::GeneralName;

#[derive(Debug, Default, PartialEq, Eq)]
struct Reading {
    mappings: Vec<(String, String)>,
    policies: Vec<String>,
    require_explicit: Option<u32>,
    inhibit_mapping: Option<u32>,
    inhibit_any: Option<u32>,
    permitted: Vec<String>,
    excluded: Vec<String>,
}

fn fpki(name: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/fpki"
    ))
    .join(name)
}

fn run(cmd: &mut Command, stdin: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}); install it (apt-get install openssl / pip install cryptography)"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A name as OpenSSL prints it: `C = US, O = U.S. Government, OU = FPKI`.
fn openssl_dn(n: &x509_cert::name::Name) -> String {
    n.as_ref()
        .iter()
        .map(|rdn| {
            let s = rdn.to_string();
            match s.split_once('=') {
                Some((k, v)) => format!("{k} = {v}"),
                None => s,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn gn(g: &GeneralName) -> String {
    match g {
        GeneralName::DirectoryName(n) => format!("DirName:{}", openssl_dn(n)),
        GeneralName::DnsName(s) => format!("DNS:{s}"),
        GeneralName::Rfc822Name(s) => format!("email:{s}"),
        GeneralName::UniformResourceIdentifier(s) => format!("URI:{s}"),
        GeneralName::IpAddress(o) => format!(
            "IP:{}",
            qsi_pki::validate::name::describe_ip_subtree(o.as_bytes())
        ),
        other => format!("{other:?}"),
    }
}

fn ours(c: &Cert) -> Reading {
    let e = c.ext();
    let mut r = Reading {
        mappings: e
            .policy_mappings
            .iter()
            .flatten()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        policies: e
            .policies
            .iter()
            .flatten()
            .map(|p| p.oid.to_string())
            .collect(),
        require_explicit: e.policy_constraints.and_then(|p| p.require_explicit_policy),
        inhibit_mapping: e.policy_constraints.and_then(|p| p.inhibit_policy_mapping),
        inhibit_any: e.inhibit_any_policy,
        ..Reading::default()
    };
    if let Some(nc) = &e.name_constraints {
        r.permitted = nc
            .permitted_subtrees
            .iter()
            .flatten()
            .map(|s| gn(&s.base))
            .collect();
        r.excluded = nc
            .excluded_subtrees
            .iter()
            .flatten()
            .map(|s| gn(&s.base))
            .collect();
    }
    r
}

/// Parses `openssl x509 -text` output.
fn openssl_reading(text: &str) -> Reading {
    let lines: Vec<&str> = text.lines().collect();
    let mut r = Reading::default();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        let next = lines.get(i + 1).map(|s| s.trim()).unwrap_or("");
        if l.starts_with("X509v3 Policy Mappings:") {
            r.mappings = next
                .split(", ")
                .filter_map(|p| p.split_once(':'))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        } else if l.starts_with("X509v3 Policy Constraints:") {
            for part in next.split(", ") {
                if let Some(v) = part.strip_prefix("Require Explicit Policy:") {
                    r.require_explicit = v.trim().parse().ok();
                }
                if let Some(v) = part.strip_prefix("Inhibit Policy Mapping:") {
                    r.inhibit_mapping = v.trim().parse().ok();
                }
            }
        } else if l.starts_with("X509v3 Inhibit Any Policy:") {
            r.inhibit_any = next.parse().ok();
        } else if l.starts_with("X509v3 Certificate Policies:") {
            let mut j = i + 1;
            while let Some(p) = lines.get(j) {
                let p = p.trim();
                if let Some(oid) = p.strip_prefix("Policy: ") {
                    r.policies.push(oid.to_string());
                } else if p.starts_with("X509v3")
                    || p.starts_with("Authority")
                    || p.starts_with("Subject")
                    || p.starts_with("Signature")
                {
                    break;
                }
                j += 1;
            }
        } else if l.starts_with("X509v3 Name Constraints:") {
            let mut j = i + 1;
            let mut target = 0;
            while let Some(p) = lines.get(j) {
                let p = p.trim();
                if p == "Permitted:" {
                    target = 1;
                } else if p == "Excluded:" {
                    target = 2;
                } else if p.contains(':')
                    && !p.starts_with("X509v3")
                    && !p.starts_with("Authority")
                    && target != 0
                    && (p.starts_with("DirName:")
                        || p.starts_with("DNS:")
                        || p.starts_with("email:")
                        || p.starts_with("URI:")
                        || p.starts_with("IP:"))
                {
                    if target == 1 {
                        r.permitted.push(p.to_string())
                    } else {
                        r.excluded.push(p.to_string())
                    }
                } else {
                    break;
                }
                j += 1;
            }
        }
        i += 1;
    }
    r
}

#[test]
fn fpki_bundles_read_the_same_as_openssl() {
    let mut totals = (0, 0, 0, 0);
    for bundle in [
        "caCertsIssuedTofbcag4.p7c",
        "DODROOTCA3_IB.p7c",
        "DODJITCINTEROPERABILITYROOTCA2_IT.p7c",
    ] {
        let bytes = std::fs::read(fpki(bundle)).unwrap();
        let certs = load_certs(&bytes).unwrap_or_else(|e| panic!("{bundle} does not parse: {e}"));
        let pem = run(
            Command::new("openssl").args(["pkcs7", "-inform", "DER", "-print_certs"]),
            &bytes,
        );
        let blocks: Vec<Vec<u8>> =
            qsi_pki::validate::cert::pem_or_der(pem.as_bytes(), "CERTIFICATE").unwrap();
        assert_eq!(blocks.len(), certs.len(), "{bundle}: certificate count");
        for c in &certs {
            assert!(
                blocks.iter().any(|b| b == c.der()),
                "{bundle}: OpenSSL lacks {}",
                c.subject_string()
            );
            let text = run(
                Command::new("openssl").args(["x509", "-inform", "DER", "-noout", "-text"]),
                c.der(),
            );
            let theirs = openssl_reading(&text);
            let mine = ours(c);
            assert_eq!(mine, theirs, "{bundle}: {}", c.subject_string());
            totals.0 += mine.mappings.len();
            totals.1 += mine.permitted.len() + mine.excluded.len();
            totals.2 +=
                usize::from(mine.require_explicit.is_some() || mine.inhibit_mapping.is_some());
            totals.3 += usize::from(mine.inhibit_any.is_some());
        }
    }
    println!(
        "FPKI: {} policy mappings, {} name-constraint subtrees, {} policy constraints, {} inhibitAnyPolicy agree with OpenSSL",
        totals.0, totals.1, totals.2, totals.3
    );
    assert!(
        totals.0 > 20 && totals.1 > 0 && totals.2 > 0 && totals.3 > 0,
        "{totals:?}: the bundles must exercise every extension"
    );
}

#[test]
fn ml_dsa_certificates_read_the_same_as_python_cryptography() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/pkits-ml-dsa-65/certs"
    ));
    let names = [
        "Mapping1to2CACert.der",
        "P12Mapping1to3CACert.der",
        "P1Mapping1to234CACert.der",
        "nameConstraintsDN1CACert.der",
        "nameConstraintsDNS1CACert.der",
        "nameConstraintsRFC822CA1Cert.der",
        "requireExplicitPolicy2CACert.der",
        "inhibitPolicyMapping1P12CACert.der",
        "inhibitAnyPolicy1CACert.der",
    ];
    let script = r#"
import sys, json
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
out = []
for path in sys.argv[1:]:
    c = x509.load_der_x509_certificate(open(path, 'rb').read())
    r = {"mappings": [], "policies": [], "require_explicit": None, "inhibit_mapping": None, "inhibit_any": None, "permitted": 0, "excluded": 0, "alg": c.signature_algorithm_oid.dotted_string}
    for e in c.extensions:
        v = e.value
        if e.oid == ExtensionOID.CERTIFICATE_POLICIES:
            r["policies"] = [p.policy_identifier.dotted_string for p in v]
        elif e.oid.dotted_string == "2.5.29.33" and isinstance(v, x509.UnrecognizedExtension):
            # cryptography has no typed PolicyMappings: compare the extension's length
            r["mappings_der_len"] = len(v.value)
        elif e.oid == ExtensionOID.POLICY_CONSTRAINTS:
            r["require_explicit"] = v.require_explicit_policy
            r["inhibit_mapping"] = v.inhibit_policy_mapping
        elif e.oid == ExtensionOID.INHIBIT_ANY_POLICY:
            r["inhibit_any"] = v.skip_certs
        elif e.oid == ExtensionOID.NAME_CONSTRAINTS:
            r["permitted"] = len(v.permitted_subtrees or [])
            r["excluded"] = len(v.excluded_subtrees or [])
    out.append(r)
print(json.dumps(out))
"#;
    let paths: Vec<String> = names
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    let out = run(
        Command::new("python3").arg("-c").arg(script).args(&paths),
        b"",
    );
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for (n, t) in names.iter().zip(theirs.iter()) {
        let c = Cert::from_der(&std::fs::read(dir.join(n)).unwrap()).unwrap();
        assert_eq!(
            t["alg"], "2.16.840.1.101.3.4.3.18",
            "{n} is ML-DSA-65 signed"
        );
        let m = ours(&c);
        assert_eq!(
            serde_json::json!(m.policies),
            t["policies"],
            "{n}: policies"
        );
        assert_eq!(
            serde_json::json!(m.require_explicit),
            t["require_explicit"],
            "{n}"
        );
        assert_eq!(
            serde_json::json!(m.inhibit_mapping),
            t["inhibit_mapping"],
            "{n}"
        );
        assert_eq!(serde_json::json!(m.inhibit_any), t["inhibit_any"], "{n}");
        assert_eq!(serde_json::json!(m.permitted.len()), t["permitted"], "{n}");
        assert_eq!(serde_json::json!(m.excluded.len()), t["excluded"], "{n}");
        if let Some(len) = t.get("mappings_der_len").and_then(|v| v.as_u64()) {
            // Re-encode our mappings and compare sizes with the extension cryptography saw.
            use der::Encode;
            let pm = x509_cert::ext::pkix::PolicyMappings(
                c.ext()
                    .policy_mappings
                    .iter()
                    .flatten()
                    .map(|(a, b)| x509_cert::ext::pkix::PolicyMapping {
                        issuer_domain_policy: *a,
                        subject_domain_policy: *b,
                    })
                    .collect(),
            );
            assert_eq!(
                pm.to_der().unwrap().len() as u64,
                len,
                "{n}: policy mappings"
            );
        }
    }
}
