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
    /// The CHUID buffer or its CMS signature is not well formed.
    #[error("malformed CHUID: {0}")]
    Malformed(&'static str),
    /// A mandatory data element is missing.
    #[error("the CHUID has no {0} element")]
    Missing(&'static str),
    /// The signed attributes do not bind this CHUID (content type or message digest differ).
    #[error("the CHUID signature does not cover this CHUID ({0})")]
    NotCovered(&'static str),
    /// The signer identifier does not name the included certificate.
    #[error("the CHUID signer is not the included content signing certificate")]
    SignerMismatch,
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

/// A CHUID whose issuer asymmetric signature verified, with the certificate that signed it. The caller still
/// has to validate that certificate's path and its id-PIV-content-signing EKU, and the expiry date.
#[derive(Debug, Clone)]
pub struct VerifiedChuid {
    /// The data elements.
    pub chuid: Chuid,
    /// The FASC-N as stored (25 bytes).
    pub fascn_bytes: Vec<u8>,
    /// The content signing certificate included in the signature.
    pub signer: Certificate,
}

/// One BER-TLV with a one-byte tag: (tag, content, rest).
fn next_tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), ChuidError> {
    let bad = ChuidError::Malformed("truncated TLV");
    let (&tag, rest) = buf
        .split_first()
        .ok_or(ChuidError::Malformed("empty TLV"))?;
    let (&first, mut rest) = rest.split_first().ok_or(bad)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return Err(ChuidError::Malformed("bad TLV length"));
        }
        let (l, r) = rest.split_at(n);
        rest = r;
        l.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err(ChuidError::Malformed("TLV longer than its buffer"));
    }
    let (content, rest) = rest.split_at(len);
    Ok((tag, content, rest))
}

/// Reads one TLV that must carry `tag`, returning (content, whole encoding, rest).
type Tlv<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn expect<'a>(buf: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, ChuidError> {
    let (t, content, rest) = next_tlv(buf)?;
    if t != tag {
        return Err(ChuidError::Malformed(what));
    }
    Ok((content, &buf[..buf.len() - rest.len()], rest))
}

impl VerifiedChuid {
    /// Parses a CHUID buffer (the container's content, as OpenSC's PIV driver returns it: data elements,
    /// 0x3E issuer asymmetric signature, 0xFE) and verifies its CMS signature: content type
    /// id-PIV-CHUIDSecurityObject, message digest over every element before 0x3E, signature by the
    /// included certificate, which the signer identifier must name. Pure: no clock, no trust decision.
    pub fn verify(buf: &[u8]) -> Result<VerifiedChuid, ChuidError> {
        let (mut fascn, mut guid, mut expiry, mut cms, mut signed_len) =
            (None, None, None, None, 0);
        let mut rest = buf;
        while !rest.is_empty() {
            let (tag, content, r) = next_tlv(rest)?;
            match tag {
                0x30 => fascn = Some(content),
                0x34 => guid = Some(content),
                0x35 => expiry = Some(content),
                0x3e => {
                    signed_len = buf.len() - rest.len();
                    cms = Some(content);
                }
                _ => {}
            }
            rest = r;
        }
        let fascn_bytes = fascn.ok_or(ChuidError::Missing("FASC-N (0x30)"))?;
        let guid = guid.ok_or(ChuidError::Missing("GUID (0x34)"))?;
        let expiry = expiry.ok_or(ChuidError::Missing("expiration date (0x35)"))?;
        let cms = cms.ok_or(ChuidError::Missing("issuer asymmetric signature (0x3E)"))?;
        let guid = uuid::Uuid::from_slice(guid)
            .map_err(|_| ChuidError::Malformed("GUID is not 16 bytes"))?;
        let expiry = std::str::from_utf8(expiry)
            .ok()
            .filter(|e| e.len() == 8 && e.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ChuidError::Malformed("expiration date is not YYYYMMDD"))?
            .to_owned();
        let chuid = Chuid {
            fascn: Fascn::decode(fascn_bytes)?,
            guid,
            expiry,
        };
        let signer = verify_signed_data(cms, &buf[..signed_len])?;
        Ok(VerifiedChuid {
            chuid,
            fascn_bytes: fascn_bytes.to_vec(),
            signer,
        })
    }
}

/// Verifies a detached CMS SignedData over `content` made by [`signed_data`] (or any signer following
/// SP 800-73-4 with the signing certificate included); returns that certificate.
pub fn verify_signed_data(cms: &[u8], content: &[u8]) -> Result<Certificate, ChuidError> {
    use der::Decode;
    use spki::AlgorithmIdentifierOwned;
    let (ci, _, _) = expect(cms, 0x30, "ContentInfo")?;
    let (oid, _, r) = expect(ci, 0x06, "ContentInfo type")?;
    if tlv(0x06, oid) != ID_SIGNED_DATA {
        return Err(ChuidError::Malformed("not a CMS SignedData"));
    }
    let (explicit, _, _) = expect(r, 0xa0, "SignedData wrapper")?;
    let (sd, _, _) = expect(explicit, 0x30, "SignedData")?;
    let (_, _, r) = expect(sd, 0x02, "SignedData version")?;
    let (_, _, r) = expect(r, 0x31, "digestAlgorithms")?;
    let (eci, _, r) = expect(r, 0x30, "encapContentInfo")?;
    let (_, ectype, _) = expect(eci, 0x06, "eContentType")?;
    if ectype != ID_PIV_CHUID {
        return Err(ChuidError::NotCovered(
            "eContentType is not id-PIV-CHUIDSecurityObject",
        ));
    }
    let (mut certs, _, r) = expect(
        r,
        0xa0,
        "certificates (the content signer must be included)",
    )?;
    let mut included = Vec::new();
    while !certs.is_empty() {
        let (_, whole, rest) = expect(certs, 0x30, "certificate")?;
        included.push(Certificate::from_der(whole).map_err(ChuidError::Der)?);
        certs = rest;
    }
    let mut r = r;
    if r.first() == Some(&0xa1) {
        r = next_tlv(r)?.2; // CRLs: not used here
    }
    let (infos, _, _) = expect(r, 0x31, "signerInfos")?;
    let (si, _, _) = expect(infos, 0x30, "SignerInfo")?;
    let (_, _, r) = expect(si, 0x02, "SignerInfo version")?;
    let (sid, _, r) = expect(r, 0x30, "issuerAndSerialNumber")?;
    let (_, digest_alg, r) = expect(r, 0x30, "digestAlgorithm")?;
    let (attrs, _, r) = expect(r, 0xa0, "signedAttrs")?;
    let (_, sig_alg, r) = expect(r, 0x30, "signatureAlgorithm")?;
    let (signature, _, _) = expect(r, 0x04, "signature")?;
    let signer = included
        .into_iter()
        .find(|c| {
            let tbs = c.tbs_certificate();
            let mut want = tbs.issuer().to_der().unwrap_or_default();
            want.extend(tbs.serial_number().to_der().unwrap_or_default());
            want == sid
        })
        .ok_or(ChuidError::SignerMismatch)?;
    let d = match digest_alg {
        x if x == digest_for(SigAlg::EcdsaP256Sha256).0 => &aws_lc_rs::digest::SHA256,
        x if x == digest_for(SigAlg::EcdsaP384Sha384).0 => &aws_lc_rs::digest::SHA384,
        x if x == digest_for(SigAlg::MlDsa65).0 => &aws_lc_rs::digest::SHA512,
        _ => {
            return Err(ChuidError::Malformed(
                "digest algorithm is not SHA-256/384/512",
            ));
        }
    };
    let md = aws_lc_rs::digest::digest(d, content);
    let (mut content_type_ok, mut digest_ok) = (false, false);
    let mut a = attrs;
    while !a.is_empty() {
        let (attr, _, rest) = expect(a, 0x30, "attribute")?;
        let (_, oid, values) = expect(attr, 0x06, "attribute type")?;
        let (set, _, _) = expect(values, 0x31, "attribute values")?;
        if oid == ID_CONTENT_TYPE {
            content_type_ok = set == ID_PIV_CHUID;
        } else if oid == ID_MESSAGE_DIGEST {
            digest_ok = set == tlv(0x04, md.as_ref());
        }
        a = rest;
    }
    if !content_type_ok {
        return Err(ChuidError::NotCovered("content type attribute"));
    }
    if !digest_ok {
        return Err(ChuidError::NotCovered(
            "message digest differs: the CHUID was changed",
        ));
    }
    let alg = AlgorithmIdentifierOwned::from_der(sig_alg).map_err(ChuidError::Der)?;
    crate::ca::signer::verify(
        signer.tbs_certificate().subject_public_key_info(),
        &alg,
        &tlv(0x31, attrs),
        signature,
    )?;
    Ok(signer)
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
