//! TLS 1.3 for both transports: post-quantum-only crypto providers, mutual authentication with the peer's
//! identity checked, and the rustls/quinn configs built from them.
//!
//! Two seams are kept narrow on purpose:
//! - [`provider_for`] is the one place that decides which key-exchange groups and cipher suites a peer link
//!   offers or accepts. The QKD issue adds its own `SupportedKxGroup` (hybrid share + QKD key ID) here, per
//!   peer, without touching the transports.
//! - [`PeerVerifier`] validates a peer's certificate chain. Today [`TrustAnchorVerifier`] does it with
//!   rustls-webpki against the configured anchors; the PKI crate's RFC 5280 validator (bridges, policies,
//!   revocation) replaces it by implementing the same trait. Identity matching (URI or DNS SAN against the
//!   peer entry) and handshake signatures stay here, outside the seam.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

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
fn is_cnsa(groups: &[KxGroup]) -> bool {
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

/// Which side of the handshake a certificate was presented on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer dialed us (it is the TLS client).
    Client,
    /// We dialed the peer (it is the TLS server).
    Server,
}

/// The path-validation seam: is this chain from a CA we trust, valid now, for this role?
///
/// Identity matching is not part of it (the caller checks SANs against the peer entry).
pub trait PeerVerifier: Send + Sync + fmt::Debug {
    /// Ok when the chain validates; the error goes into the TLS alert and the failure metrics.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error>;
}

/// Chain validation with rustls-webpki against the configured trust anchors (until the PKI validator lands).
pub struct TrustAnchorVerifier {
    anchors: Vec<CertificateDer<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for TrustAnchorVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchorVerifier")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl TrustAnchorVerifier {
    /// A verifier for these anchors (already checked to parse by the config).
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Self {
        TrustAnchorVerifier {
            anchors,
            algs: base_provider().signature_verification_algorithms,
        }
    }
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    let ce = match e {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        webpki::Error::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        webpki::Error::BadDer | webpki::Error::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl PeerVerifier for TrustAnchorVerifier {
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let anchors: Vec<_> = self
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect();
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        let usage = match role {
            PeerRole::Client => webpki::KeyUsage::client_auth(),
            PeerRole::Server => webpki::KeyUsage::server_auth(),
        };
        ee.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(webpki_error)
    }
}

/// The identities (dNSName and URI SANs) a certificate carries.
pub fn cert_identities(cert: &CertificateDer<'_>) -> Vec<Identity> {
    use der::Decode;
    use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};
    let Ok(c) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some((_, san))) = c.tbs_certificate().get_extension::<SubjectAltName>() else {
        return Vec::new();
    };
    san.0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(Identity::Dns(d.to_string().to_ascii_lowercase())),
            GeneralName::UniformResourceIdentifier(u) => Some(Identity::Uri(u.to_string())),
            _ => None,
        })
        .collect()
}

/// Does the certificate carry this identity? DNS names compare case-insensitively.
pub fn has_identity(cert: &CertificateDer<'_>, want: &Identity) -> bool {
    let want = match want {
        Identity::Dns(d) => Identity::Dns(d.to_ascii_lowercase()),
        other => other.clone(),
    };
    cert_identities(cert).contains(&want)
}

fn identity_error(want: &str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(format!(
            "certificate does not carry the expected identity {want}"
        )),
    ))))
}

/// Client side: the server we dialed must chain to our anchors and carry the peer entry's identity.
#[derive(Debug)]
struct DialedPeerVerifier {
    chain: Arc<dyn PeerVerifier>,
    expected: Identity,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DialedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_chain(end_entity, intermediates, PeerRole::Server, now)?;
        if !has_identity(end_entity, &self.expected) {
            return Err(identity_error(&self.expected.to_string()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server side: a dialing peer must chain to our anchors and carry the identity of one of our peers.
#[derive(Debug)]
struct AcceptedPeerVerifier {
    chain: Arc<dyn PeerVerifier>,
    known: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AcceptedPeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_chain(end_entity, intermediates, PeerRole::Client, now)?;
        if !self.known.iter().any(|id| has_identity(end_entity, id)) {
            return Err(identity_error("of a configured peer"));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
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
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DialedPeerVerifier {
            chain: verifier,
            expected: peer.identity.clone(),
            algs,
        }))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
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
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AcceptedPeerVerifier {
            chain: verifier,
            known: peers.iter().map(|p| p.identity.clone()).collect(),
            algs,
        }))
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
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

/// Builds the chain verifier for a config (the seam the PKI validator will fill).
pub fn verifier_for(anchors: &[CertificateDer<'static>]) -> Arc<dyn PeerVerifier> {
    Arc::new(TrustAnchorVerifier::new(anchors.to_vec()))
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
