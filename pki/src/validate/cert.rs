//! The certificate-parsing layer: a DER certificate decoded once, with every extension the validator,
//! the path builder and the CA side need already typed. Malformed input is an error, never a panic.

use std::fmt;
use std::sync::Arc;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280 as oids;
use der::asn1::ObjectIdentifier as Oid;
use der::{Decode, Encode, Reader, SliceReader};
use x509_cert::Certificate;
use x509_cert::ext::pkix::constraints::name::NameConstraints;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
    CrlDistributionPoints, ExtendedKeyUsage, FreshestCrl, InhibitAnyPolicy, KeyUsage,
    PolicyConstraints, PolicyMappings, SubjectAltName, SubjectInfoAccessSyntax,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;

use super::name::NormName;

/// anyPolicy (2.5.29.32.0).
pub const ANY_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32.0");
/// anyExtendedKeyUsage (2.5.29.37.0).
pub const ANY_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// id-ad-caIssuers (AIA).
pub const AD_CA_ISSUERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2");
/// id-ad-caRepository (SIA).
pub const AD_CA_REPOSITORY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.5");
/// id-ad-ocsp (AIA).
pub const AD_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-pkix-ocsp-nocheck.
pub const OCSP_NOCHECK: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.5");

/// Errors from parsing certificates, CRLs and bundles.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The bytes are not a DER (or PEM) certificate.
    #[error("not a certificate: {0}")]
    Certificate(der::Error),
    /// An extension the validator relies on could not be decoded.
    #[error("malformed {name} extension: {err}")]
    Extension {
        /// Which extension.
        name: &'static str,
        /// The decoder's complaint.
        err: der::Error,
    },
    /// The same extension appears twice (RFC 5280 4.2).
    #[error("extension {0} appears more than once")]
    DuplicateExtension(Oid),
    /// The bytes are not a CRL.
    #[error("not a CRL: {0}")]
    Crl(der::Error),
    /// A PKCS #7 bundle could not be decoded.
    #[error("not a PKCS #7 certificate bundle: {0}")]
    Bundle(String),
    /// PEM armour was present but broken.
    #[error("bad PEM: {0}")]
    Pem(String),
}

/// Basic constraints as read from the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Basic {
    /// cA flag.
    pub ca: bool,
    /// pathLenConstraint.
    pub path_len: Option<u8>,
}

/// Key usage bits that validation cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUsageBits {
    /// keyCertSign.
    pub key_cert_sign: bool,
    /// cRLSign.
    pub crl_sign: bool,
    /// digitalSignature.
    pub digital_signature: bool,
}

/// One certificate policy with the qualifiers' presence noted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The policy OID.
    pub oid: ObjectIdentifier,
    /// The qualifiers, DER-encoded (CPS pointers, user notices).
    pub qualifiers: Vec<Vec<u8>>,
}

/// Policy constraints (RFC 5280 4.2.1.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyConstraintsValue {
    /// requireExplicitPolicy skip certs.
    pub require_explicit_policy: Option<u32>,
    /// inhibitPolicyMapping skip certs.
    pub inhibit_policy_mapping: Option<u32>,
}

/// The decoded extensions of a certificate.
#[derive(Clone, Debug, Default)]
pub struct CertExtensions {
    /// basicConstraints.
    pub basic: Option<Basic>,
    /// keyUsage.
    pub key_usage: Option<KeyUsageBits>,
    /// extKeyUsage.
    pub eku: Option<Vec<ObjectIdentifier>>,
    /// certificatePolicies.
    pub policies: Option<Vec<PolicyInfo>>,
    /// policyMappings as (issuerDomainPolicy, subjectDomainPolicy).
    pub policy_mappings: Option<Vec<(ObjectIdentifier, ObjectIdentifier)>>,
    /// policyConstraints.
    pub policy_constraints: Option<PolicyConstraintsValue>,
    /// inhibitAnyPolicy skip certs.
    pub inhibit_any_policy: Option<u32>,
    /// nameConstraints.
    pub name_constraints: Option<NameConstraints>,
    /// subjectAltName.
    pub san: Option<Vec<GeneralName>>,
    /// subjectKeyIdentifier.
    pub ski: Option<Vec<u8>>,
    /// authorityKeyIdentifier keyIdentifier.
    pub aki: Option<Vec<u8>>,
    /// cRLDistributionPoints.
    pub crl_dps: Option<Vec<DistributionPoint>>,
    /// freshestCRL (delta CRL locations).
    pub freshest_crl: Option<Vec<DistributionPoint>>,
    /// authorityInfoAccess (caIssuers, OCSP).
    pub aia: Vec<(ObjectIdentifier, GeneralName)>,
    /// subjectInfoAccess (caRepository).
    pub sia: Vec<(ObjectIdentifier, GeneralName)>,
    /// id-pkix-ocsp-nocheck present.
    pub ocsp_nocheck: bool,
    /// Critical extensions this implementation does not process.
    pub unknown_critical: Vec<ObjectIdentifier>,
}

struct Inner {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    cert: Certificate,
    ext: CertExtensions,
    subject: NormName,
    issuer: NormName,
    fingerprint: [u8; 32],
}

/// A parsed certificate. Cheap to clone (shared).
#[derive(Clone)]
pub struct Cert(Arc<Inner>);

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject_string())
            .field("serial", &self.serial_hex())
            .finish()
    }
}

impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.0.fingerprint == other.0.fingerprint
    }
}
impl Eq for Cert {}

impl Cert {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, ParseError> {
        let cert = match Certificate::from_der(der) {
            Ok(c) => c,
            Err(e) => {
                // UTCTime years 50-69 mean 1950-1969 (RFC 5280 4.1.2.5.1), which the der crate cannot
                // represent. Such a date can only be a notBefore in the distant past (or an expiry long
                // gone), so a copy with it clamped to 1970-01-01 reads the same for validation; the
                // signature is still checked over the original bytes.
                let patched = clamp_pre1970_utctime(der).ok_or(ParseError::Certificate(e))?;
                Certificate::from_der(&patched).map_err(ParseError::Certificate)?
            }
        };
        let tbs = tbs_range(der).map_err(ParseError::Certificate)?;
        let ext = decode_extensions(&cert)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        let subject = NormName::new(cert.tbs_certificate().subject());
        let issuer = NormName::new(cert.tbs_certificate().issuer());
        Ok(Cert(Arc::new(Inner {
            der: der.to_vec(),
            tbs,
            cert,
            ext,
            subject,
            issuer,
            fingerprint,
        })))
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
    /// The signed part (TBSCertificate) exactly as it was received.
    pub fn tbs_der(&self) -> &[u8] {
        self.0.der.get(self.0.tbs.clone()).unwrap_or_default()
    }
    /// The x509-cert view.
    pub fn x509(&self) -> &Certificate {
        &self.0.cert
    }
    /// Decoded extensions.
    pub fn ext(&self) -> &CertExtensions {
        &self.0.ext
    }
    /// Normalised subject.
    pub fn subject(&self) -> &NormName {
        &self.0.subject
    }
    /// Normalised issuer.
    pub fn issuer(&self) -> &NormName {
        &self.0.issuer
    }
    /// The subject as an x509 Name.
    pub fn subject_name(&self) -> &Name {
        self.0.cert.tbs_certificate().subject()
    }
    /// The issuer as an x509 Name.
    pub fn issuer_name(&self) -> &Name {
        self.0.cert.tbs_certificate().issuer()
    }
    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.0.fingerprint
    }
    /// The subject in RFC 4514 form.
    pub fn subject_string(&self) -> String {
        self.subject_name().to_string()
    }
    /// The issuer in RFC 4514 form.
    pub fn issuer_string(&self) -> String {
        self.issuer_name().to_string()
    }
    /// Serial number bytes (big-endian, as encoded).
    pub fn serial(&self) -> &[u8] {
        self.0.cert.tbs_certificate().serial_number().as_bytes()
    }
    /// Serial number in hex.
    pub fn serial_hex(&self) -> String {
        self.serial().iter().map(|b| format!("{b:02x}")).collect()
    }
    /// True when subject and issuer are the same name (RFC 5280 "self-issued").
    pub fn is_self_issued(&self) -> bool {
        self.0.subject == self.0.issuer
    }
    /// True when basicConstraints says cA.
    pub fn is_ca(&self) -> bool {
        self.0.ext.basic.is_some_and(|b| b.ca)
    }
    /// notBefore and notAfter as seconds since the Unix epoch.
    pub fn validity_secs(&self) -> (u64, u64) {
        let v = self.0.cert.tbs_certificate().validity();
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }
    /// The SubjectPublicKeyInfo, DER-encoded.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap_or_default()
    }
    /// The subject public key algorithm OID.
    pub fn key_algorithm(&self) -> ObjectIdentifier {
        self.0
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .algorithm
            .oid
    }
    /// The certificate's version (1, 2 or 3).
    pub fn version(&self) -> u8 {
        self.0.cert.tbs_certificate().version() as u8 + 1
    }
    /// URIs in AIA caIssuers.
    pub fn ca_issuers_uris(&self) -> Vec<String> {
        uris(&self.0.ext.aia, AD_CA_ISSUERS)
    }
    /// URIs in AIA OCSP.
    pub fn ocsp_uris(&self) -> Vec<String> {
        uris(&self.0.ext.aia, AD_OCSP)
    }
    /// URIs in SIA caRepository.
    pub fn ca_repository_uris(&self) -> Vec<String> {
        uris(&self.0.ext.sia, AD_CA_REPOSITORY)
    }
    /// HTTP(S)/LDAP URIs of the CRL distribution points (full names only).
    pub fn crl_uris(&self) -> Vec<String> {
        self.0
            .ext
            .crl_dps
            .iter()
            .flatten()
            .filter_map(|dp| match &dp.distribution_point {
                Some(x509_cert::ext::pkix::name::DistributionPointName::FullName(names)) => {
                    Some(names.iter().filter_map(|n| match n {
                        GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                        _ => None,
                    }))
                }
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// Replaces UTCTime values with years 50-69 by 700101000000Z; None when there are none.
fn clamp_pre1970_utctime(der: &[u8]) -> Option<Vec<u8>> {
    let mut out = der.to_vec();
    let mut changed = false;
    let mut i = 0;
    while i + 15 <= out.len() {
        let v = &out[i + 2..i + 15];
        if out[i] == 0x17
            && out[i + 1] == 13
            && v[12] == b'Z'
            && v[..12].iter().all(u8::is_ascii_digit)
            && (b'5'..=b'6').contains(&v[0])
        {
            out[i + 2..i + 15].copy_from_slice(b"700101000000Z");
            changed = true;
            i += 15;
        } else {
            i += 1;
        }
    }
    changed.then_some(out)
}

fn uris(list: &[(ObjectIdentifier, GeneralName)], method: ObjectIdentifier) -> Vec<String> {
    list.iter()
        .filter(|(m, _)| *m == method)
        .filter_map(|(_, n)| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The byte range of the first element inside the outer SEQUENCE (the TBS part of a signed object).
pub(crate) fn tbs_range(der: &[u8]) -> der::Result<std::ops::Range<usize>> {
    let mut outer = SliceReader::new(der)?;
    let header = der::Header::decode(&mut outer)?;
    let start = usize::try_from(u32::from(header.encoded_len()?))?;
    let inner_tlv = outer.tlv_bytes()?;
    Ok(start..start + inner_tlv.len())
}

fn decode_ext<'a, T: Decode<'a, Error = der::Error>>(
    name: &'static str,
    bytes: &'a [u8],
) -> Result<T, ParseError> {
    T::from_der(bytes).map_err(|err| ParseError::Extension { name, err })
}

fn decode_extensions(cert: &Certificate) -> Result<CertExtensions, ParseError> {
    let mut out = CertExtensions::default();
    let mut seen: Vec<Oid> = Vec::new();
    let Some(exts) = cert.tbs_certificate().extensions() else {
        return Ok(out);
    };
    for e in exts.iter() {
        if seen.contains(&e.extn_id) {
            return Err(ParseError::DuplicateExtension(e.extn_id));
        }
        seen.push(e.extn_id);
        let v = e.extn_value.as_bytes();
        match e.extn_id {
            oids::ID_CE_BASIC_CONSTRAINTS => {
                let b: BasicConstraints = decode_ext("basicConstraints", v)?;
                out.basic = Some(Basic {
                    ca: b.ca,
                    path_len: b.path_len_constraint,
                });
            }
            oids::ID_CE_KEY_USAGE => {
                let k: KeyUsage = decode_ext("keyUsage", v)?;
                out.key_usage = Some(KeyUsageBits {
                    key_cert_sign: k.key_cert_sign(),
                    crl_sign: k.crl_sign(),
                    digital_signature: k.digital_signature(),
                });
            }
            oids::ID_CE_EXT_KEY_USAGE => {
                let k: ExtendedKeyUsage = decode_ext("extKeyUsage", v)?;
                out.eku = Some(k.0);
            }
            oids::ID_CE_CERTIFICATE_POLICIES => {
                let p: CertificatePolicies = decode_ext("certificatePolicies", v)?;
                let mut list = Vec::new();
                for pi in p.0 {
                    if list
                        .iter()
                        .any(|x: &PolicyInfo| x.oid == pi.policy_identifier)
                    {
                        // RFC 5280 4.2.1.4: a policy OID MUST NOT appear more than once.
                        return Err(ParseError::Extension {
                            name: "certificatePolicies",
                            err: der::ErrorKind::Value {
                                tag: der::Tag::ObjectIdentifier,
                            }
                            .into(),
                        });
                    }
                    list.push(PolicyInfo {
                        oid: pi.policy_identifier,
                        qualifiers: pi
                            .policy_qualifiers
                            .iter()
                            .flatten()
                            .filter_map(|q| q.to_der().ok())
                            .collect(),
                    });
                }
                out.policies = Some(list);
            }
            oids::ID_CE_POLICY_MAPPINGS => {
                let m: PolicyMappings = decode_ext("policyMappings", v)?;
                out.policy_mappings = Some(
                    m.0.iter()
                        .map(|pm| (pm.issuer_domain_policy, pm.subject_domain_policy))
                        .collect(),
                );
            }
            oids::ID_CE_POLICY_CONSTRAINTS => {
                let p: PolicyConstraints = decode_ext("policyConstraints", v)?;
                out.policy_constraints = Some(PolicyConstraintsValue {
                    require_explicit_policy: p.require_explicit_policy,
                    inhibit_policy_mapping: p.inhibit_policy_mapping,
                });
            }
            oids::ID_CE_INHIBIT_ANY_POLICY => {
                let i: InhibitAnyPolicy = decode_ext("inhibitAnyPolicy", v)?;
                out.inhibit_any_policy = Some(i.0);
            }
            oids::ID_CE_NAME_CONSTRAINTS => {
                out.name_constraints = Some(decode_ext("nameConstraints", v)?);
            }
            oids::ID_CE_SUBJECT_ALT_NAME => {
                let s: SubjectAltName = decode_ext("subjectAltName", v)?;
                out.san = Some(s.0);
            }
            oids::ID_CE_SUBJECT_KEY_IDENTIFIER => {
                let s: SubjectKeyIdentifier = decode_ext("subjectKeyIdentifier", v)?;
                out.ski = Some(s.0.as_bytes().to_vec());
            }
            oids::ID_CE_AUTHORITY_KEY_IDENTIFIER => {
                let a: AuthorityKeyIdentifier = decode_ext("authorityKeyIdentifier", v)?;
                out.aki = a.key_identifier.map(|k| k.as_bytes().to_vec());
            }
            oids::ID_CE_CRL_DISTRIBUTION_POINTS => {
                let d: CrlDistributionPoints = decode_ext("cRLDistributionPoints", v)?;
                out.crl_dps = Some(d.0);
            }
            oids::ID_CE_FRESHEST_CRL => {
                let d: FreshestCrl = decode_ext("freshestCRL", v)?;
                out.freshest_crl = Some(d.0);
            }
            oids::ID_PE_AUTHORITY_INFO_ACCESS => {
                let a: AuthorityInfoAccessSyntax = decode_ext("authorityInfoAccess", v)?;
                out.aia =
                    a.0.into_iter()
                        .map(|d| (d.access_method, d.access_location))
                        .collect();
            }
            oids::ID_PE_SUBJECT_INFO_ACCESS => {
                let a: SubjectInfoAccessSyntax = decode_ext("subjectInfoAccess", v)?;
                out.sia =
                    a.0.into_iter()
                        .map(|d| (d.access_method, d.access_location))
                        .collect();
            }
            OCSP_NOCHECK => out.ocsp_nocheck = true,
            // Recognised and not constraining validation.
            oids::ID_CE_ISSUER_ALT_NAME | oids::ID_CE_SUBJECT_DIRECTORY_ATTRIBUTES => {}
            other => {
                if e.critical {
                    out.unknown_critical.push(other);
                }
            }
        }
    }
    Ok(out)
}

/// Splits PEM or DER input into DER blobs of the given PEM label (DER input is returned as is).
pub fn pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<Vec<u8>>, ParseError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) if t.contains("-----BEGIN ") => t,
        _ => return Ok(vec![bytes.to_vec()]),
    };
    let mut out = Vec::new();
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut rest = text;
    while let Some(i) = rest.find(&begin) {
        let after = &rest[i..];
        let Some(j) = after.find(&end) else {
            return Err(ParseError::Pem(format!("{begin} without {end}")));
        };
        let block = &after[..j + end.len()];
        let (_, der) = pem_rfc7468_decode(block)?;
        out.push(der);
        rest = &after[j + end.len()..];
    }
    Ok(out)
}

fn pem_rfc7468_decode(block: &str) -> Result<(String, Vec<u8>), ParseError> {
    der::pem::decode_vec(block.as_bytes())
        .map(|(l, d)| (l.to_string(), d))
        .map_err(|e| ParseError::Pem(e.to_string()))
}

/// Loads certificates from PEM, DER, or a PKCS #7 (.p7c / .p7b) bundle in DER or PEM.
pub fn load_certs(bytes: &[u8]) -> Result<Vec<Cert>, ParseError> {
    let text = std::str::from_utf8(bytes).ok();
    if text.is_some_and(|t| t.contains("-----BEGIN PKCS7-----")) {
        let mut out = Vec::new();
        for der in pem_or_der(bytes, "PKCS7")? {
            out.extend(crate::path::bundle::certs_from_p7c(&der)?);
        }
        return Ok(out);
    }
    if text.is_some_and(|t| t.contains("-----BEGIN ")) {
        return pem_or_der(bytes, "CERTIFICATE")?
            .iter()
            .map(|d| Cert::from_der(d))
            .collect();
    }
    match Cert::from_der(bytes) {
        Ok(c) => Ok(vec![c]),
        Err(cert_err) => crate::path::bundle::certs_from_p7c(bytes).map_err(|_| cert_err),
    }
}
