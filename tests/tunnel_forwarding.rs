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
