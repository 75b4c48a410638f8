//! The KMS against a KME over real HTTPS with mutual TLS. The KME here is the fault-injecting test KME
//! (`qsi_kms::testkit::TestKme`), because qkd-sim cannot produce malformed JSON, wrong key sizes,
//! duplicate or replayed key IDs, hangs or dropped connections on demand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use qsi_kms::audit::AuditEvent;
use qsi_kms::client::{ClientSettings, Etsi014Client};
use qsi_kms::kek::{SoftKek, SoftSigner, random_key};
use qsi_kms::pool::PoolPolicy;
use qsi_kms::service::{Kms, LinkSpec};
use qsi_kms::source::FetchError;
use qsi_kms::store::{Role, StoreOptions, SystemClock};
use qsi_kms::testkit::{Fault, TestKme, TestPki};
use qsi_kms::{KmsError, tls};

struct Env {
    dir: tempfile::TempDir,
    pki: TestPki,
    kme: TestKme,
    kek: Arc<SoftKek>,
    signer: Arc<SoftSigner>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki")).unwrap();
    let server = pki.issue("kme", &["localhost", "127.0.0.1"]).unwrap();
    pki.issue("sae-a", &["sae-a"]).unwrap();
    let tls = tls::server_config(&server.cert, &server.key, &pki.ca()).unwrap();
    let kme = TestKme::start(tls, 256).await.unwrap();
    Env {
        kek: Arc::new(SoftKek::new(&random_key(32).unwrap(), "kek").unwrap()),
        signer: Arc::new(SoftSigner::new(&random_key(32).unwrap(), "audit")),
        dir,
        pki,
        kme,
    }
}

impl Env {
    fn client(&self, timeout_ms: u64, retries: u32) -> Arc<Etsi014Client> {
        let p = self.dir.path().join("pki");
        let tls =
            tls::client_config(&self.pki.ca(), &p.join("sae-a.pem"), &p.join("sae-a.key")).unwrap();
        Arc::new(
            Etsi014Client::new(ClientSettings {
                kme_url: self.kme.url(),
                server_name: Some("localhost".into()),
                peer_sae_id: "sae-b".into(),
                timeout: Duration::from_millis(timeout_ms),
                connect_timeout: Duration::from_secs(2),
                retries,
                backoff: Duration::from_millis(10),
                tls,
            })
            .unwrap(),
        )
    }

    fn kms(&self, role: Role, client: Arc<Etsi014Client>) -> Arc<Kms> {
        Kms::open(
            &self.dir.path().join("kms.redb"),
            self.kek.clone(),
            self.signer.clone(),
            Arc::new(SystemClock),
            StoreOptions::default(),
            vec![LinkSpec {
                name: "ab".into(),
                role,
                key_bits: 256,
                policy: PoolPolicy {
                    capacity: 64,
                    low_water: 8,
                    batch: 8,
                    stall_after_ms: 60_000,
                },
                source: client,
            }],
        )
        .unwrap()
    }
}

fn events(kms: &Kms) -> Vec<AuditEvent> {
    kms.store()
        .audit_records(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.event).unwrap())
        .collect()
}

fn stored(kms: &Kms) -> usize {
    kms.status()[0].metrics.stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_fetches_over_mutual_tls_and_survives_restart() {
    let e = env().await;
    let kms = e.kms(Role::Master, e.client(2000, 0));
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 8);
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 8);
    let ids = kms.offer_for_announcement("ab", 3).await.unwrap();
    assert_eq!(ids.len(), 3);
    let k2 = kms.clone();
    let (id, key) =
        tokio::task::spawn_blocking(move || k2.take_key_for_handshake("ab", "tunnel-1"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(id, ids[0], "handshakes use announced keys, oldest first");
    assert_eq!(key.bits(), 256);
    assert!(e.kme.handed_over().contains(&id));
    drop(kms);
    let kms = e.kms(Role::Master, e.client(2000, 0));
    assert_eq!(
        stored(&kms),
        15,
        "every undelivered key is back after restart"
    );
    let k2 = kms.clone();
    let (id2, _) = tokio::task::spawn_blocking(move || k2.take_key_for_handshake("ab", "tunnel-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id2, ids[1], "announced state survives restart");
    kms.store().verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_kme_gives_clear_errors_and_loses_nothing() {
    let e = env().await;
    let kms = e.kms(Role::Master, e.client(300, 0));

    // malformed JSON on a 200: the keys left the KME, so the batch is written off, never used
    e.kme.inject(Fault::MalformedJson);
    let err = kms.fetch_once("ab").await.unwrap_err();
    assert!(err.to_string().contains("malformed key container"), "{err}");
    assert!(
        events(&kms)
            .iter()
            .any(|ev| matches!(ev, AuditEvent::WrittenOff { number: 8, .. }))
    );
    assert_eq!(stored(&kms), 0);

    // a key of the wrong size: that key refused and audited, the rest stored
    e.kme.inject(Fault::WrongSize);
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 7);
    assert!(
        events(&kms).iter().any(
            |ev| matches!(ev, AuditEvent::Refused { reason, .. } if reason.contains("128 bits"))
        )
    );

    // duplicate key_ID within an answer: the second copy refused
    e.kme.inject(Fault::DuplicateKeyId);
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 7);

    // a key_ID the KME handed out before: refused, so a key is never used twice
    e.kme.inject(Fault::ReplayKeyId);
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 7);
    assert!(events(&kms).iter().any(
        |ev| matches!(ev, AuditEvent::Refused { reason, .. } if reason.contains("already received"))
    ));

    // a hang: timeout, written off
    e.kme.inject(Fault::Hang);
    let err = kms.fetch_once("ab").await.unwrap_err();
    assert!(
        err.to_string().contains("did not answer within 300 ms"),
        "{err}"
    );

    // a dropped connection after the request: written off
    e.kme.inject(Fault::Drop);
    let err = kms.fetch_once("ab").await.unwrap_err();
    assert!(
        matches!(err, KmsError::Fetch(FetchError::Dropped(_))),
        "{err}"
    );

    // 503: nothing delivered, the batch fails (not written off)
    e.kme.inject(Fault::Unavailable);
    let err = kms.fetch_once("ab").await.unwrap_err();
    assert!(
        err.to_string().contains("503") && err.to_string().contains("not enough key material"),
        "{err}"
    );
    assert!(
        events(&kms)
            .iter()
            .any(|ev| matches!(ev, AuditEvent::FetchFailed { .. }))
    );

    // the pool holds exactly the good keys, and the KME's log is fully accounted for
    assert_eq!(stored(&kms), 21);
    let m = &kms.status()[0].metrics;
    assert_eq!(m.written_off_total, 24, "{m:?}");
    let c = kms.store().counts().unwrap();
    assert_eq!(c.written_off_keys, 24);
    let live: std::collections::HashSet<String> = kms
        .store()
        .live_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    let handed = e.kme.handed_over();
    let refused: Vec<String> = events(&kms)
        .into_iter()
        .filter_map(|ev| match ev {
            AuditEvent::Refused { key_id, .. } => Some(key_id),
            _ => None,
        })
        .collect();
    // 6 answers of 8 keys; the duplicate and the replay repeat an ID, so 46 distinct IDs
    let distinct: std::collections::HashSet<&String> = handed.iter().collect();
    assert_eq!((handed.len(), distinct.len()), (48, 46));
    // not stored: the 24 of the three written-off answers, and the one key of the wrong size
    let not_stored: Vec<&&String> = distinct.iter().filter(|id| !live.contains(**id)).collect();
    assert_eq!(not_stored.len(), 25);
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        not_stored
            .iter()
            .all(|id| refused.contains(id) || !kms.store().is_spent(id).unwrap())
    );
    kms.store().verify_audit().unwrap();

    // a retry after a 503 succeeds within the same call
    let kms2 = {
        drop(kms);
        e.kms(Role::Master, e.client(2000, 2))
    };
    e.kme.inject(Fault::Unavailable);
    assert_eq!(kms2.fetch_once("ab").await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_fetches_announced_ids_and_each_key_is_used_once() {
    let e = env().await;
    // the peer's master takes keys from the (shared) test KME
    let master = e.client(2000, 0);
    let keys = master.get_keys(4, 256).await.unwrap();
    let ids: Vec<String> = keys.iter().map(|(i, _)| i.clone()).collect();
    let kms = e.kms(Role::Slave, e.client(2000, 0));
    assert_eq!(kms.announce("ab", ids.clone()).await.unwrap(), 4);
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 4);
    let k2 = kms.clone();
    let id0 = ids[0].clone();
    let (link, key) = tokio::task::spawn_blocking(move || k2.lookup_and_consume(&id0, "tunnel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link, "ab");
    assert!(key.ct_eq(&keys[0].1), "same key on both sides");
    let k2 = kms.clone();
    let id0 = ids[0].clone();
    let again = tokio::task::spawn_blocking(move || k2.lookup_and_consume(&id0, "tunnel"))
        .await
        .unwrap();
    assert!(matches!(again, Err(KmsError::NotAvailable(_))));

    // an ID the KME never issued: a clear ETSI error, nothing written off
    let bogus = "00000000-0000-4000-8000-000000000000".to_string();
    let err = kms
        .consume_by_id("ab", &bogus, "app", true)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("key not found") && err.to_string().contains(&bogus),
        "{err}"
    );
    assert_eq!(kms.store().counts().unwrap().written_off_keys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_sae_certificate_is_refused_at_tls() {
    let e = env().await;
    let other = TestPki::create(&e.dir.path().join("other")).unwrap();
    let stranger = other.issue("stranger", &["stranger"]).unwrap();
    let tls = tls::client_config(&e.pki.ca(), &stranger.cert, &stranger.key).unwrap();
    let c = Etsi014Client::new(ClientSettings {
        kme_url: e.kme.url(),
        server_name: Some("localhost".into()),
        peer_sae_id: "sae-b".into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        retries: 0,
        backoff: Duration::from_millis(10),
        tls,
    })
    .unwrap();
    let err = c.get_keys(1, 256).await.unwrap_err();
    assert!(err.nothing_delivered(), "{err}");
    assert!(e.kme.handed_over().is_empty());
}
