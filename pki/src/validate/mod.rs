//! RFC 5280 section 6 certification path validation, with the policy graph of RFC 9618, name
//! constraints, CRL (full, indirect, delta, distribution points, reasons) and OCSP revocation checks, and
//! path building through bridges (see [`crate::path`]).
//!
//! The core is pure: certificates, CRLs, OCSP responses and the validation time go in, a validated path or
//! the reason (and the certificate) it failed come out. Fetching CRLs and bundles over HTTP lives at the
//! edge ([`crate::revocation::fetch`], [`crate::path::fetch`]) and feeds this core.
//!
//! ```
//! use qsi_pki::validate::{validate, ValidationInput, ValidationOptions};
//! // With no anchors nothing validates, and the error says so.
//! let opts = ValidationOptions::default();
//! let der = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"),
//!     "/../../shared/testdata/pkits/certs/GoodCACert.crt")).unwrap();
//! let cert = qsi_pki::validate::Cert::from_der(&der).unwrap();
//! let input = ValidationInput::new(&[], &cert, std::time::SystemTime::now(), &opts);
//! assert!(validate(&input).is_err());
//! ```

pub mod cert;
mod engine;
pub mod name;
pub mod policy;
pub mod sig;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use const_oid::ObjectIdentifier;
use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;

pub use cert::{Cert, ParseError, load_certs};
pub use name::{NameConstraintState, NormName, Subtree};
pub use policy::{PolicyGraph, PolicySet};

use crate::path::BundleFetcher;
use crate::revocation::Crl;
use crate::revocation::ocsp::OcspResponse;

/// A trust anchor: a name and a key, usually taken from a self-signed certificate.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    cert: Option<Cert>,
    name: Name,
    norm: NormName,
    spki: SubjectPublicKeyInfoOwned,
}

impl TrustAnchor {
    /// An anchor from a certificate (its subject and key; its extensions do not constrain, per RFC 5280
    /// 6.1.1 d).
    pub fn from_cert(cert: Cert) -> Self {
        TrustAnchor {
            name: cert.subject_name().clone(),
            norm: cert.subject().clone(),
            spki: cert
                .x509()
                .tbs_certificate()
                .subject_public_key_info()
                .clone(),
            cert: Some(cert),
        }
    }
    /// The anchor's certificate, if it came from one.
    pub fn cert(&self) -> Option<&Cert> {
        self.cert.as_ref()
    }
    /// The anchor's name.
    pub fn name(&self) -> &Name {
        &self.name
    }
    /// The normalised name.
    pub fn norm_name(&self) -> &NormName {
        &self.norm
    }
    /// The anchor's public key.
    pub fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }
    /// True when `cert` carries this anchor's name and key.
    pub fn is_cert_of(&self, cert: &Cert) -> bool {
        cert.subject() == &self.norm
            && cert.x509().tbs_certificate().subject_public_key_info() == &self.spki
    }
}

/// What to do when no revocation status can be found for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationMode {
    /// Every certificate below the anchor must have a status from a CRL or OCSP (PKITS, the daemon).
    #[default]
    Require,
    /// Check what is available; an unknown status is logged and accepted.
    BestEffort,
    /// Do not check revocation.
    Off,
}

/// The relying party's inputs of RFC 5280 6.1.1, and the extra checks it wants on the end entity.
#[derive(Clone, Debug)]
pub struct ValidationOptions {
    /// user-initial-policy-set; empty means {anyPolicy}.
    pub initial_policy_set: Vec<ObjectIdentifier>,
    /// initial-explicit-policy.
    pub explicit_policy: bool,
    /// initial-policy-mapping-inhibit.
    pub inhibit_policy_mapping: bool,
    /// initial-any-policy-inhibit.
    pub inhibit_any_policy: bool,
    /// initial-permitted-subtrees (None: unbounded).
    pub permitted_subtrees: Option<Vec<Subtree>>,
    /// initial-excluded-subtrees.
    pub excluded_subtrees: Vec<Subtree>,
    /// Extended key usages the end entity must allow (each one; anyExtendedKeyUsage or no EKU extension
    /// satisfies them).
    pub required_eku: Vec<ObjectIdentifier>,
    /// Names the end entity must carry in subjectAltName (dNSName, rfc822Name, iPAddress, URI).
    pub required_names: Vec<GeneralName>,
    /// Most certificates in a path below the anchor.
    pub max_depth: usize,
    /// Revocation checking.
    pub revocation: RevocationMode,
    /// Use delta CRLs (RFC 5280 6.3.2 use-deltas).
    pub use_deltas: bool,
    /// Seconds past nextUpdate a CRL is still accepted (logged); 0 refuses stale CRLs.
    pub crl_grace_secs: u64,
    /// Reject certificates and CRLs whose inner (TBS) signature AlgorithmIdentifier differs from the
    /// outer one (RFC 5280 4.1.1.2, 5.1.1.2). On by default; off only for data known to carry stale inner
    /// identifiers (the ML-DSA re-signed PKITS set).
    pub require_matching_signature_algorithms: bool,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            initial_policy_set: Vec::new(),
            explicit_policy: false,
            inhibit_policy_mapping: false,
            inhibit_any_policy: false,
            permitted_subtrees: None,
            excluded_subtrees: Vec::new(),
            required_eku: Vec::new(),
            required_names: Vec::new(),
            max_depth: 10,
            revocation: RevocationMode::Require,
            use_deltas: true,
            crl_grace_secs: 0,
            require_matching_signature_algorithms: true,
        }
    }
}

/// Everything one validation needs. Build with [`ValidationInput::new`] and fill in the rest.
#[derive(Clone)]
pub struct ValidationInput<'a> {
    /// Trust anchors.
    pub anchors: &'a [TrustAnchor],
    /// The certificate to validate.
    pub target: &'a Cert,
    /// Untrusted candidate certificates (intermediates, cross-certificates, bundle contents).
    pub candidates: &'a [Cert],
    /// CRLs (complete and delta).
    pub crls: &'a [Crl],
    /// OCSP responses.
    pub ocsp: &'a [OcspResponse],
    /// The validation time.
    pub time: SystemTime,
    /// Relying-party inputs.
    pub options: &'a ValidationOptions,
    /// Fetches .p7c bundles named by AIA caIssuers / SIA caRepository when the candidates run out.
    pub fetcher: Option<&'a dyn BundleFetcher>,
}

impl<'a> ValidationInput<'a> {
    /// Input with no candidates, CRLs, OCSP responses or fetcher.
    pub fn new(
        anchors: &'a [TrustAnchor],
        target: &'a Cert,
        time: SystemTime,
        options: &'a ValidationOptions,
    ) -> Self {
        ValidationInput {
            anchors,
            target,
            candidates: &[],
            crls: &[],
            ocsp: &[],
            time,
            options,
            fetcher: None,
        }
    }
}

/// Revocation status found for one certificate of a validated path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStatus {
    /// Not revoked, per a CRL (and delta) covering all reasons.
    GoodByCrl,
    /// Not revoked, per an OCSP response.
    GoodByOcsp,
    /// No status found, accepted under [`RevocationMode::BestEffort`].
    Unknown,
    /// Not checked ([`RevocationMode::Off`]).
    NotChecked,
}

/// A validated path.
#[derive(Clone, Debug)]
pub struct ValidatedPath {
    /// The anchor the path starts from.
    pub anchor: TrustAnchor,
    /// The certificates from the one the anchor issued down to the target.
    pub certs: Vec<Cert>,
    /// The user-constrained policy set (in the anchor's policy domain).
    pub valid_policy_set: PolicySet,
    /// The revocation status found for each certificate of `certs`.
    pub revocation: Vec<RevocationStatus>,
}

impl ValidatedPath {
    /// The target certificate.
    pub fn target(&self) -> Option<&Cert> {
        self.certs.last()
    }
}

/// Why a certificate of a path was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    /// The signature does not verify with the issuer's key.
    #[error("bad signature: {0}")]
    Signature(sig::SigError),
    /// The inner and outer signature algorithms differ.
    #[error("signature algorithm in TBSCertificate differs from the outer one")]
    SignatureAlgorithmMismatch,
    /// notBefore is after the validation time.
    #[error("not yet valid (notBefore is after the validation time)")]
    NotYetValid,
    /// notAfter is before the validation time.
    #[error("expired (notAfter is before the validation time)")]
    Expired,
    /// The issuer name does not match the subject of the certificate above it.
    #[error("issuer name does not chain to the certificate above")]
    NameChaining,
    /// Listed on a CRL or OCSP response.
    #[error("revoked ({0})")]
    Revoked(String),
    /// No CRL or OCSP response gave a status.
    #[error("revocation status unknown: {0}")]
    RevocationUnknown(String),
    /// A name lies in an excluded subtree.
    #[error("name {name} is excluded by name constraints ({subtree})")]
    NameExcluded {
        /// The name.
        name: String,
        /// The subtree it lies in.
        subtree: String,
    },
    /// A name lies outside the permitted subtrees.
    #[error("name {name} is outside the permitted subtrees ({subtrees})")]
    NameNotPermitted {
        /// The name.
        name: String,
        /// The permitted subtrees of its type.
        subtrees: String,
    },
    /// Explicit policy is required and no valid policy remains.
    #[error("no valid certificate policy (explicit policy required)")]
    NoValidPolicy,
    /// A policy mapping maps to or from anyPolicy.
    #[error("policy mapping involves anyPolicy")]
    AnyPolicyMapping,
    /// An intermediate is not a CA (basicConstraints missing or cA false, or a v1/v2 certificate).
    #[error("not a CA certificate (basicConstraints cA is not set)")]
    NotCa,
    /// The path is longer than a pathLenConstraint allows.
    #[error("path length constraint exceeded")]
    PathLength,
    /// A CA key usage without keyCertSign.
    #[error("key usage does not allow certificate signing")]
    KeyUsage,
    /// A critical extension we do not process.
    #[error("unrecognised critical extension {0}")]
    UnknownCriticalExtension(String),
    /// The end entity does not allow a required extended key usage.
    #[error("extended key usage does not allow {0}")]
    ExtendedKeyUsage(String),
    /// The end entity does not carry a required name.
    #[error("certificate is not valid for name {0}")]
    NameMismatch(String),
    /// The path is longer than the relying party's maximum.
    #[error("path longer than the maximum depth {0}")]
    TooDeep(usize),
}

/// A rejected path: which certificate, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathFailure {
    /// Index in the path (0 = the certificate issued by the anchor; the target is last).
    pub index: usize,
    /// Length of the path.
    pub path_len: usize,
    /// Subject of the certificate that failed.
    pub subject: String,
    /// Its serial number in hex.
    pub serial: String,
    /// The reason.
    pub reason: FailureReason,
}

impl fmt::Display for PathFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {} of {} (subject \"{}\", serial {}): {}",
            self.index + 1,
            self.path_len,
            self.subject,
            self.serial,
            self.reason
        )
    }
}

/// Why validation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No chain of candidates links the target to any anchor.
    #[error("no path from \"{target}\" to a trust anchor (issuer \"{issuer}\" not found)")]
    NoPath {
        /// Subject of the target.
        target: String,
        /// Issuer name that could not be found.
        issuer: String,
    },
    /// Every path found was invalid; this is the most promising one's failure.
    #[error("{failure} (tried {paths_tried} path(s))")]
    Invalid {
        /// The failure.
        failure: Box<PathFailure>,
        /// How many candidate paths were validated.
        paths_tried: usize,
    },
}

impl ValidationError {
    /// The failure of the best path, if any path was found.
    pub fn failure(&self) -> Option<&PathFailure> {
        match self {
            ValidationError::Invalid { failure, .. } => Some(failure),
            ValidationError::NoPath { .. } => None,
        }
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Validates `input.target`: builds candidate paths to the anchors (through bridges, both directions of
/// cross-certification, loops cut) and runs RFC 5280 section 6.1 on each until one is valid.
pub fn validate(input: &ValidationInput<'_>) -> Result<ValidatedPath, ValidationError> {
    engine::Ctx::new(input).build_and_validate(input.target, None, input.options, 0)
}

/// The seam through which the daemon, the tunnels and the login portal validate peer certificates: a
/// configured trust store, policy and revocation source behind one call.
pub trait CertificateValidator: Send + Sync {
    /// Validates `chain[0]` (the end entity), using `chain[1..]` as untrusted candidates, at `now`.
    fn validate_chain(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<ValidatedPath, ChainError>;
}

/// Errors of the [`CertificateValidator`] seam.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The peer sent no certificate.
    #[error("no certificate presented")]
    Empty,
    /// A presented certificate does not parse.
    #[error("certificate {index} does not parse: {err}")]
    Parse {
        /// Position in the presented chain.
        index: usize,
        /// The parse error.
        err: ParseError,
    },
    /// Validation failed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The [`CertificateValidator`] the daemon and the login portal configure once: anchors, known
/// intermediates and cross-certificates, relying-party options, and a revocation source (the runtime CRL
/// cache and/or fixed CRLs), plus an optional bundle fetcher for AIA/SIA.
pub struct ConfiguredValidator {
    /// Trust anchors.
    pub anchors: Vec<TrustAnchor>,
    /// Known untrusted certificates (bridge cross-certificates, intermediates).
    pub intermediates: Vec<Cert>,
    /// Relying-party options.
    pub options: ValidationOptions,
    /// Fixed CRLs (in addition to the cache).
    pub crls: Vec<Crl>,
    /// Runtime CRL cache: CRLs of the path's distribution points are fetched through it.
    pub crl_cache: Option<std::sync::Arc<crate::revocation::CrlCache>>,
    /// Fetcher for AIA caIssuers / SIA caRepository bundles.
    pub fetcher: Option<std::sync::Arc<dyn BundleFetcher>>,
}

impl fmt::Debug for ConfiguredValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredValidator")
            .field("anchors", &self.anchors.len())
            .field("intermediates", &self.intermediates.len())
            .field("options", &self.options)
            .finish()
    }
}

impl ConfiguredValidator {
    /// A validator with these anchors and options, nothing else.
    pub fn new(anchors: Vec<TrustAnchor>, options: ValidationOptions) -> Self {
        ConfiguredValidator {
            anchors,
            intermediates: Vec::new(),
            options,
            crls: Vec::new(),
            crl_cache: None,
            fetcher: None,
        }
    }
}

impl CertificateValidator for ConfiguredValidator {
    fn validate_chain(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<ValidatedPath, ChainError> {
        let mut parsed = Vec::with_capacity(chain.len());
        for (index, der) in chain.iter().enumerate() {
            parsed.push(Cert::from_der(der).map_err(|err| ChainError::Parse { index, err })?);
        }
        let (target, presented) = parsed.split_first().ok_or(ChainError::Empty)?;
        let mut candidates: Vec<Cert> = presented.to_vec();
        candidates.extend(self.intermediates.iter().cloned());
        let mut crls = self.crls.clone();
        if let Some(cache) = &self.crl_cache {
            let mut wanted = candidates.clone();
            wanted.push(target.clone());
            crls.extend(cache.crls_for(&wanted, now));
        }
        let mut options = self.options.clone();
        if let Some(cache) = &self.crl_cache {
            options.crl_grace_secs = options
                .crl_grace_secs
                .max(cache.stale_policy().grace_secs());
        }
        let mut input = ValidationInput::new(&self.anchors, target, now, &options);
        input.candidates = &candidates;
        input.crls = &crls;
        input.fetcher = self.fetcher.as_deref();
        Ok(validate(&input)?)
    }
}
