//! The login portal hosted by qsid: a `[portal]` section in the site config starts it inside the daemon on
//! the tunnels' post-quantum TLS; `qsi login` logs in to it with a SoftHSM2 card, and `qsi access` reaches
//! the store qsid owns through the portal's admin socket (the revocation applies at once). A `[portal]`
//! that would hold data above the site's clearance does not load, and the error names the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use qsi_daemon::access::testpki::{CardSpec, TestCa};
use qsi_daemon::access::{AccessStore, Action, Assignment};
use qsi_daemon::portal::testbed::{SERVER_NAME, TestCard, cert_pem, grant};

const QSI: &str = env!("CARGO_BIN_EXE_qsi");
const QSID: &str = env!("CARGO_BIN_EXE_qsid");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn key_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
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

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const SITE: &str = r#"site = "site-a"

[tls]
certificate = "portal.pem"
private_key = "portal.key"
trust_anchors = ["root.pem"]
crls = ["root.crl"]

[portal]
listen = "127.0.0.1:0"
clearance = "SECRET//X"
store = "access.redb"

[portal.tls]
cert = "portal.pem"
key = "portal.key"

[portal.trust]
anchors = ["root.pem"]
crls = ["root.crl"]

[[portal.object]]
id = "report"
label = "SECRET//X"
file = "secret.txt"
"#;

#[test]
fn qsid_hosts_the_portal_and_qsi_access_reaches_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("QSI site root").unwrap();
    let root = write(d, "root.pem", cert_pem(&ca.cert_der));
    write(d, "root.crl", ca.crl(&[]).unwrap());
    let (srv, key) = ca.issue_server(SERVER_NAME).unwrap();
    write(d, "portal.pem", cert_pem(&srv));
    write(d, "portal.key", key_pem(&key));
    write(d, "secret.txt", "the S//X report");
    let config = write(d, "site.toml", SITE);

    // Installation: the officer and one analyst, while qsid is stopped.
    let officer = TestCard::provision(&ca, CardSpec::new("Olivia Officer")).unwrap();
    let analyst = TestCard::provision(&ca, CardSpec::new("Alan Analyst")).unwrap();
    let db = d.join("access.redb");
    {
        let store = AccessStore::open(&db).unwrap();
        let card = officer.open().unwrap();
        let boot = Assignment {
            subject: officer.subject(),
            action: Action::Grant {
                clearance: "SECRET//X".parse().unwrap(),
                officer: true,
            },
            seq: 1,
            issued_at: now(),
            subject_cert: Some({
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&officer.cert_der)
            }),
        }
        .sign(&card)
        .unwrap();
        store.bootstrap(&boot, now()).unwrap();
        store
            .apply(
                &grant(&card, analyst.subject(), "SECRET//X", 1, now()).unwrap(),
                now(),
            )
            .unwrap();
    }

    let o = Command::new(QSID)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let mut child = Command::new(QSID)
        .arg("--config")
        .arg(&config)
        .envs(analyst.token.child_env())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let qsid = Killed(child);
    let mut addr = None;
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("qsid ended before it was ready: {seen}");
        }
        seen.push_str(&line);
        if let Some(a) = line.trim().strip_prefix("qsid: portal listening on ") {
            addr = Some(a.to_owned());
        }
        if line.contains("qsid: site site-a ready") {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no portal address in {seen}"));
    // Keep draining qsid's log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });

    let pin_file = |card: &TestCard, name: &str| write(d, name, card.token.user_pin.expose());
    let analyst_pin = pin_file(&analyst, "analyst.pin");
    let officer_pin = pin_file(&officer, "officer.pin");
    let card_args = |card: &TestCard, pin: &Path| -> Vec<String> {
        vec![
            "--pkcs11-module".into(),
            card.token.module.display().to_string(),
            "--token".into(),
            card.token.label.clone(),
            "--pin-file".into(),
            pin.display().to_string(),
        ]
    };
    let qsi = |args: Vec<String>| {
        Command::new(QSI)
            .args(args)
            .envs(analyst.token.child_env())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let login = || {
        let mut a: Vec<String> = [
            "login",
            "--portal",
            &addr,
            "--server-name",
            SERVER_NAME,
            "--ca",
            &root.display().to_string(),
            "--json",
            "--get",
            "/data/report",
            "--audit-log",
            &d.join("login-audit.jsonl").display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        a.extend(card_args(&analyst, &analyst_pin));
        qsi(a)
    };
    let o = login();
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["session"]["clearance"], "SECRET//X");
    assert!(out["group"].as_str().unwrap().contains("MLKEM"), "{out}");
    assert_eq!(out["results"][0]["body"]["content"], "the S//X report");

    // qsid owns the store: `qsi access` goes through the portal's admin socket.
    let db_arg = db.display().to_string();
    let o = qsi(["access", "show", "--db", &db_arg]
        .map(String::from)
        .to_vec());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Alan Analyst") && !text(&o).contains("directly"),
        "{}",
        text(&o)
    );
    let analyst_cert = write(d, "analyst.pem", cert_pem(&analyst.cert_der));
    let mut a: Vec<String> = ["access", "revoke", "--db", &db_arg]
        .map(String::from)
        .to_vec();
    a.extend(card_args(&officer, &officer_pin));
    a.extend(["--person-cert".into(), analyst_cert.display().to_string()]);
    let o = qsi(a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("has no clearance") && !text(&o).contains("directly"),
        "{}",
        text(&o)
    );
    let o = login();
    assert!(!o.status.success());
    assert!(text(&o).contains("withdrawn"), "{}", text(&o));
    drop(qsid);

    // A [portal] holding data above the site's clearance does not load; the error names the field.
    let bad = write(
        d,
        "bad.toml",
        SITE.replace("label = \"SECRET//X\"", "label = \"TOP SECRET\""),
    );
    let o = Command::new(QSID)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("portal.object[0].label") && text(&o).contains("may not hold"),
        "{}",
        text(&o)
    );
}
