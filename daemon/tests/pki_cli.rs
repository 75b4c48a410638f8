//! `qsi pki verify` as a real process: exit 0 for a valid PKITS path (with the path and policy set in
//! the JSON), 1 for a revoked end entity (naming it), 2 for unusable input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn pkits(p: &str) -> String {
    format!(
        "{}/../../shared/testdata/pkits/{p}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn verify(ee: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_qsi"))
        .args(["pki", "verify", "--json", "--time", "2011-04-15T00:00:00Z"])
        .args(["--anchor", &pkits("certs/TrustAnchorRootCertificate.crt")])
        .args(["--untrusted", &pkits("certs/GoodCACert.crt")])
        .args(["--crl", &pkits("crls/TrustAnchorRootCRL.crl")])
        .args(["--crl", &pkits("crls/GoodCACRL.crl")])
        .args(["--cert", &pkits(ee)])
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), json)
}

#[test]
fn valid_path_exits_zero_with_path_and_policies() {
    let (code, j) = verify(
        "certs/ValidCertificatePathTest1EE.crt",
        &["--policy", "2.16.840.1.101.3.2.1.48.1"],
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["valid"], true);
    assert_eq!(j["path"].as_array().unwrap().len(), 2);
    assert_eq!(
        j["valid_policy_set"],
        serde_json::json!(["2.16.840.1.101.3.2.1.48.1"])
    );
}

#[test]
fn revoked_exits_one_naming_the_certificate() {
    let (code, j) = verify("certs/InvalidRevokedEETest3EE.crt", &[]);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["valid"], false);
    assert!(
        j["failed_certificate"]["subject"]
            .as_str()
            .unwrap()
            .contains("Invalid Revoked EE")
    );
    assert!(j["reason"].as_str().unwrap().starts_with("revoked"));
}

#[test]
fn policy_not_in_path_exits_one_and_bad_input_two() {
    let (code, _) = verify(
        "certs/ValidCertificatePathTest1EE.crt",
        &["--policy", "2.16.840.1.101.3.2.1.48.2", "--explicit-policy"],
    );
    assert_eq!(code, 1);
    let (code, j) = verify("certs/does-not-exist.crt", &[]);
    assert_eq!(code, 2, "{j}");
    let (code, _) = verify(
        "certs/ValidCertificatePathTest1EE.crt",
        &["--time", "yesterday"],
    );
    assert_eq!(code, 2);
}
