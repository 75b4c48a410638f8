//! Helpers shared by the integration tests.

#![allow(clippy::panic, clippy::unwrap_used)] // test helpers: failures should be loud

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use qsi_hsm::{HsmRcgenKey, HsmSigningKey, KeyInfo, KeyStore};
use rustls::pki_types::{CertificateDer, ServerName};

/// A TLS 1.3 exchange over loopback TCP: `ca_key` certifies itself and `ee_key` (rcgen signs through
/// [`HsmRcgenKey`]); the server signs its CertificateVerify with `ee_key` through [`HsmSigningKey`]; the
/// rustls client verifies the chain and the handshake with aws-lc-rs.
pub fn tls_handshake(store: Arc<dyn KeyStore>, ca_key: KeyInfo, ee_key: KeyInfo) {
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
