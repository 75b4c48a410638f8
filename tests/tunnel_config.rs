//! Site configuration: the examples in config/ load, every refusal names the field and the fix,
//! `qsid --check-config` validates without starting, and reload keeps unchanged tunnels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use qsi_daemon::config::{Config, KxGroup, Transport};
use qsi_daemon::testbed::{self, Qsid};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

/// Copies an example next to freshly generated credentials for the sites it names.
fn example_in_tempdir(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // hq follows the CNSA 2.0 template, which needs an ML-DSA-87 site certificate.
    let opts = testbed::PkiOptions {
        site_algs: vec![("hq".into(), &rcgen::PKCS_ML_DSA_87)],
        ..Default::default()
    };
    testbed::write_test_pki(dir.path(), &["site-a", "site-b", "hq"], &opts).unwrap();
    let dst = dir.path().join(name);
    std::fs::copy(Path::new(EXAMPLES).join(name), &dst).unwrap();
    // the KMS files a site config's [kms] section names
    for kms in ["kms.toml", "kms-b.toml"] {
        std::fs::copy(Path::new(EXAMPLES).join(kms), dir.path().join(kms)).unwrap();
    }
    (dir, dst)
}

#[test]
fn every_example_config_loads() {
    // The site configs in config/ (other files there belong to other services, e.g. kms.toml).
    let mut seen = 0;
    for entry in std::fs::read_dir(EXAMPLES).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let text = std::fs::read_to_string(Path::new(EXAMPLES).join(&name)).unwrap_or_default();
        if !name.ends_with(".toml") || !text.lines().any(|l| l.starts_with("site = ")) {
            continue;
        }
        let (_dir, path) = example_in_tempdir(&name);
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config/{name}: {e}"));
        assert!(!cfg.peers.is_empty(), "config/{name} has no peer");
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected the demo pair and a production template in config/"
    );
    let (_dir, path) = example_in_tempdir("production-cnsa.toml");
    let cfg = Config::load(&path).unwrap();
    assert!(
        cfg.peers
            .iter()
            .all(|p| p.key_exchange == vec![KxGroup::MlKem1024])
    );
    assert_eq!(cfg.peer("site-b").unwrap().transport, Transport::Tls);
}

/// Loads `text` (certificates of site-a in the same dir) and returns the error message.
fn refusal(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    let p = dir.path().join("x.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p)
        .expect_err("config must be refused")
        .to_string()
}

const GOOD: &str = r#"
site = "site-a"
[listen]
quic = "127.0.0.1:7443"
[tls]
certificate = "site-a.crt"
private_key = "site-a.key"
trust_anchors = ["ca.crt"]
crls = ["ca.crl"]
[[peer]]
name = "site-b"
identity = { dns = "site-b.qsi.test" }
transport = "quic"
address = "127.0.0.1:7444"
"#;

#[test]
fn refusals_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    std::fs::write(dir.path().join("good.toml"), GOOD).unwrap();
    Config::load(&dir.path().join("good.toml")).unwrap();

    // Unknown key inside a table.
    let e = refusal(&GOOD.replace("address = ", "adress = "));
    assert!(e.contains("adress") && e.contains("unknown field"), "{e}");
    // Missing certificate file.
    let e = refusal(&GOOD.replace("site-a.crt", "nope.crt"));
    assert!(
        e.contains("tls.certificate") && e.contains("nope.crt") && e.contains("check the path"),
        "{e}"
    );
    // Bad addresses.
    let e = refusal(&GOOD.replace("quic = \"127.0.0.1:7443\"", "quic = \"localhost\""));
    assert!(e.contains("listen.quic") && e.contains("write e.g."), "{e}");
    let e = refusal(&GOOD.replace("address = \"127.0.0.1:7444\"", "address = \"127.0.0.1\""));
    assert!(
        e.contains("peer[0].address") && e.contains("host:port"),
        "{e}"
    );
    // A key that does not match its certificate.
    let e = refusal(&GOOD.replace(
        "private_key = \"site-a.key\"",
        "private_key = \"site-b.key\"",
    ));
    assert!(
        e.contains("tls.private_key") && e.contains("does not match"),
        "{e}"
    );
    // Classical-only groups.
    let e = refusal(&GOOD.replace(
        "trust_anchors = [\"ca.crt\"]",
        "trust_anchors = [\"ca.crt\"]\nkey_exchange = [\"x25519\"]",
    ));
    assert!(
        e.contains("tls.key_exchange[0]") && e.contains("classical-only"),
        "{e}"
    );
    // Unknown peer in a forward.
    let e = refusal(&format!(
        "{GOOD}\n[[forward]]\nname = \"web\"\npeer = \"site-c\"\nlisten = \"127.0.0.1:1\"\n"
    ));
    assert!(e.contains("forward[0].peer") && e.contains("site-c"), "{e}");
    // UDP over a TLS peer.
    let e = refusal(&format!(
        "{}\n[[forward]]\nname = \"dns\"\npeer = \"site-b\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"udp\"\n",
        GOOD.replace("transport = \"quic\"", "transport = \"tls\"")
    ));
    assert!(
        e.contains("forward[0].protocol") && e.contains("QUIC"),
        "{e}"
    );
    // Trust anchor that is not PEM.
    let e = refusal(&GOOD.replace("[\"ca.crt\"]", "[\"site-a.key\"]"));
    assert!(e.contains("tls.trust_anchors[0]"), "{e}");
}

#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let out = Command::new(QSID)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("site-a.key", "site-b.key")).unwrap();
    let out = Command::new(QSID)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.private_key") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn reload_keeps_unchanged_tunnels_and_applies_changes() {
    let rt = runtime();
    let pair = Pair::start(&rt, "tls");
    let sessions = |sock: &Path| {
        testbed::admin(sock, "peers").unwrap()[0]["sessions"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(sessions(&pair.admin_a()), 1);

    // SIGHUP with the same file: the tunnel stays.
    pair.a.signal("HUP").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sessions(&pair.admin_a()),
        1,
        "an unchanged tunnel must not be dropped"
    );

    // Add a forward on B via `qsi tunnel reload`: it works at once, the tunnel is not restarted.
    let new_listen = testbed::free_addr().unwrap();
    let mut b = pair.b_cfg.clone();
    b.forwards
        .push(("echo2".into(), "site-a".into(), new_listen, "tcp".into()));
    a_exposes_echo2(&pair, &rt);
    b.write(pair.dir.path()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
        .args(["tunnel", "reload", "--json", "--socket"])
        .arg(pair.admin_b())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["kept"][0], "site-a", "{sum}");
    rt.block_on(roundtrip(new_listen, 10_000)).unwrap();
    assert_eq!(sessions(&pair.admin_b()), 1);

    // A config that does not validate is refused and the old one stays in force.
    std::fs::write(pair.dir.path().join("site-b.toml"), "site = \n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
        .args(["tunnel", "reload", "--socket"])
        .arg(pair.admin_b())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("old config kept"));
    rt.block_on(roundtrip(pair.b_to_a, 1000)).unwrap();

    // Changing the peer's policy restarts that tunnel (and it comes back).
    let mut a = pair.a_cfg.clone();
    a.peers[0].key_exchange = Some(vec!["secp256r1mlkem768".into(), "x25519mlkem768".into()]);
    a.write(pair.dir.path()).unwrap();
    let v = testbed::admin(&pair.admin_a(), "reload").unwrap();
    assert_eq!(v["restarted"][0], "site-b", "{v}");
    pair.wait_connected();
    let peers = testbed::admin(&pair.admin_a(), "peers").unwrap();
    assert_eq!(peers[0]["policy"][0], "SECP256R1MLKEM768", "{peers}");
    // B accepts only X25519MLKEM768, so that is what the restarted tunnel negotiated.
    assert_eq!(peers[0]["group"], "X25519MLKEM768", "{peers}");
}

fn a_exposes_echo2(pair: &Pair, rt: &tokio::runtime::Runtime) {
    let echo = echo_server(rt);
    let mut a = pair.a_cfg.clone();
    a.exposes
        .push(("echo2".into(), "site-b".into(), echo, "tcp".into()));
    a.write(pair.dir.path()).unwrap();
    testbed::admin(&pair.admin_a(), "reload").unwrap();
}

#[test]
fn cnsa_profile_negotiates_mlkem1024_and_mismatched_policies_do_not_connect() {
    // CNSA 2.0 authenticates with ML-DSA-87 (a P-256 site is refused at config load: tunnel_auth.rs).
    let mldsa87 = |dir: &Path| {
        let opts = testbed::PkiOptions {
            site_algs: vec![
                ("site-a".into(), &rcgen::PKCS_ML_DSA_87),
                ("site-b".into(), &rcgen::PKCS_ML_DSA_87),
            ],
            ..Default::default()
        };
        testbed::write_test_pki(dir, &["site-a", "site-b"], &opts).unwrap();
    };
    for transport in ["quic", "tls"] {
        let dir = tempfile::tempdir().unwrap();
        mldsa87(dir.path());
        let (mut a, mut b) = testbed::pair_configs(dir.path(), transport).unwrap();
        a.key_exchange = Some(vec!["mlkem1024".into()]);
        b.key_exchange = Some(vec!["mlkem1024".into()]);
        let _qb = Qsid::start(QSID.as_ref(), &b.write(dir.path()).unwrap()).unwrap();
        let _qa = Qsid::start(QSID.as_ref(), &a.write(dir.path()).unwrap()).unwrap();
        let sock = a.admin.clone().unwrap();
        assert!(testbed::wait_until(Duration::from_secs(10), || {
            testbed::all_connected(&sock)
        }));
        let peers = testbed::admin(&sock, "peers").unwrap();
        assert_eq!(peers[0]["group"], "MLKEM1024", "{transport}: {peers}");
    }
    // A offers only ML-KEM-1024, B accepts only X25519MLKEM768: no tunnel, and the failure is counted.
    let dir = tempfile::tempdir().unwrap();
    mldsa87(dir.path());
    let (mut a, b) = testbed::pair_configs(dir.path(), "tls").unwrap();
    a.key_exchange = Some(vec!["mlkem1024".into()]);
    let qb = Qsid::start(QSID.as_ref(), &b.write(dir.path()).unwrap()).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &a.write(dir.path()).unwrap()).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !testbed::all_connected(&a.admin.clone().unwrap()),
        "A:\n{}\nB:\n{}",
        qa.log_tail(),
        qb.log_tail()
    );
    let m = metrics(b.metrics.unwrap());
    assert!(m.contains("reason=\"kx_policy\""), "{m}");
}

#[test]
fn qkd_peer_settings_are_checked_against_the_kms_config() {
    let dir = tempfile::tempdir().unwrap();
    testbed::write_pki(dir.path(), &["site-a", "site-b"]).unwrap();
    std::fs::copy(
        Path::new(EXAMPLES).join("kms.toml"),
        dir.path().join("kms.toml"),
    )
    .unwrap();
    // GOOD ends inside its [[peer]]: the peer's lines go there, then [kms] after it
    let load = |peer: &str, with_kms: bool| {
        let kms = if with_kms {
            "[kms]\nconfig = \"kms.toml\"\nsae_id = \"sae-a\"\n"
        } else {
            ""
        };
        let p = dir.path().join("x.toml");
        std::fs::write(&p, format!("{GOOD}{peer}\n{kms}")).unwrap();
        Config::load(&p).map_err(|e| e.to_string())
    };
    let ok = load("qkd = \"require\"\nqkd_link = \"a-to-b\"\n", true).unwrap();
    let q = ok.peers[0].qkd.as_ref().unwrap();
    assert_eq!(q.peer_sae_id, "sae-b", "defaults to the link's peer_sae_id");
    assert_eq!(q.reserve, 8);
    assert_eq!(ok.kms.as_ref().unwrap().sae_id, "sae-a");
    let e = load("qkd = \"require\"\nqkd_link = \"a-to-b\"\n", false).unwrap_err();
    assert!(e.starts_with("peer[0].qkd") && e.contains("[kms]"), "{e}");
    let e = load("qkd = \"always\"\n", true).unwrap_err();
    assert!(e.starts_with("peer[0].qkd"), "{e}");
    let e = load("qkd = \"prefer\"\nqkd_link = \"nope\"\n", true).unwrap_err();
    assert!(e.contains("a-to-b"), "names the links there are: {e}");
    // we dial (address), so we are the master: the slave link b-to-a is refused
    let e = load("qkd = \"prefer\"\nqkd_link = \"b-to-a\"\n", true).unwrap_err();
    assert!(
        e.starts_with("peer[0].qkd_link") && e.contains("master"),
        "{e}"
    );
    let e = load(
        "qkd = \"prefer\"\nqkd_link = \"a-to-b\"\nsae_id = \"sae-x\"\n",
        true,
    )
    .unwrap_err();
    assert!(e.starts_with("peer[0].sae_id"), "{e}");
}
