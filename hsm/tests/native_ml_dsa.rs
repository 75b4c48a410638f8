//! The native ML-DSA path against a real PKCS#11 3.2 token: Kryoptic (a Rust soft token on OpenSSL 3.5,
//! built and installed by `scripts/install-kryoptic`), and the path selection against SoftHSM2 2.6, which
//! has no ML-DSA and must get the sealed path.
//!
//! Interop: signatures the token makes (OpenSSL 3.5 inside Kryoptic) verify with aws-lc-rs and with PyPI
//! `cryptography` (its own OpenSSL >= 3.5); a signature aws-lc-rs makes verifies on the token (`C_Verify`);
//! our SPKI equals the `CKA_PUBLIC_KEY_INFO` the token computes itself.

#![allow(clippy::panic, clippy::unwrap_used)] // test crate: failures should be loud

mod common;

use std::process::Command;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::object::{
    Attribute, AttributeType, KeyType, MlDsaParameterSetType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use qsi_hsm::pkcs11::{TokenSelector, find_slot, shared_context};
use qsi_hsm::{
    Error, GenerateOptions, KeyAlgorithm, KeyInfo, KeyStorage, KeyStore, KryopticToken, MlDsaMode,
    SoftHsmToken, verify_signature,
};

fn kryoptic(name: &str) -> KryopticToken {
    KryopticToken::create(name).unwrap_or_else(|e| {
        panic!(
            "Kryoptic (a PKCS#11 3.2 token with ML-DSA) is required for the native ML-DSA tests: run \
             scripts/install-kryoptic (.ci/run does): {e}"
        )
    })
}

fn softhsm(name: &str) -> SoftHsmToken {
    SoftHsmToken::create(name).unwrap_or_else(|e| {
        panic!("SoftHSM2 is required for this test (apt-get install softhsm2): {e}")
    })
}

/// A raw, logged-in cryptoki session on the token, beside the store (same process-wide context).
fn raw_session(t: &KryopticToken) -> Session {
    let ctx = shared_context(&t.module).unwrap();
    let slot = find_slot(&t.module, &TokenSelector::Label(t.label.clone())).unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(t.user_pin.expose()))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

fn object(session: &Session, class: ObjectClass, key: &KeyInfo) -> ObjectHandle {
    let found = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(key.id.clone())])
        .unwrap();
    assert_eq!(found.len(), 1, "one {class} object for {}", key.label);
    found[0]
}

fn pure() -> Mechanism<'static> {
    Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None))
}

#[test]
fn kryoptic_offers_native_ml_dsa_and_keys_are_made_and_used_on_the_token() {
    let t = kryoptic("native");
    let store = t.open().unwrap();
    assert!(
        store.native_ml_dsa(),
        "Kryoptic lists CKM_ML_DSA_KEY_PAIR_GEN and CKM_ML_DSA"
    );
    assert!(store.mechanisms().iter().any(|m| m == "CKM_ML_DSA"));
    assert_eq!(store.info().ml_dsa, KeyStorage::Token);
    let session = raw_session(&t);
    for (alg, set, spki_oid_last, sig_len) in [
        (
            KeyAlgorithm::MlDsa65,
            MlDsaParameterSetType::ML_DSA_65,
            0x12u8,
            3309usize,
        ),
        (
            KeyAlgorithm::MlDsa87,
            MlDsaParameterSetType::ML_DSA_87,
            0x13u8,
            4627usize,
        ),
    ] {
        let key = store.generate(&format!("pq-{alg}"), alg).unwrap();
        assert_eq!(key.storage, KeyStorage::Token, "{alg}: auto picks native");
        assert!(!key.extractable);

        // The private half is a token key: ML-DSA, the right parameter set, sensitive, never extractable,
        // its value and seed unreadable.
        let private = object(&session, ObjectClass::PRIVATE_KEY, &key);
        let attrs = session
            .get_attributes(
                private,
                &[
                    AttributeType::KeyType,
                    AttributeType::ParameterSet,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                    AttributeType::Value,
                    AttributeType::Seed,
                ],
            )
            .unwrap();
        let has = |a: &Attribute| attrs.contains(a);
        assert!(has(&Attribute::KeyType(KeyType::ML_DSA)), "{attrs:?}");
        assert!(has(&Attribute::ParameterSet(set.into())), "{attrs:?}");
        for flag in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Token(true),
        ] {
            assert!(has(&flag), "{alg}: expected {flag:?} in {attrs:?}");
        }
        assert!(
            !attrs
                .iter()
                .any(|a| matches!(a, Attribute::Value(_) | Attribute::Seed(_))),
            "{alg}: private key material was readable: {attrs:?}"
        );
        // No sealed blob was made: the token holds the key itself.
        let blobs = session
            .find_objects(&[Attribute::Class(ObjectClass::DATA)])
            .unwrap();
        assert!(blobs.is_empty(), "native keys leave no data objects");

        // SPKI: RFC 9881 OID, and byte for byte what the token (OpenSSL 3.5) computes.
        let spki = store.public_key_spki(&key).unwrap();
        let oid = [
            0x06,
            0x09,
            0x60,
            0x86,
            0x48,
            0x01,
            0x65,
            0x03,
            0x04,
            0x03,
            spki_oid_last,
        ];
        assert!(spki.windows(oid.len()).any(|w| w == oid), "{alg}: OID");
        let public = object(&session, ObjectClass::PUBLIC_KEY, &key);
        let token_spki = session
            .get_attributes(public, &[AttributeType::PublicKeyInfo])
            .unwrap()
            .into_iter()
            .find_map(|a| match a {
                Attribute::PublicKeyInfo(v) => Some(v),
                _ => None,
            })
            .unwrap();
        assert_eq!(spki, token_spki, "{alg}: our SPKI differs from the token's");

        // The token signs (pure ML-DSA, empty context); aws-lc-rs verifies; the token verifies too.
        let msg = format!("to be signed by {alg}");
        let sig = store.sign(&key, msg.as_bytes()).unwrap();
        assert_eq!(sig.len(), sig_len, "{alg}: FIPS 204 signature size");
        let scheme = alg.default_scheme().unwrap();
        verify_signature(&spki, scheme, msg.as_bytes(), &sig).unwrap();
        assert!(verify_signature(&spki, scheme, b"other", &sig).is_err());
        session
            .verify(&pure(), public, msg.as_bytes(), &sig)
            .unwrap();

        // Found again by label and by URI, as a private key.
        assert_eq!(store.find(&key.label).unwrap(), key);
        assert_eq!(store.find(&key.uri()).unwrap(), key);
        assert!(key.uri().ends_with("type=private"), "{}", key.uri());
    }
}

#[test]
fn signatures_cross_between_the_token_and_aws_lc_rs_both_ways() {
    use aws_lc_rs::signature::{KeyPair, ML_DSA_65_SIGNING, PqdsaKeyPair};
    let t = kryoptic("cross");
    let session = raw_session(&t);
    // aws-lc-rs signs; the token (OpenSSL 3.5) verifies with the public key imported as a session object.
    let host = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).unwrap();
    let mut sig = vec![0u8; ML_DSA_65_SIGNING.signature_len()];
    let n = host.sign(b"from aws-lc-rs", &mut sig).unwrap();
    sig.truncate(n);
    let imported = session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::ML_DSA),
            Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into()),
            Attribute::Value(host.public_key().as_ref().to_vec()),
            Attribute::Verify(true),
            Attribute::Token(false),
        ])
        .unwrap();
    session
        .verify(&pure(), imported, b"from aws-lc-rs", &sig)
        .unwrap();
    assert!(
        session.verify(&pure(), imported, b"altered", &sig).is_err(),
        "the token accepted a signature over another message"
    );
    // A non-empty context is a different signature: ours use the empty one.
    let ctx = Mechanism::MlDsa(SignAdditionalContext::new(
        HedgeType::Preferred,
        Some(b"qsi"),
    ));
    assert!(
        session
            .verify(&ctx, imported, b"from aws-lc-rs", &sig)
            .is_err()
    );
}

#[test]
fn python_cryptography_verifies_the_tokens_ml_dsa_signatures() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "from cryptography.hazmat.primitives.asymmetric import mldsa",
        ])
        .output();
    assert!(
        matches!(&probe, Ok(o) if o.status.success()),
        "python3 with PyPI cryptography >= 48 (ML-DSA) is required: pip install -r .ci/requirements.txt ({probe:?})"
    );
    let t = kryoptic("pyca");
    let store = t.open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for alg in [KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa87] {
        let key = store.generate(&format!("pyca-{alg}"), alg).unwrap();
        assert_eq!(key.storage, KeyStorage::Token);
        let spki = dir.path().join(format!("{alg}.spki"));
        std::fs::write(&spki, store.public_key_spki(&key).unwrap()).unwrap();
        let sig = dir.path().join(format!("{alg}.sig"));
        std::fs::write(&sig, store.sign(&key, b"certificate body").unwrap()).unwrap();
        let script = "import sys\nfrom cryptography.hazmat.primitives.serialization import load_der_public_key\n\
                      k = load_der_public_key(open(sys.argv[1],'rb').read())\n\
                      print(type(k).__name__)\n\
                      k.verify(open(sys.argv[2],'rb').read(), sys.argv[3].encode())\nprint('verified')\n";
        let verify = |msg: &str| {
            Command::new("python3")
                .args(["-c", script])
                .arg(&spki)
                .arg(&sig)
                .arg(msg)
                .output()
                .unwrap()
        };
        let out = verify("certificate body");
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = if alg == KeyAlgorithm::MlDsa65 {
            "MLDSA65PublicKey"
        } else {
            "MLDSA87PublicKey"
        };
        assert!(
            out.status.success() && text.contains(expected) && text.contains("verified"),
            "{alg}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !verify("another body").status.success(),
            "cryptography accepted a signature over another message"
        );
    }
}

#[test]
fn the_wrapped_path_can_be_forced_on_a_native_token_and_both_kinds_live_side_by_side() {
    let t = kryoptic("forced");
    let store = t.open().unwrap();
    let sealed = store
        .generate_with(
            "sealed",
            KeyAlgorithm::MlDsa65,
            GenerateOptions {
                ml_dsa: MlDsaMode::Sealed,
                ..GenerateOptions::default()
            },
        )
        .unwrap();
    assert_eq!(sealed.storage, KeyStorage::SealedByToken);
    assert!(sealed.uri().ends_with("type=data"), "{}", sealed.uri());
    let native = store
        .generate_with(
            "native",
            KeyAlgorithm::MlDsa65,
            GenerateOptions {
                ml_dsa: MlDsaMode::Native,
                ..GenerateOptions::default()
            },
        )
        .unwrap();
    assert_eq!(native.storage, KeyStorage::Token);
    for key in [&sealed, &native] {
        let spki = store.public_key_spki(key).unwrap();
        let sig = store.sign(key, b"m").unwrap();
        verify_signature(&spki, qsi_hsm::SignatureScheme::MlDsa65, b"m", &sig).unwrap();
    }
    let mut listed: Vec<(String, KeyStorage)> = store
        .list()
        .unwrap()
        .into_iter()
        .filter(|k| k.algorithm == KeyAlgorithm::MlDsa65)
        .map(|k| (k.label, k.storage))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        listed,
        vec![
            ("native".to_string(), KeyStorage::Token),
            ("sealed".to_string(), KeyStorage::SealedByToken)
        ]
    );
    // ML-DSA keys are never extractable, on either path.
    assert!(matches!(
        store.generate_with(
            "movable",
            KeyAlgorithm::MlDsa87,
            GenerateOptions {
                extractable: true,
                ..GenerateOptions::default()
            },
        ),
        Err(Error::NotPermitted { .. })
    ));
    store.delete(&native).unwrap();
    store.delete(&sealed).unwrap();
    assert!(matches!(
        store.find("native"),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        store.find("sealed"),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn softhsm2_has_no_ml_dsa_so_auto_picks_the_sealed_path_and_native_is_refused() {
    let t = softhsm("nonative");
    let store = t.open().unwrap();
    assert!(!store.native_ml_dsa());
    assert!(!store.mechanisms().iter().any(|m| m.contains("ML_DSA")));
    assert_eq!(store.info().ml_dsa, KeyStorage::SealedByToken);
    let key = store.generate("auto", KeyAlgorithm::MlDsa87).unwrap();
    assert_eq!(key.storage, KeyStorage::SealedByToken);
    let err = store
        .generate_with(
            "forced-native",
            KeyAlgorithm::MlDsa65,
            GenerateOptions {
                ml_dsa: MlDsaMode::Native,
                ..GenerateOptions::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::MechanismNotSupported { mechanism, .. } if mechanism.contains("CKM_ML_DSA")),
        "{err}"
    );
    assert!(matches!(
        store.find("forced-native"),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn tls13_and_certificates_with_native_ml_dsa_keys() {
    let t = kryoptic("tls");
    let store: Arc<dyn KeyStore> = Arc::new(t.open().unwrap());
    // CA and site key both native: rcgen signs the certificates through HsmRcgenKey, rustls signs the
    // CertificateVerify through HsmSigningKey, all on the token.
    let ca = store.generate("ca", KeyAlgorithm::MlDsa87).unwrap();
    let ee = store.generate("site-a", KeyAlgorithm::MlDsa65).unwrap();
    assert_eq!(
        (ca.storage, ee.storage),
        (KeyStorage::Token, KeyStorage::Token)
    );
    common::tls_handshake(store, ca, ee);
}
