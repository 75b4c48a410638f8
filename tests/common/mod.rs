//! Helpers shared by the end-to-end tests: real qsid processes on loopback, real sockets.
#![allow(dead_code)]
// Test helpers: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qsi_daemon::testbed::{self, Qsid, SiteToml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const QSID: &str = env!("CARGO_BIN_EXE_qsid");

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An echo server on the runtime; returns its address.
pub fn echo_server(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    })
}

/// Sends `len` pseudo-random bytes through `addr` (an echo behind a tunnel) and checks they come back.
pub async fn roundtrip(addr: SocketAddr, len: usize) -> Result<(), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if got != expect {
        return Err(format!(
            "echo mismatch: sent {} bytes, got {}",
            expect.len(),
            got.len()
        ));
    }
    Ok(())
}

/// Two sites over `transport`, each forwarding `echo` to an echo server behind the other.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub a_cfg: SiteToml,
    pub b_cfg: SiteToml,
    pub a: Qsid,
    pub b: Qsid,
    /// Listener on A reaching B's echo.
    pub a_to_b: SocketAddr,
    /// Listener on B reaching A's echo.
    pub b_to_a: SocketAddr,
}

impl Pair {
    pub fn start(rt: &tokio::runtime::Runtime, transport: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = testbed::pair(dir.path(), transport).unwrap();
        let echo_a = echo_server(rt);
        let echo_b = echo_server(rt);
        let a_to_b = testbed::free_addr().unwrap();
        let b_to_a = testbed::free_addr().unwrap();
        a.forwards
            .push(("echo".into(), "site-b".into(), a_to_b, "tcp".into()));
        b.exposes
            .push(("echo".into(), "site-a".into(), echo_b, "tcp".into()));
        b.forwards
            .push(("echo".into(), "site-a".into(), b_to_a, "tcp".into()));
        a.exposes
            .push(("echo".into(), "site-b".into(), echo_a, "tcp".into()));
        let pa = a.write(dir.path()).unwrap();
        let pb = b.write(dir.path()).unwrap();
        let qb = Qsid::start(QSID.as_ref(), &pb).unwrap();
        let qa = Qsid::start(QSID.as_ref(), &pa).unwrap();
        let pair = Pair {
            dir,
            a_cfg: a,
            b_cfg: b,
            a: qa,
            b: qb,
            a_to_b,
            b_to_a,
        };
        pair.wait_connected();
        pair
    }

    pub fn admin_a(&self) -> PathBuf {
        self.a_cfg.admin.clone().unwrap()
    }

    pub fn admin_b(&self) -> PathBuf {
        self.b_cfg.admin.clone().unwrap()
    }

    pub fn wait_connected(&self) {
        let ok = testbed::wait_until(Duration::from_secs(15), || {
            testbed::all_connected(&self.admin_a()) && testbed::all_connected(&self.admin_b())
        });
        assert!(
            ok,
            "tunnel did not come up.\nA:\n{}\nB:\n{}",
            self.a.log_tail(),
            self.b.log_tail()
        );
    }
}

/// Fetches the Prometheus text of a site.
pub fn metrics(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
