//! Issuance: a template (profile, subject, key, names, validity, serial) becomes a signed
//! certificate. Pure: no I/O, the clock and serial come in from the caller.

use crate::ca::signer::{CaSigner, SignerError, key_sig_alg};
use crate::profiles::{self, CrossParams, Profile, ProfileError, Publication, SubjectIds};
use const_oid::ObjectIdentifier;
use der::asn1::BitString;
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::certificate::Version;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// Why a certificate was not issued. Nothing is written when issuance fails.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The profile refused the request (missing FASC-N, wrong key type, ...).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The CA key failed to sign.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A DER structure could not be encoded.
    #[error("DER encoding: {0}")]
    Der(#[from] der::Error),
    /// The issuing CA's certificate is not valid at the issuance time.
    #[error(
        "the CA certificate is not valid now (valid {not_before:?} to {not_after:?}); renew or re-key the CA"
    )]
    CaNotValid {
        /// The CA's notBefore.
        not_before: SystemTime,
        /// The CA's notAfter.
        not_after: SystemTime,
    },
    /// The CA key does not match the CA certificate.
    #[error("the signing key does not match the CA certificate's public key")]
    KeyMismatch,
    /// The requested validity is empty or inverted.
    #[error("validity is empty: notAfter must be after notBefore")]
    EmptyValidity,
    /// A CA profile was used where an end-entity profile belongs, or the reverse.
    #[error("profile {0} cannot be issued this way")]
    WrongProfile(Profile),
}

/// The CA that signs: its certificate, its key, its short name (the stem of its CRL and .p7c
/// URLs) and the policies it issues under.
pub struct Issuer<'a> {
    /// The CA certificate.
    pub cert: &'a Certificate,
    /// The CA key.
    pub signer: &'a dyn CaSigner,
    /// Short name, for example `qsi-issuing-ca`.
    pub name: &'a str,
    /// Where the CA publishes.
    pub publication: &'a Publication,
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Template {
    /// The profile.
    pub profile: Profile,
    /// The subject DN.
    pub subject: Name,
    /// The subject's public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// subjectAltName content (end entities).
    pub ids: SubjectIds,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter (capped at the CA's notAfter).
    pub not_after: SystemTime,
    /// The serial number (random, from the CA database).
    pub serial: SerialNumber,
    /// Cross-certificate parameters (profile `cross-certificate`).
    pub cross: Option<CrossParams>,
    /// Policies of a subordinate CA (profile `issuing-ca`).
    pub ca_policies: Vec<ObjectIdentifier>,
    /// Short name of a subordinate CA (profile `issuing-ca`): its SIA URL.
    pub subject_ca_name: Option<String>,
}

/// TBSCertificate with public fields (RFC 5280 4.1), so the CA controls every field it signs.
#[derive(Clone, Debug, Sequence)]
struct Tbs {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

#[derive(Clone, Debug, Sequence)]
struct Signed<'a> {
    tbs: der::asn1::AnyRef<'a>,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// Converts a time to an X.509 Time (UTCTime through 2049, GeneralizedTime after, RFC 5280
/// 4.1.2.5), truncated to whole seconds.
pub fn to_time(t: SystemTime) -> Result<Time, der::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| der::Error::from(der::ErrorKind::DateTime))?
        .as_secs();
    Ok(Time::from(der::DateTime::from_unix_duration(
        Duration::from_secs(secs),
    )?))
}

fn sign_tbs(tbs: &Tbs, signer: &dyn CaSigner) -> Result<Certificate, IssueError> {
    let tbs_der = tbs.to_der()?;
    let sig = signer.sign(&tbs_der)?;
    let signed = Signed {
        tbs: der::asn1::AnyRef::from_der(&tbs_der)?,
        algorithm: signer.algorithm().algorithm_identifier(),
        signature: BitString::from_bytes(&sig)?,
    };
    Ok(Certificate::from_der(&signed.to_der()?)?)
}

/// Self-signs a root CA certificate (profile `root`).
pub fn self_signed_root(
    signer: &dyn CaSigner,
    subject: Name,
    ca_name: &str,
    publication: &Publication,
    serial: SerialNumber,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Certificate, IssueError> {
    if not_after <= not_before {
        return Err(IssueError::EmptyValidity);
    }
    let spki = signer.public_key().clone();
    let tbs = Tbs {
        version: Version::V3,
        serial_number: serial,
        signature: signer.algorithm().algorithm_identifier(),
        issuer: subject.clone(),
        validity: Validity::new(to_time(not_before)?, to_time(not_after)?),
        subject,
        extensions: profiles::root(&spki, ca_name, publication)?,
        subject_public_key_info: spki,
    };
    sign_tbs(&tbs, signer)
}

/// A certificate checked against its profile and ready to sign (every refusal happens before this
/// exists, so a caller can check it before spending a serial).
#[derive(Debug, Clone)]
pub struct Prepared(Tbs);

impl Prepared {
    /// The extensions the certificate will carry.
    pub fn extensions(&self) -> &[Extension] {
        &self.0.extensions
    }

    /// Sets the serial number.
    pub fn set_serial(&mut self, serial: SerialNumber) {
        self.0.serial_number = serial;
    }

    /// Signs with the issuer's key.
    pub fn sign(&self, signer: &dyn CaSigner) -> Result<Certificate, IssueError> {
        sign_tbs(&self.0, signer)
    }
}

/// Issues a certificate from `template` under `issuer` at time `now`.
pub fn issue(
    issuer: &Issuer<'_>,
    template: &Template,
    now: SystemTime,
) -> Result<Certificate, IssueError> {
    prepare(issuer, template, now)?.sign(issuer.signer)
}

/// Checks `template` against its profile and the issuing CA at `now` and builds what will be
/// signed.
pub fn prepare(
    issuer: &Issuer<'_>,
    template: &Template,
    now: SystemTime,
) -> Result<Prepared, IssueError> {
    let ca_tbs = issuer.cert.tbs_certificate();
    let ca_nb = ca_tbs.validity().not_before.to_system_time();
    let ca_na = ca_tbs.validity().not_after.to_system_time();
    if now < ca_nb || now > ca_na {
        return Err(IssueError::CaNotValid {
            not_before: ca_nb,
            not_after: ca_na,
        });
    }
    let ca_spki = ca_tbs.subject_public_key_info();
    if ca_spki != issuer.signer.public_key() {
        return Err(IssueError::KeyMismatch);
    }
    let not_after = template.not_after.min(ca_na);
    if not_after <= template.not_before {
        return Err(IssueError::EmptyValidity);
    }
    // The subject key must be one we can name (also rejects unknown algorithms early).
    key_sig_alg(&template.spki).map_err(|_| ProfileError::Key {
        profile: template.profile,
        why: "unsupported public key algorithm",
    })?;
    let extensions = match template.profile {
        Profile::Root => return Err(IssueError::WrongProfile(Profile::Root)),
        Profile::IssuingCa => profiles::issuing_ca(
            &template.spki,
            template.subject_ca_name.as_deref().unwrap_or("issuing-ca"),
            ca_spki,
            issuer.name,
            &template.ca_policies,
            issuer.publication,
        )?,
        Profile::CrossCertificate => {
            let params = template.cross.clone().unwrap_or_default();
            profiles::cross_certificate(
                &template.spki,
                ca_spki,
                issuer.name,
                &params,
                issuer.publication,
            )?
        }
        p => profiles::end_entity(
            p,
            &template.spki,
            &template.ids,
            ca_spki,
            issuer.name,
            issuer.publication,
        )?,
    };
    let tbs = Tbs {
        version: Version::V3,
        serial_number: template.serial.clone(),
        signature: issuer.signer.algorithm().algorithm_identifier(),
        issuer: ca_tbs.subject().clone(),
        validity: Validity::new(to_time(template.not_before)?, to_time(not_after)?),
        subject: template.subject.clone(),
        subject_public_key_info: template.spki.clone(),
        extensions,
    };
    Ok(Prepared(tbs))
}

/// Verifies `cert`'s signature with `issuer_spki` (used by tests and by `qsi ca` before it
/// publishes anything).
pub fn verify_cert_signature(
    cert: &Certificate,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), SignerError> {
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| SignerError::PublicKey(e.to_string()))?;
    let sig = cert
        .signature()
        .as_bytes()
        .ok_or(SignerError::BadSignature)?;
    crate::ca::signer::verify(issuer_spki, cert.signature_algorithm(), &tbs, sig).map(|_| ())
}
