//! `qsi kms serve` as a real process with its KEK and audit key on a SoftHSM2 token, a KME over HTTPS
//! (the test KME of qsi_kms::testkit), a local SAE over ETSI 014 with mutual TLS, and the operator
//! commands `qsi kms status|keys|audit` against its admin socket; then SIGTERM, offline verification of
//! the audit log, and detection of an edited record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qsi_hsm::SoftHsmToken;
use qsi_kms::client::{ClientSettings, Etsi014Client};
use qsi_kms::testkit::{TestKme, TestPki};

fn qsi(cfg: &Path, token: &SoftHsmToken, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qsi"));
    c.args(["kms"])
        .args(args)
        .args(["--config", cfg.to_str().unwrap()]);
    for (k, v) in token.child_env() {
        c.env(k, v);
    }
    c.env("QSI_TEST_KMS_PIN", token.user_pin.expose());
    c.output().unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "qsi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qsi_kms_serve_with_softhsm2_and_operator_commands() {
    assert!(
        Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok(),
        "softhsm2-util is missing: apt-get install softhsm2"
    );
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pki = TestPki::create(dir).unwrap();
    let kme_cert = pki.issue("kme", &["localhost", "127.0.0.1"]).unwrap();
    pki.issue("kms", &["localhost", "127.0.0.1"]).unwrap();
    pki.issue("sae-a", &["sae-a"]).unwrap();
    pki.issue("app-a", &["app-a"]).unwrap();
    let kme = TestKme::start(
        qsi_kms::tls::server_config(&kme_cert.cert, &kme_cert.key, &pki.ca()).unwrap(),
        256,
    )
    .await
    .unwrap();
    let token = SoftHsmToken::create("kms-cli").unwrap();
    let cfg = dir.join("kms.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
path = "kms.redb"
checkpoint_every = 32
[admin]
socket = "kms.sock"
[hsm]
backend = "pkcs11"
token = "{}"
pin = "env:QSI_TEST_KMS_PIN"
create_missing = true
[server]
listen = "127.0.0.1:0"
cert = "kms.pem"
key = "kms.key"
client_ca = "ca.pem"
[[server.sae]]
id = "app-a"
certificate = "app-a.pem"
[[link]]
name = "ab"
role = "master"
kme_url = "{}"
server_name = "localhost"
peer_sae_id = "sae-b"
ca = "ca.pem"
cert = "sae-a.pem"
key = "sae-a.key"
capacity = 64
low_water = 8
batch = 16
remote_saes = ["app-b"]
local_saes = ["app-a"]
"#,
            token.label,
            kme.url()
        ),
    )
    .unwrap();

    let mut serve = Command::new(env!("CARGO_BIN_EXE_qsi"));
    serve.args(["kms", "serve", "--config", cfg.to_str().unwrap()]);
    for (k, v) in token.child_env() {
        serve.env(k, v);
    }
    let mut child = serve
        .env("QSI_TEST_KMS_PIN", token.user_pin.expose())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let url = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("qsi kms serve did not start");
        if let Some(u) = l.strip_prefix("qsi kms: ETSI 014 server on ") {
            break u.to_string();
        }
    };
    let t0 = Instant::now();
    let status = loop {
        let out = qsi(&cfg, &token, &["status", "--json"]);
        if out.status.success() {
            let v = json(&out);
            if v["links"][0]["metrics"]["stored"].as_u64().unwrap_or(0) >= 32 {
                break v;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "reserve never filled"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["links"][0]["role"], "master");
    let human = qsi(&cfg, &token, &["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("link ab"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    // a local SAE takes keys over ETSI 014 with mutual TLS
    let app = Etsi014Client::new(ClientSettings {
        kme_url: url,
        server_name: Some("localhost".into()),
        peer_sae_id: "app-b".into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
        tls: qsi_kms::tls::client_config(&pki.ca(), &dir.join("app-a.pem"), &dir.join("app-a.key"))
            .unwrap(),
    })
    .unwrap();
    let keys = app.get_keys(3, 256).await.unwrap();
    for (id, k) in &keys {
        assert_eq!(
            kme.key_of(id).unwrap(),
            k.expose(),
            "the KME's key, unchanged"
        );
    }

    // keys listing shows IDs, never bytes; managed keys through their lifecycle
    let listing = json(&qsi(&cfg, &token, &["keys", "--json"]));
    assert!(
        !listing
            .to_string()
            .contains(&hex::encode(keys[0].1.expose()))
    );
    let created = json(&qsi(
        &cfg,
        &token,
        &[
            "keys",
            "--json",
            "create",
            "db-tde",
            "--activate",
            "--cryptoperiod-days",
            "30",
        ],
    ));
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["lifecycle"]["state"], "active");
    let refused = qsi(&cfg, &token, &["keys", "destroy", &id]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("allowed from"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let rotated = json(&qsi(&cfg, &token, &["keys", "--json", "rotate", &id]));
    assert_eq!(rotated["replaces"].as_str(), Some(id.as_str()));
    json(&qsi(&cfg, &token, &["keys", "--json", "destroy", &id]));

    let audit = json(&qsi(&cfg, &token, &["audit", "--json", "--limit", "10000"]));
    let text = audit.to_string();
    assert!(text.contains("delivered") && text.contains("app-a") && text.contains("state-changed"));
    let v = qsi(&cfg, &token, &["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("audit log verifies"),
        "{v:?}"
    );

    // SIGTERM: clean stop, final checkpoint
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let st = child.wait().unwrap();
    assert!(st.success(), "qsi kms serve exited with {st:?}");
    let off = json(&qsi(
        &cfg,
        &token,
        &["audit", "verify", "--offline", "--json"],
    ));
    assert_eq!(off["unsigned_tail"], 0, "{off}");

    // an edited record is detected
    let db = qsi_kms::store::open_db(&dir.join("kms.redb")).unwrap();
    qsi_kms::store::tamper::edit_audit(&db, 3, "\"", "'").unwrap();
    drop(db);
    let bad = qsi(&cfg, &token, &["audit", "verify", "--offline"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("does NOT verify") && err.contains("record 3"),
        "{err}"
    );
}
