//! Peer authentication for the tunnels and the login portal: one rustls verifier for both.
//!
//! - [`PeerVerifier`] is the path-validation seam. [`PkiPeerVerifier`] fills it with our RFC 5280 validator
//!   (`qsi_pki::validate`): path building through bridge cross-certificates, the policy graph with
//!   mappings, name constraints, and CRLs (configured files plus distribution points fetched over HTTP
//!   and cached, with a stale policy).
//! - [`PeerCertVerifier`] is the rustls side, for both ends of a handshake (the dialed peer as a TLS
//!   server, a dialing peer as a TLS client) and for the portal ([`PeerCheck::Deferred`]): chain through
//!   the seam, then the identity (a SAN of the peer entry), then the end-entity key type against the
//!   peer's [`KeyPolicy`] (ML-DSA-87 only under CNSA 2.0), then the TLS 1.3 CertificateVerify signature.
//!
//! ```
//! use qsi_daemon::auth::{KeyPolicy, KeyType};
//! assert!(KeyPolicy::Cnsa.allows(KeyType::MlDsa87));
//! assert!(!KeyPolicy::Cnsa.allows(KeyType::EcdsaP256));
//! assert!(KeyPolicy::Standard.allows(KeyType::MlDsa65));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qsi_pki::revocation::{Crl, CrlCache, HttpSource, StalePolicy};
use qsi_pki::validate::{
    CertificateValidator, ChainError, ConfiguredValidator, FailureReason, RevocationMode,
    TrustAnchor, ValidationError, ValidationOptions,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::Identity;

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
/// Identity matching and the key-type policy are not part of it ([`PeerCertVerifier`] checks them).
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

// ---------------------------------------------------------------------------------------------------------
// Key types and the key policy.

/// The public-key type of an end-entity certificate, as far as the key policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// ML-DSA-44 (FIPS 204).
    MlDsa44,
    /// ML-DSA-65 (FIPS 204).
    MlDsa65,
    /// ML-DSA-87 (FIPS 204; CNSA 2.0).
    MlDsa87,
    /// RSA (any size).
    Rsa,
    /// Ed25519.
    Ed25519,
    /// Anything else (another curve, an unknown algorithm).
    Other,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::EcdsaP384 => "ECDSA P-384",
            KeyType::MlDsa44 => "ML-DSA-44",
            KeyType::MlDsa65 => "ML-DSA-65",
            KeyType::MlDsa87 => "ML-DSA-87",
            KeyType::Rsa => "RSA",
            KeyType::Ed25519 => "Ed25519",
            KeyType::Other => "an unrecognised key type",
        })
    }
}

mod oid {
    use const_oid::ObjectIdentifier as O;
    pub const EC_PUBLIC_KEY: O = O::new_unwrap("1.2.840.10045.2.1");
    pub const P256: O = O::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: O = O::new_unwrap("1.3.132.0.34");
    pub const RSA: O = O::new_unwrap("1.2.840.113549.1.1.1");
    pub const ED25519: O = O::new_unwrap("1.3.101.112");
    pub const ML_DSA_44: O = O::new_unwrap("2.16.840.1.101.3.4.3.17");
    pub const ML_DSA_65: O = O::new_unwrap("2.16.840.1.101.3.4.3.18");
    pub const ML_DSA_87: O = O::new_unwrap("2.16.840.1.101.3.4.3.19");
}

/// The key type of a DER SubjectPublicKeyInfo.
pub fn key_type_of_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> KeyType {
    let alg = spki.algorithm.oid;
    if alg == oid::EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
        return match curve {
            Some(c) if c == oid::P256 => KeyType::EcdsaP256,
            Some(c) if c == oid::P384 => KeyType::EcdsaP384,
            _ => KeyType::Other,
        };
    }
    match alg {
        a if a == oid::ML_DSA_44 => KeyType::MlDsa44,
        a if a == oid::ML_DSA_65 => KeyType::MlDsa65,
        a if a == oid::ML_DSA_87 => KeyType::MlDsa87,
        a if a == oid::RSA => KeyType::Rsa,
        a if a == oid::ED25519 => KeyType::Ed25519,
        _ => KeyType::Other,
    }
}

/// The key type of a certificate's subject key (`Other` when the certificate does not parse).
pub fn key_type_of(cert: &[u8]) -> KeyType {
    use der::Decode;
    x509_cert::Certificate::from_der(cert).map_or(KeyType::Other, |c| {
        key_type_of_spki(c.tbs_certificate().subject_public_key_info())
    })
}

/// Which end-entity keys a peer link accepts (ours and the peer's).
///
/// Decided here (docs/decisions.md, tunnel): the standard policy takes the key types our CA's TLS profiles
/// issue, ECDSA P-256/P-384 and ML-DSA-65/87; a peer under the CNSA 2.0 profile (key exchange ML-KEM-1024
/// only) must authenticate with ML-DSA-87, so that profile is post-quantum in authentication too. RSA,
/// Ed25519 and ML-DSA-44 end entities are refused on tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// ECDSA P-256, P-384, ML-DSA-65, ML-DSA-87.
    Standard,
    /// CNSA 2.0: ML-DSA-87 only.
    Cnsa,
}

impl KeyPolicy {
    /// The key types this policy accepts.
    pub fn allowed(self) -> &'static [KeyType] {
        match self {
            KeyPolicy::Standard => &[
                KeyType::EcdsaP256,
                KeyType::EcdsaP384,
                KeyType::MlDsa65,
                KeyType::MlDsa87,
            ],
            KeyPolicy::Cnsa => &[KeyType::MlDsa87],
        }
    }

    /// Does the policy accept this key type?
    pub fn allows(self, k: KeyType) -> bool {
        self.allowed().contains(&k)
    }

    /// The policy's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            KeyPolicy::Standard => "the standard tunnel policy (ECDSA P-256/P-384, ML-DSA-65/87)",
            KeyPolicy::Cnsa => "the CNSA 2.0 profile (ML-DSA-87 only)",
        }
    }
}

/// The TLS 1.3 CertificateVerify scheme each accepted key type signs with.
fn scheme_of(k: KeyType) -> Option<SignatureScheme> {
    match k {
        KeyType::EcdsaP256 => Some(SignatureScheme::ECDSA_NISTP256_SHA256),
        KeyType::EcdsaP384 => Some(SignatureScheme::ECDSA_NISTP384_SHA384),
        KeyType::MlDsa65 => Some(SignatureScheme::ML_DSA_65),
        KeyType::MlDsa87 => Some(SignatureScheme::ML_DSA_87),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// The PKI validator behind the seam.

/// The relying-party settings of a site, as the `[tls]` section gives them (typed, files already read).
/// Equality compares the inputs, so a reload that changes none of them keeps the tunnels.
#[derive(Clone)]
pub struct TrustSettings {
    /// Trust anchors (DER).
    pub anchors: Vec<CertificateDer<'static>>,
    /// Untrusted candidates for path building: intermediates and bridge cross-certificates (DER).
    pub intermediates: Vec<Vec<u8>>,
    /// CRLs from configured files (DER).
    pub crls: Vec<Vec<u8>>,
    /// user-initial-policy-set (dotted OIDs); empty means any policy.
    pub policies: Vec<String>,
    /// initial-explicit-policy.
    pub require_explicit_policy: bool,
    /// initial-policy-mapping-inhibit.
    pub inhibit_policy_mapping: bool,
    /// Revocation checking.
    pub revocation: RevocationMode,
    /// Fetch the CRLs named by the certificates' distribution points over HTTP (and cache them).
    pub crl_fetch: bool,
    /// Seconds a CRL past its nextUpdate stays usable when it cannot be refreshed (0: refused).
    pub crl_stale_grace_secs: u64,
    verifier: Option<Arc<PkiPeerVerifier>>,
}

impl fmt::Debug for TrustSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustSettings")
            .field("anchors", &self.anchors.len())
            .field("intermediates", &self.intermediates.len())
            .field("crls", &self.crls.len())
            .field("policies", &self.policies)
            .field("require_explicit_policy", &self.require_explicit_policy)
            .field("inhibit_policy_mapping", &self.inhibit_policy_mapping)
            .field("revocation", &self.revocation)
            .field("crl_fetch", &self.crl_fetch)
            .field("crl_stale_grace_secs", &self.crl_stale_grace_secs)
            .finish()
    }
}

impl PartialEq for TrustSettings {
    fn eq(&self, o: &Self) -> bool {
        self.anchors == o.anchors
            && self.intermediates == o.intermediates
            && self.crls == o.crls
            && self.policies == o.policies
            && self.require_explicit_policy == o.require_explicit_policy
            && self.inhibit_policy_mapping == o.inhibit_policy_mapping
            && self.revocation == o.revocation
            && self.crl_fetch == o.crl_fetch
            && self.crl_stale_grace_secs == o.crl_stale_grace_secs
    }
}

/// Why trust settings could not be turned into a validator (the config maps each to its field).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A trust anchor does not parse.
    #[error("trust anchor {index} does not parse: {err}")]
    Anchor {
        /// Position in the anchor list.
        index: usize,
        /// The parse error.
        err: qsi_pki::validate::ParseError,
    },
    /// An intermediate does not parse.
    #[error("intermediate {index} does not parse: {err}")]
    Intermediate {
        /// Position in the list.
        index: usize,
        /// The parse error.
        err: qsi_pki::validate::ParseError,
    },
    /// A CRL does not parse.
    #[error("CRL {index} does not parse: {err}")]
    Crl {
        /// Position in the list.
        index: usize,
        /// The parse error.
        err: qsi_pki::validate::ParseError,
    },
    /// A policy is not a dotted OID.
    #[error("{0:?} is not a dotted OID")]
    Policy(String),
}

impl TrustSettings {
    /// Settings with these anchors, every other field at its default (revocation required, CRLs fetched
    /// from distribution points, stale CRLs refused, any policy).
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Self {
        TrustSettings {
            anchors,
            intermediates: Vec::new(),
            crls: Vec::new(),
            policies: Vec::new(),
            require_explicit_policy: false,
            inhibit_policy_mapping: false,
            revocation: RevocationMode::Require,
            crl_fetch: true,
            crl_stale_grace_secs: 0,
            verifier: None,
        }
    }

    /// Parses everything and builds the validator (one CRL cache shared by every handshake).
    pub fn build(mut self) -> Result<Self, TrustError> {
        self.verifier = Some(Arc::new(PkiPeerVerifier::new(&self)?));
        Ok(self)
    }

    /// Fills the CRL cache in the background (tokio's blocking pool) from the distribution points of
    /// `certs` (our own chain: peers from the same CA share its CRL) and the configured intermediates, so
    /// the first handshake does not wait for a fetch. Does nothing outside a runtime or without fetching.
    pub fn prefetch_crls(&self, certs: &[CertificateDer<'static>]) {
        let Some(v) = &self.verifier else { return };
        let Some(cache) = v.as_client.crl_cache.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut certs: Vec<qsi_pki::validate::Cert> = certs
            .iter()
            .filter_map(|c| qsi_pki::validate::Cert::from_der(c).ok())
            .collect();
        certs.extend(v.as_client.intermediates.iter().cloned());
        rt.spawn_blocking(move || {
            let n = cache.crls_for(&certs, SystemTime::now()).len();
            tracing::info!(
                crls = n,
                "CRLs of our own chain and intermediates prefetched"
            );
        });
    }

    /// The verifier (the seam) for these settings; built once, so its CRL cache is shared.
    pub fn verifier(&self) -> Result<Arc<dyn PeerVerifier>, TrustError> {
        match &self.verifier {
            Some(v) => Ok(v.clone()),
            None => Ok(Arc::new(PkiPeerVerifier::new(self)?)),
        }
    }
}

/// [`PeerVerifier`] over the PKI crate's [`ConfiguredValidator`]: one validator per role (the end entity
/// must allow clientAuth or serverAuth), both sharing the CRL cache.
pub struct PkiPeerVerifier {
    as_client: ConfiguredValidator,
    as_server: ConfiguredValidator,
}

impl fmt::Debug for PkiPeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiPeerVerifier")
            .field("validator", &self.as_client)
            .finish()
    }
}

const EKU_SERVER_AUTH: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const EKU_CLIENT_AUTH: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// How long before a CRL's nextUpdate the cache fetches the next one.
const CRL_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Timeout of one CRL fetch (it runs inside a handshake the first time a distribution point is seen).
const CRL_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

impl PkiPeerVerifier {
    /// Parses the settings into a validator.
    pub fn new(s: &TrustSettings) -> Result<Self, TrustError> {
        use qsi_pki::validate::Cert;
        let anchors = s
            .anchors
            .iter()
            .enumerate()
            .map(|(index, d)| {
                Cert::from_der(d)
                    .map(TrustAnchor::from_cert)
                    .map_err(|err| TrustError::Anchor { index, err })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let intermediates = s
            .intermediates
            .iter()
            .enumerate()
            .map(|(index, d)| {
                Cert::from_der(d).map_err(|err| TrustError::Intermediate { index, err })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let crls = s
            .crls
            .iter()
            .enumerate()
            .map(|(index, d)| Crl::from_der(d).map_err(|err| TrustError::Crl { index, err }))
            .collect::<Result<Vec<_>, _>>()?;
        let initial_policy_set = s
            .policies
            .iter()
            .map(|p| p.parse().map_err(|_| TrustError::Policy(p.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let stale = if s.crl_stale_grace_secs == 0 {
            StalePolicy::Refuse
        } else {
            StalePolicy::Grace(Duration::from_secs(s.crl_stale_grace_secs))
        };
        let cache = (s.crl_fetch && s.revocation != RevocationMode::Off).then(|| {
            let source = HttpSource {
                timeout: CRL_FETCH_TIMEOUT,
                ..HttpSource::default()
            };
            Arc::new(CrlCache::new(Arc::new(source), CRL_REFRESH_MARGIN, stale))
        });
        let options = |eku| ValidationOptions {
            initial_policy_set: initial_policy_set.clone(),
            explicit_policy: s.require_explicit_policy,
            inhibit_policy_mapping: s.inhibit_policy_mapping,
            required_eku: vec![eku],
            revocation: s.revocation,
            crl_grace_secs: s.crl_stale_grace_secs,
            ..ValidationOptions::default()
        };
        let validator = |eku| ConfiguredValidator {
            anchors: anchors.clone(),
            intermediates: intermediates.clone(),
            options: options(eku),
            crls: crls.clone(),
            crl_cache: cache.clone(),
            fetcher: None,
        };
        Ok(PkiPeerVerifier {
            as_client: validator(EKU_CLIENT_AUTH),
            as_server: validator(EKU_SERVER_AUTH),
        })
    }
}

/// The rustls error (and so the TLS alert) for a refused path. Revocation, expiry and an unknown issuer get
/// their own alerts so the peer's operator reads the reason; everything else carries our message.
fn chain_refusal(e: ChainError) -> rustls::Error {
    use FailureReason as F;
    let ce = match &e {
        ChainError::Empty | ChainError::Parse { .. } => CertificateError::BadEncoding,
        ChainError::Invalid(ValidationError::NoPath { .. }) => CertificateError::UnknownIssuer,
        ChainError::Invalid(v) => match v.failure().map(|f| &f.reason) {
            Some(F::Revoked(_)) => CertificateError::Revoked,
            Some(F::Expired) => CertificateError::Expired,
            Some(F::NotYetValid) => CertificateError::NotValidYet,
            Some(F::RevocationUnknown(_)) => CertificateError::UnknownRevocationStatus,
            Some(F::ExtendedKeyUsage(_)) => CertificateError::InvalidPurpose,
            _ => CertificateError::Other(rustls::OtherError(Arc::new(e))),
        },
    };
    rustls::Error::InvalidCertificate(ce)
}

fn to_system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

impl PeerVerifier for PkiPeerVerifier {
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        let v = match role {
            PeerRole::Client => &self.as_client,
            PeerRole::Server => &self.as_server,
        };
        match v.validate_chain(&chain, to_system_time(now)) {
            Ok(path) => {
                tracing::debug!(
                    subject = %path.target().map(|c| c.subject_string()).unwrap_or_default(),
                    anchor = %path.anchor.name(),
                    policies = ?path.valid_policy_set.oids(),
                    revocation = ?path.revocation,
                    "peer certificate path validated"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(role = ?role, error = %e, "peer certificate refused");
                Err(chain_refusal(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The rustls verifier.

/// What a handshake checks of the certificate the other side presents.
#[derive(Debug)]
pub enum PeerCheck {
    /// Tunnels: the chain through the seam, then a SAN of one of these peers, then that peer's key policy.
    /// On the client side the list holds the one peer we dialed.
    Peers {
        /// The path validator.
        chain: Arc<dyn PeerVerifier>,
        /// Each acceptable identity with its key policy.
        peers: Vec<(Identity, KeyPolicy)>,
    },
    /// The login portal: any chain is let through the TLS layer (only the CertificateVerify signature is
    /// checked); the card validator judges it after the handshake, so every refusal gets an answer and an
    /// audit record instead of a bare alert.
    Deferred,
}

/// The rustls verifier of both the tunnels (either side) and the portal (client certificates).
#[derive(Debug)]
pub struct PeerCertVerifier {
    check: PeerCheck,
    algs: WebPkiSupportedAlgorithms,
    schemes: Vec<SignatureScheme>,
}

fn refusal_message(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(msg),
    ))))
}

impl PeerCertVerifier {
    /// A verifier with `check`, verifying handshake signatures with `algs` (the provider's).
    ///
    /// The schemes offered to the peer are those of the standard key policy (every scheme a tunnel peer
    /// may sign with, so a key outside a peer's stricter policy is refused with a message naming the
    /// policy rather than a bare "no common signature scheme"); the portal offers all of the provider's.
    pub fn new(check: PeerCheck, algs: WebPkiSupportedAlgorithms) -> Self {
        let schemes = match &check {
            PeerCheck::Peers { .. } => KeyPolicy::Standard
                .allowed()
                .iter()
                .filter_map(|k| scheme_of(*k))
                .collect(),
            PeerCheck::Deferred => algs.supported_schemes(),
        };
        PeerCertVerifier {
            check,
            algs,
            schemes,
        }
    }

    /// Checks a presented certificate (chain, identity, key policy) for `role`.
    pub fn check_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let PeerCheck::Peers { chain, peers } = &self.check else {
            return Ok(());
        };
        chain.verify_chain(end_entity, intermediates, role, now)?;
        let ids = cert_identities(end_entity);
        let Some((id, policy)) = peers.iter().find(|(id, _)| ids.contains(&normalise(id))) else {
            let want = match peers.as_slice() {
                [(one, _)] => one.to_string(),
                _ => "of a configured peer".to_string(),
            };
            let msg = format!("certificate does not carry the expected identity {want}");
            tracing::warn!(presented = ?ids, error = %msg, "peer certificate refused");
            return Err(refusal_message(msg));
        };
        let kt = key_type_of(end_entity);
        if !policy.allows(kt) {
            let msg = format!(
                "peer certificate key is {kt}, outside {} for {id}",
                policy.name()
            );
            tracing::warn!(error = %msg, "peer certificate refused");
            return Err(refusal_message(msg));
        }
        Ok(())
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let ok = rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)?;
        if matches!(self.check, PeerCheck::Peers { .. }) {
            tracing::info!(
                identities = ?cert_identities(cert),
                key = %key_type_of(cert),
                scheme = ?dss.scheme,
                "peer authenticated (TLS 1.3 CertificateVerify)"
            );
        }
        Ok(ok)
    }
}

/// The handshake-signature methods, the same for [`ServerCertVerifier`] and [`ClientCertVerifier`] (the
/// two traits declare them separately): TLS 1.2 refused, TLS 1.3 through [`PeerCertVerifier::tls13_signature`].
macro_rules! handshake_signatures {
    () => {
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
            self.tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.schemes.clone()
        }
    };
}

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_cert(end_entity, intermediates, PeerRole::Server, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PeerCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_cert(end_entity, intermediates, PeerRole::Client, now)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

// ---------------------------------------------------------------------------------------------------------
// Identities.

fn normalise(id: &Identity) -> Identity {
    match id {
        Identity::Dns(d) => Identity::Dns(d.to_ascii_lowercase()),
        other => other.clone(),
    }
}

/// The identities (dNSName and URI SANs) a certificate carries (DNS names lower-cased).
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
    cert_identities(cert).contains(&normalise(want))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let p = rcgen::CertificateParams::new(vec!["x.qsi.test".to_string()]).unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn key_types_are_read_from_the_certificate() {
        assert_eq!(
            key_type_of(&cert(&rcgen::PKCS_ECDSA_P256_SHA256)),
            KeyType::EcdsaP256
        );
        assert_eq!(
            key_type_of(&cert(&rcgen::PKCS_ECDSA_P384_SHA384)),
            KeyType::EcdsaP384
        );
        assert_eq!(key_type_of(&cert(&rcgen::PKCS_ED25519)), KeyType::Ed25519);
        assert_eq!(key_type_of(&cert(&rcgen::PKCS_ML_DSA_65)), KeyType::MlDsa65);
        assert_eq!(key_type_of(&cert(&rcgen::PKCS_ML_DSA_87)), KeyType::MlDsa87);
        assert_eq!(key_type_of(b"not a certificate"), KeyType::Other);
    }

    #[test]
    fn offered_schemes_cover_the_standard_policy_only() {
        let algs = crate::tls::base_provider().signature_verification_algorithms;
        let v = PeerCertVerifier::new(
            PeerCheck::Peers {
                chain: TrustSettings::new(vec![]).verifier().unwrap(),
                peers: vec![],
            },
            algs,
        );
        let s = ServerCertVerifier::supported_verify_schemes(&v);
        assert!(s.contains(&SignatureScheme::ML_DSA_87));
        assert!(s.contains(&SignatureScheme::ML_DSA_65));
        assert!(s.contains(&SignatureScheme::ECDSA_NISTP384_SHA384));
        assert!(!s.contains(&SignatureScheme::RSA_PSS_SHA256));
        assert!(!s.contains(&SignatureScheme::ED25519));
        // The portal offers whatever the provider verifies (cards may be RSA).
        let p = PeerCertVerifier::new(PeerCheck::Deferred, algs);
        assert!(
            ClientCertVerifier::supported_verify_schemes(&p)
                .contains(&SignatureScheme::RSA_PSS_SHA256)
        );
    }

    use qsi_pki::path::bridge_fixture::{self, BridgeFixture, BridgeOptions};

    /// Agency B's relying party for the bridge fixture: anchor B's root, the fixture's cross-certificates
    /// and CRLs (no fetching: the fixture's distribution points are not reachable).
    fn b_settings(fx: &BridgeFixture, policies: &[&str]) -> TrustSettings {
        let mut t = TrustSettings::new(vec![CertificateDer::from(fx.b_root.clone())]);
        t.intermediates = fx
            .intermediates
            .iter()
            .filter(|i| i.name != "a-ca")
            .map(|i| i.der.clone())
            .collect();
        t.crls = fx.crls.iter().map(|c| c.der.clone()).collect();
        t.policies = policies.iter().map(|p| p.to_string()).collect();
        t.require_explicit_policy = !policies.is_empty();
        t.crl_fetch = false;
        t.build().unwrap()
    }

    fn at(y: i32, m: u8, d: u8) -> UnixTime {
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
        let secs = date.midnight().assume_utc().unix_timestamp();
        UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap()))
    }

    /// A's end entity as it presents itself (with its issuing CA) to B, checked as a dialing peer.
    fn check(fx: &BridgeFixture, t: &TrustSettings, now: UnixTime) -> Result<(), rustls::Error> {
        let a_ca = fx.intermediates.iter().find(|i| i.name == "a-ca").unwrap();
        t.verifier().unwrap().verify_chain(
            &CertificateDer::from(fx.ee.clone()),
            &[CertificateDer::from(a_ca.der.clone())],
            PeerRole::Client,
            now,
        )
    }

    fn other_reason(r: Result<(), rustls::Error>) -> String {
        match r {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(e))) => e.to_string(),
            other => panic!("expected a refusal with our reason, got {other:?}"),
        }
    }

    #[test]
    fn bridge_paths_policies_and_crls_through_the_seam() {
        let fx = bridge_fixture::build(&BridgeOptions::default()).unwrap();
        let now = at(2026, 11, 26);
        let b = bridge_fixture::B_POLICY.to_string();
        // Mapped A -> bridge -> B policy: accepted under B's policy, and with no policy asked.
        check(&fx, &b_settings(&fx, &[&b]), now).unwrap();
        check(&fx, &b_settings(&fx, &[]), now).unwrap();
        // A policy nobody maps to: refused, and the reason says so.
        let e = other_reason(check(&fx, &b_settings(&fx, &["1.2.3.4.5"]), now));
        assert!(e.contains("no valid certificate policy"), "{e}");
        // B inhibits policy mapping in its cross-certificate: B's policy no longer reaches A's.
        let fx2 = bridge_fixture::build(&BridgeOptions {
            inhibit_mapping_in_b_cross: true,
            ..Default::default()
        })
        .unwrap();
        assert!(check(&fx2, &b_settings(&fx2, &[&b]), now).is_err());
        // Without B's cross-certificate to the bridge there is no path.
        let mut t = b_settings(&fx, &[&b]);
        t.intermediates.retain(|d| {
            fx.intermediates
                .iter()
                .find(|i| i.name == "b-to-bridge")
                .is_none_or(|i| &i.der != d)
        });
        let t = t.build().unwrap();
        assert_eq!(
            check(&fx, &t, now),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        // A's CA revoked the end entity.
        let fx3 = bridge_fixture::build(&BridgeOptions {
            revoke_ee: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            check(&fx3, &b_settings(&fx3, &[&b]), now),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        );
        // No CRL at all under revocation = require: unknown status, refused.
        let mut t = b_settings(&fx, &[&b]);
        t.crls.clear();
        assert_eq!(
            check(&fx, &t.build().unwrap(), now),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus
            ))
        );
    }

    #[test]
    fn a_stale_crl_is_refused_by_default_and_used_within_a_granted_grace() {
        let fx = bridge_fixture::build(&BridgeOptions::default()).unwrap();
        // The fixture's CRLs say nextUpdate 2034-12-01; the certificates run to 2035-01-01.
        let stale = at(2034, 12, 15);
        assert_eq!(
            check(&fx, &b_settings(&fx, &[]), stale),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus
            ))
        );
        let mut t = b_settings(&fx, &[]);
        t.crl_stale_grace_secs = 30 * 86_400;
        check(&fx, &t.build().unwrap(), stale).unwrap();
    }
}
