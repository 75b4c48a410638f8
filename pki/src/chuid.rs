//! The Card Holder Unique Identifier (CHUID) of a PIV / PIV-I card (SP 800-73-4 part 1, 3.1.2):
//! FASC-N, card GUID, expiration date and the issuer asymmetric signature, a CMS SignedData
//! (RFC 5652) by the content signing key over the preceding data elements, with content type
//! id-PIV-CHUIDSecurityObject and the content signing certificate included (FIPS 201-3 4.2.1).
//!
//! SoftHSM2 has no PIV card edge: the card token keeps the CHUID as a data object.

use crate::ca::p7c::tlv;
use crate::ca::signer::{CaSigner, SigAlg, SignerError};
use crate::fascn::{Fascn, FascnError};
use der::Encode;
use x509_cert::Certificate;

/// Why a CHUID could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChuidError {
    /// The FASC-N is invalid.
    #[error(transparent)]
    Fascn(#[from] FascnError),
    /// The content signer failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A DER structure could not be encoded.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// The content signing certificate does not hold the signer's key.
    #[error("the content signing certificate does not match the signing key")]
    KeyMismatch,
}

/// id-PIV-CHUIDSecurityObject 2.16.840.1.101.3.6.1, DER.
const ID_PIV_CHUID: [u8; 10] = [0x06, 0x08, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x06, 0x01];
/// id-signedData 1.2.840.113549.1.7.2.
const ID_SIGNED_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-contentType 1.2.840.113549.1.9.3.
const ID_CONTENT_TYPE: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03,
];
/// id-messageDigest 1.2.840.113549.1.9.4.
const ID_MESSAGE_DIGEST: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04,
];

/// The digest algorithm CMS pairs with the signer (SHA-256 for P-256 and RSA, SHA-384 for P-384,
/// SHA-512 for ML-DSA per RFC 9882), as (DER AlgorithmIdentifier, aws-lc-rs algorithm).
fn digest_for(alg: SigAlg) -> (Vec<u8>, &'static aws_lc_rs::digest::Algorithm) {
    // id-sha256 / id-sha384 / id-sha512 AlgorithmIdentifiers, parameters absent (RFC 5754).
    let (last, d) = match alg {
        SigAlg::EcdsaP384Sha384 => (2u8, &aws_lc_rs::digest::SHA384),
        SigAlg::MlDsa44 | SigAlg::MlDsa65 | SigAlg::MlDsa87 => (3, &aws_lc_rs::digest::SHA512),
        _ => (1, &aws_lc_rs::digest::SHA256),
    };
    let oid = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, last,
    ];
    (tlv(0x30, &oid), d)
}

/// A CHUID's data elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chuid {
    /// The card's FASC-N.
    pub fascn: Fascn,
    /// The card GUID (UUID).
    pub guid: uuid::Uuid,
    /// Expiration date, `YYYYMMDD`.
    pub expiry: String,
}

impl Chuid {
    /// The data elements the signature covers: tags 0x30 (FASC-N), 0x34 (GUID), 0x35 (expiry).
    pub fn signed_content(&self) -> Result<Vec<u8>, ChuidError> {
        let mut out = tlv(0x30, &self.fascn.encode()?);
        out.extend(tlv(0x34, self.guid.as_bytes()));
        out.extend(tlv(0x35, self.expiry.as_bytes()));
        Ok(out)
    }

    /// The whole CHUID buffer: data elements, 0x3E issuer asymmetric signature (CMS SignedData by
    /// the content signer, certificate included), 0xFE error detection code (empty).
    pub fn sign(
        &self,
        signer: &dyn CaSigner,
        content_signing_cert: &Certificate,
    ) -> Result<Vec<u8>, ChuidError> {
        if content_signing_cert
            .tbs_certificate()
            .subject_public_key_info()
            != signer.public_key()
        {
            return Err(ChuidError::KeyMismatch);
        }
        let content = self.signed_content()?;
        let cms = signed_data(&content, signer, content_signing_cert)?;
        let mut out = content;
        out.extend(tlv(0x3e, &cms));
        out.extend(tlv(0xfe, &[]));
        Ok(out)
    }
}

/// Detached CMS SignedData (v3, eContentType id-PIV-CHUIDSecurityObject) over `content`.
pub fn signed_data(
    content: &[u8],
    signer: &dyn CaSigner,
    cert: &Certificate,
) -> Result<Vec<u8>, ChuidError> {
    let (digest_alg, digest) = digest_for(signer.algorithm());
    let md = aws_lc_rs::digest::digest(digest, content);
    let attr = |oid: &[u8], value: Vec<u8>| {
        let mut a = oid.to_vec();
        a.extend(tlv(0x31, &value));
        tlv(0x30, &a)
    };
    let mut attrs = [
        attr(&ID_CONTENT_TYPE, ID_PIV_CHUID.to_vec()),
        attr(&ID_MESSAGE_DIGEST, tlv(0x04, md.as_ref())),
    ];
    attrs.sort(); // DER SET OF order
    let attrs_content: Vec<u8> = attrs.concat();
    // The signature covers the attributes encoded as a SET OF (RFC 5652 5.4).
    let signature = signer.sign(&tlv(0x31, &attrs_content))?;
    let tbs = cert.tbs_certificate();
    let mut sid = tbs.issuer().to_der()?;
    sid.extend(tbs.serial_number().to_der()?);
    let mut signer_info = tlv(0x02, &[1]);
    signer_info.extend(tlv(0x30, &sid));
    signer_info.extend(&digest_alg);
    signer_info.extend(tlv(0xa0, &attrs_content));
    signer_info.extend(signer.algorithm().algorithm_identifier().to_der()?);
    signer_info.extend(tlv(0x04, &signature));
    let mut sd = tlv(0x02, &[3]);
    sd.extend(tlv(0x31, &digest_alg));
    sd.extend(tlv(0x30, &ID_PIV_CHUID));
    sd.extend(tlv(0xa0, &cert.to_der()?));
    sd.extend(tlv(0x31, &tlv(0x30, &signer_info)));
    let mut ci = ID_SIGNED_DATA.to_vec();
    ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
    Ok(tlv(0x30, &ci))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_elements_use_the_sp800_73_tags_and_lengths() {
        let c = Chuid {
            fascn: "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap(),
            guid: uuid::Uuid::nil(),
            expiry: "20300101".into(),
        };
        let b = c.signed_content().unwrap();
        // Same layout as the CHUID YubiKey/OpenSC write: 30 19 <FASC-N> 34 10 <GUID> 35 08 <date>.
        assert_eq!(&b[..2], &[0x30, 0x19]);
        assert_eq!(&b[2..5], &[0xd4, 0xe7, 0x39]);
        assert_eq!(&b[27..29], &[0x34, 0x10]);
        assert_eq!(&b[45..47], &[0x35, 0x08]);
        assert_eq!(&b[47..], b"20300101");
    }
}
