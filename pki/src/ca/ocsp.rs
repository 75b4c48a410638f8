//! OCSP responder core (RFC 6960), pure: request bytes and a status lookup in, signed response
//! bytes out. The ASN.1 types are defined here with `der` derive (x509-ocsp's stable release is on
//! the x509-cert 0.2 line; see docs/decisions.md).
//!
//! The CA signs its own responses (RFC 6960 4.2.2.2 allows the issuing CA itself), ResponderID
//! byKey. CertIDs hashed with SHA-1 (what `openssl ocsp` sends) and SHA-256 are both accepted; a
//! CertID naming another issuer gets `unknown`. A request nonce is echoed.

use crate::ca::db::{Revocation, Status};
use crate::ca::signer::CaSigner;
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Choice, Decode, Encode, Enumerated, Sequence};
use spki::AlgorithmIdentifierOwned;
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

/// id-sha1.
pub const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-sha256.
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-pkix-ocsp-basic.
pub const ID_PKIX_OCSP_BASIC: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-pkix-ocsp-nonce.
pub const ID_PKIX_OCSP_NONCE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// CertID.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct CertId {
    /// Hash algorithm of the two hashes.
    pub hash_algorithm: AlgorithmIdentifierOwned,
    /// Hash of the issuer's DN (DER).
    pub issuer_name_hash: OctetString,
    /// Hash of the issuer's subjectPublicKey BIT STRING value.
    pub issuer_key_hash: OctetString,
    /// The certificate's serial.
    pub serial_number: SerialNumber,
}

/// Request.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Request {
    /// The certificate asked about.
    pub req_cert: CertId,
    /// Per-request extensions.
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub single_request_extensions: Option<Vec<Extension>>,
}

/// TBSRequest.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TbsRequest {
    /// Version, v1 (0).
    #[asn1(
        context_specific = "0",
        default = "Default::default",
        tag_mode = "EXPLICIT"
    )]
    pub version: u8,
    /// Requestor name.
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    pub requestor_name: Option<x509_cert::ext::pkix::name::GeneralName>,
    /// Requests.
    pub request_list: Vec<Request>,
    /// Extensions (the nonce).
    #[asn1(context_specific = "2", optional = "true", tag_mode = "EXPLICIT")]
    pub request_extensions: Option<Vec<Extension>>,
}

/// OCSPRequest (the optional signature is accepted and ignored: requests are not authenticated).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct OcspRequest {
    /// The request.
    pub tbs_request: TbsRequest,
    /// Optional signature (kept as-is).
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub optional_signature: Option<der::Any>,
}

/// OCSPResponseStatus.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Enumerated)]
#[repr(u32)]
pub enum ResponseStatus {
    /// Response has valid confirmations.
    Successful = 0,
    /// Illegal confirmation request.
    MalformedRequest = 1,
    /// Internal error in issuer.
    InternalError = 2,
    /// Try again later.
    TryLater = 3,
    /// Must sign the request.
    SigRequired = 5,
    /// Request unauthorized.
    Unauthorized = 6,
}

/// ResponseBytes.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct ResponseBytes {
    /// id-pkix-ocsp-basic.
    pub response_type: ObjectIdentifier,
    /// DER BasicOCSPResponse.
    pub response: OctetString,
}

/// OCSPResponse.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct OcspResponse {
    /// Status.
    pub response_status: ResponseStatus,
    /// Present when successful.
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub response_bytes: Option<ResponseBytes>,
}

/// ResponderID.
#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub enum ResponderId {
    /// By name.
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    ByName(Name),
    /// By SHA-1 hash of the responder's public key.
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    ByKey(OctetString),
}

/// RevokedInfo.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct RevokedInfo {
    /// When.
    pub revocation_time: GeneralizedTime,
    /// Why.
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub revocation_reason: Option<CrlReason>,
}

/// CertStatus.
#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub enum CertStatus {
    /// Not revoked.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    Good(Null),
    /// Revoked.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    Revoked(RevokedInfo),
    /// Not known to this responder.
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
    Unknown(Null),
}

/// SingleResponse.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SingleResponse {
    /// Which certificate.
    pub cert_id: CertId,
    /// Its status.
    pub cert_status: CertStatus,
    /// Time the status is known correct.
    pub this_update: GeneralizedTime,
    /// Time newer information will be available.
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub next_update: Option<GeneralizedTime>,
    /// Extensions.
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    pub single_extensions: Option<Vec<Extension>>,
}

/// ResponseData.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct ResponseData {
    /// v1 (0), DEFAULT.
    #[asn1(
        context_specific = "0",
        default = "Default::default",
        tag_mode = "EXPLICIT"
    )]
    pub version: u8,
    /// Who signs.
    pub responder_id: ResponderId,
    /// When.
    pub produced_at: GeneralizedTime,
    /// One per request.
    pub responses: Vec<SingleResponse>,
    /// The nonce, echoed.
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    pub response_extensions: Option<Vec<Extension>>,
}

/// BasicOCSPResponse.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct BasicOcspResponse {
    /// Signed part.
    pub tbs_response_data: ResponseData,
    /// Algorithm.
    pub signature_algorithm: AlgorithmIdentifierOwned,
    /// Signature.
    pub signature: BitString,
    /// Certificates that help verify (a delegated responder's certificate).
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub certs: Option<Vec<Certificate>>,
}

fn digest(alg: &'static aws_lc_rs::digest::Algorithm, data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
}

fn gtime(t: SystemTime) -> Result<GeneralizedTime, der::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| der::Error::from(der::ErrorKind::DateTime))?
        .as_secs();
    GeneralizedTime::from_unix_duration(Duration::from_secs(secs))
}

/// The responder for one CA.
pub struct Responder {
    ca_name_der: Vec<u8>,
    ca_key_bits: Vec<u8>,
    key_hash_sha1: Vec<u8>,
    /// How long a response may be cached (nextUpdate - thisUpdate).
    pub validity: Duration,
}

/// Why a response could not be made (the HTTP edge answers `internalError`).
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    /// DER encoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// The CA key failed to sign.
    #[error(transparent)]
    Signer(#[from] crate::ca::signer::SignerError),
    /// The status lookup failed.
    #[error("status lookup: {0}")]
    Lookup(String),
}

fn unsuccessful(status: ResponseStatus) -> Vec<u8> {
    OcspResponse {
        response_status: status,
        response_bytes: None,
    }
    .to_der()
    .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, status as u8])
}

impl Responder {
    /// A responder for the CA certificate `ca`.
    pub fn new(ca: &Certificate) -> Result<Self, OcspError> {
        let tbs = ca.tbs_certificate();
        let key_bits = tbs
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
            .to_vec();
        Ok(Responder {
            ca_name_der: tbs.subject().to_der()?,
            key_hash_sha1: digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &key_bits),
            ca_key_bits: key_bits,
            validity: Duration::from_secs(3600),
        })
    }

    fn is_ours(&self, id: &CertId) -> bool {
        let alg = if id.hash_algorithm.oid == ID_SHA1 {
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY
        } else if id.hash_algorithm.oid == ID_SHA256 {
            &aws_lc_rs::digest::SHA256
        } else {
            return false;
        };
        id.issuer_name_hash.as_bytes() == digest(alg, &self.ca_name_der).as_slice()
            && id.issuer_key_hash.as_bytes() == digest(alg, &self.ca_key_bits).as_slice()
    }

    /// Answers a DER OCSPRequest. `status` looks a serial (DER INTEGER content, hex) up.
    /// Malformed requests get `malformedRequest`; failures of the lookup or the key get
    /// `internalError` (never a panic, never a partial answer).
    pub fn respond(
        &self,
        request: &[u8],
        signer: &dyn CaSigner,
        status: &dyn Fn(&str) -> Result<Status, String>,
        now: SystemTime,
    ) -> Vec<u8> {
        let req = match OcspRequest::from_der(request) {
            Ok(r) if !r.tbs_request.request_list.is_empty() => r,
            _ => return unsuccessful(ResponseStatus::MalformedRequest),
        };
        match self.sign_response(&req, signer, status, now) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "OCSP response failed");
                unsuccessful(ResponseStatus::InternalError)
            }
        }
    }

    fn sign_response(
        &self,
        req: &OcspRequest,
        signer: &dyn CaSigner,
        status: &dyn Fn(&str) -> Result<Status, String>,
        now: SystemTime,
    ) -> Result<Vec<u8>, OcspError> {
        let this_update = gtime(now)?;
        let next_update = gtime(now + self.validity)?;
        let mut responses = Vec::new();
        for r in &req.tbs_request.request_list {
            let id = &r.req_cert;
            let cert_status = if !self.is_ours(id) {
                CertStatus::Unknown(Null)
            } else {
                let serial = hex::encode(id.serial_number.as_bytes());
                match status(&serial).map_err(OcspError::Lookup)? {
                    Status::Good => CertStatus::Good(Null),
                    Status::Unknown => CertStatus::Unknown(Null),
                    Status::Revoked(Revocation { time, reason }) => {
                        CertStatus::Revoked(RevokedInfo {
                            revocation_time: gtime(
                                SystemTime::UNIX_EPOCH + Duration::from_secs(time),
                            )?,
                            revocation_reason: crl_reason(reason),
                        })
                    }
                }
            };
            responses.push(SingleResponse {
                cert_id: id.clone(),
                cert_status,
                this_update,
                next_update: Some(next_update),
                single_extensions: None,
            });
        }
        let nonce = req
            .tbs_request
            .request_extensions
            .as_ref()
            .and_then(|exts| {
                exts.iter()
                    .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
                    .cloned()
            });
        let data = ResponseData {
            version: 0,
            responder_id: ResponderId::ByKey(OctetString::new(self.key_hash_sha1.clone())?),
            produced_at: this_update,
            responses,
            response_extensions: nonce.map(|n| vec![n]),
        };
        let sig = signer.sign(&data.to_der()?)?;
        let basic = BasicOcspResponse {
            tbs_response_data: data,
            signature_algorithm: signer.algorithm().algorithm_identifier(),
            signature: BitString::from_bytes(&sig)?,
            certs: None,
        };
        Ok(OcspResponse {
            response_status: ResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der()?)?,
            }),
        }
        .to_der()?)
    }
}

fn crl_reason(code: u32) -> Option<CrlReason> {
    Some(match code {
        0 => CrlReason::Unspecified,
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gets_malformed_request_not_a_panic() {
        let resp = unsuccessful(ResponseStatus::MalformedRequest);
        let parsed = OcspResponse::from_der(&resp).unwrap();
        assert_eq!(parsed.response_status, ResponseStatus::MalformedRequest);
        assert_eq!(resp, [0x30, 0x03, 0x0a, 0x01, 0x01]);
    }
}
