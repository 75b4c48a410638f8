//! TLS 1.3 over loopback TCP with the server's key in SoftHSM2: an ML-DSA-65 (sealed by the token) and a
//! P-384 end-entity key, certified by a CA whose P-384 key is on the token too (rcgen signs through
//! `HsmRcgenKey`). The rustls client verifies the chain and the CertificateVerify with aws-lc-rs.

#![allow(clippy::panic, clippy::unwrap_used)] // test crate: failures should be loud

mod common;

use std::sync::Arc;

use qsi_hsm::{KeyAlgorithm, KeyStore, SoftHsmToken};

fn handshake(ee_alg: KeyAlgorithm) {
    let t = SoftHsmToken::create("tls").unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(t.open().unwrap());
    let ca_key = store.generate("ca", KeyAlgorithm::EcP384).unwrap();
    let ee_key = store.generate("site-a", ee_alg).unwrap();
    common::tls_handshake(store, ca_key, ee_key);
}

#[test]
fn tls13_server_key_ml_dsa_65_sealed_by_the_token() {
    handshake(KeyAlgorithm::MlDsa65);
}

#[test]
fn tls13_server_key_p384_on_the_token() {
    handshake(KeyAlgorithm::EcP384);
}
