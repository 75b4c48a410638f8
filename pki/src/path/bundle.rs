//! PKCS #7 / CMS "certs-only" bundles (.p7c, .p7b), as AIA caIssuers and SIA caRepository point to.
//!
//! Only the certificate and CRL sets of the SignedData are read; the bundle's own signature (there is
//! none in a certs-only bundle) plays no part: every certificate is validated on its own path.

use const_oid::ObjectIdentifier;
use der::asn1::AnyRef;
use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};

use crate::validate::cert::{Cert, ParseError};

/// id-signedData.
const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

fn berr(what: &str) -> ParseError {
    ParseError::Bundle(what.to_string())
}

fn any<'a>(r: &mut SliceReader<'a>, what: &str) -> Result<AnyRef<'a>, ParseError> {
    AnyRef::decode(r).map_err(|e| ParseError::Bundle(format!("{what}: {e}")))
}

/// The raw certificate and CRL TLVs of a SignedData.
/// Certificate TLVs and CRL TLVs.
type Sets<'a> = (Vec<&'a [u8]>, Vec<&'a [u8]>);

fn sets(der: &[u8]) -> Result<Sets<'_>, ParseError> {
    let mut top = SliceReader::new(der).map_err(|e| ParseError::Bundle(e.to_string()))?;
    let ci = any(&mut top, "ContentInfo")?;
    if ci.tag() != Tag::Sequence {
        return Err(berr("ContentInfo is not a SEQUENCE"));
    }
    let mut r = SliceReader::new(ci.value()).map_err(|e| ParseError::Bundle(e.to_string()))?;
    let oid = ObjectIdentifier::decode(&mut r).map_err(|e| ParseError::Bundle(e.to_string()))?;
    if oid != SIGNED_DATA {
        return Err(ParseError::Bundle(format!(
            "content type {oid} is not signedData"
        )));
    }
    let explicit = any(&mut r, "content")?;
    let mut r =
        SliceReader::new(explicit.value()).map_err(|e| ParseError::Bundle(e.to_string()))?;
    let sd = any(&mut r, "SignedData")?;
    let mut r = SliceReader::new(sd.value()).map_err(|e| ParseError::Bundle(e.to_string()))?;
    let _version = any(&mut r, "version")?;
    let _digest_algs = any(&mut r, "digestAlgorithms")?;
    let _encap = any(&mut r, "encapContentInfo")?;
    let mut certs = Vec::new();
    let mut crls = Vec::new();
    while !r.is_finished() {
        let field = any(&mut r, "SignedData field")?;
        let target = match field.tag() {
            Tag::ContextSpecific {
                number: TagNumber(0),
                ..
            } => &mut certs,
            Tag::ContextSpecific {
                number: TagNumber(1),
                ..
            } => &mut crls,
            _ => break, // signerInfos
        };
        let mut inner =
            SliceReader::new(field.value()).map_err(|e| ParseError::Bundle(e.to_string()))?;
        while !inner.is_finished() {
            let tlv = inner
                .tlv_bytes()
                .map_err(|e| ParseError::Bundle(e.to_string()))?;
            // Other CertificateChoices (attribute certificates, other) carry context tags: skip them.
            if tlv.first() == Some(&0x30) {
                target.push(tlv);
            }
        }
    }
    Ok((certs, crls))
}

/// The certificates of a DER PKCS #7 bundle.
pub fn certs_from_p7c(der: &[u8]) -> Result<Vec<Cert>, ParseError> {
    let (certs, _) = sets(der)?;
    certs.into_iter().map(Cert::from_der).collect()
}

/// The CRLs of a DER PKCS #7 bundle (DER blobs; parse with [`crate::revocation::Crl::from_der`]).
pub fn crls_from_p7c(der: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let (_, crls) = sets(der)?;
    Ok(crls.into_iter().map(<[u8]>::to_vec).collect())
}
