//! `qsi kms serve` as a real process with its KEK and audit key on a SoftHSM2 token, a KME over HTTPS
//! (the test KME of qsi_kms::testkit), a local SAE over ETSI 014 with mutual TLS, and the operator
//! commands `qsi kms status|keys|audit` against its admin socket; then SIGTERM, offline verification of
//! the audit log, and detection of an edited record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod kms_common;

use std::time::{Duration, Instant};

use kms_common::{hsm_section, json, need_softhsm, qsi, sae, serve, stop};
use qsi_hsm::SoftHsmToken;
use qsi_kms::testkit::{TestKme, TestPki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qsi_kms_serve_with_softhsm2_and_operator_commands() {
    need_softhsm();
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
{}
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
            hsm_section(&token),
            kme.url()
        ),
    )
    .unwrap();

    let (child, url) = serve(&cfg, &token);
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
    let app = sae(
        &url,
        "app-b",
        &pki.ca(),
        &dir.join("app-a.pem"),
        &dir.join("app-a.key"),
    );
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
    stop(child);
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
