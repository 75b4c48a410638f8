//! The validation seam: the portal asks a [`CardValidator`] whether a presented card certificate chain is
//! good now, and under which certificate policies (in the portal's own policy domain, after any bridge
//! policy mapping). The engine behind it is the PKI validator (RFC 5280 with policies, bridges and
//! revocation); [`WebPkiCardValidator`] is a simpler engine for deployments without bridges: path to a
//! local trust anchor, validity, clientAuth, and CRLs, but no policy processing.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// Why a card certificate was refused. The message is shown to the person logging in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardRefusal {
    /// No certificate was presented.
    #[error("no card certificate was presented")]
    NoCertificate,
    /// The certificate has expired (or is not valid yet).
    #[error(
        "your card certificate is expired or not yet valid: ask your card office for a new card"
    )]
    Expired,
    /// The certificate was revoked by its issuer.
    #[error("your card certificate has been revoked: contact your card office")]
    Revoked,
    /// Its revocation status could not be established (no fresh CRL or OCSP answer).
    #[error(
        "the revocation status of your card could not be checked; try again later or contact the help desk"
    )]
    RevocationUnknown,
    /// No path to a trust anchor of this site (unknown issuer, or a bridge this site does not trust).
    #[error(
        "your card was issued by a certificate authority this site does not trust (no path to a trusted anchor or bridge)"
    )]
    Untrusted,
    /// A path exists but none of its policies is accepted here.
    #[error("your card's certificate policies are not accepted at this site")]
    PolicyNotAccepted,
    /// The certificate is malformed or otherwise invalid.
    #[error("your card certificate is invalid: {0}")]
    Invalid(String),
    /// The card's CHUID is missing, does not verify, or names another card.
    #[error("{0}")]
    Chuid(String),
}

/// What a validated card certificate proves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidatedCard {
    /// The certificate policies valid for the path, in this site's policy domain (dotted OIDs); empty when
    /// the engine does no policy processing.
    pub policies: Vec<String>,
    /// The trust anchor or bridge the path ended at (subject, for logs and audit).
    pub anchor: String,
}

/// The seam between the portal and a path validation engine.
pub trait CardValidator: Send + Sync + std::fmt::Debug {
    /// Validates `end_entity` (with the `intermediates` the client sent) at time `now`.
    fn validate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ValidatedCard, CardRefusal>;

    /// Validates the path of a CHUID's content signing certificate at `now` (any policy; the caller checks
    /// the id-PIV-content-signing EKU). Engines that cannot validate it refuse.
    fn validate_content_signer(
        &self,
        signer: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), CardRefusal> {
        let _ = (signer, now);
        Err(CardRefusal::Chuid(
            "this site's validation engine cannot check CHUID signers; set trust.chuid = \"off\""
                .into(),
        ))
    }
}

/// Path validation by rustls-webpki: trust anchors, validity, clientAuth EKU and CRLs (the whole chain),
/// without certificate policy processing (so without bridge policy mapping).
#[derive(Debug)]
pub struct WebPkiCardValidator {
    inner: Arc<dyn ClientCertVerifier>,
}

impl WebPkiCardValidator {
    /// A validator for `anchors` with `crls`; with CRLs given, a certificate whose issuer has no CRL here
    /// is refused as of unknown status.
    pub fn new(
        anchors: &[CertificateDer<'static>],
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for a in anchors {
            roots
                .add(a.clone())
                .map_err(|e| format!("trust anchor: {e}"))?;
        }
        let mut b = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(super::tls::pq_provider()),
        );
        if !crls.is_empty() {
            b = b.with_crls(crls);
        }
        let inner = b.build().map_err(|e| format!("validator: {e}"))?;
        Ok(WebPkiCardValidator { inner })
    }
}

impl CardValidator for WebPkiCardValidator {
    fn validate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ValidatedCard, CardRefusal> {
        use rustls::CertificateError as C;
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(_) => Ok(ValidatedCard::default()),
            Err(rustls::Error::InvalidCertificate(c)) => Err(match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => CardRefusal::Expired,
                C::Revoked => CardRefusal::Revoked,
                C::UnknownRevocationStatus
                | C::ExpiredRevocationList
                | C::ExpiredRevocationListContext { .. } => CardRefusal::RevocationUnknown,
                C::UnknownIssuer => CardRefusal::Untrusted,
                other => CardRefusal::Invalid(format!("{other:?}")),
            }),
            Err(e) => Err(CardRefusal::Invalid(e.to_string())),
        }
    }
}

/// Path validation by the PKI validator (`qsi_pki::validate`): RFC 5280 with the policy graph, policy
/// mapping through bridge cross-certificates, name constraints, and CRL revocation of every certificate of
/// the path. The valid policy set is reported in this site's (the anchor's) policy domain.
pub struct PkiCardValidator {
    anchors: Vec<qsi_pki::validate::TrustAnchor>,
    candidates: Vec<qsi_pki::validate::Cert>,
    crls: Vec<qsi_pki::revocation::crl::Crl>,
    options: qsi_pki::validate::ValidationOptions,
    signer_options: qsi_pki::validate::ValidationOptions,
}

impl std::fmt::Debug for PkiCardValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkiCardValidator")
            .field("anchors", &self.anchors.len())
            .field("candidates", &self.candidates.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl PkiCardValidator {
    /// A validator from DER anchors, DER candidate certificates (bridge and partner cross-certificates,
    /// intermediates), DER CRLs, the accepted policies (initial policy set, explicit policy required when
    /// any is given) and the revocation mode.
    pub fn new(
        anchors: &[Vec<u8>],
        candidates: &[Vec<u8>],
        crls: &[Vec<u8>],
        accepted_policies: &[String],
        revocation: qsi_pki::validate::RevocationMode,
    ) -> Result<Self, String> {
        use qsi_pki::validate::{Cert, TrustAnchor, ValidationOptions};
        let cert = |d: &Vec<u8>| Cert::from_der(d).map_err(|e| format!("certificate: {e}"));
        let anchors = anchors
            .iter()
            .map(|d| cert(d).map(TrustAnchor::from_cert))
            .collect::<Result<_, _>>()?;
        let candidates = candidates.iter().map(cert).collect::<Result<_, _>>()?;
        let crls = crls
            .iter()
            .map(|d| qsi_pki::revocation::crl::Crl::from_der(d).map_err(|e| format!("CRL: {e}")))
            .collect::<Result<_, _>>()?;
        let initial_policy_set = accepted_policies
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("policy {p:?} is not a dotted OID"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = ValidationOptions {
            explicit_policy: !initial_policy_set.is_empty(),
            initial_policy_set,
            revocation,
            ..ValidationOptions::default()
        };
        let signer_options = ValidationOptions {
            revocation,
            ..ValidationOptions::default()
        };
        Ok(PkiCardValidator {
            anchors,
            candidates,
            crls,
            options,
            signer_options,
        })
    }
}

impl CardValidator for PkiCardValidator {
    fn validate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ValidatedCard, CardRefusal> {
        use qsi_pki::validate::{Cert, FailureReason as F, ValidationError, ValidationInput};
        let target = Cert::from_der(end_entity).map_err(|e| CardRefusal::Invalid(e.to_string()))?;
        let mut candidates = self.candidates.clone();
        candidates.extend(intermediates.iter().filter_map(|c| Cert::from_der(c).ok()));
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        let mut input = ValidationInput::new(&self.anchors, &target, time, &self.options);
        input.candidates = &candidates;
        input.crls = &self.crls;
        match qsi_pki::validate::validate(&input) {
            Ok(path) => Ok(ValidatedCard {
                policies: path.valid_policy_set.oids(),
                anchor: format!("{}", path.anchor.name()),
            }),
            Err(ValidationError::NoPath { .. }) => Err(CardRefusal::Untrusted),
            Err(e @ ValidationError::Invalid { .. }) => {
                tracing::info!(error = %e, "card path refused");
                Err(match e.failure().map(|f| &f.reason) {
                    Some(F::Expired | F::NotYetValid) => CardRefusal::Expired,
                    Some(F::Revoked(_)) => CardRefusal::Revoked,
                    Some(F::RevocationUnknown(_)) => CardRefusal::RevocationUnknown,
                    Some(F::NoValidPolicy) => CardRefusal::PolicyNotAccepted,
                    _ => CardRefusal::Invalid(e.to_string()),
                })
            }
        }
    }

    fn validate_content_signer(
        &self,
        signer: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), CardRefusal> {
        use qsi_pki::validate::{Cert, ValidationInput};
        let target = Cert::from_der(signer).map_err(|e| CardRefusal::Chuid(e.to_string()))?;
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        let mut input = ValidationInput::new(&self.anchors, &target, time, &self.signer_options);
        input.candidates = &self.candidates;
        input.crls = &self.crls;
        qsi_pki::validate::validate(&input)
            .map(|_| ())
            .map_err(|e| {
                CardRefusal::Chuid(format!(
                    "the content signer of your card's CHUID is not trusted here: {e}"
                ))
            })
    }
}
