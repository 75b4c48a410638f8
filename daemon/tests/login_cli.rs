//! The operator's and the analyst's commands as real processes: `qsi access bootstrap|grant|show`
//! signed with SoftHSM2 cards, `qsi access serve` running the portal, `qsi login` with the card's key,
//! and the failures a person meets (forged assignment, wrong PIN) with their messages and audit records.

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use qsi_daemon::access::testpki::{CardSpec, TestCa};
use qsi_daemon::portal::testbed::{SERVER_NAME, TestCard, cert_pem};

const QSI: &str = env!("CARGO_BIN_EXE_qsi");

fn qsi(args: &[&str]) -> Output {
    Command::new(QSI).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Portal(Child);

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn card_args(card: &TestCard, pin_file: &Path) -> Vec<String> {
    vec![
        "--pkcs11-module".into(),
        card.token.module.display().to_string(),
        "--token".into(),
        card.token.label.clone(),
        "--pin-file".into(),
        pin_file.display().to_string(),
    ]
}

fn write(dir: &Path, name: &str, body: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn officer_and_analyst_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("QSI CLI root").unwrap();
    let root = write(d, "root.pem", cert_pem(&ca.cert_der));
    write(d, "root.crl", ca.crl(&[]).unwrap());
    let (srv, key) = ca.issue_server(SERVER_NAME).unwrap();
    write(d, "portal.pem", cert_pem(&srv));
    let key_pem = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
        let lines: Vec<String> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    };
    write(d, "portal.key", key_pem);
    write(d, "secret.txt", "the S//X report");
    write(d, "ts.txt", "the TS report");
    let config = write(
        d,
        "portal.toml",
        r#"listen = "127.0.0.1:0"
clearance = "TOP SECRET//X"
store = "access.redb"
[tls]
cert = "portal.pem"
key = "portal.key"
[trust]
anchors = ["root.pem"]
crls = ["root.crl"]
[[object]]
id = "report"
label = "SECRET//X"
file = "secret.txt"
[[object]]
id = "ts-report"
label = "TOP SECRET"
file = "ts.txt"
"#,
    );
    let db = d.join("access.redb").display().to_string();

    let officer = TestCard::provision(&ca, CardSpec::new("Olivia Officer")).unwrap();
    let analyst = TestCard::provision(&ca, CardSpec::new("Alan Analyst")).unwrap();
    let officer_pin = write(d, "officer.pin", officer.token.user_pin.expose());
    let analyst_pin = write(d, "analyst.pin", analyst.token.user_pin.expose());
    let analyst_cert = write(d, "analyst.pem", cert_pem(&analyst.cert_der));

    // Installation: the first officer names themselves with their own card.
    let mut a: Vec<String> = vec![
        "access".into(),
        "bootstrap".into(),
        "--db".into(),
        db.clone(),
    ];
    a.extend(card_args(&officer, &officer_pin));
    a.extend([
        "--name".into(),
        "Olivia Officer".into(),
        "--clearance".into(),
        "TS//X".into(),
    ]);
    let o = qsi(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("first security officer named: Olivia Officer"),
        "{}",
        text(&o)
    );

    // A forged assignment: the analyst signs a grant with their own card.
    let grant = |card: &TestCard, pin: &Path| {
        let mut a: Vec<String> = vec!["access".into(), "grant".into(), "--db".into(), db.clone()];
        a.extend(card_args(card, pin));
        a.extend([
            "--person-cert".into(),
            analyst_cert.display().to_string(),
            "--name".into(),
            "Alan Analyst".into(),
            "--clearance".into(),
            "S//X".into(),
        ]);
        qsi(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = grant(&analyst, &analyst_pin);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not a current security officer"),
        "{}",
        text(&o)
    );

    // The officer's grant goes through (no service runs: the store is opened directly, and it says so).
    let o = grant(&officer, &officer_pin);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is cleared SECRET//X"), "{}", text(&o));
    assert!(text(&o).contains("directly"), "{}", text(&o));
    let o = qsi(&["access", "show", "--db", &db, "--json"]);
    let persons: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(persons.as_array().unwrap().len(), 2, "{persons}");

    // The portal as its own process.
    let mut child = Command::new(QSI)
        .args(["access", "serve", "--config", &config.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let portal = Portal(child);
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.contains("portal listening on"), "{line}");

    let login = |pin: &Path, audit: &Path| {
        let mut a: Vec<String> = vec![
            "login".into(),
            "--portal".into(),
            addr.clone(),
            "--server-name".into(),
            SERVER_NAME.into(),
            "--ca".into(),
            root.display().to_string(),
            "--json".into(),
            "--get".into(),
            "/data/report".into(),
            "--get".into(),
            "/data/ts-report".into(),
            "--audit-log".into(),
            audit.display().to_string(),
        ];
        a.extend(card_args(&analyst, pin));
        qsi(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let audit = d.join("login-audit.jsonl");
    let o = login(&analyst_pin, &audit);
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["session"]["clearance"], "SECRET//X");
    assert!(
        out["session"].get("token").is_none(),
        "the token is never printed"
    );
    assert!(out["group"].as_str().unwrap().contains("MLKEM"));
    assert_eq!(out["results"][0]["body"]["content"], "the S//X report");
    assert_eq!(out["results"][1]["status"], 404);
    assert_eq!(out["logged_out"], true);

    // While the portal runs it owns the store: `qsi access` goes through its admin socket, the officer
    // still signing with their card here; the new record ends the analyst's sessions and applies at once.
    let mut a: Vec<String> = vec!["access".into(), "grant".into(), "--db".into(), db.clone()];
    a.extend(card_args(&officer, &officer_pin));
    a.extend([
        "--person-cert".into(),
        analyst_cert.display().to_string(),
        "--name".into(),
        "Alan Analyst".into(),
        "--clearance".into(),
        "CONFIDENTIAL".into(),
    ]);
    let o = qsi(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("is cleared CONFIDENTIAL") && !text(&o).contains("directly"),
        "{}",
        text(&o)
    );
    let o = qsi(&["access", "show", "--db", &db]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("CONFIDENTIAL") && !text(&o).contains("directly"),
        "{}",
        text(&o)
    );
    let o = login(&analyst_pin, &audit);
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["session"]["clearance"], "CONFIDENTIAL");
    assert_eq!(out["results"][0]["status"], 404);

    // A wrong PIN: refused by the card, with its PIN flags, audited locally, nothing sent.
    let wrong = write(d, "wrong.pin", "99999999");
    let o = login(&wrong, &audit);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains("wrong PIN") && msg.contains("count low") && msg.contains("nothing was sent"),
        "{msg}"
    );
    let local = std::fs::read_to_string(&audit).unwrap();
    assert!(
        local.contains("card-unlock-failed") && local.contains("count low"),
        "{local}"
    );

    // The portal's audit: the login and the denied TS read, chain intact.
    drop(portal);
    let o = qsi(&["access", "show", "--db", &db, "--audit"]);
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    assert!(log.contains("directly"), "{log}");
    assert!(
        log.contains("\"event\":\"login\"") && log.contains("\"event\":\"access-denied\""),
        "{log}"
    );
    assert!(log.contains("\"event\":\"assignment-refused\""), "{log}");
    assert!(log.contains("hash chain intact"), "{log}");
}
