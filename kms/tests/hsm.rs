//! The KMS with its KEK and audit key on a real PKCS#11 token (a throw-away SoftHSM2 token), fetching
//! over HTTPS with mutual TLS: keys sealed at rest survive a restart only with the token's KEK, and the
//! audit log's checkpoints verify against the token's ECDSA key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use qsi_hsm::{KeyStore, SoftHsmToken};
use qsi_kms::client::{ClientSettings, Etsi014Client};
use qsi_kms::hsmkeys::open_keys;
use qsi_kms::kek::{CheckpointSigner, Kek};
use qsi_kms::pool::PoolPolicy;
use qsi_kms::service::{Kms, LinkSpec};
use qsi_kms::store::{Role, StoreOptions, SystemClock, open_db, verify_db};
use qsi_kms::testkit::{TestKme, TestPki};
use qsi_kms::{KmsError, tls};

fn softhsm_present() {
    assert!(
        std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok(),
        "softhsm2-util is missing: apt-get install softhsm2 (this test needs a real PKCS#11 token)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_and_audit_key_on_softhsm2() {
    softhsm_present();
    let d = tempfile::tempdir().unwrap();
    let pki = TestPki::create(d.path()).unwrap();
    let srv = pki.issue("kme", &["localhost", "127.0.0.1"]).unwrap();
    let sae = pki.issue("sae-a", &["sae-a"]).unwrap();
    let kme = TestKme::start(
        tls::server_config(&srv.cert, &srv.key, &pki.ca()).unwrap(),
        256,
    )
    .await
    .unwrap();
    let source = Arc::new(
        Etsi014Client::new(ClientSettings {
            kme_url: kme.url(),
            server_name: Some("localhost".into()),
            peer_sae_id: "sae-b".into(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            retries: 0,
            backoff: Duration::from_millis(10),
            tls: tls::client_config(&pki.ca(), &sae.cert, &sae.key).unwrap(),
        })
        .unwrap(),
    );
    let token = SoftHsmToken::create("kms").unwrap();
    let db = d.path().join("kms.redb");
    let open = |kek: Arc<dyn Kek>, signer: Arc<dyn CheckpointSigner>| {
        Kms::open(
            &db,
            kek,
            signer,
            Arc::new(SystemClock),
            StoreOptions {
                checkpoint_every: 8,
            },
            vec![LinkSpec {
                name: "ab".into(),
                role: Role::Master,
                key_bits: 256,
                policy: PoolPolicy {
                    capacity: 32,
                    low_water: 4,
                    batch: 8,
                    stall_after_ms: 60_000,
                },
                source: source.clone(),
            }],
        )
    };

    let store: Arc<dyn KeyStore> = Arc::new(token.open().unwrap());
    let (kek, signer) = open_keys(store.clone(), "kms-kek", "kms-audit", true).unwrap();
    let kms = open(kek, signer).unwrap();
    assert_eq!(kms.fetch_once("ab").await.unwrap(), 8);
    let (id, key) = kms.take_key("ab", "t", true).await.unwrap();
    assert_eq!(kme.key_of(&id).unwrap(), key.expose());
    drop(kms);

    // the keys are on the token, not in the process: a fresh session finds them and unseals the store
    let (kek, signer) = open_keys(
        Arc::new(token.open().unwrap()),
        "kms-kek",
        "kms-audit",
        false,
    )
    .unwrap();
    let kms = open(kek, signer.clone()).unwrap();
    assert_eq!(kms.status()[0].metrics.stored, 7);
    let rep = kms.store().verify_audit().unwrap();
    assert!(rep.checkpoints >= 1 && rep.signed_through > 0, "{rep:?}");
    drop(kms);
    let db_handle = open_db(&db).unwrap();
    assert_eq!(
        verify_db(&db_handle, signer.as_ref())
            .unwrap()
            .unsigned_tail,
        0
    );
    drop(db_handle);

    // another token's KEK cannot open the store: the sealed data keys do not authenticate
    let other = SoftHsmToken::create("kms-other").unwrap();
    let (kek2, signer2) = open_keys(
        Arc::new(other.open().unwrap()),
        "kms-kek",
        "kms-audit",
        true,
    )
    .unwrap();
    let err = open(kek2, signer2.clone())
        .err()
        .expect("a foreign KEK must not open the store");
    assert!(matches!(err, KmsError::Seal(_)), "{err}");
    // and its signing key does not verify this log, which the failed start left untouched
    assert!(verify_db(&open_db(&db).unwrap(), signer2.as_ref()).is_err());
    assert_eq!(
        verify_db(&open_db(&db).unwrap(), signer.as_ref())
            .unwrap()
            .unsigned_tail,
        0
    );

    // a missing key is a clear error when it may not be created
    let e = open_keys(Arc::new(other.open().unwrap()), "nope", "kms-audit", false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("no key \"nope\""), "{e}");
}
