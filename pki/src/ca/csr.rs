//! PKCS#10 certification requests (RFC 2986): parse, verify the proof of possession, and refuse
//! requested extensions the profile does not let a subscriber ask for.

use crate::ca::signer::{SignerError, verify};
use crate::profiles::{Profile, requestable};
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, ExtensionReq};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The bytes are not a DER or PEM PKCS#10 request.
    #[error("not a PKCS#10 request: {0}")]
    Malformed(String),
    /// The request's signature does not verify under its own key (no proof of possession).
    #[error("the request's signature does not verify: {0}")]
    BadSignature(SignerError),
    /// The request asks for an extension the profile does not allow subscribers to request.
    #[error("the request asks for extension {oid}, which profile {profile} does not allow")]
    ForbiddenExtension {
        /// The extension's OID.
        oid: ObjectIdentifier,
        /// The profile.
        profile: Profile,
    },
    /// The request's version is not v1 (0).
    #[error("unsupported PKCS#10 version")]
    Version,
}

/// A request whose signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The requested subject DN.
    pub subject: Name,
    /// The subject's public key.
    pub spki: SubjectPublicKeyInfoOwned,
    /// Extensions requested through the extensionRequest attribute.
    pub requested: Vec<Extension>,
}

impl VerifiedCsr {
    /// DNS names and IP addresses from a requested subjectAltName (TLS profiles use them).
    pub fn requested_names(&self) -> (Vec<String>, Vec<std::net::IpAddr>) {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for e in &self.requested {
            if e.extn_id != SubjectAltName::OID {
                continue;
            }
            if let Ok(san) = SubjectAltName::from_der(e.extn_value.as_bytes()) {
                for n in san.0 {
                    match n {
                        GeneralName::DnsName(d) => dns.push(d.to_string()),
                        GeneralName::IpAddress(o) => match o.as_bytes().len() {
                            4 => {
                                let mut b = [0u8; 4];
                                b.copy_from_slice(o.as_bytes());
                                ips.push(std::net::IpAddr::from(b));
                            }
                            16 => {
                                let mut b = [0u8; 16];
                                b.copy_from_slice(o.as_bytes());
                                ips.push(std::net::IpAddr::from(b));
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
        }
        (dns, ips)
    }
}

/// Decodes PEM (`CERTIFICATE REQUEST`) or DER.
fn decode(input: &[u8]) -> Result<CertReq, CsrError> {
    let der_bytes = if input.starts_with(b"-----BEGIN") {
        let (label, der) =
            der::pem::decode_vec(input).map_err(|e| CsrError::Malformed(e.to_string()))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Malformed(format!("PEM label {label}")));
        }
        der
    } else {
        input.to_vec()
    };
    CertReq::from_der(&der_bytes).map_err(|e| CsrError::Malformed(e.to_string()))
}

/// Parses a request and verifies its signature with the key it carries.
pub fn parse_and_verify(input: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let req = decode(input)?;
    if req.info.version != x509_cert::request::Version::V1 {
        return Err(CsrError::Version);
    }
    let info = req
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let sig = req
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature has unused bits".into()))?;
    verify(&req.info.public_key, &req.algorithm, &info, sig).map_err(CsrError::BadSignature)?;
    let mut requested = Vec::new();
    for attr in req.info.attributes.iter() {
        if attr.oid != ExtensionReq::OID {
            continue;
        }
        for v in attr.values.iter() {
            let bytes = v.to_der().map_err(|e| CsrError::Malformed(e.to_string()))?;
            let exts = ExtensionReq::from_der(&bytes)
                .map_err(|e| CsrError::Malformed(format!("extensionRequest: {e}")))?;
            requested.extend(exts.0);
        }
    }
    Ok(VerifiedCsr {
        subject: req.info.subject,
        spki: req.info.public_key,
        requested,
    })
}

/// Refuses any requested extension that `profile` does not let a subscriber ask for, given the
/// extensions the profile grants (`granted`).
pub fn check_requested(
    profile: Profile,
    csr: &VerifiedCsr,
    granted: &[Extension],
) -> Result<(), CsrError> {
    for e in &csr.requested {
        if !requestable(profile, e, granted) {
            return Err(CsrError::ForbiddenExtension {
                oid: e.extn_id,
                profile,
            });
        }
    }
    Ok(())
}

/// Builds and signs a PKCS#10 request (for keys the CA generates itself, such as a card's PIV
/// Authentication key generated on the token, and for tests).
pub fn build(
    signer: &dyn crate::ca::signer::CaSigner,
    subject: Name,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, CsrError> {
    use der::asn1::{BitString, SetOfVec};
    use x509_cert::request::CertReqInfo;
    let malformed = |e: der::Error| CsrError::Malformed(e.to_string());
    let mut attributes = SetOfVec::new();
    if !extensions.is_empty() {
        let attr =
            x509_cert::attr::Attribute::try_from(ExtensionReq(extensions)).map_err(malformed)?;
        attributes.insert(attr).map_err(malformed)?;
    }
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject,
        public_key: signer.public_key().clone(),
        attributes,
    };
    let sig = signer
        .sign(&info.to_der().map_err(malformed)?)
        .map_err(CsrError::BadSignature)?;
    let req = CertReq {
        info,
        algorithm: signer.algorithm().algorithm_identifier(),
        signature: BitString::from_bytes(&sig).map_err(malformed)?,
    };
    req.to_der().map_err(malformed)
}
