//! Tunnels keyed by three sources, end to end with real processes: two `qsid` sites, each running its KMS
//! in-process (keys on a SoftHSM2 token), and qkd-sim's simulated KME pair over ETSI GS QKD 014 with mutual
//! TLS. Site A dials, so it is the QKD master (sae-a at Alice's KME); site B is the slave (sae-b at Bob's).
//! A's KMS takes keys from Alice, A announces their IDs over the control connection, B's KMS fetches them
//! from Bob by ID and acknowledges what it holds; data connections are keyed with those keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;
#[path = "../daemon/tests/kms_common/mod.rs"]
mod kms_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use kms_common::{Sim, SimOptions, need_softhsm, sae, sim_certs, start_sim};
use qsi_daemon::testbed::{self, Qsid, SiteToml};
use qsi_hsm::SoftHsmToken;
use qsi_kms::testkit::TestPki;
use serde_json::Value;

/// One site's KMS: its config file and token.
struct Kms {
    config: PathBuf,
    _token: SoftHsmToken,
}

/// Writes `<dir>/kms-<site>.toml`: store, admin socket, keys on a fresh SoftHSM2 token (PIN in a file),
/// one link `ab` to the KME at `kme` (small pool, small batches: tests stay quick).
fn kms_config(
    dir: &Path,
    site: &str,
    role: &str,
    kme: SocketAddr,
    extra: &str,
    capacity: usize,
) -> Kms {
    let token = SoftHsmToken::create(&format!("kms-{site}")).unwrap();
    let pin = dir.join(format!("kms-{site}.pin"));
    std::fs::write(&pin, token.user_pin.expose()).unwrap();
    let (me, peer) = if role == "master" {
        ("sae-a", "sae-b")
    } else {
        ("sae-b", "sae-a")
    };
    let config = dir.join(format!("kms-{site}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[store]
path = "kms-{site}.redb"
checkpoint_every = 16
[admin]
socket = "kms-{site}.sock"
[hsm]
backend = "pkcs11"
token = "{label}"
pin = "file:{pin}"
create_missing = true
{extra}
[[link]]
name = "ab"
role = "{role}"
kme_url = "https://127.0.0.1:{port}"
server_name = "localhost"
peer_sae_id = "{peer}"
ca = "ca.pem"
cert = "{me}.pem"
key = "{me}.key"
key_bits = 256
capacity = {capacity}
low_water = {low}
batch = {batch}
timeout_ms = 2000
connect_timeout_ms = 500
retries = 0
remote_saes = ["app-{other}"]
local_saes = ["app-{site}"]
"#,
            label = token.label,
            pin = pin.display(),
            port = kme.port(),
            other = if site == "a" { "b" } else { "a" },
            low = capacity / 4,
            batch = capacity.min(8),
        ),
    )
    .unwrap();
    Kms {
        config,
        _token: token,
    }
}

/// A running QKD site pair with an echo service carried from A to B.
struct QkdPair {
    dir: PathBuf,
    a_cfg: SiteToml,
    b_cfg: SiteToml,
    a: Qsid,
    b: Qsid,
    kms_a: Kms,
    kms_b: Kms,
    /// Listener on A reaching B's echo.
    a_to_b: SocketAddr,
}

/// How a pair is set up.
struct Setup<'a> {
    transport: &'a str,
    policy: &'a str,
    /// Alice's and Bob's KME addresses (the KMEs need not be running).
    kmes: (SocketAddr, SocketAddr),
    /// More lines for A's peer entry (e.g. rekeying).
    peer_extra_a: &'a str,
    /// More TOML for A's KMS config (e.g. an ETSI 014 server for local SAEs).
    kms_extra_a: &'a str,
    /// Keys each KMS link holds at most (fetched in batches of up to 8).
    capacity: usize,
}

fn start_pair(rt: &tokio::runtime::Runtime, dir: &Path, s: &Setup<'_>) -> QkdPair {
    testbed::write_pki(dir, &["site-a", "site-b"]).unwrap();
    sim_certs(dir);
    let (mut a, mut b) = testbed::pair_configs(dir, s.transport).unwrap();
    let echo_b = echo_server(rt);
    let a_to_b = testbed::free_addr().unwrap();
    testbed::carry(&mut a, &mut b, "echo", a_to_b, echo_b);
    let kms_a = kms_config(dir, "a", "master", s.kmes.0, s.kms_extra_a, s.capacity);
    let kms_b = kms_config(dir, "b", "slave", s.kmes.1, "", s.capacity);
    a.extra = "[kms]\nconfig = \"kms-a.toml\"\nsae_id = \"sae-a\"\n".into();
    b.extra = "[kms]\nconfig = \"kms-b.toml\"\nsae_id = \"sae-b\"\n".into();
    a.peers[0].extra = format!(
        "qkd = {:?}\nqkd_link = \"ab\"\nsae_id = \"sae-b\"\nqkd_reserve = 2\n{}",
        s.policy, s.peer_extra_a
    );
    b.peers[0].extra = format!("qkd = {:?}\nqkd_link = \"ab\"\nqkd_reserve = 2\n", s.policy);
    let qb = Qsid::start(QSID.as_ref(), &b.write(dir).unwrap()).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &a.write(dir).unwrap()).unwrap();
    QkdPair {
        dir: dir.to_path_buf(),
        a_cfg: a,
        b_cfg: b,
        a: qa,
        b: qb,
        kms_a,
        kms_b,
        a_to_b,
    }
}

impl QkdPair {
    fn status(&self, a: bool) -> Value {
        let cfg = if a { &self.a_cfg } else { &self.b_cfg };
        testbed::admin(cfg.admin.as_ref().unwrap(), "status").unwrap()
    }

    /// The one peer's entry in a site's `qsi tunnel status`.
    fn peer(&self, a: bool) -> Value {
        self.status(a)["peers"][0].clone()
    }

    fn logs(&self) -> String {
        format!("A:\n{}\nB:\n{}", self.a.log_tail(), self.b.log_tail())
    }

    /// Waits until `f` holds for a site's peer entry.
    fn wait_peer(&self, a: bool, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let ok = testbed::wait_until(Duration::from_secs(secs), || f(&self.peer(a)));
        let p = self.peer(a);
        assert!(ok, "{what}: {p:#}\n{}", self.logs());
        p
    }

    fn metrics_a(&self) -> String {
        metrics(self.a_cfg.metrics.unwrap())
    }
}

/// `qsi kms <args> --config <cfg> --json` against the KMS running inside qsid.
fn qsi_kms(cfg: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
        .arg("kms")
        .args(args)
        .args(["--config", cfg.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qsi kms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Audit events of a KMS (parsed), in order.
fn audit_events(cfg: &Path) -> Vec<Value> {
    let v = qsi_kms(cfg, &["audit", "--limit", "100000"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r["event"].as_str().unwrap()).unwrap())
        .collect()
}

/// How often `id` appears in events of kind `event` (a `key_id` field or a `key_ids` list).
fn count_ids(events: &[Value], event: &str, id: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| {
            usize::from(e["key_id"] == id)
                + e["key_ids"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|x| *x == id).count())
        })
        .sum()
}

fn sim(dir: &Path, fault: Option<&'static str>) -> Sim {
    start_sim(
        dir,
        &SimOptions {
            fault,
            ..SimOptions::default()
        },
    )
}

/// Key IDs a KMS recorded as delivered to `consumer`.
fn claimed(events: &[Value], consumer: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "delivered-keys" && e["consumer"] == consumer)
        .flat_map(|e| e["key_ids"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn announced_key_ids_fill_both_reserves_and_qsi_kms_reaches_the_kms_in_qsid() {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let s = sim(dir, None);
    // A's KMS also serves ETSI 014 to a local application, from inside qsid
    let local = TestPki::create(&dir.join("local")).unwrap();
    local.issue("kms-a", &["localhost", "127.0.0.1"]).unwrap();
    local.issue("app-a", &["app-a"]).unwrap();
    let server = "[server]\nlisten = \"127.0.0.1:0\"\ncert = \"local/kms-a.pem\"\nkey = \"local/kms-a.key\"\nclient_ca = \"local/ca.pem\"\n[[server.sae]]\nid = \"app-a\"\ncertificate = \"local/app-a.pem\"\n";
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport: "quic",
            policy: "require",
            kmes: (s.alice, s.bob),
            peer_extra_a: "",
            kms_extra_a: server,
            capacity: 16,
        },
    );
    // A announced, B fetched by ID and acknowledged: both reserves reach their target of 2
    for a in [true, false] {
        p.wait_peer(a, "the QKD reserve never filled", 30, |v| {
            v["qkd"]["reserve"].as_u64() == Some(2) && v["qkd"]["problem"].is_null()
        });
    }
    let pa = p.peer(true);
    assert_eq!(pa["qkd"]["role"], "master", "{pa:#}");
    assert_eq!(p.peer(false)["qkd"]["role"], "slave");

    // `qsi kms` reaches each KMS inside qsid (its own admin socket; the store is not opened twice)
    let st = qsi_kms(&p.kms_a.config, &["status"]);
    assert_eq!(st["links"][0]["name"], "ab", "{st}");
    assert_eq!(st["links"][0]["role"], "master", "{st}");
    let keys = qsi_kms(&p.kms_b.config, &["keys"]);
    assert!(keys["qkd"].is_array(), "{keys}");
    // every key B holds for the tunnel was claimed by A for it first (claims are durable records)
    let (ea, eb) = (audit_events(&p.kms_a.config), audit_events(&p.kms_b.config));
    let (ca, cb) = (claimed(&ea, "tunnel:site-b"), claimed(&eb, "tunnel:site-a"));
    assert!(cb.len() >= 2, "B claimed the acknowledged keys: {eb:?}");
    for id in &cb {
        assert!(
            ca.contains(id),
            "B holds {id}, which A never claimed: {ca:?}"
        );
        assert_eq!(count_ids(&eb, "delivered-keys", id), 1, "claimed once");
    }
    let m = p.metrics_a();
    assert!(
        m.contains(
            "qsi_qkd_reserve_keys{site=\"site-a\",peer=\"site-b\",link=\"ab\",policy=\"require\"} 2"
        ),
        "{m}"
    );
    // the local application gets a key from the KMS inside qsid over ETSI 014 (mutual TLS)
    let log = std::fs::read_to_string(&p.a.log).unwrap();
    let url = log
        .lines()
        .find_map(|l| l.split("qsid: KMS ETSI 014 server on ").nth(1))
        .unwrap_or_else(|| panic!("no ETSI 014 server announced: {log}"))
        .trim()
        .to_string();
    let app = sae(
        &url,
        "app-b",
        &dir.join("local/ca.pem"),
        &dir.join("local/app-a.pem"),
        &dir.join("local/app-a.key"),
    );
    let keys = rt.block_on(app.get_keys(1, 256)).unwrap();
    assert_eq!(keys.len(), 1);
    let ev = audit_events(&p.kms_a.config);
    assert_eq!(claimed(&ev, "app-a").len(), 1, "{ev:?}");
    drop(p);
    drop(s);
}

/// Waits until `key_id` shows `n` `used-in-handshake` records in a KMS's audit log (they are written
/// after the handshake, asynchronously).
fn wait_used(cfg: &Path, key_id: &str, n: usize) -> Vec<Value> {
    let t = std::time::Instant::now();
    loop {
        let ev = audit_events(cfg);
        if count_ids(&ev, "used-in-handshake", key_id) >= n || t.elapsed() > Duration::from_secs(10)
        {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn three_sources(transport: &str) {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let s = sim(dir, None);
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport,
            policy: "require",
            kmes: (s.alice, s.bob),
            peer_extra_a: "",
            kms_extra_a: "",
            capacity: 16,
        },
    );
    let pa = p.wait_peer(true, "the tunnel never came up with a QKD key", 30, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(1)
    });
    assert_eq!(pa["group"], "X25519MLKEM768+QKD", "three sources: {pa:#}");
    rt.block_on(roundtrip(p.a_to_b, 256 * 1024)).unwrap();
    let pb = p.wait_peer(false, "B never used a QKD key", 10, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(1)
    });
    assert_eq!(pb["group"], "X25519MLKEM768+QKD", "{pb:#}");
    let used_a: Vec<String> = serde_json::from_value(pa["qkd"]["last_key_ids"].clone()).unwrap();
    let used_b: Vec<String> = serde_json::from_value(pb["qkd"]["last_key_ids"].clone()).unwrap();
    assert_eq!(used_a.len(), 1, "{pa:#}");
    assert_eq!(
        used_a, used_b,
        "both sides keyed the data connection with the same QKD key"
    );
    let key_id = &used_a[0];

    // each KMS audit log: the key claimed by the tunnel once and used in exactly one handshake
    for (cfg, consumer) in [
        (&p.kms_a.config, "tunnel:site-b"),
        (&p.kms_b.config, "tunnel:site-a"),
    ] {
        let ev = wait_used(cfg, key_id, 1);
        assert_eq!(
            count_ids(&ev, "used-in-handshake", key_id),
            1,
            "{cfg:?}: {ev:?}"
        );
        assert_eq!(
            count_ids(&ev, "delivered-keys", key_id),
            1,
            "claimed once: {cfg:?}"
        );
        assert!(claimed(&ev, consumer).contains(key_id), "{cfg:?}");
    }
    let m = p.metrics_a();
    assert!(
        m.contains("qsi_qkd_keys_used_total{site=\"site-a\",peer=\"site-b\",link=\"ab\",policy=\"require\"} 1"),
        "{m}"
    );
    // never again: a second session (the peer restarts) keys its data connection with another key,
    // and the first key still has exactly one use on each side
    let mut p = p;
    p.b.kill();
    p.b = Qsid::start(QSID.as_ref(), &p.dir.join("site-b.toml")).unwrap();
    let pa2 = p.wait_peer(true, "no second QKD-keyed session", 40, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(2)
    });
    let used2: Vec<String> = serde_json::from_value(pa2["qkd"]["last_key_ids"].clone()).unwrap();
    assert_eq!(used2.len(), 2, "{pa2:#}");
    assert_ne!(used2[0], used2[1], "a fresh key for the new session");
    rt.block_on(roundtrip(p.a_to_b, 1024)).unwrap();
    let ev = wait_used(&p.kms_a.config, &used2[1], 1);
    assert_eq!(count_ids(&ev, "used-in-handshake", key_id), 1);

    // SIGKILL the master mid-run (its reserve claimed, announced and acknowledged): after the restart its
    // KMS recovers, the tunnel comes back with a fresh key, and no key ID was ever used twice on either side
    p.a.kill();
    p.a = Qsid::start(QSID.as_ref(), &p.dir.join("site-a.toml")).unwrap();
    p.wait_peer(true, "no QKD-keyed session after SIGKILL", 40, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(1)
    });
    rt.block_on(roundtrip(p.a_to_b, 1024)).unwrap();
    for cfg in [&p.kms_a.config, &p.kms_b.config] {
        let ev = audit_events(cfg);
        let used: Vec<&str> = ev
            .iter()
            .filter(|e| e["event"] == "used-in-handshake")
            .map(|e| e["key_id"].as_str().unwrap())
            .collect();
        let distinct: std::collections::HashSet<&&str> = used.iter().collect();
        assert_eq!(
            distinct.len(),
            used.len(),
            "a key ID used twice in {cfg:?}: {used:?}"
        );
        for id in &used {
            assert_eq!(count_ids(&ev, "delivered-keys", id), 1, "{id} claimed once");
        }
    }
    drop(p);
    drop(s);
}

#[test]
fn three_sources_over_quic_forward_a_service_and_use_each_key_once() {
    three_sources("quic");
}

#[test]
fn three_sources_over_tls_forward_a_service_and_use_each_key_once() {
    three_sources("tls");
}

/// Rekeying takes a fresh QKD key for every new data connection: with `rekey_interval = "1s"` each rekey's
/// handshake uses another announced key, both sites agree on every one, a flow works across the rekeys, and no
/// key ID is used in two handshakes on either side.
fn rekeys_take_fresh_keys(transport: &str) {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let s = sim(dir, None);
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport,
            policy: "require",
            kmes: (s.alice, s.bob),
            peer_extra_a: "rekey_interval = \"1s\"\n",
            kms_extra_a: "",
            capacity: 16,
        },
    );
    let pa = p.wait_peer(true, "three QKD-keyed rekeys never happened", 40, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(4)
    });
    assert_eq!(pa["group"], "X25519MLKEM768+QKD", "{pa:#}");
    rt.block_on(roundtrip(p.a_to_b, 64 * 1024)).unwrap();
    let peers = testbed::admin(p.a_cfg.admin.as_ref().unwrap(), "peers").unwrap();
    assert!(
        peers[0]["rekey"]["rekeys"].as_u64() >= Some(3),
        "the extra keys came from rekeys, not reconnects: {peers:#}"
    );
    assert_eq!(
        pa["sessions"], 1,
        "one session: no reconnect spent these keys: {pa:#}"
    );
    let used_a: Vec<String> = serde_json::from_value(pa["qkd"]["last_key_ids"].clone()).unwrap();
    let distinct: std::collections::HashSet<&String> = used_a.iter().collect();
    assert_eq!(
        distinct.len(),
        used_a.len(),
        "a key reused across rekeys: {used_a:?}"
    );
    // each key A used keyed exactly one handshake on each side (B's audit log: the same IDs)
    for cfg in [&p.kms_a.config, &p.kms_b.config] {
        for id in &used_a[..4] {
            let ev = wait_used(cfg, id, 1);
            assert_eq!(
                count_ids(&ev, "used-in-handshake", id),
                1,
                "{id} in {cfg:?}"
            );
        }
    }
    drop(p);
    drop(s);
}

#[test]
fn rekeys_over_tls_take_a_fresh_qkd_key_each() {
    rekeys_take_fresh_keys("tls");
}

#[test]
fn rekeys_over_quic_take_a_fresh_qkd_key_each() {
    rekeys_take_fresh_keys("quic");
}

#[test]
fn a_wrong_key_for_the_right_id_fails_the_handshake() {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // FAULT INJECTOR: Bob's KME answers dec_keys with the right IDs and wrong key bytes, so B's KMS holds
    // a different key under each announced ID than A's (a healthy simulator never does this)
    let s = sim(dir, Some("wrong-key"));
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport: "quic",
            policy: "require",
            kmes: (s.alice, s.bob),
            peer_extra_a: "",
            kms_extra_a: "",
            capacity: 16,
        },
    );
    // the reserves fill (IDs match), but every data handshake fails: the QKD key enters the secret
    let pa = p.wait_peer(true, "no failed QKD handshake reported", 30, |v| {
        v["qkd"]["handshake_failures"].as_u64() >= Some(2)
    });
    assert_ne!(pa["state"], "connected", "{pa:#}");
    assert!(pa["group"].is_null(), "{pa:#}");
    assert!(
        pa["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("data handshake with a QKD key failed"),
        "{pa:#}"
    );
    assert_eq!(
        p.peer(false)["group"],
        Value::Null,
        "B never installed a data connection"
    );
    assert!(rt.block_on(roundtrip(p.a_to_b, 1024)).is_err());
    let m = p.metrics_a();
    assert!(m.contains("reason=\"qkd_handshake\"}"), "{m}");
}

#[test]
fn require_fails_closed_without_a_kme_and_opens_once_keys_flow() {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // the KMEs' addresses are fixed, but nothing runs there yet: the KME is down
    let kmes = (testbed::free_addr().unwrap(), testbed::free_addr().unwrap());
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport: "quic",
            policy: "require",
            kmes,
            peer_extra_a: "",
            kms_extra_a: "",
            capacity: 16,
        },
    );
    let pa = p.wait_peer(true, "require never reported the missing key", 20, |v| {
        v["state"] == "no-qkd-key"
    });
    assert_eq!(
        pa["control_up"], true,
        "the control connection stays: {pa:#}"
    );
    assert!(pa["group"].is_null(), "no data connection: {pa:#}");
    let why = pa["last_error"].as_str().unwrap();
    assert!(
        why.contains("qkd = require") && why.contains("ab"),
        "says why: {why}"
    );
    assert!(
        rt.block_on(roundtrip(p.a_to_b, 1024)).is_err(),
        "no flow without a data connection"
    );
    let m = p.metrics_a();
    assert!(m.contains("reason=\"qkd_no_key\"} 1"), "{m}");
    assert!(
        m.contains(
            "qsi_qkd_link_problem{site=\"site-a\",peer=\"site-b\",link=\"ab\",policy=\"require\"} 1"
        ),
        "{m}"
    );
    assert!(
        p.a.log_tail()
            .contains("qkd = require, so no data connection"),
        "{}",
        p.a.log_tail()
    );

    // the KME comes up: keys flow, the tunnel opens with QKD
    let _s = start_sim(
        dir,
        &SimOptions {
            ports: (kmes.0.port(), kmes.1.port()),
            ..SimOptions::default()
        },
    );
    let up = p.wait_peer(true, "the tunnel did not open once keys flowed", 40, |v| {
        v["state"] == "connected"
    });
    assert_eq!(up["group"], "X25519MLKEM768+QKD", "{up:#}");
    assert_eq!(up["qkd"]["keys_used"], 1, "{up:#}");
    rt.block_on(roundtrip(p.a_to_b, 1024)).unwrap();
}

#[test]
fn prefer_falls_back_to_the_hybrid_loudly_and_counts_it() {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let kmes = (testbed::free_addr().unwrap(), testbed::free_addr().unwrap());
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport: "tls",
            policy: "prefer",
            kmes,
            peer_extra_a: "",
            kms_extra_a: "",
            capacity: 16,
        },
    );
    let pa = p.wait_peer(true, "prefer never came up on the hybrid", 20, |v| {
        v["state"] == "connected"
    });
    assert_eq!(pa["qkd"]["fallbacks"], 1, "{pa:#}");
    assert_eq!(pa["qkd"]["keys_used"], 0, "{pa:#}");
    assert_eq!(pa["group"], "X25519MLKEM768", "the hybrid alone: {pa:#}");
    rt.block_on(roundtrip(p.a_to_b, 4096)).unwrap();
    let m = p.metrics_a();
    assert!(m.contains("qsi_qkd_fallbacks_total{site=\"site-a\",peer=\"site-b\",link=\"ab\",policy=\"prefer\"} 1"), "{m}");
    let log = std::fs::read_to_string(&p.a.log).unwrap();
    assert!(
        log.contains("WARN") && log.contains("hybrid key exchange alone"),
        "{log}"
    );
    let _ = &p.dir;
}

#[test]
fn an_eavesdropper_stops_require_tunnels_once_the_reserve_is_spent() {
    need_softhsm();
    let rt = runtime();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let s = start_sim(
        dir,
        &SimOptions {
            max_keys: 16,
            ..SimOptions::default()
        },
    );
    // a small reserve everywhere; every new session (here: the peer restarts) opens a data connection
    // with a fresh QKD key
    let p = start_pair(
        &rt,
        dir,
        &Setup {
            transport: "quic",
            policy: "require",
            kmes: (s.alice, s.bob),
            peer_extra_a: "",
            kms_extra_a: "",
            capacity: 4,
        },
    );
    let mut p = p;
    p.wait_peer(true, "no QKD-keyed tunnel before the attack", 30, |v| {
        v["state"] == "connected" && v["qkd"]["keys_used"].as_u64() >= Some(1)
    });
    rt.block_on(roundtrip(p.a_to_b, 1024)).unwrap();

    // Eve attacks every pulse: the QBER passes the threshold and the link aborts every block
    let out = Command::new(kms_common::qkd_sim())
        .args(["eve", "--fraction", "1", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // another application at A takes what Alice's KME still holds from before the attack
    let drain = kms_common::sae(
        &format!("https://{}", s.alice),
        "sae-b",
        &dir.join("ca.pem"),
        &dir.join("sae-a.pem"),
        &dir.join("sae-a.key"),
    );
    rt.block_on(async {
        let t = std::time::Instant::now();
        while drain.get_keys(1, 256).await.is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the KME kept producing under attack"
            );
        }
    });
    // new sessions spend what A's KMS and the reserves still hold, then the tunnel stops: control up,
    // no data connection
    let mut stopped = false;
    for _ in 0..8 {
        p.b.kill();
        p.b = Qsid::start(QSID.as_ref(), &p.dir.join("site-b.toml")).unwrap();
        stopped = testbed::wait_until(Duration::from_secs(8), || {
            let v = p.peer(true);
            v["state"] == "no-qkd-key" && v["control_up"] == true
        });
        if stopped {
            break;
        }
    }
    let pa = p.peer(true);
    assert!(
        stopped,
        "require never stopped after the reserve was spent: {pa:#}\n{}",
        p.logs()
    );
    assert!(pa["group"].is_null(), "{pa:#}");
    assert_eq!(pa["control_up"], true, "{pa:#}");
    let why = pa["qkd"]["problem"].as_str().unwrap_or_default();
    assert!(
        why.contains("no fresh key") && why.contains("KME"),
        "the operator sees why: {pa:#}"
    );
    assert_eq!(pa["qkd"]["reserve"], 0, "{pa:#}");
    let used = pa["qkd"]["keys_used"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        p.peer(true)["qkd"]["keys_used"].as_u64().unwrap(),
        used,
        "no key is used while the link is down"
    );
    assert!(rt.block_on(roundtrip(p.a_to_b, 1024)).is_err());
    let m = p.metrics_a();
    assert!(m.contains("reason=\"qkd_no_key\"}"), "{m}");
    // the simulator reports the aborted blocks and the QBER that caused them
    let st = Command::new(kms_common::qkd_sim())
        .args(["status", "--config"])
        .arg(&s.config)
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["aborted_blocks"].as_u64() > Some(0), "{st}");
    assert!(st["qber"].as_f64() > Some(0.11), "{st}");
}
