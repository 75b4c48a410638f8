//! Shared by the `qsi kms` end-to-end tests: starting `qsi kms serve` as a real process with its keys on
//! a SoftHSM2 token, running `qsi kms ...` against it, and a local SAE client.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::io::{BufRead, BufReader};
use std::path::Path;
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
