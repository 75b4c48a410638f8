//! The few DER structures the seam builds itself: SubjectPublicKeyInfo for EC, RSA and ML-DSA keys
//! (RFC 5480, RFC 8017, FIPS 204 / RFC 9881 identifiers) and ECDSA-Sig-Value (RFC 3279) from the raw
//! `r || s` a PKCS#11 token returns.

use crate::key::KeyAlgorithm;

/// DER of `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of `secp256r1` (1.2.840.10045.3.1.7): also the `CKA_EC_PARAMS` of a P-256 key.
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of `secp384r1` (1.3.132.0.34): also the `CKA_EC_PARAMS` of a P-384 key.
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of `rsaEncryption` (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// DER of `id-ml-dsa-65` (2.16.840.1.101.3.4.3.18).
const OID_ML_DSA_65: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12,
];
/// DER of `id-ml-dsa-87` (2.16.840.1.101.3.4.3.19).
const OID_ML_DSA_87: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x13,
];

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

/// A positive INTEGER from big-endian magnitude bytes.
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = match magnitude.iter().position(|b| *b != 0) {
        Some(i) => &magnitude[i..],
        None => &[0u8][..],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from the fixed-width `r || s`.
pub(crate) fn ecdsa_sig_from_raw(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(sequence(&[&unsigned_integer(r), &unsigned_integer(s)]))
}

/// The uncompressed point from `CKA_EC_POINT`, which tokens return DER-wrapped in an OCTET STRING
/// (as PKCS#11 says) or, for some older modules, raw.
pub(crate) fn ec_point_from_attribute(value: &[u8], coordinate_len: usize) -> Option<Vec<u8>> {
    let raw_len = 1 + 2 * coordinate_len;
    if value.len() == raw_len && value[0] == 0x04 {
        return Some(value.to_vec());
    }
    // OCTET STRING, short or one-byte long form length.
    let (len, header) = match value.get(..3)? {
        [0x04, 0x81, l] => (*l as usize, 3),
        [0x04, l, _] if *l < 0x80 => (*l as usize, 2),
        _ => return None,
    };
    let point = value.get(header..)?;
    (point.len() == len && len == raw_len && point[0] == 0x04).then(|| point.to_vec())
}

/// SubjectPublicKeyInfo of an EC key from its curve and uncompressed point.
pub(crate) fn spki_ec(algorithm: KeyAlgorithm, point: &[u8]) -> Option<Vec<u8>> {
    let curve = match algorithm {
        KeyAlgorithm::EcP256 => OID_P256,
        KeyAlgorithm::EcP384 => OID_P384,
        _ => return None,
    };
    Some(sequence(&[
        &sequence(&[OID_EC_PUBLIC_KEY, curve]),
        &bit_string(point),
    ]))
}

/// SubjectPublicKeyInfo of an RSA key from its modulus and public exponent (big-endian).
pub(crate) fn spki_rsa(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let rsa_public_key = sequence(&[&unsigned_integer(modulus), &unsigned_integer(exponent)]);
    sequence(&[
        &sequence(&[OID_RSA, &[0x05, 0x00]]),
        &bit_string(&rsa_public_key),
    ])
}

/// SubjectPublicKeyInfo of an ML-DSA key from its raw FIPS 204 public key (no parameters field).
pub(crate) fn spki_ml_dsa(algorithm: KeyAlgorithm, public_key: &[u8]) -> Option<Vec<u8>> {
    let oid = match algorithm {
        KeyAlgorithm::MlDsa65 => OID_ML_DSA_65,
        KeyAlgorithm::MlDsa87 => OID_ML_DSA_87,
        _ => return None,
    };
    Some(sequence(&[&sequence(&[oid]), &bit_string(public_key)]))
}

/// The curve named by `CKA_EC_PARAMS`.
pub(crate) fn curve_from_ec_params(params: &[u8]) -> Option<KeyAlgorithm> {
    if params == OID_P256 {
        Some(KeyAlgorithm::EcP256)
    } else if params == OID_P384 {
        Some(KeyAlgorithm::EcP384)
    } else {
        None
    }
}

/// Reads one TLV at the start of `input`: (tag, content, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let content = input.get(header..header + len)?;
    Some((tag, content, &input[header + len..]))
}

/// The subjectPublicKey bits of an SPKI (what aws-lc-rs' `UnparsedPublicKey` takes for EC, RSA and ML-DSA).
pub(crate) fn spki_public_key_bits(spki: &[u8]) -> Option<&[u8]> {
    let (tag, body, rest) = read_tlv(spki)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (alg_tag, _, after_alg) = read_tlv(body)?;
    let (bits_tag, bits, after_bits) = read_tlv(after_alg)?;
    if alg_tag != 0x30 || bits_tag != 0x03 || !after_bits.is_empty() || bits.first() != Some(&0) {
        return None;
    }
    Some(&bits[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![0x02, 0x01, 0x01]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths() {
        let t = tlv(0x04, &[0u8; 300]);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = read_tlv(&t).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (0x04, 300, 0));
    }

    #[test]
    fn ec_point_both_forms() {
        let mut raw = vec![0x04];
        raw.extend_from_slice(&[7u8; 64]);
        assert_eq!(ec_point_from_attribute(&raw, 32).unwrap(), raw);
        assert_eq!(ec_point_from_attribute(&tlv(0x04, &raw), 32).unwrap(), raw);
        let mut raw384 = vec![0x04];
        raw384.extend_from_slice(&[9u8; 96]);
        assert_eq!(
            ec_point_from_attribute(&tlv(0x04, &raw384), 48).unwrap(),
            raw384
        );
        assert!(ec_point_from_attribute(&tlv(0x04, &raw), 48).is_none());
    }

    #[test]
    fn ecdsa_signature_from_raw_verifies_with_aws_lc() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        // Many signatures, so that r or s with a high bit or a leading zero byte occur.
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let raw = kp.sign(&rng, &msg).unwrap();
            let der = ecdsa_sig_from_raw(raw.as_ref()).unwrap();
            signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_ASN1,
                kp.public_key().as_ref(),
            )
            .verify(&msg, &der)
            .unwrap();
        }
    }

    #[test]
    fn spki_bits_round_trip() {
        let point = [4u8; 65];
        let spki = spki_ec(KeyAlgorithm::EcP256, &point).unwrap();
        assert_eq!(spki_public_key_bits(&spki).unwrap(), &point);
        let spki = spki_ml_dsa(KeyAlgorithm::MlDsa65, &[1u8; 1952]).unwrap();
        assert_eq!(spki_public_key_bits(&spki).unwrap().len(), 1952);
    }
}
