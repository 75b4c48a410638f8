//! The `qkd-sim` binary: JSON outputs, statistics files, and errors that name the bad value.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed setup is a failed test

use std::process::Command;

fn qkd_sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qkd-sim"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rate_json_has_the_documented_keys() {
    let (ok, out, err) = qkd_sim(&["rate", "--params", "gys", "--distance-km", "50", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "secret_key_rate_per_pulse",
        "secret_key_rate_bps",
        "qber",
        "gain",
        "max_distance_km",
        "mu_opt",
    ] {
        assert!(v[k].is_number(), "{k} missing in {out}");
    }
    let max = v["max_distance_km"].as_f64().unwrap();
    assert!((max - 142.0).abs() < 2.0, "{max}");
    let vw = v["methods"]["vacuum_weak"]["max_distance_km"]
        .as_f64()
        .unwrap();
    assert!(vw < max && vw > 135.0, "{vw}");
}

#[test]
fn run_writes_json_lines_and_reports_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.jsonl");
    let s = stats.to_str().unwrap();
    let (ok, out, err) = qkd_sim(&[
        "run",
        "--params",
        "modern",
        "--distance-km",
        "25",
        "--blocks",
        "2",
        "--pulses",
        "3000000",
        "--stats",
        s,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("final key bits"), "{out}");
    let text = std::fs::read_to_string(&stats).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l["final_key_bits"].as_u64().unwrap() > 0, "{l}");
        assert!(
            l["qber"]["decoy"].is_number()
                && l["gain"]["vacuum"].is_number()
                && l["ec_leak_bits"].is_number()
        );
    }
    let (ok, out, _) = qkd_sim(&[
        "run",
        "--params",
        "modern",
        "--distance-km",
        "25",
        "--pulses",
        "3000000",
        "--eve",
        "1",
    ]);
    assert!(ok);
    assert!(out.contains("ABORTED") && out.contains("QBER"), "{out}");
}

#[test]
fn example_parameter_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/params/example.toml");
    let (ok, out, err) = qkd_sim(&["rate", "--params", path, "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"distance_km\": 40.0"), "{out}");
}

#[test]
fn bad_input_names_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[detector]\nefficiency = 1.7\n").unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[detector\nefficiency = 0.1\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["rate", "--distance-km", "-5"], "fibre.length_km = -5"),
        (vec!["rate", "--params", "nosuchset"], "nosuchset"),
        (
            vec!["rate", "--params", bad.to_str().unwrap()],
            "detector.efficiency = 1.7",
        ),
        (
            vec!["rate", "--params", broken.to_str().unwrap()],
            "malformed parameter TOML",
        ),
        (vec!["run", "--eve", "1.2"], "--eve 1.2"),
        (vec!["rate", "--mu", "-0.1"], "source.mu = -0.1"),
    ];
    for (args, needle) in cases {
        let (ok, _, err) = qkd_sim(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The sweep draws a PNG (needs a TrueType font: fonts-dejavu-core, installed by .ci/run).
#[test]
fn sweep_plots_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("rate.png");
    let args = [
        "sweep",
        "--params",
        "gys",
        "--from",
        "0",
        "--to",
        "150",
        "--step",
        "10",
        "--mc-step",
        "60",
    ];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([
        "--mc-blocks",
        "1",
        "--mc-sifted",
        "20000",
        "--json",
        "--plot",
        png.to_str().unwrap(),
    ]);
    let (ok, out, err) = qkd_sim(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["monte_carlo"].as_array().unwrap().len(), 3);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 10_000);
}
