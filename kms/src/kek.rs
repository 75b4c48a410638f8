//! The two HSM operations the KMS needs, as narrow seams: wrapping data keys under the key-encryption key
//! (KEK), and signing audit checkpoints. Production plugs in qsi-hsm (PKCS#11: the KEK and the signing key
//! never leave the token); [`SoftKek`] and [`SoftSigner`] keep both in memory for unit tests only.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::secret::KeyMaterial;

/// A failure of the KEK or the signing key.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The HSM (or the software stand-in) refused or failed the operation.
    #[error("key store operation failed: {0}")]
    Backend(String),
    /// A wrapped blob did not authenticate: wrong KEK, or the stored bytes were altered.
    #[error("wrapped key does not authenticate (altered record or wrong KEK)")]
    Unauthentic,
}

/// Wraps and unwraps per-batch data keys under a KEK that stays in the HSM.
pub trait Kek: Send + Sync {
    /// Encrypts `key` under the KEK, binding `context` (authenticated, not stored in the blob).
    fn wrap(&self, key: &KeyMaterial, context: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Reverses [`Kek::wrap`].
    fn unwrap(&self, blob: &[u8], context: &[u8]) -> Result<KeyMaterial, SealError>;
    /// A name for the KEK, recorded with each wrapped key (which KEK to use after a rotation).
    fn label(&self) -> String;
}

/// Signs audit-log checkpoints with a key held in the HSM, and verifies them.
pub trait CheckpointSigner: Send + Sync {
    /// Signature over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Ok if `sig` is a valid signature over `msg` by this key.
    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<bool, SealError>;
    /// A name for the signing key, recorded in each checkpoint.
    fn label(&self) -> String;
}

/// Fresh random bytes from the operating system's CSPRNG, for data keys.
pub fn random_key(len: usize) -> Result<KeyMaterial, SealError> {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SealError::Backend("system random generator failed".into()))?;
    Ok(KeyMaterial::new(buf))
}

/// AES-256-GCM under an in-memory key. Blob = nonce || ciphertext || tag.
pub struct SoftKek {
    key: LessSafeKey,
    label: String,
}

impl SoftKek {
    /// A KEK from 32 bytes (tests and the development file backend only).
    pub fn new(key: &KeyMaterial, label: &str) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
            .map_err(|_| SealError::Backend("a soft KEK must be 32 bytes".into()))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            label: label.to_string(),
        })
    }
}

impl Kek for SoftKek {
    fn wrap(&self, key: &KeyMaterial, context: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = random_key(NONCE_LEN)?;
        let mut out = nonce.expose().to_vec();
        let mut body = key.expose().to_vec();
        let n = Nonce::try_assume_unique_for_key(nonce.expose())
            .map_err(|_| SealError::Backend("nonce".into()))?;
        self.key
            .seal_in_place_append_tag(n, Aad::from(context), &mut body)
            .map_err(|_| SealError::Backend("AES-GCM seal failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn unwrap(&self, blob: &[u8], context: &[u8]) -> Result<KeyMaterial, SealError> {
        if blob.len() < NONCE_LEN + 16 {
            return Err(SealError::Unauthentic);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let n = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Unauthentic)?;
        let mut buf = zeroize::Zeroizing::new(ct.to_vec());
        let plain = self
            .key
            .open_in_place(n, Aad::from(context), &mut buf)
            .map_err(|_| SealError::Unauthentic)?;
        Ok(KeyMaterial::new(plain.to_vec()))
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// HMAC-SHA-256 checkpoints under an in-memory key (tests only: production signs in the HSM).
pub struct SoftSigner {
    key: hmac::Key,
    label: String,
}

impl SoftSigner {
    /// A signer from secret bytes.
    pub fn new(key: &KeyMaterial, label: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.expose()),
            label: label.to_string(),
        }
    }
}

impl CheckpointSigner for SoftSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SealError> {
        Ok(hmac::sign(&self.key, msg).as_ref().to_vec())
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<bool, SealError> {
        Ok(hmac::verify(&self.key, msg, sig).is_ok())
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// AES-256-GCM with a data key and a caller-chosen 96-bit nonce: each key of a batch is sealed once under
/// the batch's data key with its index as nonce, so nonces never repeat under one data key.
pub(crate) fn seal_with(
    dk: &KeyMaterial,
    index: u64,
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, SealError> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, dk.expose())
            .map_err(|_| SealError::Backend("data key must be 32 bytes".into()))?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| SealError::Backend("AES-GCM seal failed".into()))?;
    Ok(body)
}

/// Reverses [`seal_with`].
pub(crate) fn open_with(
    dk: &KeyMaterial,
    index: u64,
    aad: &[u8],
    ct: &[u8],
) -> Result<KeyMaterial, SealError> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, dk.expose())
            .map_err(|_| SealError::Backend("data key must be 32 bytes".into()))?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    let mut buf = zeroize::Zeroizing::new(ct.to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| SealError::Unauthentic)?;
    Ok(KeyMaterial::new(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_binds_context_and_detects_tampering() {
        let kek = SoftKek::new(&random_key(32).unwrap(), "t").unwrap();
        let dk = random_key(32).unwrap();
        let mut blob = kek.wrap(&dk, b"batch-1").unwrap();
        assert!(kek.unwrap(&blob, b"batch-1").unwrap().ct_eq(&dk));
        assert!(matches!(
            kek.unwrap(&blob, b"batch-2"),
            Err(SealError::Unauthentic)
        ));
        blob[20] ^= 1;
        assert!(matches!(
            kek.unwrap(&blob, b"batch-1"),
            Err(SealError::Unauthentic)
        ));
    }

    #[test]
    fn seal_open_round_trip_and_index_bound() {
        let dk = random_key(32).unwrap();
        let ct = seal_with(&dk, 7, b"id", b"secret").unwrap();
        assert_eq!(open_with(&dk, 7, b"id", &ct).unwrap().expose(), b"secret");
        assert!(open_with(&dk, 8, b"id", &ct).is_err());
        assert!(open_with(&dk, 7, b"other", &ct).is_err());
    }

    #[test]
    fn soft_signer_verifies_only_its_own() {
        let s = SoftSigner::new(&random_key(32).unwrap(), "a");
        let t = SoftSigner::new(&random_key(32).unwrap(), "b");
        let sig = s.sign(b"m").unwrap();
        assert!(s.verify(b"m", &sig).unwrap());
        assert!(!s.verify(b"n", &sig).unwrap());
        assert!(!t.verify(b"m", &sig).unwrap());
    }
}
