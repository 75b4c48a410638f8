//! The PKCS#11 backend against a real SoftHSM2 token created per test.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::panic, clippy::unwrap_used)] // test crate: failures should be loud

use std::sync::Arc;

use qsi_hsm::{
    Error, GenerateOptions, KeyAlgorithm, KeyStorage, KeyStore, Pin, PinRetryLimit, Pkcs11Store,
    SignatureScheme, SoftHsmToken, verify_signature,
};

fn token(name: &str) -> SoftHsmToken {
    SoftHsmToken::create(name).unwrap_or_else(|e| {
        panic!("SoftHSM2 is required for this test (apt-get install softhsm2): {e}")
    })
}

#[test]
fn every_signing_algorithm_signs_and_verifies_on_the_host() {
    let t = token("algs");
    let store = t.open().unwrap();
    for alg in KeyAlgorithm::ALL.into_iter().filter(|a| a.is_signing()) {
        let key = store.generate(&format!("key-{alg}"), alg).unwrap();
        let spki = store.public_key_spki(&key).unwrap();
        let msg = format!("message for {alg}");
        let sig = store.sign(&key, msg.as_bytes()).unwrap();
        let scheme = alg.default_scheme().unwrap();
        verify_signature(&spki, scheme, msg.as_bytes(), &sig).unwrap();
        assert!(
            verify_signature(&spki, scheme, b"tampered", &sig).is_err(),
            "{alg}: wrong message must fail"
        );
        let expected = if alg.is_ml_dsa() {
            KeyStorage::SealedByToken
        } else {
            KeyStorage::Token
        };
        assert_eq!(key.storage, expected);
    }
    let rsa = store.find("key-rsa-3072").unwrap();
    let spki = store.public_key_spki(&rsa).unwrap();
    for scheme in [
        SignatureScheme::RsaPkcs1Sha384,
        SignatureScheme::RsaPkcs1Sha512,
        SignatureScheme::RsaPssSha256,
        SignatureScheme::RsaPssSha384,
        SignatureScheme::RsaPssSha512,
    ] {
        let sig = store.sign_with(&rsa, scheme, b"m").unwrap();
        verify_signature(&spki, scheme, b"m", &sig).unwrap();
    }
    let ec = store.find("key-ec-p256").unwrap();
    assert!(matches!(
        store.sign_with(&ec, SignatureScheme::EcdsaP384Sha384, b"m"),
        Err(Error::NotPermitted { .. })
    ));
}

#[test]
fn find_by_label_and_uri_list_and_delete() {
    let t = token("find");
    let store = t.open().unwrap();
    let a = store.generate("site-key", KeyAlgorithm::EcP384).unwrap();
    let b = store.generate("pq-key", KeyAlgorithm::MlDsa87).unwrap();
    assert_eq!(store.find("site-key").unwrap(), a);
    assert_eq!(store.find(&a.uri()).unwrap(), a);
    assert_eq!(store.find(&b.uri()).unwrap(), b);
    assert!(
        a.uri()
            .starts_with(&format!("pkcs11:token={};object=site-key;id=%", t.label)),
        "{}",
        a.uri()
    );
    let by_type = "pkcs11:object=site-key;type=private";
    assert_eq!(store.find(by_type).unwrap(), a);
    assert!(matches!(
        store.find("pkcs11:object=site-key;type=secret"),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        store.find("pkcs11:token=another;object=site-key"),
        Err(Error::KeyNotFound { .. })
    ));
    let labels: Vec<String> = store.list().unwrap().into_iter().map(|k| k.label).collect();
    assert!(
        labels.contains(&"site-key".to_string()) && labels.contains(&"pq-key".to_string()),
        "{labels:?}"
    );
    assert!(matches!(
        store.generate("site-key", KeyAlgorithm::EcP256),
        Err(Error::KeyExists { .. })
    ));
    store.delete(&a).unwrap();
    store.delete(&b).unwrap();
    let err = store.find("site-key").unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { .. }), "{err}");
    assert!(err.to_string().contains("qsi hsm list"), "{err}");
    assert!(matches!(
        store.find("pq-key"),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn aes_gcm_under_a_kek_and_key_wrap() {
    let t = token("aes");
    let store = t.open().unwrap();
    let kek = store.generate("kms-kek", KeyAlgorithm::Aes256).unwrap();
    let data_key = [0x5au8; 32];
    let sealed = store.encrypt(&kek, b"batch-1", &data_key).unwrap();
    assert_eq!(sealed.len(), 1 + 12 + 32 + 16);
    assert_eq!(
        &store.decrypt(&kek, b"batch-1", &sealed).unwrap()[..],
        &data_key
    );
    let err = store.decrypt(&kek, b"batch-2", &sealed).unwrap_err();
    assert!(matches!(err, Error::DecryptFailed { .. }), "{err:?}");
    let mut flipped = sealed.clone();
    flipped[20] ^= 1;
    assert!(matches!(
        store.decrypt(&kek, b"batch-1", &flipped),
        Err(Error::DecryptFailed { .. })
    ));
    // Two encryptions of the same data differ (fresh nonce from the token's RNG).
    assert_ne!(store.encrypt(&kek, b"batch-1", &data_key).unwrap(), sealed);

    let movable = store
        .generate_with(
            "movable",
            KeyAlgorithm::Aes256,
            GenerateOptions {
                extractable: true,
                ..GenerateOptions::default()
            },
        )
        .unwrap();
    let wrapped = store.wrap_key(&kek, &movable).unwrap();
    assert_eq!(wrapped.len(), 40, "RFC 5649 wrap of a 32-byte key");
    let copy = store
        .unwrap_key(&kek, &wrapped, "movable-copy", KeyAlgorithm::Aes256)
        .unwrap();
    let c = store.encrypt(&movable, b"", b"same key?").unwrap();
    assert_eq!(&store.decrypt(&copy, b"", &c).unwrap()[..], b"same key?");
    // A key generated by default never leaves the token, not even wrapped.
    let err = store.wrap_key(&kek, &kek).unwrap_err();
    assert!(matches!(err, Error::NotPermitted { .. }), "{err}");

    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    store.random(&mut a).unwrap();
    store.random(&mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0u8; 32]);
}

#[test]
fn generated_private_keys_refuse_export() {
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    let t = token("export");
    let store = t.open().unwrap();
    let ec = store.generate("ec", KeyAlgorithm::EcP256).unwrap();
    let aes = store.generate("aes", KeyAlgorithm::Aes256).unwrap();
    // Ask the token directly, through the process's shared context, for the secret values.
    let ctx = qsi_hsm::pkcs11::shared_context(&t.module).unwrap();
    let slot =
        qsi_hsm::pkcs11::find_slot(&t.module, &qsi_hsm::TokenSelector::Label(t.label.clone()))
            .unwrap();
    let session = ctx.open_ro_session(slot).unwrap(); // logged in already: login state is per application
    for (key, class, attr) in [
        (&ec, ObjectClass::PRIVATE_KEY, AttributeType::Value),
        (&aes, ObjectClass::SECRET_KEY, AttributeType::Value),
    ] {
        let handle = session
            .find_objects(&[Attribute::Class(class), Attribute::Id(key.id.clone())])
            .unwrap()[0];
        let info = session
            .get_attribute_info(
                handle,
                &[attr, AttributeType::Sensitive, AttributeType::Extractable],
            )
            .unwrap();
        assert!(
            matches!(info[0], AttributeInfo::Sensitive),
            "{}: CKA_VALUE must be sensitive, got {:?}",
            key.label,
            info[0]
        );
        let flags = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        assert!(flags.contains(&Attribute::Sensitive(true)), "{flags:?}");
        assert!(flags.contains(&Attribute::Extractable(false)), "{flags:?}");
        assert!(
            flags.contains(&Attribute::NeverExtractable(true)),
            "{flags:?}"
        );
    }
}

#[test]
fn eight_threads_sign_at_once_through_the_pool() {
    let t = token("pool");
    let store: Arc<dyn KeyStore> = Arc::new(t.open().unwrap());
    let p256 = store.generate("p256", KeyAlgorithm::EcP256).unwrap();
    let mldsa = store.generate("mldsa", KeyAlgorithm::MlDsa65).unwrap();
    let spki_ec = store.public_key_spki(&p256).unwrap();
    let spki_pq = store.public_key_spki(&mldsa).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, p256, mldsa, spki_ec, spki_pq, barrier) = (
                store.clone(),
                p256.clone(),
                mldsa.clone(),
                spki_ec.clone(),
                spki_pq.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for j in 0..10 {
                    let msg = format!("thread {i} message {j}");
                    let sig = store.sign(&p256, msg.as_bytes()).unwrap();
                    verify_signature(
                        &spki_ec,
                        SignatureScheme::EcdsaP256Sha256,
                        msg.as_bytes(),
                        &sig,
                    )
                    .unwrap();
                    if j % 5 == 0 {
                        let sig = store.sign(&mldsa, msg.as_bytes()).unwrap();
                        verify_signature(&spki_pq, SignatureScheme::MlDsa65, msg.as_bytes(), &sig)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a signing thread failed");
    }
}

#[test]
fn wrong_pin_reports_the_tokens_flags() {
    let t = token("pin");
    let mut config = t.config();
    config.pin = Pin::new("not-the-pin");
    let err = Pkcs11Store::open(config).unwrap_err();
    match &err {
        Error::WrongPin { token, flags } => {
            assert_eq!(token, &t.label);
            assert!(
                flags.count_low,
                "SoftHSM2 raises count-low after a wrong PIN: {flags:?}"
            );
            assert!(!flags.locked);
        }
        other => panic!("expected WrongPin, got {other:?}"),
    }
    assert!(err.to_string().contains("count low"), "{err}");
    // The right PIN still works: SoftHSM2 never locks.
    t.open().unwrap();
}

/// SoftHSM2 never locks a PIN, so the lockout path runs through the fault injector wrapped around the real
/// module: the wrong PINs really go to SoftHSM2 (which rejects them), the injector counts them and locks
/// after three, as a hardware token with a retry limit of 3 would.
#[test]
fn pin_lockout_through_fault_injector() {
    let t = token("lock");
    let limit = Arc::new(PinRetryLimit::new(3));
    let mut wrong = t.config();
    wrong.pin = Pin::new("bad-pin");
    let flags: Vec<_> = (0..2)
        .map(
            |_| match Pkcs11Store::open_with_fault_injector(wrong.clone(), limit.clone()) {
                Err(Error::WrongPin { flags, .. }) => flags,
                other => panic!("expected WrongPin, got {other:?}"),
            },
        )
        .collect();
    assert!(flags[0].count_low && !flags[0].final_try);
    assert!(
        flags[1].final_try,
        "second failure of three: final try {:?}",
        flags[1]
    );
    match Pkcs11Store::open_with_fault_injector(wrong, limit.clone()) {
        Err(Error::PinLocked { flags, .. }) => assert!(flags.locked),
        other => panic!("expected PinLocked, got {other:?}"),
    }
    // Locked means locked: the right PIN is refused too, with advice for the security officer.
    let err = Pkcs11Store::open_with_fault_injector(t.config(), limit).unwrap_err();
    assert!(matches!(err, Error::PinLocked { .. }), "{err:?}");
    assert!(err.to_string().contains("security officer"), "{err}");
}

#[test]
fn missing_module_and_token_errors_say_what_to_do() {
    let err =
        qsi_hsm::pkcs11::shared_context(std::path::Path::new("/nonexistent/libvendor-pkcs11.so"))
            .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ModuleNotFound { .. }));
    assert!(
        text.contains("/nonexistent/libvendor-pkcs11.so")
            && text.contains("apt-get install softhsm2"),
        "{text}"
    );

    let t = token("present");
    let mut config = t.config();
    config.token = qsi_hsm::TokenSelector::Label("no-such-token".into());
    let err = Pkcs11Store::open(config).unwrap_err();
    match &err {
        Error::TokenNotFound { present, .. } => assert!(present.contains(&t.label), "{present:?}"),
        other => panic!("expected TokenNotFound, got {other:?}"),
    }
}

#[test]
fn the_pool_never_opens_more_sessions_than_its_bound() {
    let t = token("bound");
    let mut config = t.config();
    config.max_sessions = 3;
    let store = Arc::new(Pkcs11Store::open(config).unwrap());
    let key = store.generate("p256", KeyAlgorithm::EcP256).unwrap();
    let spki = store.public_key_spki(&key).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, store) = (done.clone(), store.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(store.sessions_open());
                std::thread::yield_now();
            }
            most
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (store, key, spki) = (store.clone(), key.clone(), spki.clone());
            std::thread::spawn(move || {
                for j in 0..15 {
                    let msg = format!("{i}/{j}");
                    let sig = store.sign(&key, msg.as_bytes()).unwrap();
                    verify_signature(
                        &spki,
                        SignatureScheme::EcdsaP256Sha256,
                        msg.as_bytes(),
                        &sig,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a signing thread failed");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(
        most >= 2,
        "the threads never signed in parallel ({most} session open at most)"
    );
    assert!(
        most <= 3,
        "{most} sessions were open at once with a bound of 3"
    );
}
