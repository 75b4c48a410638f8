//! Shared by the KME end-to-end tests: starts the real `qkd-sim` binary on loopback.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used, clippy::panic)] // test helpers: a failure here is a test failure

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qsi_qkd_sim::kme::client::SaeClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_qkd-sim");

/// A running `qkd-sim serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub alice: SocketAddr,
    pub bob: SocketAddr,
    pub config: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes certificates with `qkd-sim certs`, writes a link.toml with `link` and `limits` sections,
/// and starts `qkd-sim serve`.
pub fn start(link: &str, limits: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(BIN)
        .arg("certs")
        .arg(dir.path())
        .args(["--alice-port", "0", "--bob-port", "0"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "qkd-sim certs failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let config = dir.path().join("test.toml");
    std::fs::write(
        &config,
        format!(
            r#"admin_socket = "admin.sock"
[link]
{link}
[limits]
{limits}
[tls]
ca = "ca.pem"
[alice]
kme_id = "KME-Alice"
listen = "127.0.0.1:0"
cert = "kme-alice.pem"
key = "kme-alice.key"
sae = [{{ id = "sae-a", cert = "sae-a.pem" }}]
[bob]
kme_id = "KME-Bob"
listen = "127.0.0.1:0"
cert = "kme-bob.pem"
key = "kme-bob.key"
sae = [{{ id = "sae-b", cert = "sae-b.pem" }}, {{ id = "sae-c", cert = "sae-c.pem" }}]
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut addr = |who: &str| -> SocketAddr {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("qkd-sim serve exited before announcing {who}"))
            .unwrap();
        assert!(line.contains(who), "{line}");
        line.rsplit("https://").next().unwrap().parse().unwrap()
    };
    let alice = addr("(alice)");
    let bob = addr("(bob)");
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Server {
        child,
        dir,
        alice,
        bob,
        config,
    }
}

impl Server {
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    pub fn tls(&self, sae: Option<&str>) -> Arc<rustls::ClientConfig> {
        let ca = self.path("ca.pem");
        match sae {
            Some(s) => {
                let (c, k) = (
                    self.path(&format!("{s}.pem")),
                    self.path(&format!("{s}.key")),
                );
                qsi_qkd_sim::kme::tls::client_config(&ca, Some((&c, &k))).unwrap()
            }
            None => qsi_qkd_sim::kme::tls::client_config(&ca, None).unwrap(),
        }
    }

    /// A keep-alive connection to Alice's (`bob == false`) or Bob's KME as `sae`.
    pub async fn client(&self, bob: bool, sae: Option<&str>) -> SaeClient {
        SaeClient::connect(if bob { self.bob } else { self.alice }, self.tls(sae))
            .await
            .unwrap()
    }

    /// `qkd-sim <args> --config <this config>`, expecting success; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qkd-sim {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The admin status as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(self.run(&["status"]).trim()).unwrap()
    }

    /// Polls the admin status until `pred` holds or `secs` pass.
    pub fn wait_for(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; last status {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}
