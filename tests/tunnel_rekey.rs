//! Rekey make-before-break, end to end with real qsid processes on loopback (issue 9), on both transports:
//! - by time (`rekey_interval = "1s"`): a long-lived flow carries a checksummed stream across several
//!   rekeys with no byte lost or changed, short flows opened all the while all succeed (no gap), the
//!   connections replaced under them close once drained, and status and metrics count the rekeys;
//! - by bytes (`rekey_bytes = "1MiB"`): flows that push the current connection past its limit make the
//!   dialer open a new one, while the long-lived flow's old connection refreshes its keys in place (TLS 1.3
//!   KeyUpdate / QUIC key update) every further MiB, and its stream still arrives intact.
//!   (Records after a KeyUpdate are sealed under the new key: the peer can only read them, and the
//!   checksummed stream only arrives, because it processed every KeyUpdate.)
//! - failed rekey (a relay that refuses new connections, the fault injector): the current connection keeps
//!   serving until its hard limit, failures are counted, then it is closed with the control connection
//!   kept (fail closed), and the dialer recovers once the path reopens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use qsi_daemon::testbed::{self, Qsid, SiteToml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The byte at offset `i` of the long-lived stream (not periodic at any chunk size we use).
fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 20) as u8
}

/// Writes `rekey` lines into the `[[peer]]` entry of a rendered site config.
fn with_rekey(site: &SiteToml, rekey: &str) -> String {
    let text = site.render();
    let at = text.find("[[peer]]").unwrap();
    let end = text[at..].find("\n\n").map_or(text.len(), |e| at + e);
    format!("{}\n{rekey}{}", &text[..end], &text[end..])
}

struct Sites {
    _dir: tempfile::TempDir,
    a: Qsid,
    b: Qsid,
    admin_a: PathBuf,
    admin_b: PathBuf,
    metrics_a: SocketAddr,
    /// Listener on A reaching the echo server behind B.
    echo: SocketAddr,
}

fn start(rt: &tokio::runtime::Runtime, transport: &str, rekey: &str) -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = testbed::pair(dir.path(), transport).unwrap();
    let echo = testbed::free_addr().unwrap();
    testbed::carry(&mut a, &mut b, "echo", echo, echo_server(rt));
    let write = |s: &SiteToml| {
        let p = dir.path().join(format!("{}.toml", s.site));
        std::fs::write(&p, with_rekey(s, rekey)).unwrap();
        p
    };
    let qb = Qsid::start(QSID.as_ref(), &write(&b)).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &write(&a)).unwrap();
    let (admin_a, admin_b) = (a.admin.clone().unwrap(), b.admin.clone().unwrap());
    assert!(
        testbed::wait_until(Duration::from_secs(15), || {
            testbed::all_connected(&admin_a) && testbed::all_connected(&admin_b)
        }),
        "tunnel did not come up\nA:\n{}\nB:\n{}",
        qa.log_tail(),
        qb.log_tail()
    );
    Sites {
        _dir: dir,
        a: qa,
        b: qb,
        admin_a,
        admin_b,
        metrics_a: a.metrics.unwrap(),
        echo,
    }
}

/// The `rekey` object of the only peer.
fn rekey_status(admin: &Path) -> serde_json::Value {
    testbed::admin(admin, "peers").unwrap()[0]["rekey"].clone()
}

/// A long-lived flow through the echo: writes `total` bytes of [`stream_byte`] in chunks of `chunk`,
/// pausing `pause` between chunks, and checks every byte that comes back. Returns the bytes verified.
async fn long_flow(addr: SocketAddr, total: u64, chunk: usize, pause: Duration) -> u64 {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut off = 0u64;
        while off < total {
            let n = (total - off).min(chunk as u64);
            let buf: Vec<u8> = (off..off + n).map(stream_byte).collect();
            w.write_all(&buf).await.unwrap();
            off += n;
            tokio::time::sleep(pause).await;
        }
        w.shutdown().await.unwrap();
    });
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let i = off + k as u64;
            assert_eq!(*b, stream_byte(i), "long-lived flow corrupted at byte {i}");
        }
        off += n as u64;
    }
    writer.await.unwrap();
    assert_eq!(off, total, "long-lived flow lost bytes");
    off
}

/// Waits until only the current data connection is left on both sides (the replaced ones drained).
fn assert_drained(s: &Sites) {
    let only_current = |admin: &Path| {
        let c = rekey_status(admin)["connections"].clone();
        c.as_array().is_some_and(|a| a.len() == 1) && c[0]["state"] == "current"
    };
    assert!(
        testbed::wait_until(Duration::from_secs(5), || only_current(&s.admin_a)
            && only_current(&s.admin_b)),
        "replaced connections did not close after their flows ended:\nA: {}\nB: {}\nA log:\n{}\nB log:\n{}",
        rekey_status(&s.admin_a),
        rekey_status(&s.admin_b),
        s.a.log_tail(),
        s.b.log_tail()
    );
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics:\n{text}"))
}

fn rekey_by_time(transport: &str) {
    let rt = runtime();
    let s = start(
        &rt,
        transport,
        "rekey_interval = \"1s\"\nrekey_hard_limit = \"60s\"\n",
    );
    let echo = s.echo;
    let admin_a = s.admin_a.clone();
    let (seen_draining, short_ok) = rt.block_on(async move {
        // ~4.5 s of stream at ~1.3 MB/s, across four or more rekeys.
        let long = tokio::spawn(long_flow(
            echo,
            6 << 20,
            32 * 1024,
            Duration::from_millis(25),
        ));
        // Short flows all the while, each must get through: new flows never wait for a rekey.
        let mut short_ok = 0;
        let mut seen_draining = false;
        let t0 = Instant::now();
        while !long.is_finished() {
            roundtrip(echo, 16 * 1024)
                .await
                .unwrap_or_else(|e| panic!("short flow {short_ok} failed during rekeys: {e}"));
            short_ok += 1;
            if short_ok % 10 == 0 {
                let a = admin_a.clone();
                let st = tokio::task::spawn_blocking(move || rekey_status(&a))
                    .await
                    .unwrap();
                // The long flow's generation-1 connection is still there, draining.
                seen_draining |= st["connections"][0]["generation"] == 1
                    && st["connections"][0]["state"] == "draining"
                    && st["draining"].as_u64().unwrap() >= 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        long.await.unwrap();
        assert!(
            t0.elapsed() > Duration::from_secs(3),
            "stream too short to span rekeys"
        );
        (seen_draining, short_ok)
    });
    assert!(short_ok >= 20, "only {short_ok} short flows");
    assert!(
        seen_draining,
        "the long flow's connection was never seen draining"
    );
    let (a, b) = (rekey_status(&s.admin_a), rekey_status(&s.admin_b));
    for (side, st) in [("A", &a), ("B", &b)] {
        assert!(st["rekeys"].as_u64().unwrap() >= 3, "{side}: {st}");
        assert!(st["generation"].as_u64().unwrap() >= 4, "{side}: {st}");
    }
    assert_eq!(a["rekey_failures"], 0, "{a}");
    let m = metrics(s.metrics_a);
    assert!(metric(&m, "qsi_tunnel_rekeys_total") >= 3, "{m}");
    assert!(metric(&m, "qsi_tunnel_data_generation") >= 4, "{m}");
    assert_drained(&s);
}

fn rekey_by_bytes(transport: &str) {
    let rt = runtime();
    let s = start(&rt, transport, "rekey_bytes = \"1MiB\"\n");
    let echo = s.echo;
    rt.block_on(async move {
        // The long-lived flow opens first, on generation 1, and keeps it past its limit many times over.
        let long = tokio::spawn(long_flow(
            echo,
            8 << 20,
            64 * 1024,
            Duration::from_millis(5),
        ));
        // Each short flow pushes the then-current connection past 1 MiB: the dialer replaces it.
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            roundtrip(echo, 3 << 19)
                .await
                .unwrap_or_else(|e| panic!("bulk flow {i} failed: {e}"));
        }
        long.await.unwrap();
    });
    let a = rekey_status(&s.admin_a);
    assert!(a["rekeys"].as_u64().unwrap() >= 3, "{a}");
    assert!(
        a["key_updates"].as_u64().unwrap() >= 4,
        "the old connection should refresh its keys in place every MiB: {a}"
    );
    let m = metrics(s.metrics_a);
    assert!(metric(&m, "qsi_tunnel_key_updates_total") >= 4, "{m}");
    assert_drained(&s);
}

#[test]
fn rekey_every_second_keeps_flows_whole_over_tls() {
    rekey_by_time("tls");
}

#[test]
fn rekey_every_second_keeps_flows_whole_over_quic() {
    rekey_by_time("quic");
}

#[test]
fn rekey_by_bytes_with_key_updates_over_tls() {
    rekey_by_bytes("tls");
}

#[test]
fn rekey_by_bytes_with_key_updates_over_quic() {
    rekey_by_bytes("quic");
}

/// A TCP relay between A and B that can be told to refuse new connections while the ones it already
/// carries keep working: the fault injector for "the replacement data connection cannot be opened"
/// (later, e.g., no QKD key under `require`).
fn gate_relay(
    rt: &tokio::runtime::Runtime,
    to: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let refuse = std::sync::Arc::new(AtomicBool::new(false));
    let r = refuse.clone();
    let addr = rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                if r.load(Ordering::Relaxed) {
                    continue; // dropped: the dialer sees the connection reset
                }
                tokio::spawn(async move {
                    if let Ok(mut t) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
                    }
                });
            }
        });
        addr
    });
    (addr, refuse)
}

#[test]
fn failed_rekey_keeps_serving_until_the_hard_limit_then_fails_closed_and_recovers() {
    use std::sync::atomic::Ordering;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = testbed::pair(dir.path(), "tls").unwrap();
    let (relay, refuse) = gate_relay(&rt, b.tls.unwrap());
    a.peers[0].address = Some(relay);
    let echo = testbed::free_addr().unwrap();
    testbed::carry(&mut a, &mut b, "echo", echo, echo_server(&rt));
    let rekey = "rekey_interval = \"1s\"\nrekey_hard_limit = \"3s\"\n";
    let write = |s: &SiteToml| {
        let p = dir.path().join(format!("{}.toml", s.site));
        std::fs::write(&p, with_rekey(s, rekey)).unwrap();
        p
    };
    let qb = Qsid::start(QSID.as_ref(), &write(&b)).unwrap();
    let qa = Qsid::start(QSID.as_ref(), &write(&a)).unwrap();
    let admin_a = a.admin.clone().unwrap();
    assert!(
        testbed::wait_until(Duration::from_secs(15), || testbed::all_connected(&admin_a)),
        "{}",
        qa.log_tail()
    );
    // From now on no new connection gets through; the current data connection and control stay.
    refuse.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let served_for = rt.block_on(async move {
        let mut s = TcpStream::connect(echo).await.unwrap();
        let mut buf = [0u8; 4];
        loop {
            let ping = async {
                s.write_all(b"ping").await?;
                s.read_exact(&mut buf).await
            };
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => break t0.elapsed(),
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "never cut at the hard limit"
            );
        }
    });
    // Served past the rekey interval while the replacement failed, cut at the hard limit (3 s from
    // the connection's birth, which was shortly before t0).
    assert!(
        served_for > Duration::from_millis(1500) && served_for < Duration::from_secs(5),
        "flow served for {served_for:?}\n{}",
        qa.log_tail()
    );
    let p = testbed::admin(&admin_a, "peers").unwrap()[0].clone();
    assert!(p["rekey"]["rekey_failures"].as_u64().unwrap() >= 2, "{p:#}");
    assert_eq!(
        p["control_up"], true,
        "fail closed keeps the control connection: {p:#}"
    );
    assert!(
        testbed::wait_until(Duration::from_secs(2), || {
            let p = testbed::admin(&admin_a, "peers").unwrap()[0].clone();
            p["state"] != "connected" && p["rekey"]["connections"].as_array().unwrap().is_empty()
        }),
        "no data connection may outlive its hard limit"
    );
    let m = metrics(a.metrics.unwrap());
    assert!(metric(&m, "qsi_tunnel_rekey_failures_total") >= 2, "{m}");
    // The path opens again: the retrying dialer gets a new data connection and flows work.
    refuse.store(false, Ordering::Relaxed);
    assert!(
        testbed::wait_until(Duration::from_secs(20), || rt
            .block_on(roundtrip(echo, 1000))
            .is_ok()),
        "no recovery after the path reopened\n{}\n{}",
        qa.log_tail(),
        qb.log_tail()
    );
}
