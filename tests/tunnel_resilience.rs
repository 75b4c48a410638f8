//! End-to-end resilience with real qsid processes and real sockets: 1,000 concurrent flows per peer, a
//! stalled reader that must not stall other flows, a peer restart, hostile input on every port, and a
//! classical-only TLS client (OpenSSL 3.0's s_client) that must be refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use qsi_daemon::testbed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn thousand_flows(transport: &str) {
    let rt = runtime();
    let pair = Pair::start(&rt, transport);
    const N: usize = 1000;
    let addr = pair.a_to_b;
    let sock = pair.admin_a();
    let (log_a, log_b) = (pair.a.log.clone(), pair.b.log.clone());
    rt.block_on(async move {
        // Open all flows, each proves one echo, and keep them all open at once.
        let mut conns = Vec::with_capacity(N);
        let mut failures = Vec::new();
        for chunk in 0..N / 100 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..100 {
                set.spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let msg = format!("flow {chunk}-{i}");
                    s.write_all(msg.as_bytes()).await.unwrap();
                    let mut buf = vec![0u8; msg.len()];
                    if let Err(e) = s.read_exact(&mut buf).await {
                        return Err(format!("flow {chunk}-{i}: {e}"));
                    }
                    assert_eq!(buf, msg.as_bytes());
                    Ok(s)
                });
            }
            while let Some(s) = set.join_next().await {
                match s.unwrap() {
                    Ok(s) => conns.push(s),
                    Err(e) => failures.push(e),
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} flows failed, e.g. {:?}\nA:\n{}\nB:\n{}",
            failures.len(),
            failures.first(),
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
        assert_eq!(conns.len(), N);
        let peers = tokio::task::spawn_blocking(move || testbed::admin(&sock, "peers").unwrap())
            .await
            .unwrap();
        assert!(
            peers[0]["flows_active"].as_u64().unwrap() >= N as u64,
            "{peers}"
        );
        // Every one of them still works.
        for (i, s) in conns.iter_mut().enumerate().step_by(97) {
            s.write_all(b"again").await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)
                .await
                .unwrap_or_else(|e| panic!("flow {i}: {e}"));
        }
    });
}

#[test]
fn thousand_concurrent_flows_over_quic() {
    thousand_flows("quic");
}

#[test]
fn thousand_concurrent_flows_over_tls() {
    thousand_flows("tls");
}

/// A server that accepts and never reads.
fn black_hole(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        a
    })
}

fn stalled_reader(transport: &str) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = testbed::pair(dir.path(), transport).unwrap();
    let (echo, hole) = (echo_server(&rt), black_hole(&rt));
    let (to_echo, to_hole) = (testbed::free_addr().unwrap(), testbed::free_addr().unwrap());
    a.forwards
        .push(("echo".into(), "site-b".into(), to_echo, "tcp".into()));
    a.forwards
        .push(("hole".into(), "site-b".into(), to_hole, "tcp".into()));
    b.exposes
        .push(("echo".into(), "site-a".into(), echo, "tcp".into()));
    b.exposes
        .push(("hole".into(), "site-a".into(), hole, "tcp".into()));
    let _qb = testbed::Qsid::start(QSID.as_ref(), &b.write(dir.path()).unwrap()).unwrap();
    let _qa = testbed::Qsid::start(QSID.as_ref(), &a.write(dir.path()).unwrap()).unwrap();
    let sock = a.admin.clone().unwrap();
    assert!(testbed::wait_until(Duration::from_secs(10), || {
        testbed::all_connected(&sock)
    }));
    rt.block_on(async move {
        // Push into the black hole until it blocks: its reader never reads. A write that makes no progress
        // for 2 s is a stall; 500 ms was mistaken for one on a loaded 2-core machine, and the later
        // "still stalled" check then saw the flow move.
        let mut s = TcpStream::connect(to_hole).await.unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut pushed = 0usize;
        let stalled = loop {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                Ok(Ok(())) => pushed += chunk.len(),
                Ok(Err(e)) => panic!("the stalled flow failed instead of blocking: {e}"),
                Err(_) => break true,
            }
            if pushed > 512 << 20 {
                break false;
            }
        };
        assert!(
            stalled,
            "the black hole never pushed back (flow control missing?)"
        );
        // Other flows are unaffected: 8 MiB both ways, well within a deadline.
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(20), roundtrip(to_echo, 8 << 20))
            .await
            .unwrap()
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(20));
        // And the stalled one is still stalled, not dropped.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.write_all(&chunk))
                .await
                .is_err()
        );
    });
}

#[test]
fn stalled_reader_does_not_stall_other_flows_over_quic() {
    stalled_reader("quic");
}

#[test]
fn stalled_reader_does_not_stall_other_flows_over_tls() {
    stalled_reader("tls");
}

fn peer_restart(transport: &str) {
    let rt = runtime();
    let mut pair = Pair::start(&rt, transport);
    let to_b = pair.a_to_b;
    // An in-flight flow across the restart.
    let mut inflight = rt.block_on(async {
        let mut s = TcpStream::connect(to_b).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s
    });
    pair.b.kill();
    // The in-flight flow ends (reset or EOF), it does not hang.
    let ended = rt.block_on(async {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(10), inflight.read(&mut buf)).await
    });
    match ended {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("in-flight flow did not end after the peer died: {other:?}"),
    }
    let b_cfg = pair.b.config.clone();
    pair.b = testbed::Qsid::start(QSID.as_ref(), &b_cfg).unwrap();
    let t = Instant::now();
    let ok = testbed::wait_until(Duration::from_secs(15), || {
        rt.block_on(roundtrip(to_b, 1000)).is_ok()
    });
    assert!(
        ok,
        "no new flow succeeded after the peer restarted.\nA:\n{}",
        pair.a.log_tail()
    );
    eprintln!(
        "{transport}: new flows succeed {:?} after the peer restarted",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let peers = testbed::admin(&pair.admin_a(), "peers").unwrap();
    assert!(peers[0]["sessions"].as_u64().unwrap() >= 2, "{peers}");
}

#[test]
fn peer_restart_reconnects_over_quic() {
    peer_restart("quic");
}

#[test]
fn peer_restart_reconnects_over_tls() {
    peer_restart("tls");
}

#[test]
fn hostile_input_on_every_port_neither_crashes_nor_wedges_the_daemon() {
    let rt = runtime();
    let mut pair = Pair::start(&rt, "tls");
    let b_port: SocketAddr = pair.b_cfg.tls.unwrap();
    let b_quic: SocketAddr = pair.b_cfg.quic.unwrap();
    let b_metrics = pair.b_cfg.metrics.unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    // Garbage on the TLS port, the metrics port, the forward listener, the admin socket, the QUIC port.
    for addr in [b_port, b_metrics, pair.b_to_a] {
        for _ in 0..20 {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.write_all(&garbage);
            }
        }
    }
    {
        let mut s = std::os::unix::net::UnixStream::connect(pair.admin_b()).unwrap();
        let _ = s.write_all(&garbage);
        let _ = s.write_all(b"\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.contains("\"ok\":false"), "{out}");
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500 {
        let _ = udp.send_to(&garbage[..(i % 1200) + 1], b_quic);
    }
    // A TLS record header claiming a huge ClientHello, then nothing: half-open handshakes.
    let mut half_open = Vec::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(b_port) {
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01]);
            half_open.push(s);
        }
    }
    // Slowloris: a byte every 300 ms; the handshake deadline must cut it off.
    let mut slow = std::net::TcpStream::connect(b_port).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        if slow.write_all(&[0x16]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut b = [0u8; 1];
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut b);
        slow.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0))
            || matches!(r, Err(ref e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a slowloris connection was kept for {:?}", t.elapsed());
    // A flood of connections at once.
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Ok(s) = std::net::TcpStream::connect(b_port) {
            flood.push(s);
        }
    }
    // Still alive, still serving, the tunnel still up.
    assert!(pair.b.is_running(), "qsid crashed:\n{}", pair.b.log_tail());
    rt.block_on(async {
        roundtrip(pair.a_to_b, 100_000).await.unwrap();
        roundtrip(pair.b_to_a, 100_000).await.unwrap();
    });
    assert!(metrics(b_metrics).contains("qsi_tunnel_failures_total"));
    drop(flood);
    drop(half_open);
    assert!(testbed::all_connected(&pair.admin_b()));
}

#[test]
fn classical_only_tls_client_is_refused() {
    let which = Command::new("openssl").arg("version").output();
    let Ok(v) = which else {
        panic!(
            "this test needs openssl (apt-get install openssl): OpenSSL 3.0's s_client is the classical-only peer"
        );
    };
    assert!(v.status.success());
    let rt = runtime();
    let pair = Pair::start(&rt, "tls");
    let port = pair.b_cfg.tls.unwrap();
    let d = pair.dir.path();
    let run = |groups: &str| {
        Command::new("openssl")
            .args([
                "s_client",
                "-brief",
                "-tls1_3",
                "-groups",
                groups,
                "-connect",
                &port.to_string(),
            ])
            .arg("-cert")
            .arg(d.join("site-a.crt"))
            .arg("-key")
            .arg(d.join("site-a.key"))
            .arg("-CAfile")
            .arg(d.join("ca.crt"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    for groups in ["X25519", "P-256:P-384:X448"] {
        let out = run(groups);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "a classical-only client ({groups}) was accepted:\n{text}"
        );
        assert!(
            text.contains("handshake failure") || text.contains("alert"),
            "{text}"
        );
    }
    let m = metrics(pair.b_cfg.metrics.unwrap());
    assert!(m.contains("reason=\"kx_policy\"} 2"), "{m}");
    // The tunnel itself (post-quantum) is unaffected.
    assert!(testbed::all_connected(&pair.admin_a()));
}
