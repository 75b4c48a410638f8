//! ML-DSA keys for tokens without ML-DSA (SoftHSM2 2.6): generated on the host with aws-lc-rs, kept on the
//! token only as a sealed blob (AES-256-GCM under a non-extractable AES key of the token), opened with
//! `C_Decrypt` into zeroizing memory for one signature and erased right after.
//!
//! Blob layout (all lengths big-endian):
//! `"QSI-MLDSA" || 0x01 || alg (1) || id_len (1) || id || kek_id_len (1) || kek_id || pub_len (2) || pub ||
//! nonce (12) || ciphertext || tag (16)`. Everything before the nonce is the associated data, so the
//! public key, the id and the algorithm cannot be swapped without the open failing.

use aws_lc_rs::signature::{self, KeyPair, PqdsaKeyPair};
use zeroize::Zeroizing;

use crate::key::KeyAlgorithm;

const MAGIC: &[u8] = b"QSI-MLDSA\x01";
pub(crate) const NONCE_LEN: usize = 12;

/// The `CKA_APPLICATION` of the data objects that hold sealed ML-DSA keys.
pub(crate) const APPLICATION: &[u8] = b"qsi-hsm sealed ml-dsa";

fn signing_alg(algorithm: KeyAlgorithm) -> Option<&'static signature::PqdsaSigningAlgorithm> {
    match algorithm {
        KeyAlgorithm::MlDsa65 => Some(&signature::ML_DSA_65_SIGNING),
        KeyAlgorithm::MlDsa87 => Some(&signature::ML_DSA_87_SIGNING),
        _ => None,
    }
}

/// A fresh key: PKCS#8 (seed form, zeroizing) and the raw public key.
pub(crate) fn generate(algorithm: KeyAlgorithm) -> Option<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    let kp = PqdsaKeyPair::generate(signing_alg(algorithm)?).ok()?;
    let pkcs8 = Zeroizing::new(kp.to_pkcs8v1().ok()?.as_ref().to_vec());
    Some((pkcs8, kp.public_key().as_ref().to_vec()))
}

/// Signs with a PKCS#8 private key; the expanded key lives only inside this call.
pub(crate) fn sign(
    algorithm: KeyAlgorithm,
    pkcs8: &[u8],
    expected_public: &[u8],
    message: &[u8],
) -> Option<Vec<u8>> {
    let alg = signing_alg(algorithm)?;
    let kp = PqdsaKeyPair::from_pkcs8(alg, pkcs8).ok()?;
    if kp.public_key().as_ref() != expected_public {
        return None;
    }
    let mut sig = vec![0u8; alg.signature_len()];
    let n = kp.sign(message, &mut sig).ok()?;
    sig.truncate(n);
    Some(sig)
    // `kp` drops here: AWS-LC frees the expanded key with OPENSSL_free, which cleanses it.
}

/// A sealed ML-DSA key as stored in the token's data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedKey {
    pub algorithm: KeyAlgorithm,
    pub id: Vec<u8>,
    pub kek_id: Vec<u8>,
    pub public_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl SealedKey {
    /// The associated data: everything before the nonce.
    pub fn header(
        algorithm: KeyAlgorithm,
        id: &[u8],
        kek_id: &[u8],
        public_key: &[u8],
    ) -> Option<Vec<u8>> {
        let alg = match algorithm {
            KeyAlgorithm::MlDsa65 => 65u8,
            KeyAlgorithm::MlDsa87 => 87u8,
            _ => return None,
        };
        let mut out = MAGIC.to_vec();
        out.push(alg);
        out.push(u8::try_from(id.len()).ok()?);
        out.extend_from_slice(id);
        out.push(u8::try_from(kek_id.len()).ok()?);
        out.extend_from_slice(kek_id);
        out.extend_from_slice(&u16::try_from(public_key.len()).ok()?.to_be_bytes());
        out.extend_from_slice(public_key);
        Some(out)
    }

    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Self::header(self.algorithm, &self.id, &self.kek_id, &self.public_key)?;
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        Some(out)
    }

    pub fn decode(blob: &[u8]) -> Option<Self> {
        let rest = blob.strip_prefix(MAGIC)?;
        let (&alg, rest) = rest.split_first()?;
        let algorithm = match alg {
            65 => KeyAlgorithm::MlDsa65,
            87 => KeyAlgorithm::MlDsa87,
            _ => return None,
        };
        let (&id_len, rest) = rest.split_first()?;
        let (id, rest) = rest.split_at_checked(id_len as usize)?;
        let (&kek_len, rest) = rest.split_first()?;
        let (kek_id, rest) = rest.split_at_checked(kek_len as usize)?;
        let (pub_len, rest) = rest.split_at_checked(2)?;
        let pub_len = u16::from_be_bytes([pub_len[0], pub_len[1]]) as usize;
        let (public_key, rest) = rest.split_at_checked(pub_len)?;
        let (nonce, ciphertext) = rest.split_at_checked(NONCE_LEN)?;
        if ciphertext.len() <= 16 {
            return None;
        }
        Some(SealedKey {
            algorithm,
            id: id.to_vec(),
            kek_id: kek_id.to_vec(),
            public_key: public_key.to_vec(),
            nonce: nonce.try_into().ok()?,
            ciphertext: ciphertext.to_vec(),
        })
    }

    pub fn aad(&self) -> Option<Vec<u8>> {
        Self::header(self.algorithm, &self.id, &self.kek_id, &self.public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_and_rejects_truncation() {
        let sealed = SealedKey {
            algorithm: KeyAlgorithm::MlDsa87,
            id: vec![1, 2, 3],
            kek_id: vec![9; 16],
            public_key: vec![7; 2592],
            nonce: [5; NONCE_LEN],
            ciphertext: vec![6; 70],
        };
        let blob = sealed.encode().unwrap();
        assert_eq!(SealedKey::decode(&blob).unwrap(), sealed);
        for cut in [0, 5, 20, blob.len() - 60] {
            assert!(SealedKey::decode(&blob[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn generate_then_sign_verifies() {
        for alg in [KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa87] {
            let (pkcs8, public) = generate(alg).unwrap();
            let sig = sign(alg, &pkcs8, &public, b"hello").unwrap();
            let verify = if alg == KeyAlgorithm::MlDsa65 {
                &signature::ML_DSA_65
            } else {
                &signature::ML_DSA_87
            };
            signature::UnparsedPublicKey::new(verify, &public)
                .verify(b"hello", &sig)
                .unwrap();
            // A key that does not match the stored public key is refused.
            let (other, _) = generate(alg).unwrap();
            assert!(sign(alg, &other, &public, b"hello").is_none());
        }
    }
}
