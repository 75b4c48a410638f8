//! A PIV-I card from a partner agency, cross-certified through a bridge, logs in under the policy the
//! bridge maps into this site's domain; a card behind a bridge this site does not cross-certify, or a
//! mapping that does not reach an accepted policy, is refused. Cards are SoftHSM2 tokens; the path is
//! validated by the PKI validator (RFC 5280 policy mapping, CRLs of every CA on the path).

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use hyper::StatusCode;
use qsi_daemon::access::AuditEvent;
use qsi_daemon::access::testpki::{CardSpec, TestCa};
use qsi_daemon::portal::testbed::{TestCard, Testbed, TestbedOptions, grant};
use qsi_daemon::portal::validate::PkiCardValidator;
use qsi_pki::validate::RevocationMode;

/// This site's policy for hardware-token authentication (its own arc).
const OURS: &str = "1.3.6.1.4.1.99999.1.1";
/// The bridge's medium-hardware policy.
const BRIDGE: &str = "1.3.6.1.4.1.99999.2.1";
/// The partner's PIV-I hardware policy.
const PARTNER: &str = "1.3.6.1.4.1.99999.3.1";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

struct Partner {
    root: TestCa,
    bridge_to_partner: Vec<u8>,
    bridge: TestCa,
}

/// A bridge that cross-certifies a partner root, mapping the bridge's policy to the partner's.
fn partner(name: &str, bridge_name: &str) -> Partner {
    let bridge = TestCa::new(bridge_name).unwrap();
    let root = TestCa::new(name).unwrap();
    let bridge_to_partner = bridge
        .cross_certify(&root, &[BRIDGE], &[(BRIDGE, PARTNER)])
        .unwrap();
    Partner {
        root,
        bridge_to_partner,
        bridge,
    }
}

fn pivi_card(issuer: &TestCa, holder: &str) -> TestCard {
    let mut spec = CardSpec::new(holder);
    spec.fascn = None; // PIV-I: card UUID only
    spec.policies = vec![PARTNER.to_owned()];
    TestCard::provision(issuer, spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_piv_i_card_logs_in_through_the_bridge_under_the_mapped_policy() {
    let ours = TestCa::new("QSI Root").unwrap();
    let trusted = partner("Partner Agency Root", "Federal Bridge");
    // Our root cross-certifies the bridge: our policy maps to the bridge's.
    let ours_to_bridge = ours
        .cross_certify(&trusted.bridge, &[OURS], &[(OURS, BRIDGE)])
        .unwrap();
    // Another agency behind a bridge we never cross-certified.
    let stranger = partner("Stranger Agency Root", "Unknown Bridge");
    // A partner the trusted bridge cross-certifies under a bridge policy our root does not map to.
    let other_bridge_policy = "1.3.6.1.4.1.99999.2.9";
    let sideways_root = TestCa::new("Sideways Agency Root").unwrap();
    let bridge_to_sideways = trusted
        .bridge
        .cross_certify(
            &sideways_root,
            &[other_bridge_policy],
            &[(other_bridge_policy, PARTNER)],
        )
        .unwrap();

    let crls = vec![
        ours.crl(&[]).unwrap(),
        trusted.bridge.crl(&[]).unwrap(),
        trusted.root.crl(&[]).unwrap(),
        stranger.bridge.crl(&[]).unwrap(),
        stranger.root.crl(&[]).unwrap(),
        sideways_root.crl(&[]).unwrap(),
    ];
    let candidates = vec![
        ours_to_bridge,
        trusted.bridge_to_partner.clone(),
        stranger.bridge_to_partner.clone(),
        bridge_to_sideways,
    ];
    let validator = PkiCardValidator::new(
        std::slice::from_ref(&ours.cert_der),
        &candidates,
        &crls,
        &[OURS.to_owned()],
        RevocationMode::Require,
    )
    .unwrap();
    let tb = Testbed::start(TestbedOptions {
        ca: Some(ours),
        validator: Some(Arc::new(validator)),
        ..Default::default()
    })
    .await
    .unwrap();

    // The partner's analyst, registered here by UUID by our officer.
    let pat = pivi_card(&trusted.root, "Pat Partner");
    let officer = tb.officer.open().unwrap();
    tb.store
        .apply(
            &grant(&officer, pat.subject(), "SECRET//X", 1, now()).unwrap(),
            now(),
        )
        .unwrap();
    let card = pat.open().unwrap();
    let mut c = tb.connect(&card).await.unwrap();
    let a = c.login().await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        a.body["policies"],
        serde_json::json!([OURS]),
        "the partner policy, mapped twice, is ours"
    );
    assert_eq!(a.body["person"], format!("uuid:{}", pat.spec.uuid.unwrap()));

    // Behind a bridge we do not cross-certify: no path.
    let sam = pivi_card(&stranger.root, "Sam Stranger");
    tb.store
        .apply(
            &grant(&officer, sam.subject(), "U", 1, now()).unwrap(),
            now(),
        )
        .unwrap();
    let mut c = tb.connect(&sam.open().unwrap()).await.unwrap();
    let a = c.login().await.unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.error().unwrap().contains("does not trust"),
        "{:?}",
        a.body
    );
    assert!(matches!(
        tb.store.audit_log().unwrap().pop().unwrap().event,
        AuditEvent::LoginRefused { .. }
    ));

    // Through our bridge, but the mapping never reaches our policy.
    let sid = pivi_card(&sideways_root, "Sid Sideways");
    tb.store
        .apply(
            &grant(&officer, sid.subject(), "U", 1, now()).unwrap(),
            now(),
        )
        .unwrap();
    let mut c = tb.connect(&sid.open().unwrap()).await.unwrap();
    let a = c.login().await.unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.error().unwrap().contains("policies are not accepted"),
        "{:?}",
        a.body
    );
    tb.store.verify_audit().unwrap();
}
