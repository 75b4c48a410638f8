//! Certificate profiles as code: one small unit per profile, each citing the FPKI worksheet it
//! implements. References:
//!
//! - **CP-SSP 2.2**: "X.509 Certificate and Certificate Revocation List (CRL) Extensions Profile for
//!   the Shared Service Providers (SSP) Program", Federal PKI Policy Authority (the Common Policy
//!   profile), with its worksheets for the self-signed CA, subordinate CA, cross-certificate, PIV
//!   Authentication, Card Authentication, end-entity signature, key management, PIV content
//!   signing, delegated OCSP responder and device certificates.
//! - **FBCA**: "Federal Public Key Infrastructure (PKI) X.509 Certificate and CRL Extensions
//!   Profile" (cross-certificates with policyMappings, nameConstraints, policyConstraints and
//!   inhibitAnyPolicy, SIA/AIA to .p7c).
//! - **PIV-I**: "X.509 Certificate and CRL Extensions Profile for Personal Identity Verification
//!   Interoperable (PIV-I) Cards" v1.1.
//!
//! The table rows each profile implements are listed in `docs/ca-operator.md` ("Profiles") and in
//! the doc comment of each profile function; `tests/profiles.rs` asserts them row by row.

use const_oid::ObjectIdentifier;
use der::{Encode, asn1::Ia5String};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;

mod ca_certs;
mod end_entity;

pub use ca_certs::{CrossParams, CrossParamsFile, cross_certificate, issuing_ca, key_id, root};
pub use end_entity::{SubjectIds, end_entity, requestable, san_names};

/// OIDs the profiles use, named as in the FPKI documents.
pub mod oid {
    use const_oid::ObjectIdentifier as O;

    /// id-fpki-common-policy (Common Policy, software keys).
    pub const COMMON_POLICY: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.6");
    /// id-fpki-common-hardware (Common Policy, hardware keys: PIV signature and key management).
    pub const COMMON_HARDWARE: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.7");
    /// id-fpki-common-devices (Common Policy, devices: TLS servers and clients).
    pub const COMMON_DEVICES: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.8");
    /// id-fpki-common-authentication (PIV Authentication).
    pub const COMMON_AUTHENTICATION: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.13");
    /// id-fpki-common-cardAuth (PIV Card Authentication).
    pub const COMMON_CARD_AUTH: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.17");
    /// id-fpki-common-devicesHardware (devices with keys in hardware).
    pub const COMMON_DEVICES_HARDWARE: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.36");
    /// id-fpki-common-piv-contentSigning (PIV content signing).
    pub const COMMON_PIV_CONTENT_SIGNING: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.39");
    /// id-fpki-certpcy-mediumHardware (FBCA).
    pub const FBCA_MEDIUM_HARDWARE: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.12");
    /// id-fpki-certpcy-pivi-hardware (PIV-I authentication, signature, key management).
    pub const PIVI_HARDWARE: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.18");
    /// id-fpki-certpcy-pivi-cardAuth (PIV-I Card Authentication).
    pub const PIVI_CARD_AUTH: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.19");
    /// id-fpki-certpcy-pivi-contentSigning (PIV-I content signing).
    pub const PIVI_CONTENT_SIGNING: O = O::new_unwrap("2.16.840.1.101.3.2.1.3.20");

    /// pivFASC-N otherName (FIPS 201, SP 800-73).
    pub const PIV_FASCN: O = O::new_unwrap("2.16.840.1.101.3.6.6");
    /// id-PIV-content-signing EKU.
    pub const PIV_CONTENT_SIGNING: O = O::new_unwrap("2.16.840.1.101.3.6.7");
    /// id-PIV-cardAuth EKU.
    pub const PIV_CARD_AUTH: O = O::new_unwrap("2.16.840.1.101.3.6.8");
    /// Microsoft UPN otherName (smart-card logon).
    pub const MS_UPN: O = O::new_unwrap("1.3.6.1.4.1.311.20.2.3");

    /// id-kp-serverAuth.
    pub const KP_SERVER_AUTH: O = O::new_unwrap("1.3.6.1.5.5.7.3.1");
    /// id-kp-clientAuth.
    pub const KP_CLIENT_AUTH: O = O::new_unwrap("1.3.6.1.5.5.7.3.2");
    /// id-kp-emailProtection.
    pub const KP_EMAIL_PROTECTION: O = O::new_unwrap("1.3.6.1.5.5.7.3.4");
    /// id-kp-OCSPSigning.
    pub const KP_OCSP_SIGNING: O = O::new_unwrap("1.3.6.1.5.5.7.3.9");
    /// id-pkinit-KPClientAuth (RFC 4556).
    pub const PKINIT_CLIENT_AUTH: O = O::new_unwrap("1.3.6.1.5.2.3.4");
    /// Microsoft smart-card logon EKU.
    pub const MS_SMARTCARD_LOGON: O = O::new_unwrap("1.3.6.1.4.1.311.20.2.2");
    /// Microsoft document signing EKU.
    pub const MS_DOCUMENT_SIGNING: O = O::new_unwrap("1.3.6.1.4.1.311.10.3.12");
    /// id-pkix-ocsp-nocheck (RFC 6960 section 4.2.2.2.1).
    pub const OCSP_NOCHECK: O = O::new_unwrap("1.3.6.1.5.5.7.48.1.5");

    /// id-ad-ocsp.
    pub const AD_OCSP: O = O::new_unwrap("1.3.6.1.5.5.7.48.1");
    /// id-ad-caIssuers.
    pub const AD_CA_ISSUERS: O = O::new_unwrap("1.3.6.1.5.5.7.48.2");
    /// id-ad-caRepository.
    pub const AD_CA_REPOSITORY: O = O::new_unwrap("1.3.6.1.5.5.7.48.5");
    /// id-ce-inhibitAnyPolicy.
    pub const INHIBIT_ANY_POLICY: O = O::new_unwrap("2.5.29.54");
}

/// Every profile the CA issues under. The kebab-case name is the CLI's `--profile` value and the
/// walkthrough's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Self-signed root CA (CP-SSP worksheet "Self-Signed CA Certificate").
    Root,
    /// Subordinate issuing CA (CP-SSP worksheet "Subordinate CA Certificate").
    IssuingCa,
    /// Cross-certificate to another PKI or a bridge (FBCA / CP-SSP "Cross Certificate").
    CrossCertificate,
    /// PIV Authentication (CP-SSP worksheet "PIV Authentication Certificate").
    PivAuth,
    /// PIV Card Authentication (CP-SSP worksheet "Card Authentication Certificate").
    PivCardAuth,
    /// PIV Digital Signature (CP-SSP worksheet "End Entity Signature Certificate").
    PivDigitalSignature,
    /// PIV Key Management (CP-SSP worksheet "Key Management Certificate").
    PivKeyManagement,
    /// PIV Content Signing (CP-SSP worksheet "PIV Content Signing Certificate").
    PivContentSigning,
    /// PIV-I Authentication (PIV-I profile worksheet "PIV-I Authentication").
    PiviAuth,
    /// PIV-I Card Authentication (PIV-I profile worksheet "PIV-I Card Authentication").
    PiviCardAuth,
    /// PIV-I Digital Signature (PIV-I profile worksheet "PIV-I Digital Signature").
    PiviDigitalSignature,
    /// PIV-I Key Management (PIV-I profile worksheet "PIV-I Key Management").
    PiviKeyManagement,
    /// PIV-I Content Signing (PIV-I profile worksheet "PIV-I Content Signing").
    PiviContentSigning,
    /// TLS server for tunnels and KMEs (CP-SSP worksheet "Device Certificate", serverAuth).
    TlsServer,
    /// TLS client for tunnels and SAEs (CP-SSP worksheet "Device Certificate", clientAuth).
    TlsClient,
    /// Delegated OCSP responder (CP-SSP worksheet "OCSP Responder Certificate").
    OcspSigner,
}

impl Profile {
    /// Every profile, in the order the walkthrough issues them.
    pub const ALL: [Profile; 16] = [
        Profile::Root,
        Profile::IssuingCa,
        Profile::CrossCertificate,
        Profile::PivAuth,
        Profile::PivCardAuth,
        Profile::PivDigitalSignature,
        Profile::PivKeyManagement,
        Profile::PivContentSigning,
        Profile::PiviAuth,
        Profile::PiviCardAuth,
        Profile::PiviDigitalSignature,
        Profile::PiviKeyManagement,
        Profile::PiviContentSigning,
        Profile::TlsServer,
        Profile::TlsClient,
        Profile::OcspSigner,
    ];

    /// The CLI / file name of the profile.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Root => "root",
            Profile::IssuingCa => "issuing-ca",
            Profile::CrossCertificate => "cross-certificate",
            Profile::PivAuth => "piv-auth",
            Profile::PivCardAuth => "piv-card-auth",
            Profile::PivDigitalSignature => "piv-digital-signature",
            Profile::PivKeyManagement => "piv-key-management",
            Profile::PivContentSigning => "piv-content-signing",
            Profile::PiviAuth => "piv-i-auth",
            Profile::PiviCardAuth => "piv-i-card-auth",
            Profile::PiviDigitalSignature => "piv-i-digital-signature",
            Profile::PiviKeyManagement => "piv-i-key-management",
            Profile::PiviContentSigning => "piv-i-content-signing",
            Profile::TlsServer => "tls-server",
            Profile::TlsClient => "tls-client",
            Profile::OcspSigner => "ocsp-signer",
        }
    }

    /// Parses a profile name as [`Profile::name`] gives it.
    pub fn from_name(s: &str) -> Option<Self> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether certificates of this profile are CA certificates.
    pub fn is_ca(self) -> bool {
        matches!(
            self,
            Profile::Root | Profile::IssuingCa | Profile::CrossCertificate
        )
    }

    /// Whether this is a card (PIV or PIV-I) profile, whose subjectAltName carries the card
    /// identity (FASC-N and/or UUID).
    pub fn is_card(self) -> bool {
        matches!(
            self,
            Profile::PivAuth
                | Profile::PivCardAuth
                | Profile::PivDigitalSignature
                | Profile::PivKeyManagement
                | Profile::PiviAuth
                | Profile::PiviCardAuth
                | Profile::PiviDigitalSignature
                | Profile::PiviKeyManagement
        )
    }

    /// The certificate policy OID(s) the profile asserts (end entities), per its worksheet.
    pub fn policies(self) -> &'static [ObjectIdentifier] {
        use oid::*;
        match self {
            Profile::PivAuth => &[COMMON_AUTHENTICATION],
            Profile::PivCardAuth => &[COMMON_CARD_AUTH],
            Profile::PivDigitalSignature | Profile::PivKeyManagement => &[COMMON_HARDWARE],
            Profile::PivContentSigning => &[COMMON_PIV_CONTENT_SIGNING],
            Profile::PiviAuth | Profile::PiviDigitalSignature | Profile::PiviKeyManagement => {
                &[PIVI_HARDWARE]
            }
            Profile::PiviCardAuth => &[PIVI_CARD_AUTH],
            Profile::PiviContentSigning => &[PIVI_CONTENT_SIGNING],
            Profile::TlsServer | Profile::TlsClient => &[COMMON_DEVICES_HARDWARE],
            Profile::OcspSigner => &[COMMON_DEVICES_HARDWARE],
            Profile::Root | Profile::IssuingCa | Profile::CrossCertificate => &[],
        }
    }

    /// Default validity in days (capped at the issuer's notAfter at issuance).
    pub fn default_validity_days(self) -> u32 {
        match self {
            Profile::Root => 20 * 365,
            Profile::IssuingCa => 10 * 365,
            Profile::CrossCertificate => 3 * 365,
            Profile::OcspSigner => 120,
            Profile::PivContentSigning | Profile::PiviContentSigning => 6 * 365,
            _ => 3 * 365,
        }
    }
}

impl core::fmt::Display for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a profile could not produce its extensions.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// An extension value could not be DER-encoded.
    #[error("encoding an extension: {0}")]
    Der(#[from] der::Error),
    /// A value the profile requires is missing (a FASC-N for PIV, a UUID for PIV-I, a DNS name for
    /// a TLS server, ...).
    #[error("profile {profile} requires {what}")]
    Missing {
        /// The profile.
        profile: Profile,
        /// What is missing.
        what: &'static str,
    },
    /// The subject key cannot serve this profile (an ML-DSA key for key management, ...).
    #[error("profile {profile} cannot use this key: {why}")]
    Key {
        /// The profile.
        profile: Profile,
        /// Why not.
        why: &'static str,
    },
    /// A field of the operator's file has a bad value.
    #[error("{field}: {value:?} is not valid")]
    BadField {
        /// The field.
        field: &'static str,
        /// The offending value or the reason.
        value: String,
    },
    /// A URL or name is not an IA5String.
    #[error("{0} is not ASCII")]
    NotAscii(String),
}

/// Where the CA publishes what relying parties fetch: the base HTTP URL of `qsi ca serve` and
/// the CA's short name (file stem of its CRL and .p7c bundles).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Publication {
    /// Base URL, for example `http://pki.example.gov`, without a trailing slash.
    pub base_url: String,
}

impl Publication {
    /// The CRL of the CA named `ca`: `{base}/crl/{ca}.crl`.
    pub fn crl_url(&self, ca: &str) -> String {
        format!("{}/crl/{ca}.crl", self.base_url)
    }
    /// Certificates issued to the CA named `ca` (AIA caIssuers): `{base}/p7c/issued-to-{ca}.p7c`.
    pub fn issued_to_url(&self, ca: &str) -> String {
        format!("{}/p7c/issued-to-{ca}.p7c", self.base_url)
    }
    /// Certificates issued by the CA named `ca` (SIA caRepository): `{base}/p7c/issued-by-{ca}.p7c`.
    pub fn issued_by_url(&self, ca: &str) -> String {
        format!("{}/p7c/issued-by-{ca}.p7c", self.base_url)
    }
    /// The OCSP responder: `{base}/ocsp`.
    pub fn ocsp_url(&self) -> String {
        format!("{}/ocsp", self.base_url)
    }
}

/// Encodes `value` as the extension `oid` with the given criticality (each profile states the
/// criticality from its table explicitly, never from a library default).
pub(crate) fn ext<T: Encode>(
    oid: ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, ProfileError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: der::asn1::OctetString::new(value.to_der()?)?,
    })
}

/// A URI GeneralName.
pub(crate) fn uri(s: &str) -> Result<GeneralName, ProfileError> {
    Ok(GeneralName::UniformResourceIdentifier(
        Ia5String::new(s).map_err(|_| ProfileError::NotAscii(s.to_string()))?,
    ))
}
