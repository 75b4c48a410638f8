//! A card provisioned as a card management system would, then used: `qsi ca issue` generates the PIV
//! Authentication key on a SoftHSM2 token and writes its certificate and the CHUID signed by the CA's
//! content signer; OpenSC's `pkcs11-tool --list-objects` finds them where OpenSC's PIV emulation puts
//! them (certificate and key with CKA_ID 01, the key never extractable, the CHUID data object); `qsi
//! login` with only module, token and PIN logs in, the portal checking the CHUID against the
//! certificate. A CHUID changed on the card, or another card's CHUID, is refused with a message and an
//! audit record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use qsi_hsm::SoftHsmToken;

const QSI: &str = env!("CARGO_BIN_EXE_qsi");
const SERVER_NAME: &str = "portal.test";

fn need(tool: &str, hint: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required for this test: {hint}");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn qsi(token: &SoftHsmToken, args: &[&str]) -> Output {
    Command::new(QSI)
        .args(args)
        .envs(token.child_env())
        .env("RUST_LOG", "warn,cryptoki=off")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn write(dir: &Path, name: &str, body: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issues a PIV Authentication certificate onto `card` with `qsi ca issue`.
fn issue_card(ca_tok: &SoftHsmToken, d: &Path, card: &SoftHsmToken, name: &str, fascn: &str) {
    let pin = write(d, &format!("{}.pin", card.label), card.user_pin.expose());
    let out = ok(qsi(
        ca_tok,
        &[
            "ca",
            "issue",
            "--dir",
            &d.join("ca").display().to_string(),
            "--profile",
            "piv-auth",
            "--generate-key",
            "p256",
            "--key-token",
            &card.label,
            "--key-pin",
            &format!("file:{}", pin.display()),
            "--fascn",
            fascn,
            "--uuid",
            &uuid::Uuid::new_v4().to_string(),
            "--subject",
            &format!("CN={name},O=QSI,C=US"),
            "--out",
            &d.join(format!("{}.der", card.label)).display().to_string(),
        ],
    ));
    assert!(
        out.contains("Certificate for PIV Authentication (CKA_ID 01) and signed CHUID"),
        "{out}"
    );
}

#[test]
fn ca_issue_writes_a_card_that_logs_in_by_itself() {
    need("pkcs11-tool", "apt-get install opensc");
    need("openssl", "apt-get install openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_tok = SoftHsmToken::create("ca").unwrap();
    let card = SoftHsmToken::create("card").unwrap();
    let other = SoftHsmToken::create("card").unwrap();
    let module = card.module.display().to_string();
    let ca_pin = write(d, "ca.pin", ca_tok.user_pin.expose());
    let card_pin = write(d, "card.pin", card.user_pin.expose());
    let cadir = d.join("ca").display().to_string();

    ok(qsi(
        &ca_tok,
        &[
            "ca",
            "init",
            "--dir",
            &cadir,
            "--name",
            "root",
            "--subject",
            "CN=QSI Card Root,O=QSI,C=US",
            "--module",
            &module,
            "--token",
            &ca_tok.label,
            "--pin",
            &format!("file:{}", ca_pin.display()),
        ],
    ));
    // Without a content signer the card is refused before it is touched.
    let o = qsi(
        &ca_tok,
        &[
            "ca",
            "issue",
            "--dir",
            &cadir,
            "--profile",
            "piv-auth",
            "--generate-key",
            "p256",
            "--key-token",
            &card.label,
            "--key-pin",
            &format!("file:{}", card_pin.display()),
            "--uuid",
            &uuid::Uuid::new_v4().to_string(),
            "--fascn",
            "S4701F0007F123456F0F1F1234567890112341E",
            "--out",
            &d.join("x.der").display().to_string(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("qsi ca content-signer --dir"),
        "{}",
        text(&o)
    );
    ok(qsi(&ca_tok, &["ca", "content-signer", "--dir", &cadir]));
    issue_card(
        &ca_tok,
        d,
        &card,
        "Olivia Officer",
        "S4701F0007F123456F0F1F1234567890112341E",
    );
    issue_card(
        &ca_tok,
        d,
        &other,
        "Oscar Other",
        "S4701F0007F654321F0F1F1234567899112341E",
    );
    // The slot is taken now: a second issuance onto the same card is refused with what to do.
    let o = qsi(
        &ca_tok,
        &[
            "ca",
            "issue",
            "--dir",
            &cadir,
            "--profile",
            "piv-auth",
            "--generate-key",
            "p256",
            "--key-token",
            &card.label,
            "--key-pin",
            &format!("file:{}", card_pin.display()),
            "--uuid",
            &uuid::Uuid::new_v4().to_string(),
            "--fascn",
            "S4701F0007F123456F0F1F1234567890112341E",
            "--subject",
            "CN=Again,O=QSI,C=US",
            "--out",
            &d.join("x.der").display().to_string(),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("already holds a key"), "{}", text(&o));

    // OpenSC reads the card back: public objects without the PIN, the key after login.
    let list = |login: bool| {
        let mut c = Command::new("pkcs11-tool");
        c.args([
            "--module",
            &module,
            "--token-label",
            &card.label,
            "--list-objects",
        ])
        .envs(card.child_env());
        if login {
            c.args(["--login", "--pin", card.user_pin.expose()]);
        }
        ok(c.output().unwrap())
    };
    let public = list(false);
    assert!(
        public.contains("Certificate Object; type = X.509 cert")
            && public.contains("label:      Certificate for PIV Authentication")
            && public.contains("CN=Olivia Officer")
            && public.contains("ID:         01"),
        "{public}"
    );
    assert!(
        public.contains("label:          'Card Holder Unique Identifier'")
            && public.contains("application:    'Card Holder Unique Identifier'")
            && public.contains("app_id:         2.16.840.1.101.3.7.2.48.0"),
        "{public}"
    );
    assert!(!public.contains("Private Key Object"), "{public}");
    let all = list(true);
    let key = all
        .split("Private Key Object")
        .nth(1)
        .expect("the private key is listed after login");
    assert!(
        key.contains("label:      PIV AUTH key")
            && key.contains("ID:         01")
            && key.contains("never extractable")
            && key.contains("sensitive"),
        "{all}"
    );

    // The CHUID pkcs11-tool reads verifies with openssl cms against the CA (detached content: the
    // elements before the 0x3E signature).
    let chuid_file = d.join("chuid.bin");
    ok(Command::new("pkcs11-tool")
        .args([
            "--module",
            &module,
            "--token-label",
            &card.label,
            "--read-object",
            "--type",
            "data",
            "--label",
            "Card Holder Unique Identifier",
            "--output-file",
        ])
        .arg(&chuid_file)
        .envs(card.child_env())
        .output()
        .unwrap());
    let chuid = std::fs::read(&chuid_file).unwrap();
    let v = qsi_pki::chuid::VerifiedChuid::verify(&chuid).unwrap();
    let cert_der = std::fs::read(d.join(format!("{}.der", card.label))).unwrap();
    let id = qsi_daemon::access::CardIdentity::from_cert_der(&cert_der).unwrap();
    assert_eq!(id.uuid, Some(v.chuid.guid));
    assert_eq!(id.fascn, Some(hex::encode_upper(&v.fascn_bytes)));

    // The site: CRL, a portal TLS certificate from the same CA, the officer bootstrapped from the card.
    ok(qsi(
        &ca_tok,
        &[
            "ca",
            "crl",
            "--dir",
            &cadir,
            "--out",
            &d.join("root.crl").display().to_string(),
        ],
    ));
    ok(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=portal.test",
            "-keyout",
            "portal.key",
            "-out",
            "portal.csr",
        ])
        .current_dir(d)
        .output()
        .unwrap());
    ok(qsi(
        &ca_tok,
        &[
            "ca",
            "issue",
            "--dir",
            &cadir,
            "--profile",
            "tls-server",
            "--csr",
            &d.join("portal.csr").display().to_string(),
            "--dns",
            SERVER_NAME,
            "--out",
            &d.join("portal.der").display().to_string(),
        ],
    ));
    let root_pem = write(
        d,
        "root.pem",
        pem(&std::fs::read(d.join("ca/ca.der")).unwrap()),
    );
    let db = d.join("access.redb").display().to_string();
    let card_args = |tok: &SoftHsmToken, pin: &Path| -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            module.clone(),
            "--token".into(),
            tok.label.clone(),
            "--pin-file".into(),
            pin.display().to_string(),
        ]
    };
    let mut a: Vec<String> = ["access", "bootstrap", "--db", &db]
        .map(String::from)
        .to_vec();
    a.extend(card_args(&card, &card_pin));
    a.extend(["--name", "Olivia Officer", "--clearance", "SECRET"].map(String::from));
    let out = ok(qsi(
        &card,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(out.contains("first security officer named"), "{out}");
    let config = write(
        d,
        "portal.toml",
        r#"listen = "127.0.0.1:0"
clearance = "SECRET"
store = "access.redb"
[tls]
cert = "portal.der"
key = "portal.key"
[trust]
anchors = ["ca/ca.der"]
crls = ["root.crl"]
"#,
    );
    let mut child = Command::new(QSI)
        .args(["access", "serve", "--config", &config.display().to_string()])
        .envs(card.child_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let portal = Killed(child);
    assert!(line.contains("portal listening on"), "{line}");
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();

    let login = |tok: &SoftHsmToken, pin: &Path| {
        let mut a: Vec<String> = vec![
            "login".into(),
            "--portal".into(),
            addr.clone(),
            "--server-name".into(),
            SERVER_NAME.into(),
            "--ca".into(),
            root_pem.display().to_string(),
            "--json".into(),
            "--audit-log".into(),
            d.join("login-audit.jsonl").display().to_string(),
        ];
        a.extend(card_args(tok, pin));
        qsi(tok, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Only module, token and PIN: the certificate and the CHUID come from the card.
    let o = login(&card, &card_pin);
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["session"]["clearance"], "SECRET", "{out}");
    assert_eq!(out["session"]["name"], "Olivia Officer", "{out}");

    // A changed CHUID (expiry pushed out) no longer verifies.
    let mut changed = chuid.clone();
    let expiry_end = changed
        .windows(2)
        .position(|w| w == [0x3e, 0x82] || w == [0x3e, 0x81])
        .unwrap();
    changed[expiry_end - 1] ^= 0x01;
    qsi_daemon::card::write_chuid(&card.module, &card.label, &card.user_pin, &changed).unwrap();
    let o = login(&card, &card_pin);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("CHUID is not validly signed"),
        "{}",
        text(&o)
    );
    // Another card's genuine CHUID on this card: signed, but it names another card.
    let theirs = qsi_daemon::card::read_chuid(&other.module, &other.label)
        .unwrap()
        .unwrap();
    qsi_daemon::card::write_chuid(&card.module, &card.label, &card.user_pin, &theirs).unwrap();
    let o = login(&card, &card_pin);
    assert!(!o.status.success());
    assert!(text(&o).contains("names another card"), "{}", text(&o));
    drop(portal);
    let o = qsi(&card, &["access", "show", "--db", &db, "--audit"]);
    let log = ok(o);
    assert_eq!(
        log.matches("\"event\":\"login-refused\"").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("not validly signed") && log.contains("names another card"),
        "{log}"
    );
}
