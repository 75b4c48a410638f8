//! Two KMS instances (site A master, site B slave) started as services, each with its ETSI 014 server
//! towards local SAEs and its admin socket, both taking QKD keys from a KME over HTTPS. A local SAE at
//! A gets keys with `enc_keys`; its peer at B gets the same keys with `dec_keys`, once. The local SAEs
//! use the KMS's own ETSI 014 client, the code path the KMS uses towards KMEs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qsi_kms::admin::{AdminRequest, request};
use qsi_kms::client::{ClientSettings, Etsi014Client};
use qsi_kms::config::KmsConfig;
use qsi_kms::daemon::{Running, start};
use qsi_kms::kek::{SoftKek, SoftSigner, random_key};
use qsi_kms::source::FetchError;
use qsi_kms::testkit::{TestKme, TestPki};
use qsi_kms::tls;

fn site_config(dir: &Path, site: &str, role: &str, kme: &str, me: &str, peer: &str) -> KmsConfig {
    let text = format!(
        r#"
[store]
path = "{site}.redb"
checkpoint_every = 16
[admin]
socket = "{site}.sock"
[hsm]
backend = "file"
dir = "unused"
pin = "env:UNUSED"
[server]
listen = "127.0.0.1:0"
cert = "kms-{site}.pem"
key = "kms-{site}.key"
client_ca = "ca.pem"
max_keys_per_request = 16
[[server.sae]]
id = "{me}"
certificate = "{me}.pem"
[[link]]
name = "ab"
role = "{role}"
kme_url = "{kme}"
server_name = "localhost"
peer_sae_id = "sae-peer"
ca = "ca.pem"
cert = "sae-{site}.pem"
key = "sae-{site}.key"
capacity = 64
low_water = 8
batch = 16
timeout_ms = 2000
remote_saes = ["{peer}"]
local_saes = ["{me}"]
"#
    );
    KmsConfig::parse(&text, dir).unwrap()
}

async fn run_site(cfg: &KmsConfig) -> Running {
    let kek = Arc::new(SoftKek::new(&random_key(32).unwrap(), "kek").unwrap());
    let signer = Arc::new(SoftSigner::new(&random_key(32).unwrap(), "audit"));
    start(cfg, kek, signer).await.unwrap()
}

fn app(dir: &Path, url: String, name: &str, peer: &str) -> Etsi014Client {
    let tls = tls::client_config(
        &dir.join("ca.pem"),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap();
    Etsi014Client::new(ClientSettings {
        kme_url: url,
        server_name: Some("localhost".into()),
        peer_sae_id: peer.into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        retries: 0,
        backoff: Duration::from_millis(10),
        tls,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_saes_share_qkd_keys_through_two_kms_services() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pki = TestPki::create(dir).unwrap();
    let kme_cert = pki.issue("kme", &["localhost", "127.0.0.1"]).unwrap();
    for n in ["kms-a", "kms-b"] {
        pki.issue(n, &["localhost", "127.0.0.1"]).unwrap();
    }
    for n in ["sae-a", "sae-b", "app-a", "app-b", "intruder"] {
        pki.issue(n, &[n]).unwrap();
    }
    let kme = TestKme::start(
        tls::server_config(&kme_cert.cert, &kme_cert.key, &pki.ca()).unwrap(),
        256,
    )
    .await
    .unwrap();
    let cfg_a = site_config(dir, "a", "master", &kme.url(), "app-a", "app-b");
    let cfg_b = site_config(dir, "b", "slave", &kme.url(), "app-b", "app-a");
    let a = run_site(&cfg_a).await;
    let b = run_site(&cfg_b).await;

    // A's fetcher fills its reserve in the background
    let mut stored = 0;
    for _ in 0..100 {
        stored = a.kms.status()[0].metrics.stored;
        if stored >= 32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored >= 32, "reserve filled: {stored}");

    let app_a = app(
        dir,
        format!("https://{}", a.etsi_addr.unwrap()),
        "app-a",
        "app-b",
    );
    let app_b = app(
        dir,
        format!("https://{}", b.etsi_addr.unwrap()),
        "app-b",
        "app-a",
    );
    let st = app_a.get_status().await.unwrap();
    assert_eq!(st.key_size, 256);
    let keys = app_a.get_keys(4, 256).await.unwrap();
    assert_eq!(keys.len(), 4);
    let ids: Vec<String> = keys.iter().map(|(i, _)| i.clone()).collect();

    // B has never seen these IDs: it fetches them from its KME by ID, then hands them out once
    let got = app_b.get_keys_by_id(&ids).await.unwrap();
    for ((i1, k1), (i2, k2)) in keys.iter().zip(got.iter()) {
        assert_eq!(i1, i2);
        assert!(k1.ct_eq(k2), "both applications hold the same key");
    }
    let again = app_b.get_keys_by_id(&ids[..1]).await.unwrap_err();
    assert!(
        matches!(&again, FetchError::Kme { status: 400, message, .. } if message == "key not found"),
        "{again}"
    );

    // wrong size, too many keys: 400 with the ETSI message; a stranger's certificate: refused
    let e = app_a.get_keys(1, 128).await.unwrap_err();
    assert!(
        e.to_string().contains("400") && e.to_string().contains("size"),
        "{e}"
    );
    let e = app_a.get_keys(17, 256).await.unwrap_err();
    assert!(e.to_string().contains("max_key_per_request"), "{e}");
    let intruder = app(
        dir,
        format!("https://{}", a.etsi_addr.unwrap()),
        "intruder",
        "app-b",
    );
    let e = intruder.get_keys(1, 256).await.unwrap_err();
    assert!(matches!(e, FetchError::Kme { status: 401, .. }), "{e}");
    // app-b may not take A's master keys (not a local SAE of A)
    let e = app(
        dir,
        format!("https://{}", a.etsi_addr.unwrap()),
        "app-b",
        "app-a",
    )
    .get_keys(1, 256)
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Kme { status: 401, .. }), "{e}");

    // the admin socket
    let st = request(&cfg_a.admin_socket, &AdminRequest::Status)
        .await
        .unwrap();
    assert_eq!(st["links"][0]["name"], "ab");
    assert!(st["store"]["spent_keys"].as_u64().unwrap() >= 4);
    let v = request(&cfg_b.admin_socket, &AdminRequest::AuditVerify)
        .await
        .unwrap();
    assert!(v["records"].as_u64().unwrap() > 4);
    let audit = request(
        &cfg_a.admin_socket,
        &AdminRequest::Audit {
            from: 1,
            limit: 1000,
        },
    )
    .await
    .unwrap();
    let text = audit.to_string();
    assert!(
        text.contains("access-refused") && text.contains("unknown certificate"),
        "refusals audited"
    );
    assert!(
        !text.contains(
            &keys[0]
                .1
                .expose()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    );

    a.shutdown().await;
    b.shutdown().await;
}
