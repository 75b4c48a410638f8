//! TLS 1.3 for both transports: post-quantum-only crypto providers, mutual authentication with the peer's
//! identity checked, and the rustls/quinn configs built from them.
//!
//! Two seams are kept narrow on purpose:
//! - [`provider_for`] is the one place that decides which key-exchange groups and cipher suites a peer link
//!   offers or accepts. The QKD issue adds its own `SupportedKxGroup` (hybrid share + QKD key ID) here, per
//!   peer, without touching the transports.
//! - [`PeerVerifier`] validates a peer's certificate chain: the PKI crate's RFC 5280 validator (bridges,
//!   policies, revocation) behind [`crate::auth`], which also holds the one rustls verifier the tunnels and
//!   the portal share (identity, key policy, handshake signatures).

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls_pki_types::{CertificateDer, ServerName};

use crate::auth::{KeyPolicy, PeerCertVerifier, PeerCheck, TrustSettings};
pub use crate::auth::{PeerRole, PeerVerifier, cert_identities, has_identity};
use crate::config::{Credentials, Identity, KxGroup, PeerConfig};

/// ALPN of the long-lived control connection.
pub const ALPN_CONTROL: &[u8] = b"qsi-ctl/1";
/// ALPN of a data connection (flows).
pub const ALPN_DATA: &[u8] = b"qsi-data/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (e.g. the key cannot sign with any offered scheme).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The QUIC layer needs TLS13_AES_128_GCM_SHA256 for Initial packets and it is missing.
    #[error("QUIC needs TLS13_AES_128_GCM_SHA256 for Initial packets: {0}")]
    QuicInitial(String),
    /// The trust settings could not be turned into a validator.
    #[error("trust settings: {0}")]
    Trust(#[from] crate::auth::TrustError),
}

/// The rustls group object of one of our groups.
pub fn kx_group(g: KxGroup) -> &'static dyn SupportedKxGroup {
    match g {
        KxGroup::X25519MlKem768 => aws_lc_rs::kx_group::X25519MLKEM768,
        KxGroup::Secp256r1MlKem768 => aws_lc_rs::kx_group::SECP256R1MLKEM768,
        KxGroup::MlKem1024 => aws_lc_rs::kx_group::MLKEM1024,
    }
}

/// Our group for a negotiated rustls group, `None` for anything else (which we never negotiate).
pub fn our_group(named: rustls::NamedGroup) -> Option<KxGroup> {
    [
        KxGroup::X25519MlKem768,
        KxGroup::Secp256r1MlKem768,
        KxGroup::MlKem1024,
    ]
    .into_iter()
    .find(|g| kx_group(*g).name() == named)
}

/// True when the policy is the CNSA 2.0 profile: only ML-KEM-1024, and then only AES-256.
pub fn is_cnsa(groups: &[KxGroup]) -> bool {
    !groups.is_empty() && groups.iter().all(|g| *g == KxGroup::MlKem1024)
}

/// The provider every key operation starts from: aws-lc-rs, TLS 1.3 suites only, all our PQ groups.
pub fn base_provider() -> CryptoProvider {
    provider_for(&[
        KxGroup::X25519MlKem768,
        KxGroup::Secp256r1MlKem768,
        KxGroup::MlKem1024,
    ])
}

/// THE place that builds a link's key-exchange groups and cipher suites (issue 9 adds the QKD group here).
///
/// Only TLS 1.3 suites; AES-256-GCM only under the CNSA profile. Classical groups are never included.
pub fn provider_for(groups: &[KxGroup]) -> CryptoProvider {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = groups.iter().map(|g| kx_group(*g)).collect();
    p.cipher_suites = if is_cnsa(groups) {
        vec![aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384]
    } else {
        vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ]
    };
    p
}

/// The SNI we send: the peer's DNS identity or name; our verifier ignores SNI and checks SANs instead.
pub fn server_name_for(peer: &PeerConfig) -> ServerName<'static> {
    let candidate = match &peer.identity {
        Identity::Dns(d) => d.clone(),
        Identity::Uri(_) => peer.name.clone(),
    };
    ServerName::try_from(candidate)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// Client config for dialing `peer` with `alpn`: TLS 1.3, the peer's groups, our certificate, no resumption
/// (every connection is a full handshake with a fresh post-quantum key exchange).
pub fn client_config(
    peer: &PeerConfig,
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(provider_for(&peer.key_exchange));
    let algs = provider.signature_verification_algorithms;
    let check = PeerCheck::Peers {
        chain: verifier,
        peers: vec![(peer.identity.clone(), key_policy(peer))],
    };
    let certified = creds.certified_key(&provider)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerCertVerifier::new(check, algs)))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// Server config for every peer: the union of the peers' groups (each connection is then checked against its
/// own peer's policy by [`check_policy`]), client certificates required, no tickets.
pub fn server_config(
    peers: &[PeerConfig],
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut groups: Vec<KxGroup> = Vec::new();
    for g in peers.iter().flat_map(|p| p.key_exchange.iter()) {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    if groups.is_empty() {
        groups.push(KxGroup::X25519MlKem768);
    }
    // AES-256 only when every peer is CNSA; otherwise check_policy holds each CNSA peer to AES-256.
    let provider = Arc::new(provider_for(&groups));
    let algs = provider.signature_verification_algorithms;
    let check = PeerCheck::Peers {
        chain: verifier,
        peers: peers
            .iter()
            .map(|p| (p.identity.clone(), key_policy(p)))
            .collect(),
    };
    let certified = creds.certified_key(&provider)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerCertVerifier::new(check, algs)))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![ALPN_CONTROL.to_vec(), ALPN_DATA.to_vec()];
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

fn quic_initial_suite() -> Result<rustls::quic::Suite, TlsError> {
    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or_else(|| TlsError::QuicInitial("aws-lc-rs has no QUIC suite for AES-128-GCM".into()))
}

/// The QUIC client config (Initial packets keep AES-128-GCM even under the CNSA profile).
pub fn quic_client_config(
    cfg: rustls::ClientConfig,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    quinn::crypto::rustls::QuicClientConfig::with_initial(Arc::new(cfg), quic_initial_suite()?)
        .map_err(|e| TlsError::QuicInitial(e.to_string()))
}

/// The QUIC server config.
pub fn quic_server_config(
    cfg: rustls::ServerConfig,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    quinn::crypto::rustls::QuicServerConfig::with_initial(Arc::new(cfg), quic_initial_suite()?)
        .map_err(|e| TlsError::QuicInitial(e.to_string()))
}

/// The chain verifier of a config: the PKI validator built when the config was loaded (one CRL cache for
/// every handshake until the next reload).
pub fn verifier_for(trust: &TrustSettings) -> Result<Arc<dyn PeerVerifier>, TlsError> {
    trust.verifier().map_err(TlsError::Trust)
}

/// The end-entity key policy of a peer link: ML-DSA-87 only under the CNSA 2.0 profile.
pub fn key_policy(peer: &PeerConfig) -> KeyPolicy {
    if is_cnsa(&peer.key_exchange) {
        KeyPolicy::Cnsa
    } else {
        KeyPolicy::Standard
    }
}

/// After a handshake: the negotiated group and suite must be in this peer's policy. Returns the group.
pub fn check_policy(
    peer: &PeerConfig,
    group: Option<rustls::NamedGroup>,
    suite: Option<rustls::CipherSuite>,
) -> Result<KxGroup, String> {
    let g = group
        .and_then(our_group)
        .ok_or_else(|| format!("negotiated group {group:?} is not post-quantum"))?;
    if !peer.key_exchange.contains(&g) {
        return Err(format!(
            "negotiated group {g} is not in peer {}'s key_exchange policy",
            peer.name
        ));
    }
    if let Some(suite) = suite
        && is_cnsa(&peer.key_exchange)
        && suite != rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    {
        return Err(format!(
            "CNSA profile needs TLS13_AES_256_GCM_SHA384, got {suite:?}"
        ));
    }
    Ok(g)
}

/// Finds the peer whose identity the presented end-entity certificate carries.
pub fn peer_for_cert<'a>(
    peers: &'a [PeerConfig],
    cert: &CertificateDer<'_>,
) -> Option<&'a PeerConfig> {
    peers.iter().find(|p| has_identity(cert, &p.identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_hold_only_post_quantum_groups_and_tls13_suites() {
        for groups in [
            vec![KxGroup::X25519MlKem768],
            vec![KxGroup::Secp256r1MlKem768, KxGroup::X25519MlKem768],
            vec![KxGroup::MlKem1024],
        ] {
            let p = provider_for(&groups);
            assert_eq!(p.kx_groups.len(), groups.len());
            for g in &p.kx_groups {
                assert!(our_group(g.name()).is_some(), "{:?}", g.name());
            }
            assert!(p.cipher_suites.iter().all(|s| s.tls13().is_some()));
        }
        let cnsa = provider_for(&[KxGroup::MlKem1024]);
        assert_eq!(cnsa.cipher_suites.len(), 1);
        assert_eq!(
            cnsa.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }

    #[test]
    fn quic_initial_suite_exists() {
        assert!(quic_initial_suite().is_ok());
    }
}
