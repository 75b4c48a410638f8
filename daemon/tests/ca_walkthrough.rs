//! End to end: `examples/ca-walkthrough.sh` with the real `qsi` binary and SoftHSM2, then every
//! certificate it leaves checked by OpenSSL (`verify -x509_strict -policy_check -explicit_policy`
//! with CRLs, and a DER round trip through its parser), by our RFC 5280 validator, the ML-DSA ones
//! by PyPI `cryptography`; `qsi ca serve` answered with `openssl ocsp` (good, revoked, unknown),
//! CRLs re-issued over HTTP, and bad input refused with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const QSI: &str = env!("CARGO_BIN_EXE_qsi");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn need(tool: &str, hint: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required for this test: {hint}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn qsi(out: &Path) -> Command {
    let mut c = Command::new(QSI);
    c.env("SOFTHSM2_CONF", out.join("softhsm2.conf"))
        .env("RUST_LOG", "warn,cryptoki=off")
        .env("RUST_BACKTRACE", "0");
    c
}

fn pem_of(out: &Path, name: &str) -> PathBuf {
    let pem = out.join(format!("{name}.pem"));
    let o = run(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(out.join(format!("{name}.der")))
        .arg("-out")
        .arg(&pem));
    assert!(o.status.success(), "{name}: {}", text(&o));
    pem
}

/// Each profile the walkthrough issues and the policy its FPKI worksheet asserts.
const PROFILES: [(&str, &str); 13] = [
    ("piv-auth", "2.16.840.1.101.3.2.1.3.13"),
    ("piv-card-auth", "2.16.840.1.101.3.2.1.3.17"),
    ("piv-digital-signature", "2.16.840.1.101.3.2.1.3.7"),
    ("piv-key-management", "2.16.840.1.101.3.2.1.3.7"),
    ("piv-content-signing", "2.16.840.1.101.3.2.1.3.39"),
    ("piv-i-auth", "2.16.840.1.101.3.2.1.3.18"),
    ("piv-i-card-auth", "2.16.840.1.101.3.2.1.3.19"),
    ("piv-i-digital-signature", "2.16.840.1.101.3.2.1.3.18"),
    ("piv-i-key-management", "2.16.840.1.101.3.2.1.3.18"),
    ("piv-i-content-signing", "2.16.840.1.101.3.2.1.3.20"),
    ("tls-server", "2.16.840.1.101.3.2.1.3.36"),
    ("tls-client", "2.16.840.1.101.3.2.1.3.36"),
    ("ocsp-signer", "2.16.840.1.101.3.2.1.3.36"),
];

fn walkthrough(out: &Path, port: u16) {
    need("softhsm2-util", "apt-get install softhsm2");
    need("openssl", "apt-get install openssl");
    let o = run(Command::new("bash")
        .arg(repo().join("examples/ca-walkthrough.sh"))
        .arg(out)
        .env("QSI", QSI)
        .env("QSI_CA_PORT", port.to_string())
        .env("RUST_BACKTRACE", "0"));
    assert!(o.status.success(), "walkthrough failed:\n{}", text(&o));
}

fn openssl_checks(out: &Path) {
    let root = pem_of(out, "root");
    let issuing = pem_of(out, "issuing-ca");
    let mut crls = String::new();
    for crl in ["root.crl", "issuing-ca.crl"] {
        let o = run(Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in"])
            .arg(out.join(crl)));
        assert!(o.status.success(), "{crl}: {}", text(&o));
        crls.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    std::fs::write(out.join("crls.pem"), crls).unwrap();
    let chain = [
        std::fs::read(&root).unwrap(),
        std::fs::read(&issuing).unwrap(),
    ]
    .concat();
    std::fs::write(out.join("chain.pem"), chain).unwrap();
    for (profile, policy) in PROFILES {
        let leaf = pem_of(out, profile);
        let o = run(Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-policy_check",
                "-explicit_policy",
                "-policy",
                policy,
                "-crl_check_all",
                "-CRLfile",
            ])
            .arg(out.join("crls.pem"))
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&issuing)
            .arg(&leaf));
        assert!(o.status.success(), "openssl verify {profile}: {}", text(&o));
        // Round trip through OpenSSL's parser: re-encoded DER is byte-identical.
        let o = run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-outform", "DER", "-in"])
            .arg(out.join(format!("{profile}.der"))));
        assert_eq!(
            o.stdout,
            std::fs::read(out.join(format!("{profile}.der"))).unwrap(),
            "{profile}: DER round trip"
        );
    }
    // The cross-certificate, as a CA under our root, under a policy it maps.
    let x = pem_of(out, "cross-certificate");
    let o = run(Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-policy_check",
            "-explicit_policy",
            "-policy",
            "2.16.840.1.101.3.2.1.3.13",
            "-crl_check",
            "-CRLfile",
        ])
        .arg(out.join("crls.pem"))
        .arg("-CAfile")
        .arg(&root)
        .arg(&x));
    assert!(
        o.status.success(),
        "openssl verify cross-certificate: {}",
        text(&o)
    );
}

fn our_validator_checks(out: &Path) {
    use qsi_pki::revocation::crl::Crl;
    use qsi_pki::validate::{
        Cert, RevocationMode, TrustAnchor, ValidationInput, ValidationOptions, validate,
    };
    let cert =
        |n: &str| Cert::from_der(&std::fs::read(out.join(format!("{n}.der"))).unwrap()).unwrap();
    let anchors = [TrustAnchor::from_cert(cert("root"))];
    let candidates = [cert("issuing-ca")];
    let crls = [
        Crl::from_der(&std::fs::read(out.join("root.crl")).unwrap()).unwrap(),
        Crl::from_der(&std::fs::read(out.join("issuing-ca.crl")).unwrap()).unwrap(),
    ];
    for (profile, policy) in PROFILES {
        let target = cert(profile);
        let opts = ValidationOptions {
            initial_policy_set: vec![policy.parse().unwrap()],
            explicit_policy: true,
            revocation: RevocationMode::Require,
            ..Default::default()
        };
        let mut input = ValidationInput::new(&anchors, &target, SystemTime::now(), &opts);
        input.candidates = &candidates;
        input.crls = &crls;
        let path =
            validate(&input).unwrap_or_else(|e| panic!("qsi validator refused {profile}: {e}"));
        assert_eq!(path.certs.len(), 2, "{profile}");
    }
    // ML-DSA-65 chain (no CRLs were made for it in the walkthrough: revocation off here).
    let anchors = [TrustAnchor::from_cert(cert("ml-dsa-65-root"))];
    let candidates = [cert("ml-dsa-65-issuing-ca")];
    let target = cert("ml-dsa-65-piv-auth");
    let opts = ValidationOptions {
        initial_policy_set: vec!["2.16.840.1.101.3.2.1.3.13".parse().unwrap()],
        explicit_policy: true,
        revocation: RevocationMode::Off,
        ..Default::default()
    };
    let mut input = ValidationInput::new(&anchors, &target, SystemTime::now(), &opts);
    input.candidates = &candidates;
    validate(&input).unwrap_or_else(|e| panic!("qsi validator refused the ML-DSA-65 chain: {e}"));
}

fn python_ml_dsa_checks(out: &Path) {
    let script = r#"
import sys
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import mldsa
d = sys.argv[1]
load = lambda n: x509.load_der_x509_certificate(open(f"{d}/{n}.der", "rb").read())
root, ca, ee = load("ml-dsa-65-root"), load("ml-dsa-65-issuing-ca"), load("ml-dsa-65-piv-auth")
for sub, iss in [(root, root), (ca, root), (ee, ca)]:
    assert sub.issuer == iss.subject
    assert isinstance(iss.public_key(), mldsa.MLDSA65PublicKey)
    assert sub.signature_algorithm_oid.dotted_string == "2.16.840.1.101.3.4.3.18"
    iss.public_key().verify(sub.signature, sub.tbs_certificate_bytes)
pol = ee.extensions.get_extension_for_class(x509.CertificatePolicies).value
assert [p.policy_identifier.dotted_string for p in pol] == ["2.16.840.1.101.3.2.1.3.13"]
print("ml-dsa ok")
"#;
    let o = run(Command::new("python3").arg("-c").arg(script).arg(out));
    let t = text(&o);
    assert!(
        !t.contains("No module named"),
        "PyPI cryptography>=48 is required: pip install -r .ci/requirements.txt\n{t}"
    );
    assert!(
        o.status.success() && t.contains("ml-dsa ok"),
        "cryptography refused the ML-DSA chain:\n{t}"
    );
}

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf[split + 4..].to_vec())
}

fn crl_number(der: &[u8]) -> u64 {
    let crl = qsi_pki::revocation::crl::Crl::from_der(der).unwrap();
    let _ = crl;
    // Read it with OpenSSL, not with our own code.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crl"), der).unwrap();
    let o = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-crlnumber", "-in"])
        .arg(dir.path().join("c.crl")));
    let t = text(&o);
    u64::from_str_radix(
        t.trim()
            .trim_start_matches("crlNumber=0x")
            .trim_start_matches("crlNumber="),
        16,
    )
    .unwrap_or_else(|_| panic!("{t}"))
}

fn list_len(out: &Path, ca: &str) -> usize {
    let o = run(qsi(out)
        .args(["ca", "list", "--json", "--dir"])
        .arg(out.join(ca)));
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
        .unwrap()
        .len()
}

fn serial_of(out: &Path, profile: &str) -> String {
    let o = run(qsi(out)
        .args(["ca", "list", "--json", "--dir"])
        .arg(out.join("issuing")));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    rows.iter().find(|r| r["profile"] == profile).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ocsp_status(out: &Path, port: u16, what: &[&str]) -> String {
    let o = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(out.join("issuing-ca.pem"))
        .args(what)
        .arg("-url")
        .arg(format!("http://127.0.0.1:{port}/ocsp"))
        .arg("-CAfile")
        .arg(out.join("chain.pem")));
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("Response verify OK"),
        "openssl ocsp:\n{t}"
    );
    t
}

fn refused(o: &Output, want: &str) {
    let t = text(o);
    assert!(
        !o.status.success(),
        "accepted, expected a refusal mentioning {want:?}:\n{t}"
    );
    assert!(t.contains(want), "refusal does not mention {want:?}:\n{t}");
}

#[test]
fn walkthrough_issues_every_profile_and_the_service_answers_ocsp_and_crl() {
    need("python3", "apt-get install python3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let port = free_port();
    walkthrough(out, port);
    openssl_checks(out);
    our_validator_checks(out);
    python_ml_dsa_checks(out);

    // The service, with a short CRL validity so re-issuance is visible.
    let child = qsi(out)
        .args(["ca", "serve", "--crl-validity-secs", "4", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(out.join("issuing"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    let start = Instant::now();
    while !out.join("issuing/admin.sock").exists()
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "qsi ca serve did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Revoke through the admin socket (the service owns the database).
    let card_auth = serial_of(out, "piv-card-auth");
    let o = run(qsi(out)
        .args([
            "ca",
            "revoke",
            "--reason",
            "keyCompromise",
            "--serial",
            &card_auth,
            "--dir",
        ])
        .arg(out.join("issuing")));
    assert!(o.status.success(), "{}", text(&o));

    let t = ocsp_status(
        out,
        port,
        &["-cert", out.join("piv-card-auth.pem").to_str().unwrap()],
    );
    assert!(
        t.contains(": revoked") && t.contains("keyCompromise"),
        "{t}"
    );
    let t = ocsp_status(
        out,
        port,
        &["-cert", out.join("piv-auth.pem").to_str().unwrap()],
    );
    assert!(t.contains(": good"), "{t}");
    let t = ocsp_status(out, port, &["-serial", "0x0123456789"]);
    assert!(t.contains(": unknown"), "{t}");

    // CRL over HTTP lists the revocation and is re-issued before nextUpdate.
    let (code, first) = http_get(port, "/crl/qsi-issuing.crl");
    assert_eq!(code, 200);
    std::fs::write(out.join("served.crl"), &first).unwrap();
    let o = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(out.join("served.crl")));
    assert!(
        text(&o).to_lowercase().contains(&card_auth),
        "served CRL lacks the revoked serial:\n{}",
        text(&o)
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, second) = http_get(port, "/crl/qsi-issuing.crl");
    assert!(
        crl_number(&second) > crl_number(&first),
        "CRL was not re-issued"
    );
    let (code, p7c) = http_get(port, "/p7c/issued-to-qsi-issuing.p7c");
    assert_eq!(code, 200);
    std::fs::write(out.join("issued-to.p7c"), &p7c).unwrap();
    let o = run(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
        .arg(out.join("issued-to.p7c")));
    assert!(
        text(&o).contains("QSI Root CA") && text(&o).contains("QSI Issuing CA"),
        "{}",
        text(&o)
    );

    // Bad input, through the running service: refused, nothing written.
    let before = list_len(out, "issuing");
    std::fs::write(out.join("garbage.csr"), b"this is not a request").unwrap();
    let issue = |csr: &Path| {
        run(qsi(out)
            .args(["ca", "issue", "--profile", "tls-client", "--out"])
            .arg(out.join("nope.der"))
            .arg("--csr")
            .arg(csr)
            .arg("--dir")
            .arg(out.join("issuing")))
    };
    refused(&issue(&out.join("garbage.csr")), "not a PKCS#10 request");
    // A request whose subject was altered after signing.
    let mut tampered = std::fs::read(out.join("keys/tls-client.csr")).unwrap();
    let der = {
        let s = String::from_utf8(tampered.clone()).unwrap();
        let b64: String = s.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    };
    tampered = der;
    let pos = tampered
        .windows(10)
        .position(|w| w == b"tls-client")
        .unwrap();
    tampered[pos] = b'T';
    std::fs::write(out.join("tampered.csr"), &tampered).unwrap();
    refused(
        &issue(&out.join("tampered.csr")),
        "signature does not verify",
    );
    // A request asking for CA powers.
    let o = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-subj",
            "/CN=sneaky",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-key",
        ])
        .arg(out.join("keys/tls-client.key"))
        .arg("-out")
        .arg(out.join("ca-powers.csr")));
    assert!(o.status.success());
    refused(&issue(&out.join("ca-powers.csr")), "2.5.29.19");
    // Revoking a serial this CA never issued.
    let o = run(qsi(out)
        .args(["ca", "revoke", "--serial", "0badc0de", "--dir"])
        .arg(out.join("issuing")));
    refused(&o, "no certificate with serial");
    assert_eq!(
        list_len(out, "issuing"),
        before,
        "a refused request wrote a certificate"
    );
    assert!(!out.join("nope.der").exists());

    // An expired CA refuses to issue.
    let o = run(qsi(out)
        .args([
            "ca",
            "init",
            "--name",
            "expired",
            "--subject",
            "CN=Expired CA",
            "--key-alg",
            "p256",
            "--token",
            "qsi-ca",
            "--days",
            "0",
            "--pin",
        ])
        .arg(format!("file:{}", out.join("pins/qsi-ca.pin").display()))
        .arg("--dir")
        .arg(out.join("expired")));
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1100));
    let o = run(qsi(out)
        .args(["ca", "issue", "--profile", "tls-client", "--out"])
        .arg(out.join("late.der"))
        .arg("--csr")
        .arg(out.join("keys/tls-client.csr"))
        .arg("--dir")
        .arg(out.join("expired")));
    refused(&o, "not valid now");
    assert_eq!(list_len(out, "expired"), 0);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
