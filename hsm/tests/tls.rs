//! TLS 1.3 over loopback TCP with the server's key in SoftHSM2: an ML-DSA-65 (sealed by the token) and a
//! P-384 end-entity key, certified by a CA whose P-384 key is on the token too (rcgen signs through
//! `HsmRcgenKey`). The rustls client verifies the chain and the CertificateVerify with aws-lc-rs.

#![allow(clippy::panic, clippy::unwrap_used)] // test crate: failures should be loud

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use qsi_hsm::{HsmRcgenKey, HsmSigningKey, KeyAlgorithm, KeyStore, SoftHsmToken};
use rustls::pki_types::{CertificateDer, ServerName};

fn handshake(ee_alg: KeyAlgorithm) {
    let t = SoftHsmToken::create("tls").unwrap();
    let store: Arc<dyn KeyStore> = Arc::new(t.open().unwrap());

    let ca_key = store.generate("ca", KeyAlgorithm::EcP384).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "QSI test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_signer = HsmRcgenKey::new(store.clone(), ca_key).unwrap();
    let ca_cert = ca_params.self_signed(&ca_signer).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_signer);

    let ee_key = store.generate("site-a", ee_alg).unwrap();
    let ee_params = rcgen::CertificateParams::new(vec!["site-a.qsi.test".to_string()]).unwrap();
    let ee_public = HsmRcgenKey::new(store.clone(), ee_key.clone()).unwrap();
    let ee_cert = ee_params.signed_by(&ee_public, &issuer).unwrap();

    let signing_key = Arc::new(HsmSigningKey::new(store.clone(), ee_key).unwrap());
    let certified = rustls::sign::CertifiedKey::new(vec![ee_cert.der().clone()], signing_key);
    // Name the provider: in a workspace build another crate may also enable rustls' ring feature,
    // and then rustls cannot pick a process default by itself.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).unwrap();
        tls.write_all(b"pong:").unwrap();
        tls.write_all(&buf).unwrap();
        tls.flush().unwrap();
    });
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("site-a.qsi.test").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"ping!").unwrap();
    let mut reply = [0u8; 10];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong:ping!");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    server.join().unwrap();
}

#[test]
fn tls13_server_key_ml_dsa_65_sealed_by_the_token() {
    handshake(KeyAlgorithm::MlDsa65);
}

#[test]
fn tls13_server_key_p384_on_the_token() {
    handshake(KeyAlgorithm::EcP384);
}
