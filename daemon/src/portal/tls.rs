//! TLS for the login portal: TLS 1.3 only, post-quantum key exchange only (X25519MLKEM768, MLKEM1024),
//! mutual authentication. The TLS layer checks that the client holds the key of the certificate it
//! presents (CertificateVerify); whether that certificate is a valid card is decided after the handshake by
//! the [`super::validate::CardValidator`], so that every refusal gets a clear answer and an audit record
//! instead of a bare TLS alert.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::{PeerCertVerifier, PeerCheck};

/// The exporter label that binds a session token to its TLS connection (RFC 8446 section 7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-qsi-portal-session-binding";
/// Length of the exported binding value.
pub const BINDING_LEN: usize = 32;

/// The portal's crypto provider: the tunnels' provider (aws-lc-rs, TLS 1.3 suites, post-quantum groups
/// only: X25519MLKEM768, SECP256R1MLKEM768, MLKEM1024), so the portal never offers a classical-only group.
pub fn pq_provider() -> CryptoProvider {
    crate::tls::base_provider()
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The portal's server configuration.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = Arc::new(pq_provider());
    // Any chain passes the TLS layer (the CertificateVerify signature is still checked); the card
    // validator judges it after the handshake. Same verifier type as the tunnels, in its deferred mode.
    let verifier = Arc::new(PeerCertVerifier::new(
        PeerCheck::Deferred,
        provider.signature_verification_algorithms,
    ));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every connection authenticates the card afresh.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A client configuration for the portal: trusts `anchors` for the portal's certificate and authenticates
/// with `key` (a card-backed key for `qsi login`).
pub fn client_config(
    anchors: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a.clone())?;
    }
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(
        rustls::sign::CertifiedKey::new(chain, key),
    ));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(pq_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}
