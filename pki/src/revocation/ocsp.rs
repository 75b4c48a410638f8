//! OCSP responses (RFC 6960) as revocation evidence: parsed once, then asked about one certificate at a
//! time. A response speaks for a certificate when its CertID matches (issuer name and key hashes, serial),
//! it is fresh at the validation time, and it is signed by the issuer's key or by a delegated responder
//! certificate that the issuer signed with id-kp-OCSPSigning.

use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, GeneralizedTime, OctetString};
use der::{Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::pkix::CrlReason;

use crate::validate::cert::{Cert, ParseError};

/// id-pkix-ocsp-basic.
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning.
pub const KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// Clock skew tolerated on thisUpdate.
const SKEW_SECS: u64 = 300;

/// Checks a signature: (algorithm, signature, signed bytes, key) -> valid.
pub type SigCheck<'a> =
    dyn Fn(&AlgorithmIdentifierOwned, &[u8], &[u8], &SubjectPublicKeyInfoOwned) -> bool + 'a;

/// The status one response gives one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked.
    Good,
    /// Revoked, with the reason.
    Revoked(String),
    /// The responder does not know the certificate.
    Unknown,
}

#[derive(Clone, Debug)]
struct Single {
    hash_alg: ObjectIdentifier,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
    status: CertStatus,
    this_update: u64,
    next_update: Option<u64>,
}

/// A parsed, successful OCSP response (BasicOCSPResponse).
#[derive(Clone, Debug)]
pub struct OcspResponse {
    tbs: Vec<u8>,
    sig_alg: AlgorithmIdentifierOwned,
    signature: Vec<u8>,
    certs: Vec<Cert>,
    responses: Vec<Single>,
}

fn perr(m: impl std::fmt::Display) -> ParseError {
    ParseError::Bundle(format!("OCSP: {m}"))
}

fn is_ctx(tag: Tag, n: u32) -> bool {
    matches!(tag, Tag::ContextSpecific { number, .. } if number == TagNumber(n))
}

fn secs(t: GeneralizedTime) -> u64 {
    t.to_unix_duration().as_secs()
}

impl OcspResponse {
    /// Parses a DER OCSPResponse; only successful basic responses are accepted.
    pub fn from_der(der: &[u8]) -> Result<Self, ParseError> {
        let top = AnyRef::from_der(der).map_err(perr)?;
        let mut r = SliceReader::new(top.value()).map_err(perr)?;
        let status = AnyRef::decode(&mut r).map_err(perr)?;
        if status.tag() != Tag::Enumerated || status.value() != [0] {
            return Err(perr("response status is not successful"));
        }
        let rb = AnyRef::decode(&mut r).map_err(perr)?;
        let mut r = SliceReader::new(rb.value()).map_err(perr)?;
        let rb = AnyRef::decode(&mut r).map_err(perr)?;
        let mut r = SliceReader::new(rb.value()).map_err(perr)?;
        let typ = ObjectIdentifier::decode(&mut r).map_err(perr)?;
        if typ != OCSP_BASIC {
            return Err(perr(format!("response type {typ} is not basic")));
        }
        let basic = OctetString::decode(&mut r).map_err(perr)?;
        Self::from_basic(basic.as_bytes())
    }

    fn from_basic(der: &[u8]) -> Result<Self, ParseError> {
        let top = AnyRef::from_der(der).map_err(perr)?;
        let mut r = SliceReader::new(top.value()).map_err(perr)?;
        let tbs = r.tlv_bytes().map_err(perr)?.to_vec();
        let sig_alg = AlgorithmIdentifierOwned::decode(&mut r).map_err(perr)?;
        let signature = der::asn1::BitString::decode(&mut r).map_err(perr)?;
        let mut certs = Vec::new();
        if !r.is_finished() {
            let wrapped = AnyRef::decode(&mut r).map_err(perr)?;
            let mut w = SliceReader::new(wrapped.value()).map_err(perr)?;
            let seq = AnyRef::decode(&mut w).map_err(perr)?;
            let mut s = SliceReader::new(seq.value()).map_err(perr)?;
            while !s.is_finished() {
                certs.push(Cert::from_der(s.tlv_bytes().map_err(perr)?)?);
            }
        }
        // ResponseData
        let rd = AnyRef::from_der(&tbs).map_err(perr)?;
        let mut r = SliceReader::new(rd.value()).map_err(perr)?;
        let mut field = AnyRef::decode(&mut r).map_err(perr)?;
        if is_ctx(field.tag(), 0) {
            field = AnyRef::decode(&mut r).map_err(perr)?; // version
        }
        let _responder_id = field;
        let _produced_at = GeneralizedTime::decode(&mut r).map_err(perr)?;
        let list = AnyRef::decode(&mut r).map_err(perr)?;
        let mut l = SliceReader::new(list.value()).map_err(perr)?;
        let mut responses = Vec::new();
        while !l.is_finished() {
            let single = AnyRef::decode(&mut l).map_err(perr)?;
            responses.push(parse_single(single.value())?);
        }
        Ok(OcspResponse {
            tbs,
            sig_alg,
            signature: signature.raw_bytes().to_vec(),
            certs,
            responses,
        })
    }

    /// The status this response gives `cert` (issued by the holder of `issuer_spki`), or None when the
    /// response does not speak for it (no matching CertID, stale, or not signed by an authorised
    /// responder). `verify(alg, signature, tbs, key)` checks signatures.
    pub fn status_for(
        &self,
        cert: &Cert,
        issuer_spki: &SubjectPublicKeyInfoOwned,
        _issuer_cert: Option<&Cert>,
        time: u64,
        verify: &SigCheck<'_>,
    ) -> Option<CertStatus> {
        let issuer_name_der = cert.issuer_name().to_der().ok()?;
        let key_bits = issuer_spki.subject_public_key.raw_bytes();
        let serial = cert.serial().to_vec();
        let single = self.responses.iter().find(|s| {
            let hash = |d: &[u8]| -> Option<Vec<u8>> {
                let alg = match s.hash_alg {
                    SHA1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    SHA256 => &aws_lc_rs::digest::SHA256,
                    _ => return None,
                };
                Some(aws_lc_rs::digest::digest(alg, d).as_ref().to_vec())
            };
            s.serial == serial
                && hash(&issuer_name_der).is_some_and(|h| h == s.name_hash)
                && hash(key_bits).is_some_and(|h| h == s.key_hash)
        })?;
        if single.this_update > time + SKEW_SECS || single.next_update.is_some_and(|n| n < time) {
            return None;
        }
        // Signed by the issuer, or by a delegated responder the issuer certified for OCSP signing.
        let by_issuer = verify(&self.sig_alg, &self.signature, &self.tbs, issuer_spki);
        let delegated = || {
            self.certs.iter().any(|r| {
                let x = r.x509();
                let (nb, na) = r.validity_secs();
                r.issuer() == cert.issuer()
                    && nb <= time
                    && time <= na
                    && r.ext()
                        .eku
                        .as_ref()
                        .is_some_and(|e| e.contains(&KP_OCSP_SIGNING))
                    && verify(
                        x.signature_algorithm(),
                        x.signature().raw_bytes(),
                        r.tbs_der(),
                        issuer_spki,
                    )
                    && verify(
                        &self.sig_alg,
                        &self.signature,
                        &self.tbs,
                        x.tbs_certificate().subject_public_key_info(),
                    )
            })
        };
        if by_issuer || delegated() {
            Some(single.status.clone())
        } else {
            None
        }
    }
}

fn parse_single(der: &[u8]) -> Result<Single, ParseError> {
    let mut r = SliceReader::new(der).map_err(perr)?;
    let cert_id = AnyRef::decode(&mut r).map_err(perr)?;
    let mut c = SliceReader::new(cert_id.value()).map_err(perr)?;
    let hash_alg = AlgorithmIdentifierOwned::decode(&mut c).map_err(perr)?.oid;
    let name_hash = OctetString::decode(&mut c)
        .map_err(perr)?
        .as_bytes()
        .to_vec();
    let key_hash = OctetString::decode(&mut c)
        .map_err(perr)?
        .as_bytes()
        .to_vec();
    let serial = der::asn1::IntRef::decode(&mut c).map_err(perr)?;
    let status_any = AnyRef::decode(&mut r).map_err(perr)?;
    let status = if is_ctx(status_any.tag(), 0) {
        CertStatus::Good
    } else if is_ctx(status_any.tag(), 1) {
        let mut s = SliceReader::new(status_any.value()).map_err(perr)?;
        let _when = GeneralizedTime::decode(&mut s).map_err(perr)?;
        let mut reason = "unspecified".to_string();
        if !s.is_finished() {
            let wrapped = AnyRef::decode(&mut s).map_err(perr)?;
            if let Ok(rc) = CrlReason::from_der(wrapped.value()) {
                reason = format!("{rc:?}");
            }
        }
        CertStatus::Revoked(format!("{reason}, by OCSP"))
    } else {
        CertStatus::Unknown
    };
    let this_update = secs(GeneralizedTime::decode(&mut r).map_err(perr)?);
    let mut next_update = None;
    while !r.is_finished() {
        let f = AnyRef::decode(&mut r).map_err(perr)?;
        if is_ctx(f.tag(), 0) {
            next_update = Some(secs(GeneralizedTime::from_der(f.value()).map_err(perr)?));
        }
    }
    Ok(Single {
        hash_alg,
        name_hash,
        key_hash,
        serial: serial.as_bytes().to_vec(),
        status,
        this_update,
        next_update,
    })
}
