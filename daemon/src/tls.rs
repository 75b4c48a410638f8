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

use std::fmt;
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::auth::{KeyPolicy, PeerCertVerifier, PeerCheck, TrustSettings};
pub use crate::auth::{PeerRole, PeerVerifier, cert_identities, has_identity};
use crate::config::{Credentials, Identity, KxGroup, PeerConfig};
use crate::qkd::kx::{QkdHandshake, qkd_base, qkd_group_name};
use crate::qkd::{QkdKeyLookup, QkdKeySource, QkdKxError, QkdPolicy};

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
    /// The peer link requires QKD and no key could be taken for this connection.
    #[error("QKD required but unavailable: {0}")]
    Qkd(#[from] QkdKxError),
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
    build_client_config(
        peer,
        creds,
        verifier,
        alpn,
        Arc::new(provider_for(&peer.key_exchange)),
    )
}

fn build_client_config(
    peer: &PeerConfig,
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
    alpn: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
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

/// QKD for the dials of one peer link: where its keys come from and what to do without one.
#[derive(Debug, Clone)]
pub struct ClientQkd {
    /// The link's announced keys.
    pub source: Arc<dyn QkdKeySource>,
    /// `require` (no key, no connection) or `prefer` (fall back to the hybrid alone).
    pub policy: QkdPolicy,
}

/// A client config for ONE data-connection dial, with that connection's QKD state.
#[derive(Debug)]
pub struct QkdClientConfig {
    /// The rustls config; build it per dial, do not reuse it for another connection.
    pub config: rustls::ClientConfig,
    /// Present when the QKD group is offered: after the handshake, [`QkdHandshake::used`] names the key
    /// and [`QkdHandshake::check_peer_sae`] checks the peer; [`QkdHandshake::wasted`] reports a key the
    /// server did not take (it chose the plain group).
    pub qkd: Option<QkdHandshake>,
    /// Set under `prefer` when no key could be taken: why this dial goes on with the hybrid alone.
    pub fallback: Option<QkdKxError>,
}

/// Client config for one dial with QKD (`None`: exactly [`client_config`]).
///
/// A key is taken from the source now. Under `require` only the QKD variant of the peer's first group is
/// offered, and no key means [`TlsError::Qkd`]. Under `prefer` the QKD variant comes first and the peer's
/// plain groups follow (a server without our group answers with a HelloRetryRequest for a plain one, and
/// the taken key is written off, see [`crate::qkd::kx`]); with no key, only the plain groups are offered
/// and `fallback` says why.
pub fn client_config_qkd(
    peer: &PeerConfig,
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
    alpn: &[u8],
    qkd: Option<&ClientQkd>,
) -> Result<QkdClientConfig, TlsError> {
    let Some(q) = qkd else {
        return Ok(QkdClientConfig {
            config: client_config(peer, creds, verifier, alpn)?,
            qkd: None,
            fallback: None,
        });
    };
    let first = peer
        .key_exchange
        .first()
        .copied()
        .unwrap_or(KxGroup::X25519MlKem768);
    let key = match q.source.take() {
        Ok(k) => k,
        Err(e) if q.policy == QkdPolicy::Prefer => {
            return Ok(QkdClientConfig {
                config: client_config(peer, creds, verifier, alpn)?,
                qkd: None,
                fallback: Some(e),
            });
        }
        Err(e) => return Err(TlsError::Qkd(e)),
    };
    let hs = QkdHandshake::client(&[first], key, q.source.clone());
    let mut provider = provider_for(&peer.key_exchange);
    let mut groups = hs.groups();
    if q.policy == QkdPolicy::Prefer {
        groups.extend(provider.kx_groups.iter().copied());
    }
    provider.kx_groups = groups;
    let verifier = Arc::new(LeasedVerifier {
        inner: verifier,
        _lease: hs.keep_alive(),
    });
    Ok(QkdClientConfig {
        config: build_client_config(peer, creds, verifier, alpn, Arc::new(provider))?,
        qkd: Some(hs),
        fallback: None,
    })
}

/// A chain verifier that also keeps a connection's QKD cells leased for as long as its config lives.
struct LeasedVerifier {
    inner: Arc<dyn PeerVerifier>,
    _lease: Arc<dyn std::any::Any + Send + Sync>,
}

impl fmt::Debug for LeasedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PeerVerifier for LeasedVerifier {
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.inner
            .verify_chain(end_entity, intermediates, role, now)
    }
}

/// Server config for every peer: the union of the peers' groups (each connection is then checked against its
/// own peer's policy by [`check_policy`]), client certificates required, no tickets.
pub fn server_config(
    peers: &[PeerConfig],
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let groups = union_groups(peers);
    build_server_config(peers, creds, verifier, Arc::new(provider_for(&groups)))
}

/// The groups of all peers, in first-seen order; X25519MLKEM768 when there are no peers.
fn union_groups(peers: &[PeerConfig]) -> Vec<KxGroup> {
    let mut groups: Vec<KxGroup> = Vec::new();
    for g in peers.iter().flat_map(|p| p.key_exchange.iter()) {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    if groups.is_empty() {
        groups.push(KxGroup::X25519MlKem768);
    }
    groups
}

fn build_server_config(
    peers: &[PeerConfig],
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    // AES-256 only when every peer is CNSA; otherwise check_policy holds each CNSA peer to AES-256.
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

/// Server config for ONE accepted connection, offering the QKD variants of the peers' groups (before the
/// plain ones) when `lookup` is given. Returns the connection's [`QkdHandshake`]: after the handshake it
/// names the key used ([`QkdHandshake::used`], then [`QkdHandshake::check_peer_sae`] with the `sae_id` of
/// the peer the certificate matched), or after a refusal says why ([`QkdHandshake::failure`]).
///
/// TLS: `TlsAcceptor::from(Arc::new(config))` per connection. QUIC: [`quic_server_config_for`] and
/// `Incoming::accept_with`. The client's order decides the group, so plain dials (control connections,
/// `prefer` without a key) still get the plain hybrid.
pub fn server_config_qkd(
    peers: &[PeerConfig],
    creds: &Credentials,
    verifier: Arc<dyn PeerVerifier>,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
) -> Result<(rustls::ServerConfig, Option<QkdHandshake>), TlsError> {
    let Some(lookup) = lookup else {
        return Ok((server_config(peers, creds, verifier)?, None));
    };
    let plain = union_groups(peers);
    let hs = QkdHandshake::server(&plain, lookup);
    let mut provider = provider_for(&plain);
    let mut groups = hs.groups();
    groups.extend(provider.kx_groups.iter().copied());
    provider.kx_groups = groups;
    let verifier = Arc::new(LeasedVerifier {
        inner: verifier,
        _lease: hs.keep_alive(),
    });
    let cfg = build_server_config(peers, creds, verifier, Arc::new(provider))?;
    Ok((cfg, Some(hs)))
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

/// A per-connection QUIC server config: `base` (the endpoint's, with its transport settings) carrying
/// `tls` (from [`server_config_qkd`]); pass it to `quinn::Incoming::accept_with`.
pub fn quic_server_config_for(
    base: &quinn::ServerConfig,
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut cfg = base.clone();
    cfg.crypto = Arc::new(quic_server_config(tls)?);
    Ok(cfg)
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

/// What a handshake negotiated: the base group, and whether a QKD key was in the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedKx {
    /// The hybrid (or ML-KEM) group underneath.
    pub group: KxGroup,
    /// True when the QKD variant was negotiated (the QKD key entered the key schedule).
    pub qkd: bool,
}

impl fmt::Display for NegotiatedKx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.qkd {
            f.write_str(&qkd_group_name(self.group))
        } else {
            f.write_str(self.group.name())
        }
    }
}

/// Our group (plain or QKD variant) for a negotiated rustls group, `None` for anything else.
pub fn negotiated_kx(named: rustls::NamedGroup) -> Option<NegotiatedKx> {
    our_group(named)
        .map(|group| NegotiatedKx { group, qkd: false })
        .or_else(|| qkd_base(named).map(|group| NegotiatedKx { group, qkd: true }))
}

/// After a handshake: the negotiated group and suite must be in this peer's policy. Returns the base group
/// (the QKD variant of a group in the policy is accepted too; [`check_policy_kx`] says whether QKD was in).
pub fn check_policy(
    peer: &PeerConfig,
    group: Option<rustls::NamedGroup>,
    suite: Option<rustls::CipherSuite>,
) -> Result<KxGroup, String> {
    check_policy_kx(peer, group, suite).map(|n| n.group)
}

/// [`check_policy`], reporting the base group and whether the QKD key was in the handshake. Whether QKD
/// was *required* is the caller's policy (a `require` data connection refuses `qkd == false`).
pub fn check_policy_kx(
    peer: &PeerConfig,
    group: Option<rustls::NamedGroup>,
    suite: Option<rustls::CipherSuite>,
) -> Result<NegotiatedKx, String> {
    let n = group
        .and_then(negotiated_kx)
        .ok_or_else(|| format!("negotiated group {group:?} is not post-quantum"))?;
    if !peer.key_exchange.contains(&n.group) {
        return Err(format!(
            "negotiated group {n} is not in peer {}'s key_exchange policy",
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
    Ok(n)
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
