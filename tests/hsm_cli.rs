//! `qsi hsm ...` and `qsi bench hsm` as an operator runs them: real `qsi` processes against a SoftHSM2
//! token directory of their own (SOFTHSM2_CONF in a temporary directory), OpenSSL reading the exported
//! public key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user.pin"), "246810\n").unwrap();
        std::fs::write(dir.path().join("so.pin"), "13579\n").unwrap();
        Env { dir }
    }

    fn qsi(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_qsi"))
            .args(args)
            .env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"))
            .env_remove("QSI_HSM_PIN")
            .env_remove("QSI_HSM_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.qsi(args);
        assert!(
            out.status.success(),
            "qsi {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn pin(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn init_token_keygen_list_pubkey_test_with_json() {
    let e = Env::new();
    let user = e.pin("user.pin");
    let so = e.pin("so.pin");
    let init: Value = serde_json::from_str(&e.ok(&[
        "hsm",
        "init-token",
        "--label",
        "qsi-ca",
        "--pin-file",
        &user,
        "--so-pin-file",
        &so,
        "--json",
    ]))
    .unwrap();
    assert_eq!(init["token"]["label"], "qsi-ca");
    let auth = ["--token", "qsi-ca", "--pin-file", user.as_str()];
    for (label, ty) in [
        ("root-2026", "ec-p384"),
        ("root-pq", "ml-dsa-87"),
        ("kms-kek", "aes-256"),
    ] {
        let mut args = vec!["hsm", "keygen", "--label", label, "--type", ty, "--json"];
        args.extend(auth);
        let key: Value = serde_json::from_str(&e.ok(&args)).unwrap();
        assert_eq!(key["label"], label);
        assert_eq!(key["type"], ty);
        assert_eq!(key["extractable"], false);
    }
    let mut args = vec!["hsm", "list", "--json"];
    args.extend(auth);
    let list: Value = serde_json::from_str(&e.ok(&args)).unwrap();
    let labels: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    for l in ["root-2026", "root-pq", "kms-kek"] {
        assert!(labels.contains(&l), "{labels:?}");
    }
    assert_eq!(list["tokens"][0]["label"], "qsi-ca");
    // `list` never shows key values: nothing long and hex-like beyond ids, no PEM, no PIN.
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        !text.contains("246810") && !text.contains("BEGIN"),
        "{text}"
    );

    // pubkey by URI, read back by OpenSSL.
    let uri = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "root-2026")
        .unwrap()["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let pem_path = e.dir.path().join("root.pem");
    let mut args = vec![
        "hsm",
        "pubkey",
        uri.as_str(),
        "--out",
        pem_path.to_str().unwrap(),
    ];
    args.extend(auth);
    e.ok(&args);
    let out = Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-text", "-in"])
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl could not read the exported key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("384 bit") && text.contains("P-384"), "{text}");

    let mut args = vec!["hsm", "test", "--json"];
    args.extend(auth);
    let report: Value = serde_json::from_str(&e.ok(&args)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["results"].as_array().unwrap().len(), 6);
    // SoftHSM2 2.6 has no CKM_ML_DSA: the report says ML-DSA keys take the sealed path.
    assert_eq!(report["ml_dsa_path"], "sealed-by-token", "{report}");
    let mechs: Vec<&str> = report["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        mechs.contains(&"CKM_ECDSA") && mechs.contains(&"CKM_AES_GCM"),
        "{mechs:?}"
    );
    // The test keys are gone again.
    let mut args = vec!["hsm", "list", "--json"];
    args.extend(auth);
    let after: Value = serde_json::from_str(&e.ok(&args)).unwrap();
    assert!(
        !serde_json::to_string(&after)
            .unwrap()
            .contains("qsi-hsm-test-"),
        "{after}"
    );
}

#[test]
fn operator_errors_say_what_to_do() {
    let e = Env::new();
    let user = e.pin("user.pin");
    let so = e.pin("so.pin");
    e.ok(&[
        "hsm",
        "init-token",
        "--label",
        "t1",
        "--pin-file",
        &user,
        "--so-pin-file",
        &so,
    ]);
    std::fs::write(e.dir.path().join("wrong.pin"), "000000\n").unwrap();
    let wrong = e.pin("wrong.pin");
    let cases: [(&[&str], &str); 5] = [
        (
            &["hsm", "list", "--token", "t1", "--pin-file", &wrong],
            "wrong PIN for token \"t1\" (PIN flags: count low)",
        ),
        (
            &["hsm", "list", "--token", "nope", "--pin-file", &user],
            "tokens present: \"t1\"",
        ),
        (
            &["hsm", "list", "--module", "/nonexistent/pkcs11.so"],
            "apt-get install softhsm2",
        ),
        (
            &[
                "hsm",
                "pubkey",
                "ghost",
                "--token",
                "t1",
                "--pin-file",
                &user,
            ],
            "`qsi hsm list` shows the keys present",
        ),
        (
            &[
                "hsm",
                "keygen",
                "--label",
                "x",
                "--type",
                "ed25519",
                "--token",
                "t1",
                "--pin-file",
                &user,
            ],
            "ml-dsa-65",
        ),
    ];
    for (args, expected) in cases {
        let out = e.qsi(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "qsi {args:?} should fail");
        assert!(
            stderr.contains(expected),
            "qsi {args:?}: expected {expected:?} in\n{stderr}"
        );
    }
    // No PIN anywhere: the message names both ways to give one.
    let out = e.qsi(&["hsm", "list", "--token", "t1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pin-file PATH or set QSI_HSM_PIN"));
}

#[test]
fn file_store_for_development_says_not_for_production() {
    let e = Env::new();
    let user = e.pin("user.pin");
    let store = e.dir.path().join("dev-keys");
    let store = store.to_str().unwrap();
    let out = e.qsi(&[
        "hsm",
        "keygen",
        "--file-store",
        store,
        "--pin-file",
        &user,
        "--label",
        "dev",
        "--type",
        "ml-dsa-65",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT FOR PRODUCTION"));
    let report: Value = serde_json::from_str(&e.ok(&[
        "hsm",
        "test",
        "--file-store",
        store,
        "--pin-file",
        &user,
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["store"]["production"], false);
    assert!(Path::new(store).join("store.json").exists());
}

#[test]
fn bench_hsm_quick_reports_both_sides_and_the_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
        .args(["bench", "hsm", "--quick", "--json"])
        .env_remove("SOFTHSM2_CONF") // the program makes its own private token configurations
        .env_remove("KRYOPTIC_CONF")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["results"].as_array().unwrap();
    let algs: Vec<&str> = rows
        .iter()
        .map(|r| r["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(algs, ["ec-p256", "ec-p384", "ml-dsa-65"]);
    for r in rows {
        let hsm = r["softhsm2_sigs_per_s"].as_f64().unwrap();
        let lc = r["aws_lc_rs_sigs_per_s"].as_f64().unwrap();
        assert!(hsm > 0.0 && lc > 0.0, "{r}");
        let ratio = r["ratio_softhsm2_over_aws_lc_rs"].as_f64().unwrap();
        assert!((ratio - hsm / lc).abs() < 1e-9, "{r}");
    }
    // Native ML-DSA on a PKCS#11 3.2 token (Kryoptic, installed by scripts/install-kryoptic).
    let native = &report["native_ml_dsa"];
    let rows = native["results"].as_array().unwrap_or_else(|| {
        panic!("no native ML-DSA rows (run scripts/install-kryoptic): {native}")
    });
    let algs: Vec<&str> = rows
        .iter()
        .map(|r| r["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(algs, ["ml-dsa-65", "ml-dsa-87"]);
    for r in rows {
        assert_eq!(r["storage"], "token", "{r}");
        let token = r["token_sigs_per_s"].as_f64().unwrap();
        let lc = r["aws_lc_rs_sigs_per_s"].as_f64().unwrap();
        assert!(token > 0.0 && lc > 0.0, "{r}");
        let ratio = r["ratio_token_over_aws_lc_rs"].as_f64().unwrap();
        assert!((ratio - token / lc).abs() < 1e-9, "{r}");
    }
}

/// `qsi hsm` on a token with the PKCS#11 3.2 ML-DSA mechanisms (Kryoptic, scripts/install-kryoptic):
/// `keygen` picks the native path by itself, `--ml-dsa sealed` forces the wrapped one, `test` reports the
/// path and exercises both.
#[test]
fn keygen_and_test_take_the_native_path_on_a_token_with_ml_dsa() {
    let module = qsi_hsm::kryoptic::kryoptic_module_path().unwrap_or_else(|e| {
        panic!(
            "Kryoptic is required for this test: run scripts/install-kryoptic (.ci/run does): {e}"
        )
    });
    let e = Env::new();
    let conf = e.dir.path().join("kryoptic.conf");
    std::fs::write(
        &conf,
        format!(
            "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            e.dir.path().join("slot-1.sql").display()
        ),
    )
    .unwrap();
    let qsi = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
            .args(args)
            .arg("--module")
            .arg(&module)
            .env("KRYOPTIC_CONF", &conf)
            .env_remove("QSI_HSM_PIN")
            .env_remove("QSI_HSM_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qsi {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let user = e.pin("user.pin");
    let so = e.pin("so.pin");
    qsi(&[
        "hsm",
        "init-token",
        "--label",
        "pq",
        "--pin-file",
        &user,
        "--so-pin-file",
        &so,
        "--json",
    ]);
    let auth = ["--token", "pq", "--pin-file", user.as_str(), "--json"];
    let keygen = |label: &str, alg: &str, extra: &[&str]| {
        let mut args = vec!["hsm", "keygen", "--label", label, "--type", alg];
        args.extend(extra);
        args.extend(auth);
        qsi(&args)
    };
    assert_eq!(keygen("ca-87", "ml-dsa-87", &[])["storage"], "token");
    assert_eq!(keygen("site-65", "ml-dsa-65", &[])["storage"], "token");
    let forced = keygen("old-65", "ml-dsa-65", &["--ml-dsa", "sealed"]);
    assert_eq!(forced["storage"], "sealed-by-token");

    let mut args = vec!["hsm", "pubkey", "site-65"];
    args.extend(auth);
    let pem = qsi(&args)["spki_pem"].as_str().unwrap().to_string();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");

    let mut args = vec!["hsm", "test"];
    args.extend(auth);
    let report = qsi(&args);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["ml_dsa_path"], "token", "{report}");
    assert!(
        report["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "CKM_ML_DSA_KEY_PAIR_GEN"),
        "{report}"
    );
    let rows: Vec<(String, String)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, storage) in [
        ("ml-dsa-65", "Token"),
        ("ml-dsa-87", "Token"),
        ("ml-dsa-65-sealed", "SealedByToken"),
        ("ml-dsa-87-sealed", "SealedByToken"),
    ] {
        let (_, detail) = rows
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} row in {rows:?}"));
        assert!(detail.ends_with(&format!("{storage})")), "{name}: {detail}");
    }
}
