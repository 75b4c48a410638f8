//! Smart-card login end to end, in one process but with every real part: SoftHSM2 tokens as cards (the
//! key signs the TLS 1.3 handshake on the token), the portal on a loopback socket with post-quantum TLS,
//! the webpki validation engine with a CRL, the redb access store with its audit chain.

// Setup helpers outside #[test] functions fail the test by panicking, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::Ordering;

use hyper::{Method, StatusCode};
use qsi_daemon::access::AuditEvent;
use qsi_daemon::access::testpki::{CardSpec, TestCa};
use qsi_daemon::portal::testbed::{TestCard, Testbed, TestbedOptions};

fn events(tb: &Testbed) -> Vec<AuditEvent> {
    tb.store.verify_audit().unwrap();
    tb.store
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

fn last_event(tb: &Testbed) -> AuditEvent {
    events(tb).pop().unwrap()
}

/// A one-route HTTP upstream that echoes who the portal says is asking.
async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let who = req
                            .headers()
                            .get("x-qsi-person")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body =
                            format!("{{\"path\":\"{}\",\"person\":\"{who}\"}}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_card_logs_in_and_sees_only_what_its_clearance_allows() {
    let up = upstream().await;
    let tb = Testbed::start(TestbedOptions {
        cti_upstream: Some(up),
        ..Default::default()
    })
    .await
    .unwrap();
    let alan = tb.enrol("Alan Analyst", Some("SECRET//X")).unwrap();
    let card = alan.open().unwrap();
    let mut c = tb.connect(&card).await.unwrap();
    assert!(
        c.group.contains("MLKEM"),
        "post-quantum key exchange, got {}",
        c.group
    );

    let a = c.login().await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["clearance"], "SECRET//X");
    assert!(
        matches!(last_event(&tb), AuditEvent::Login { clearance, .. } if clearance == "SECRET//X")
    );

    let list = c.request(Method::GET, "/data").await.unwrap();
    let ids: Vec<&str> = list.body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s-x", "u"], "only dominated objects are listed");
    let ok = c.request(Method::GET, "/data/s-x").await.unwrap();
    assert_eq!(
        (ok.status, ok.body["content"].as_str()),
        (StatusCode::OK, Some("content of s-x"))
    );

    // Above the clearance, outside the compartments, and missing: the same answer, byte for byte.
    let missing = c.request(Method::GET, "/data/no-such-thing").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for id in ["ts", "s-y"] {
        let before = events(&tb).len();
        let hidden = c
            .request(Method::GET, &format!("/data/{id}"))
            .await
            .unwrap();
        assert_eq!(
            (hidden.status, &hidden.body),
            (missing.status, &missing.body),
            "{id}"
        );
        let ev = events(&tb);
        assert_eq!(ev.len(), before + 1);
        assert!(
            matches!(&ev[before], AuditEvent::AccessDenied { resource, .. } if *resource == format!("/data/{id}"))
        );
    }

    // Services: the S//X service is forwarded with the person; the TS one does not exist for this session.
    let svc = c
        .request(Method::GET, "/service/cti/indicators")
        .await
        .unwrap();
    assert_eq!(svc.status, StatusCode::OK, "{:?}", svc.body);
    assert_eq!(svc.body["path"], "/indicators");
    assert_eq!(
        svc.body["person"],
        format!("uuid:{}", alan.spec.uuid.unwrap())
    );
    let ts = c.request(Method::GET, "/service/ts-feed/x").await.unwrap();
    assert_eq!((ts.status, &ts.body), (missing.status, &missing.body));
    assert!(
        matches!(last_event(&tb), AuditEvent::AccessDenied { resource, .. } if resource == "/service/ts-feed")
    );

    // Logout ends the session.
    let token = c.token().unwrap().to_owned();
    assert_eq!(c.logout().await.unwrap().status, StatusCode::OK);
    let after = c
        .request_with_token(Method::GET, "/whoami", Some(&token))
        .await
        .unwrap();
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replayed_on_another_connection_is_refused_and_the_session_ended() {
    let tb = Testbed::start(TestbedOptions::default()).await.unwrap();
    let alan = tb.enrol("Alan Analyst", Some("CONFIDENTIAL")).unwrap();
    let card = alan.open().unwrap();
    let mut first = tb.connect(&card).await.unwrap();
    assert_eq!(first.login().await.unwrap().status, StatusCode::OK);
    let stolen = first.token().unwrap().to_owned();

    // Same card, same person, but another TLS connection: the exporter differs.
    let mut second = tb.connect(&card).await.unwrap();
    let r = second
        .request_with_token(Method::GET, "/whoami", Some(&stolen))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.error().unwrap().contains("another connection"),
        "{:?}",
        r.body
    );
    assert!(
        matches!(last_event(&tb), AuditEvent::TokenRefused { reason, session: Some(_), .. } if reason.contains("another connection"))
    );

    // The stolen session is ended on its own connection too.
    let r = first.request(Method::GET, "/whoami").await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires() {
    let tb = Testbed::start(TestbedOptions::default()).await.unwrap();
    let alan = tb.enrol("Alan Analyst", Some("U")).unwrap();
    let card = alan.open().unwrap();
    let mut c = tb.connect(&card).await.unwrap();
    assert_eq!(c.login().await.unwrap().status, StatusCode::OK);
    assert_eq!(
        c.request(Method::GET, "/whoami").await.unwrap().status,
        StatusCode::OK
    );
    tb.clock_offset.store(601, Ordering::Relaxed);
    let r = c.request(Method::GET, "/whoami").await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().unwrap().contains("expired"));
    assert!(
        matches!(last_event(&tb), AuditEvent::TokenRefused { reason, .. } if reason.contains("expired"))
    );
}

async fn refused(tb: &Testbed, card: &TestCard, want: &str) {
    let chuid = card.open().unwrap().chuid;
    refused_with_chuid(tb, card, chuid, want).await;
}

/// As [`refused`], presenting `chuid` instead of the card's own CHUID.
async fn refused_with_chuid(tb: &Testbed, card: &TestCard, chuid: Option<Vec<u8>>, want: &str) {
    let opened = card.open().unwrap();
    let mut c = tb.connect(&opened).await.unwrap().with_chuid(chuid);
    let a = c.login().await.unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{:?}", a.body);
    let msg = a.error().unwrap();
    assert!(msg.contains(want), "{msg:?} should say {want:?}");
    match last_event(tb) {
        AuditEvent::LoginRefused {
            reason, card: id, ..
        } => {
            assert_eq!(reason, msg);
            assert_eq!(
                id.unwrap(),
                format!(
                    "uuid:{} fascn:{}",
                    card.spec.uuid.unwrap(),
                    hex::encode_upper(card.spec.fascn.unwrap())
                )
            );
        }
        other => panic!("expected a refused login in the audit log, got {other:?}"),
    }
    // No session was made: the connection has no token and data stays closed.
    assert!(c.token().is_none());
    assert_eq!(
        c.request(Method::GET, "/data/u").await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cards_are_refused_with_a_clear_message_and_audited() {
    // The portal loads its CRL at start, before any analyst card exists; the test CA numbers serials in
    // order (content signer 2, CRL 3, portal certificate 4, officer card 5), so the CRL lists the serial
    // the next card gets.
    let tb = Testbed::start(TestbedOptions {
        revoked: vec![6],
        ..Default::default()
    })
    .await
    .unwrap();
    let revoked = tb.enrol("Rita Revoked", Some("S")).unwrap();
    assert_eq!(revoked.serial, 6, "the CRL was written for serial 6");
    refused(&tb, &revoked, "revoked").await;

    let mut spec = CardSpec::new("Ed Expired");
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    spec.not_before = spec.not_after - time::Duration::days(365);
    let expired = TestCard::provision(&tb.ca, spec).unwrap();
    tb.store
        .apply(
            &qsi_daemon::portal::testbed::grant(
                &tb.officer.open().unwrap(),
                expired.subject(),
                "S",
                1,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )
            .unwrap(),
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap();
    refused(&tb, &expired, "expired").await;

    let rogue = TestCa::new("Some other agency").unwrap();
    let stranger = TestCard::provision(&rogue, CardSpec::new("Stan Stranger")).unwrap();
    refused(&tb, &stranger, "does not trust").await;

    let unknown = tb.enrol("Una Unregistered", None).unwrap();
    refused(&tb, &unknown, "not registered").await;

    // The CHUID (the portal requires one): missing, another card's, or altered.
    let carl = tb.enrol("Carl Chuid", Some("S")).unwrap();
    refused_with_chuid(&tb, &carl, None, "requires your card's signed CHUID").await;
    let theirs = unknown.open().unwrap().chuid;
    refused_with_chuid(&tb, &carl, theirs, "names another card").await;
    let mut altered = carl.open().unwrap().chuid.unwrap();
    altered[30] ^= 0x01; // inside the GUID element
    refused_with_chuid(&tb, &carl, Some(altered), "not validly signed").await;
    let mut c = tb.connect(&carl.open().unwrap()).await.unwrap();
    assert_eq!(c.login().await.unwrap().status, StatusCode::OK);
}

#[test]
fn a_wrong_pin_is_refused_by_the_card_with_its_pin_flags() {
    let ca = TestCa::new("root").unwrap();
    let card = TestCard::provision(&ca, CardSpec::new("Walt WrongPin")).unwrap();
    let err = qsi_daemon::card::Card::open(
        &card.token.module,
        &card.token.label,
        qsi_hsm::Pin::new("000000"),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, qsi_daemon::card::CardError::Hsm(qsi_hsm::Error::WrongPin { flags, .. }) if flags.count_low),
        "{msg}"
    );
    assert!(
        msg.contains("wrong PIN") && msg.contains("count low"),
        "{msg}"
    );
    // The right PIN still works (SoftHSM2 never locks) and clears nothing on the portal side.
    card.open().unwrap();
}

#[test]
fn a_card_holding_only_the_key_opens_with_its_certificate_file() {
    use der::Decode;
    use qsi_daemon::access::AssignmentSigner;
    use qsi_hsm::KeyStore;
    let ca = TestCa::new("root").unwrap();
    let token = qsi_hsm::SoftHsmToken::create("keyonly").unwrap();
    let store = token.open().unwrap();
    let key = store
        .generate("PIV AUTH key", qsi_hsm::KeyAlgorithm::EcP256)
        .unwrap();
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&store.public_key_spki(&key).unwrap())
            .unwrap();
    let public = qsi_daemon::access::testpki::ForeignPublicKey {
        raw: spki.subject_public_key.raw_bytes().to_vec(),
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let (cert, _) = ca
        .issue_card(&public, &CardSpec::new("Kim KeyOnly"))
        .unwrap();

    let err = qsi_daemon::card::Card::open(&token.module, &token.label, token.user_pin.clone())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds no PIV Authentication certificate"),
        "{err}"
    );
    let card = qsi_daemon::card::Card::open_with_certificate(
        &token.module,
        &token.label,
        token.user_pin.clone(),
        cert.clone(),
    )
    .unwrap();
    let sig = card.sign(b"message").unwrap();
    let parsed = x509_cert::Certificate::from_der(&cert).unwrap();
    qsi_daemon::access::record::verify_with_cert(&parsed, b"message", &sig).unwrap();
    // A certificate for another key finds no key on this card.
    let other = TestCa::new("other").unwrap();
    let stranger =
        qsi_daemon::access::testpki::MemoryCard::issue(&other, CardSpec::new("Stranger")).unwrap();
    assert!(
        qsi_daemon::card::Card::open_with_certificate(
            &token.module,
            &token.label,
            token.user_pin.clone(),
            stranger.cert_der
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_the_admin_socket_ends_live_sessions() {
    use qsi_daemon::access::{Action, Assignment};
    use qsi_daemon::portal::admin::{AccessRequest, request};
    let tb = Testbed::start(TestbedOptions::default()).await.unwrap();
    let alan = tb.enrol("Alan Analyst", Some("SECRET//X")).unwrap();
    let card = alan.open().unwrap();
    let mut c = tb.connect(&card).await.unwrap();
    assert_eq!(c.login().await.unwrap().status, StatusCode::OK);
    assert_eq!(
        c.request(Method::GET, "/whoami").await.unwrap().status,
        StatusCode::OK
    );

    // The officer signs the revocation on the client side; the running portal applies it.
    let officer = tb.officer.open().unwrap();
    let socket = tb.admin_socket.clone();
    let subject = alan.subject();
    let asked = tokio::task::spawn_blocking(move || {
        let seq = request(
            &socket,
            &AccessRequest::Person {
                uuid: subject.uuid,
                fascn: subject.fascn.clone(),
            },
        )
        .unwrap()
        .expect("the portal answers on its socket")
        .person
        .unwrap()
        .seq;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = Assignment {
            subject,
            action: Action::Revoke,
            seq: seq + 1,
            issued_at: now,
            subject_cert: None,
        }
        .sign(&officer)
        .unwrap();
        let forged = signed.clone();
        let applied = request(&socket, &AccessRequest::Apply { assignment: signed })
            .unwrap()
            .unwrap();
        // The same record replayed is refused by the store, with its reason.
        let replay = request(&socket, &AccessRequest::Apply { assignment: forged })
            .unwrap()
            .unwrap();
        (applied, replay)
    })
    .await
    .unwrap();
    assert!(asked.0.error.is_none(), "{:?}", asked.0.error);
    assert_eq!(asked.0.person.unwrap().clearance, None);
    assert!(
        asked
            .1
            .error
            .as_deref()
            .unwrap_or("")
            .contains("not the next one"),
        "{:?}",
        asked.1.error
    );

    // The live session ended with the revocation; a new login is refused.
    let a = c.request(Method::GET, "/whoami").await.unwrap();
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    let mut c2 = tb.connect(&card).await.unwrap();
    let a = c2.login().await.unwrap();
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.error().unwrap().contains("withdrawn"), "{:?}", a.body);
    let ev = events(&tb);
    assert!(
        ev.iter().any(|e| matches!(e, AuditEvent::Logout { .. })),
        "{ev:?}"
    );
}
