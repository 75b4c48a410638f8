//! Shared helpers for the PKITS-style suites.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qsi_pki::revocation::Crl;
use qsi_pki::validate::{
    Cert, PolicySet, TrustAnchor, ValidationInput, ValidationOptions, validate,
};
use serde::Deserialize;

pub fn testdata() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata"
    ))
    .to_path_buf()
}

#[derive(Deserialize)]
pub struct Manifest {
    pub validation_time: String,
    pub cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
pub struct Case {
    pub id: String,
    pub number: String,
    pub certs: Vec<String>,
    pub crls: Vec<String>,
    pub should_validate: bool,
    pub initial_policy_set: Vec<String>,
    pub initial_explicit_policy: bool,
    pub initial_policy_mapping_inhibit: bool,
    pub initial_inhibit_any_policy: bool,
    pub expected_user_constrained_policy_set: Option<Vec<String>>,
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(s: &str) -> SystemTime {
    let n = |a: usize, b: usize| s[a..b].parse::<u16>().unwrap();
    let dt = der::DateTime::new(
        n(0, 4),
        n(5, 7) as u8,
        n(8, 10) as u8,
        n(11, 13) as u8,
        n(14, 16) as u8,
        n(17, 19) as u8,
    )
    .unwrap();
    UNIX_EPOCH + Duration::from_secs(dt.unix_duration().as_secs())
}

pub fn load_manifest(dir: &Path) -> Manifest {
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join("manifest.json").display()));
    serde_json::from_str(&text).unwrap()
}

/// Reads the exclusion file's lines for one suite: `suite  CaseId  reason`, `#` comments.
pub fn load_exclusions(file: &str, suite: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (s, id) = (parts.next()?, parts.next()?);
            let reason = l.split_once(id).map_or("", |x| x.1).trim().to_string();
            (s == suite).then(|| (id.to_string(), reason))
        })
        .collect()
}

/// Runs one case; Ok(()) when our verdict (and policy set) matches the manifest.
pub fn run_case(
    dir: &Path,
    cert_dir: &str,
    crl_dir: &str,
    case: &Case,
    time: SystemTime,
    strict_alg: bool,
) -> Result<(), String> {
    let load_cert = |name: &str| {
        let p = dir.join(cert_dir).join(name);
        Cert::from_der(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    };
    let mut certs = Vec::new();
    for name in &case.certs {
        match load_cert(name) {
            Ok(c) => certs.push(c),
            // A certificate we cannot even parse makes the path invalid.
            Err(e) => {
                return if case.should_validate {
                    Err(format!("{name} does not parse: {e}"))
                } else {
                    Ok(())
                };
            }
        }
    }
    let mut crls = Vec::new();
    for name in &case.crls {
        let p = dir.join(crl_dir).join(name);
        match Crl::from_der(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))) {
            Ok(c) => crls.push(c),
            Err(e) => eprintln!("{}: CRL {name} does not parse ({e}); left out", case.id),
        }
    }
    let anchors = [TrustAnchor::from_cert(certs[0].clone())];
    let target = certs.last().unwrap().clone();
    let candidates: Vec<Cert> = certs[1..certs.len() - 1].to_vec();
    let options = ValidationOptions {
        initial_policy_set: case
            .initial_policy_set
            .iter()
            .map(|o| o.parse().unwrap())
            .collect(),
        explicit_policy: case.initial_explicit_policy,
        inhibit_policy_mapping: case.initial_policy_mapping_inhibit,
        inhibit_any_policy: case.initial_inhibit_any_policy,
        require_matching_signature_algorithms: strict_alg,
        ..ValidationOptions::default()
    };
    let mut input = ValidationInput::new(&anchors, &target, time, &options);
    input.candidates = &candidates;
    input.crls = &crls;
    let got = validate(&input);
    match (&got, case.should_validate) {
        (Ok(v), true) => {
            if let Some(expected) = &case.expected_user_constrained_policy_set {
                let want: BTreeSet<String> = expected.iter().cloned().collect();
                let have: BTreeSet<String> = match &v.valid_policy_set {
                    PolicySet::Any => BTreeSet::from(["2.5.29.32.0".to_string()]),
                    PolicySet::Set(s) => s.clone(),
                };
                if want != have {
                    return Err(format!("policy set {have:?}, expected {want:?}"));
                }
            }
            Ok(())
        }
        (Err(_), false) => Ok(()),
        (Ok(_), false) => Err("validated, expected failure".into()),
        (Err(e), true) => Err(format!("failed, expected success: {e}")),
    }
}
