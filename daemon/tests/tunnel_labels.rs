//! A tunnel cleared to a level refuses to carry a service labelled above it: `qsid` will not load such a
//! config, and says which field and why.

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used)]

use qsi_daemon::config::Config;
use qsi_daemon::testbed;

fn site_a_with(
    dir: &std::path::Path,
    peer_clearance: Option<&str>,
    label: Option<&str>,
) -> Result<Config, String> {
    let (mut a, _b) = testbed::pair(dir, "tls").unwrap();
    a.exposes.push((
        "cti".into(),
        "site-b".into(),
        "127.0.0.1:9000".parse().unwrap(),
        "tcp".into(),
    ));
    let mut text = a.render();
    if let Some(c) = peer_clearance {
        text = text.replacen(
            "transport = \"tls\"\n",
            &format!("transport = \"tls\"\nclearance = {c:?}\n"),
            1,
        );
    }
    if let Some(l) = label {
        text = text.replacen(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\nlabel = {l:?}\n"),
            1,
        );
    }
    let path = dir.join("site-a.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}

#[test]
fn a_tunnel_refuses_a_service_labelled_above_its_clearance() {
    let dir = tempfile::tempdir().unwrap();
    let err = site_a_with(dir.path(), Some("CONFIDENTIAL"), Some("SECRET//X")).unwrap_err();
    assert!(
        err.contains("expose[0].label") && err.contains("above the clearance CONFIDENTIAL"),
        "{err}"
    );

    // Compartments count too: a SECRET tunnel may not carry SECRET//X.
    let err = site_a_with(dir.path(), Some("SECRET"), Some("S//X")).unwrap_err();
    assert!(err.contains("SECRET//X"), "{err}");

    let ok = site_a_with(dir.path(), Some("TS//X"), Some("S//X")).unwrap();
    assert_eq!(ok.exposes[0].label.to_string(), "SECRET//X");
    assert_eq!(ok.peers[0].clearance.to_string(), "TOP SECRET//X");
}

#[test]
fn without_labels_a_tunnel_is_unclassified_and_refuses_labelled_services() {
    let dir = tempfile::tempdir().unwrap();
    let ok = site_a_with(dir.path(), None, None).unwrap();
    assert_eq!(ok.exposes[0].label.to_string(), "UNCLASSIFIED");
    let err = site_a_with(dir.path(), None, Some("CUI")).unwrap_err();
    assert!(err.contains("above the clearance UNCLASSIFIED"), "{err}");
    let err = site_a_with(dir.path(), Some("SECRET/X"), None).unwrap_err();
    assert!(
        err.contains("peer[0].clearance") && err.contains("'//'"),
        "{err}"
    );
}
