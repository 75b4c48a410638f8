//! End-to-end: two real qsid processes on loopback forward TCP both ways over QUIC and over TLS 1.3,
//! negotiate a post-quantum group, and report it through the admin socket and the metrics endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;

use common::*;
use qsi_daemon::testbed;

fn forwarding_both_ways(transport: &str) {
    let rt = runtime();
    let pair = Pair::start(&rt, transport);
    rt.block_on(async {
        roundtrip(pair.a_to_b, 1 << 20).await.unwrap();
        roundtrip(pair.b_to_a, 1 << 20).await.unwrap();
        roundtrip(pair.a_to_b, 0).await.unwrap();
    });
    for sock in [pair.admin_a(), pair.admin_b()] {
        let peers = testbed::admin(&sock, "peers").unwrap();
        let p = &peers[0];
        assert_eq!(p["state"], "connected");
        assert_eq!(p["transport"], transport);
        assert_eq!(p["group"], "X25519MLKEM768", "{peers}");
        assert!(p["bytes_sent"].as_u64().unwrap() >= 1 << 20, "{peers}");
    }
    let m = metrics(pair.a_cfg.metrics.unwrap());
    assert!(
        m.contains(&format!("qsi_tunnel_kx_group{{site=\"site-a\",peer=\"site-b\",transport=\"{transport}\",group=\"X25519MLKEM768\"}} 1")),
        "{m}"
    );
    assert!(
        m.contains("qsi_tunnel_flows_total{site=\"site-a\",peer=\"site-b\"} 3"),
        "{m}"
    );
}

#[test]
fn forwards_both_ways_over_quic() {
    forwarding_both_ways("quic");
}

#[test]
fn forwards_both_ways_over_tls() {
    forwarding_both_ways("tls");
}

#[test]
fn udp_service_rides_quic_datagrams_both_ways() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = testbed::pair(dir.path(), "quic").unwrap();
    // A UDP echo on site B.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let listen = testbed::free_addr().unwrap();
    a.forwards
        .push(("dns".into(), "site-b".into(), listen, "udp".into()));
    b.exposes
        .push(("dns".into(), "site-a".into(), echo_addr, "udp".into()));
    let _qb = testbed::Qsid::start(QSID.as_ref(), &b.write(dir.path()).unwrap()).unwrap();
    let _qa = testbed::Qsid::start(QSID.as_ref(), &a.write(dir.path()).unwrap()).unwrap();
    let sock = a.admin.clone().unwrap();
    assert!(testbed::wait_until(
        std::time::Duration::from_secs(10),
        || testbed::all_connected(&sock)
    ));
    drop(rt);
    // Two clients, several datagrams each: every answer reaches the right client.
    for client in 0..2u8 {
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
        let mut answered = 0;
        for i in 0..20u8 {
            let msg = [client, i, 0xab, 0xcd];
            c.send_to(&msg, listen).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, _)) = c.recv_from(&mut buf) {
                assert_eq!(&buf[..n], &msg);
                answered += 1;
            }
        }
        // Datagrams may be lost in principle; on loopback nearly all arrive.
        assert!(
            answered >= 15,
            "client {client}: only {answered}/20 datagrams answered"
        );
    }
    let peers = testbed::admin(&sock, "peers").unwrap();
    assert_eq!(peers[0]["group"], "X25519MLKEM768");
}

/// Runs `qsi demo` (from `bin`, with `extra` arguments), asserts it succeeded and proved the whole chain
/// (both tunnels keyed by the hybrid group plus QKD, the same fresh QKD key IDs on both sites, the link's
/// secret key rate and QBER from qkd-sim), and returns what it printed.
fn run_demo(bin: &std::path::Path, extra: &[&str]) -> String {
    // A binary copied a moment ago can briefly be "text file busy": another test thread forking a child
    // in that window holds the copy's write descriptor until the child execs. Retry that error only.
    let mut tries = 0;
    let out = loop {
        match std::process::Command::new(bin)
            .arg("demo")
            .args(extra)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qsi demo {extra:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |what: &str| -> String {
        let prefix = format!("  {what:<24} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no summary row {what:?}:\n{text}"))
            .to_string()
    };
    let mut ids = Vec::new();
    for transport in ["quic", "tls"] {
        assert!(
            row(&format!("{transport} tunnel")).starts_with("X25519MLKEM768+QKD,"),
            "{text}"
        );
        let line = row(&format!("{transport} QKD key IDs"));
        let list = line
            .strip_suffix(" (the same on site-a and site-b)")
            .unwrap_or_else(|| panic!("{text}"));
        for id in list.split(", ") {
            assert_eq!(id.len(), 36, "a UUID key_ID: {id:?} in {text}");
            ids.push(id.to_string());
        }
        assert!(
            row(&format!("{transport} both ways")).starts_with("ok"),
            "{text}"
        );
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each QKD key used by one handshake: {text}");
    assert!(
        row("classical-only client").starts_with("refused"),
        "{text}"
    );
    // The link's figures come from qkd-sim status: the Monte Carlo rate at 20 km is near the
    // decoy-state formula's (GYS parameters at their configured intensity), the QBER below the abort line.
    let link = row("QKD link");
    let num = |after: &str, until: &str| -> f64 {
        let rest = &link[link.find(after).unwrap_or_else(|| panic!("{link}")) + after.len()..];
        rest[..rest.find(until).unwrap()].parse().unwrap()
    };
    assert!(link.starts_with("20 km,"), "{link}");
    let rate = num("secret key rate ", " bit/s");
    let qber = num("QBER ", "%") / 100.0;
    let mut p = qsi_qkd_sim::LinkParams::named("gys").unwrap();
    p.fibre.length_km = 20.0;
    let expected = qsi_qkd_sim::analytic::rate_at(
        &p,
        qsi_qkd_sim::analytic::DecoyMethod::Infinite,
        p.source.mu,
    );
    assert!(
        rate > 0.5 * expected.secret_key_rate_bps && rate < 1.5 * expected.secret_key_rate_bps,
        "rate {rate} vs decoy-state {}: {link}",
        expected.secret_key_rate_bps
    );
    assert!(qber > 0.0 && qber < 0.11, "{link}");
    assert!(row("QKD keys held").contains("KMS"), "{text}");
    text
}

#[test]
fn qsi_demo_runs_the_whole_chain_with_three_key_sources() {
    let text = run_demo(env!("CARGO_BIN_EXE_qsi").as_ref(), &[]);
    // CI installs SoftHSM2 (scripts/test refuses to run without it), so the demo must pick it, for the
    // CA's key and for both KMSs' keys.
    assert!(text.contains("key store                SoftHSM2"), "{text}");
    assert!(text.contains("KEK that never leaves SoftHSM2"), "{text}");
    assert!(text.contains("the qkd-sim binary"), "{text}");
}

#[test]
fn qsi_demo_falls_back_to_the_file_key_store_and_says_so() {
    let text = run_demo(env!("CARGO_BIN_EXE_qsi").as_ref(), &["--key-store", "file"]);
    assert!(
        text.contains("key store                the file key store"),
        "{text}"
    );
    assert!(text.contains("NOT FOR PRODUCTION"), "{text}");
}

#[test]
fn qsi_demo_works_without_qsid_or_qkd_sim_binaries_beside_it() {
    // `cargo run --bin qsi -- demo` builds only qsi: the demo then runs the daemon as `qsi qsid` and the
    // simulator as `qsi qkd-sim` (still separate processes).
    let dir = tempfile::tempdir().unwrap();
    let qsi = dir.path().join("qsi");
    std::fs::copy(env!("CARGO_BIN_EXE_qsi"), &qsi).unwrap();
    let text = run_demo(&qsi, &[]);
    assert!(text.contains("qsi qkd-sim serve"), "{text}");
}

#[test]
fn qsi_demo_fails_closed_and_says_why_when_the_link_yields_no_key() {
    // 300 km is far past the decoy-state limit (~140 km): the link distils nothing, so the tunnels,
    // which require QKD, never open a data connection; the demo must exit non-zero and say why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qsi"))
        .args(["demo", "--distance-km", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("qkd = require did not come up") && stderr.contains("no QKD key"),
        "{stderr}"
    );
}

#[test]
fn qsi_tunnel_commands_print_tables_and_json() {
    let rt = runtime();
    let pair = Pair::start(&rt, "quic");
    let qsi = env!("CARGO_BIN_EXE_qsi");
    for cmd in ["status", "peers", "flows"] {
        let out = std::process::Command::new(qsi)
            .args(["tunnel", cmd, "--socket"])
            .arg(pair.admin_a())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("PEER"), "{cmd}: {text}");
        let out = std::process::Command::new(qsi)
            .args(["tunnel", cmd, "--json", "--socket"])
            .arg(pair.admin_a())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if cmd == "status" {
            assert_eq!(v["site"], "site-a");
            assert_eq!(v["peers_connected"], 1);
        }
    }
    // A missing socket gives a message that says what to do.
    let out = std::process::Command::new(qsi)
        .args(["tunnel", "status", "--socket", "/nonexistent.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is qsid running"));
}
