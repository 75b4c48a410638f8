//! The example portal configuration loads, and a portal refuses to hold data or carry a service labelled
//! above the site's clearance, naming the field.

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used)]

use qsi_daemon::portal::PortalConfig;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/portal/portal.toml");

#[test]
fn the_example_loads() {
    let c = PortalConfig::load(std::path::Path::new(EXAMPLE)).unwrap();
    assert_eq!(c.clearance.to_string(), "TOP SECRET//SI//TK");
    assert_eq!(c.services["taxii"].label.to_string(), "SECRET");
    assert_eq!(c.accepted_policies.len(), 2);
    assert_eq!(c.chuid, qsi_daemon::portal::config::ChuidMode::Require);
}

fn load_with(extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace("TOP SECRET//SI//TK", "SECRET//SI")
        + extra;
    let p = dir.path().join("portal.toml");
    std::fs::write(&p, text).unwrap();
    PortalConfig::load(&p).unwrap_err().to_string()
}

#[test]
fn nothing_above_the_site_clearance_loads() {
    let e = load_with("\n[[service]]\nname = \"ts\"\nlabel = \"TS\"\nupstream = \"127.0.0.1:1\"\n");
    assert!(
        e.contains("service[1].label") && e.contains("refuses to carry"),
        "{e}"
    );
    let e = load_with("\n[[object]]\nid = \"tk\"\nlabel = \"S//TK\"\nfile = \"x\"\n");
    assert!(
        e.contains("object[1].label") && e.contains("may not hold"),
        "{e}"
    );
    let e = load_with("\n[[object]]\nid = \"bad\"\nlabel = \"SECRET/SI\"\nfile = \"x\"\n");
    assert!(e.contains("object[1].label") && e.contains("'//'"), "{e}");
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace("chuid = \"require\"", "chuid = \"sometimes\"");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("portal.toml");
    std::fs::write(&p, text).unwrap();
    let e = PortalConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("trust.chuid") && e.contains("if-present"), "{e}");
}
