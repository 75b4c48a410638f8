//! The access store: the signed bootstrap, officer-signed assignments, and every kind of forged or
//! replayed assignment refused and audited. Card keys are in memory here (the store only sees signatures
//! and certificates); the login tests use SoftHSM2 tokens.

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used)]

use qsi_daemon::access::testpki::{CardSpec, MemoryCard, TestCa};
use qsi_daemon::access::{
    AccessError, AccessStore, Action, Assignment, AuditEvent, CardIdentity, SignedAssignment,
};
use qsi_labels::Label;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn label(s: &str) -> Label {
    s.parse().unwrap()
}

fn grant(card: &MemoryCard, clearance: &str, officer: bool, seq: u64) -> Assignment {
    Assignment {
        subject: card.subject(),
        action: Action::Grant {
            clearance: label(clearance),
            officer,
        },
        seq,
        issued_at: now(),
        subject_cert: officer.then(|| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&card.cert_der)
        }),
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: AccessStore,
    ca: TestCa,
    officer: MemoryCard,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = AccessStore::open(&dir.path().join("access.redb")).unwrap();
    let ca = TestCa::new("QSI test root").unwrap();
    let officer = MemoryCard::issue(&ca, CardSpec::new("Olivia Officer")).unwrap();
    let boot = grant(&officer, "TS//SI", true, 1).sign(&officer).unwrap();
    let rec = store.bootstrap(&boot, now()).unwrap();
    assert!(rec.officer_key.is_some());
    World {
        _dir: dir,
        store,
        ca,
        officer,
    }
}

fn clearance_of(store: &AccessStore, card: &MemoryCard) -> Option<Label> {
    let id = CardIdentity::from_cert_der(&card.cert_der).unwrap();
    store.person_for(&id).unwrap().and_then(|p| p.clearance)
}

fn last_event(store: &AccessStore) -> AuditEvent {
    store.audit_log().unwrap().pop().unwrap().event
}

#[test]
fn an_officer_grants_and_revokes_and_every_step_is_audited() {
    let w = world();
    let analyst = MemoryCard::issue(&w.ca, CardSpec::new("Alan Analyst")).unwrap();
    assert_eq!(
        clearance_of(&w.store, &analyst),
        None,
        "unknown before any grant"
    );

    let a = grant(&analyst, "SECRET//X", false, 1)
        .sign(&w.officer)
        .unwrap();
    w.store.apply(&a, now()).unwrap();
    assert_eq!(clearance_of(&w.store, &analyst), Some(label("S//X")));
    assert!(
        matches!(last_event(&w.store), AuditEvent::Grant { clearance, .. } if clearance == "SECRET//X")
    );

    let r = Assignment {
        subject: analyst.subject(),
        action: Action::Revoke,
        seq: 2,
        issued_at: now(),
        subject_cert: None,
    }
    .sign(&w.officer)
    .unwrap();
    w.store.apply(&r, now()).unwrap();
    assert_eq!(clearance_of(&w.store, &analyst), None);
    assert!(matches!(last_event(&w.store), AuditEvent::Revoke { .. }));
    let key = format!("uuid:{}", analyst.spec.uuid.unwrap());
    assert_eq!(
        w.store.history(&key).unwrap().len(),
        2,
        "both signed records kept as evidence"
    );
    // bootstrap, grant, revoke
    assert_eq!(w.store.verify_audit().unwrap(), 3);
}

fn assert_refused(w: &World, signed: &SignedAssignment, want: impl Fn(&AccessError) -> bool) {
    let before = w.store.audit_log().unwrap().len();
    let err = w.store.apply(signed, now()).unwrap_err();
    assert!(want(&err), "unexpected refusal: {err}");
    let log = w.store.audit_log().unwrap();
    assert_eq!(log.len(), before + 1, "the refusal is audited");
    assert!(
        matches!(&log[before].event, AuditEvent::AssignmentRefused { reason, .. } if *reason == err.to_string())
    );
}

#[test]
fn forged_unsigned_and_replayed_assignments_are_refused_and_audited() {
    let w = world();
    let analyst = MemoryCard::issue(&w.ca, CardSpec::new("Alan Analyst")).unwrap();
    let good = grant(&analyst, "CONFIDENTIAL", false, 1)
        .sign(&w.officer)
        .unwrap();

    // Altered after signing: the analyst edits the clearance in the payload.
    let mut altered = good.clone();
    altered.payload = altered.payload.replace("CONFIDENTIAL", "TOP SECRET");
    assert_refused(&w, &altered, |e| matches!(e, AccessError::Record(_)));

    // Unsigned: an empty signature.
    let mut unsigned = good.clone();
    unsigned.signature = String::new();
    assert_refused(&w, &unsigned, |e| matches!(e, AccessError::Record(_)));

    // Signed by a person who is not an officer (the analyst, about themselves).
    let self_signed = grant(&analyst, "TOP SECRET", false, 1)
        .sign(&analyst)
        .unwrap();
    assert_refused(&w, &self_signed, |e| {
        matches!(e, AccessError::NotOfficer { .. })
    });

    // A card made elsewhere carrying the officer's UUID and FASC-N with another key.
    let rogue_ca = TestCa::new("rogue").unwrap();
    let impostor = MemoryCard::issue(&rogue_ca, w.officer.spec.clone()).unwrap();
    let forged = grant(&analyst, "TOP SECRET", false, 1)
        .sign(&impostor)
        .unwrap();
    assert_refused(&w, &forged, |e| {
        matches!(e, AccessError::OfficerKeyMismatch { .. })
    });

    assert_eq!(
        clearance_of(&w.store, &analyst),
        None,
        "nothing got through"
    );

    // The real one goes through; replaying it afterwards does not.
    w.store.apply(&good, now()).unwrap();
    let downgrade = grant(&analyst, "U", false, 2).sign(&w.officer).unwrap();
    w.store.apply(&downgrade, now()).unwrap();
    assert_refused(&w, &good, |e| {
        matches!(
            e,
            AccessError::OutOfSequence {
                expected: 3,
                got: 1,
                ..
            }
        )
    });
    assert_eq!(
        clearance_of(&w.store, &analyst),
        Some(label("UNCLASSIFIED"))
    );
    w.store.verify_audit().unwrap();
}

#[test]
fn officers_cannot_raise_themselves_nor_remove_the_last_officer() {
    let w = world();
    let me = grant(&w.officer, "TS//SI//TK", true, 2)
        .sign(&w.officer)
        .unwrap();
    assert_refused(&w, &me, |e| matches!(e, AccessError::SelfAssignment));

    // A second officer, then the second may change the first; the last officer stays.
    let second = MemoryCard::issue(&w.ca, CardSpec::new("Sam Second")).unwrap();
    let mut no_cert = grant(&second, "SECRET", true, 1);
    no_cert.subject_cert = None;
    assert_refused(&w, &no_cert.sign(&w.officer).unwrap(), |e| {
        matches!(e, AccessError::OfficerCertMissing)
    });
    w.store
        .apply(
            &grant(&second, "SECRET", true, 1).sign(&w.officer).unwrap(),
            now(),
        )
        .unwrap();
    let demote_first = grant(&w.officer, "SECRET", false, 2).sign(&second).unwrap();
    w.store.apply(&demote_first, now()).unwrap();
    let revoke_second = Assignment {
        subject: second.subject(),
        action: Action::Revoke,
        seq: 2,
        issued_at: now(),
        subject_cert: None,
    };
    // The first is no longer an officer: refused as such.
    assert_refused(&w, &revoke_second.sign(&w.officer).unwrap(), |e| {
        matches!(e, AccessError::NotOfficer { .. })
    });
}

#[test]
fn bootstrap_happens_once_and_only_self_signed() {
    let dir = tempfile::tempdir().unwrap();
    let store = AccessStore::open(&dir.path().join("a.redb")).unwrap();
    let ca = TestCa::new("root").unwrap();
    let alice = MemoryCard::issue(&ca, CardSpec::new("Alice")).unwrap();
    let mallory = MemoryCard::issue(&ca, CardSpec::new("Mallory")).unwrap();

    // Before bootstrap, an ordinary assignment says what to do.
    let early = grant(&alice, "S", false, 1).sign(&alice).unwrap();
    assert!(matches!(
        store.apply(&early, now()),
        Err(AccessError::NotBootstrapped)
    ));

    // Mallory signs a record naming Alice: refused.
    let by_other = grant(&alice, "TS", true, 1).sign(&mallory).unwrap();
    assert!(matches!(
        store.bootstrap(&by_other, now()),
        Err(AccessError::BadBootstrap)
    ));

    store
        .bootstrap(&grant(&alice, "TS", true, 1).sign(&alice).unwrap(), now())
        .unwrap();
    let again = grant(&mallory, "TS", true, 1).sign(&mallory).unwrap();
    assert!(matches!(
        store.bootstrap(&again, now()),
        Err(AccessError::AlreadyBootstrapped)
    ));
    let events: Vec<_> = store
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect();
    assert!(matches!(events[0], AuditEvent::AssignmentRefused { .. }));
    assert!(matches!(events[1], AuditEvent::Bootstrap { .. }));
    assert_eq!(events.len(), 2);
}

#[test]
fn an_expired_officer_card_cannot_sign() {
    let w = world();
    let mut spec = w.officer.spec.clone();
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    spec.not_before = spec.not_after - time::Duration::days(1);
    let analyst = MemoryCard::issue(&w.ca, CardSpec::new("Alan")).unwrap();
    let expired = MemoryCard::issue(&w.ca, spec).unwrap();
    let a = grant(&analyst, "S", false, 1).sign(&expired).unwrap();
    assert_refused(&w, &a, |e| matches!(e, AccessError::SignerCertNotValidNow));
}
