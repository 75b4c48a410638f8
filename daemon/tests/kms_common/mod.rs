//! Shared by the `qsi kms` end-to-end tests: starting `qsi kms serve` as a real process with its keys on
//! a SoftHSM2 token, running `qsi kms ...` against it, and a local SAE client.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qsi_hsm::SoftHsmToken;
use qsi_kms::client::{ClientSettings, Etsi014Client};

/// Fails with the install hint if SoftHSM2 is missing.
pub fn need_softhsm() {
    assert!(
        Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok(),
        "softhsm2-util is missing: apt-get install softhsm2 (these tests need a real PKCS#11 token)"
    );
}

fn with_token(c: &mut Command, token: &SoftHsmToken) {
    for (k, v) in token.child_env() {
        c.env(k, v);
    }
    c.env("QSI_TEST_KMS_PIN", token.user_pin.expose());
}

/// `qsi kms <args> --config <cfg>`.
pub fn qsi(cfg: &Path, token: &SoftHsmToken, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qsi"));
    c.args(["kms"])
        .args(args)
        .args(["--config", cfg.to_str().unwrap()]);
    with_token(&mut c, token);
    c.output().unwrap()
}

/// The JSON stdout of a successful command.
pub fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "qsi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `[hsm]` section for `token`, PIN from the environment.
pub fn hsm_section(token: &SoftHsmToken) -> String {
    format!(
        "[hsm]\nbackend = \"pkcs11\"\ntoken = \"{}\"\npin = \"env:QSI_TEST_KMS_PIN\"\ncreate_missing = true\n",
        token.label
    )
}

/// A running `qsi kms serve`; returns the child and the ETSI 014 server URL it announced.
pub fn serve(cfg: &Path, token: &SoftHsmToken) -> (Child, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qsi"));
    c.args(["kms", "serve", "--config", cfg.to_str().unwrap()]);
    with_token(&mut c, token);
    let mut child = c.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let url = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("qsi kms serve did not start");
        if let Some(u) = l.strip_prefix("qsi kms: ETSI 014 server on ") {
            break u.to_string();
        }
    };
    (child, url)
}

/// Stops a `qsi kms serve` with SIGTERM and expects a clean exit.
pub fn stop(mut child: Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let st = child.wait().unwrap();
    assert!(st.success(), "qsi kms serve exited with {st:?}");
}

/// A local SAE's ETSI 014 client towards a KMS (or a KME).
pub fn sae(url: &str, peer: &str, ca: &Path, cert: &Path, key: &Path) -> Etsi014Client {
    Etsi014Client::new(ClientSettings {
        kme_url: url.to_string(),
        server_name: Some("localhost".into()),
        peer_sae_id: peer.into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
        tls: qsi_kms::tls::client_config(ca, cert, key).unwrap(),
    })
    .unwrap()
}

/// The qkd-sim binary that `cargo test --workspace` builds beside this test's own binaries.
pub fn qkd_sim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("qkd-sim");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p qsi-qkd-sim` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Writes the QKD testbed's CA, KME and SAE certificates into `dir` (`qkd-sim certs`) unless there.
pub fn sim_certs(dir: &Path) {
    if dir.join("ca.pem").exists() {
        return;
    }
    let out = Command::new(qkd_sim())
        .arg("certs")
        .arg(dir)
        .args(["--alice-port", "0", "--bob-port", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qkd-sim certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `qkd-sim serve` (killed on drop).
pub struct Sim {
    /// The process.
    pub child: Child,
    /// Alice's KME.
    pub alice: SocketAddr,
    /// Bob's KME.
    pub bob: SocketAddr,
    /// Its config (for `qkd-sim eve --config`).
    pub config: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to run the simulated link.
pub struct SimOptions {
    /// Ports of Alice's and Bob's KMEs (0: any free port).
    pub ports: (u16, u16),
    /// Keys each KME holds at most.
    pub max_keys: u32,
    /// `qkd-sim serve --fault`.
    pub fault: Option<&'static str>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            ports: (0, 0),
            max_keys: 256,
            fault: None,
        }
    }
}

/// Writes the testbed's certificates into `dir` (once) and starts a 5 km link (sae-a at Alice, sae-b
/// at Bob), sped up 200 times.
pub fn start_sim(dir: &Path, o: &SimOptions) -> Sim {
    sim_certs(dir);
    let cfg = dir.join("sim.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"admin_socket = "sim.sock"
[link]
params = "gys"
distance_km = 5.0
seed = 7
speedup = 200.0
[limits]
key_size = 256
max_key_count = {max}
max_key_per_request = 16
[tls]
ca = "ca.pem"
[alice]
kme_id = "KME-Alice"
listen = "127.0.0.1:{pa}"
cert = "kme-alice.pem"
key = "kme-alice.key"
sae = [{{ id = "sae-a", cert = "sae-a.pem" }}]
[bob]
kme_id = "KME-Bob"
listen = "127.0.0.1:{pb}"
cert = "kme-bob.pem"
key = "kme-bob.key"
sae = [{{ id = "sae-b", cert = "sae-b.pem" }}]
"#,
            max = o.max_keys,
            pa = o.ports.0,
            pb = o.ports.1
        ),
    )
    .unwrap();
    let mut c = Command::new(qkd_sim());
    c.args(["serve", "--config"]).arg(&cfg);
    if let Some(f) = o.fault {
        c.args(["--fault", f]);
    }
    let mut child = c
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |who: &str| -> SocketAddr {
        let l = lines
            .next()
            .unwrap_or_else(|| panic!("qkd-sim serve exited before announcing {who}"))
            .unwrap();
        assert!(l.contains(who), "{l}");
        l.rsplit("https://").next().unwrap().parse().unwrap()
    };
    let alice = addr("(alice)");
    let bob = addr("(bob)");
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Sim {
        child,
        alice,
        bob,
        config: cfg,
    }
}
