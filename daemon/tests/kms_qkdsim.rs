//! Two KMS services (`qsi kms serve`, keys on SoftHSM2 tokens) against qkd-sim's simulated KME pair
//! over real HTTPS with mutual TLS: site A is the master SAE (sae-a at Alice's KME), site B the slave
//! SAE (sae-b at Bob's KME). A local application at A takes keys with enc_keys; its peer at B gets the
//! same keys with dec_keys, once: fetched on demand, and, for announced IDs, ahead of need.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod kms_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kms_common::{SimOptions, hsm_section, json, need_softhsm, qsi, sae, serve, start_sim, stop};
use qsi_hsm::SoftHsmToken;
use qsi_kms::admin::{AdminRequest, request};
use qsi_kms::testkit::TestPki;

/// One site's names: (site, role, its SAE at the KME, the peer SAE, its application, the peer's).
struct Names<'a>(&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

fn site(dir: &Path, token: &SoftHsmToken, kme: SocketAddr, n: Names<'_>) -> PathBuf {
    let Names(name, role, me, peer_sae, app, peer_app) = n;
    let cfg = dir.join(format!("kms-{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
path = "kms-{name}.redb"
checkpoint_every = 64
[admin]
socket = "kms-{name}.sock"
{hsm}
[server]
listen = "127.0.0.1:0"
cert = "local/kms-{name}.pem"
key = "local/kms-{name}.key"
client_ca = "local/ca.pem"
[[server.sae]]
id = "{app}"
certificate = "local/{app}.pem"
[[link]]
name = "ab"
role = "{role}"
kme_url = "https://127.0.0.1:{port}"
server_name = "localhost"
peer_sae_id = "{peer_sae}"
ca = "ca.pem"
cert = "{me}.pem"
key = "{me}.key"
key_bits = 256
capacity = 48
low_water = 8
batch = 16
stall_after_s = 60
remote_saes = ["{peer_app}"]
local_saes = ["{app}"]
"#,
            hsm = hsm_section(token),
            port = kme.port()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kms_services_share_qkd_keys_from_qkd_sim() {
    need_softhsm();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = start_sim(dir, &SimOptions::default());
    // the local applications' PKI is the site's own, apart from the QKD testbed's
    let local = TestPki::create(&dir.join("local")).unwrap();
    for n in ["kms-a", "kms-b"] {
        local.issue(n, &["localhost", "127.0.0.1"]).unwrap();
    }
    for n in ["app-a", "app-b"] {
        local.issue(n, &[n]).unwrap();
    }
    let (ta, tb) = (
        SoftHsmToken::create("kms-a").unwrap(),
        SoftHsmToken::create("kms-b").unwrap(),
    );
    let cfg_a = site(
        dir,
        &ta,
        sim.alice,
        Names("a", "master", "sae-a", "sae-b", "app-a", "app-b"),
    );
    let cfg_b = site(
        dir,
        &tb,
        sim.bob,
        Names("b", "slave", "sae-b", "sae-a", "app-b", "app-a"),
    );
    let (child_a, url_a) = serve(&cfg_a, &ta);
    let (child_b, url_b) = serve(&cfg_b, &tb);

    // A's reserve fills from Alice's KME as the simulated link produces key
    let t0 = Instant::now();
    loop {
        let v = json(&qsi(&cfg_a, &ta, &["status", "--json"]));
        if v["links"][0]["metrics"]["stored"].as_u64().unwrap() >= 16 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "A's reserve never filled: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let app_a = sae(
        &url_a,
        "app-b",
        &dir.join("local/ca.pem"),
        &dir.join("local/app-a.pem"),
        &dir.join("local/app-a.key"),
    );
    let app_b = sae(
        &url_b,
        "app-a",
        &dir.join("local/ca.pem"),
        &dir.join("local/app-b.pem"),
        &dir.join("local/app-b.key"),
    );

    // on demand: B fetches unknown IDs from Bob's KME by ID, then hands them out once
    let keys = app_a.get_keys(4, 256).await.unwrap();
    let ids: Vec<String> = keys.iter().map(|(i, _)| i.clone()).collect();
    let got = app_b.get_keys_by_id(&ids).await.unwrap();
    for ((i1, k1), (i2, k2)) in keys.iter().zip(&got) {
        assert_eq!(i1, i2);
        assert!(
            k1.ct_eq(k2),
            "A's and B's applications hold the same QKD key"
        );
    }
    let again = app_b.get_keys_by_id(&ids[..1]).await.unwrap_err();
    assert!(again.to_string().contains("key not found"), "{again}");

    // ahead of need: A offers IDs, B is told (as the tunnels' control connection would), fetches them
    // before anyone asks, and serves them from memory
    let offered = request(
        &dir.join("kms-a.sock"),
        &AdminRequest::Offer {
            link: "ab".into(),
            n: 4,
        },
    )
    .await
    .unwrap();
    let offered: Vec<String> = serde_json::from_value(offered["ids"].clone()).unwrap();
    assert_eq!(offered.len(), 4);
    request(
        &dir.join("kms-b.sock"),
        &AdminRequest::Announce {
            link: "ab".into(),
            ids: offered.clone(),
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    loop {
        let v = json(&qsi(&cfg_b, &tb, &["status", "--json"]));
        if v["links"][0]["metrics"]["stored"].as_u64().unwrap() >= 4 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "B never prefetched the announced keys: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched_before =
        json(&qsi(&cfg_b, &tb, &["status", "--json"]))["links"][0]["metrics"]["fetched_total"]
            .as_u64()
            .unwrap();
    let pre = app_b.get_keys_by_id(&offered).await.unwrap();
    assert_eq!(pre.len(), 4);
    let st = json(&qsi(&cfg_b, &tb, &["status", "--json"]));
    assert_eq!(
        st["links"][0]["metrics"]["fetched_total"].as_u64().unwrap(),
        fetched_before,
        "served from memory, no KME call"
    );

    // both audit logs verify against their tokens, online and, after a clean stop, offline
    for (cfg, t) in [(&cfg_a, &ta), (&cfg_b, &tb)] {
        let v = qsi(cfg, t, &["audit", "verify"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    stop(child_a);
    stop(child_b);
    for (cfg, t) in [(&cfg_a, &ta), (&cfg_b, &tb)] {
        let v = json(&qsi(cfg, t, &["audit", "verify", "--offline", "--json"]));
        assert_eq!(v["unsigned_tail"], 0);
    }
    drop(sim);
}
