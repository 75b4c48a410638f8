//! The seam: one trait for every place a key can live.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::{GenerateOptions, KeyAlgorithm, KeyInfo, KeyStorage, SignatureScheme};

/// Which kind of store is behind a [`KeyStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A PKCS#11 token (SoftHSM2 or a vendor HSM).
    Pkcs11,
    /// The development file store: keys encrypted under a passphrase. Not for production.
    File,
}

/// What a store says about itself (for `qsi hsm list`, logs and `qsi demo`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreInfo {
    /// Backend kind.
    pub backend: Backend,
    /// Token label, or the file store's directory.
    pub token: String,
    /// Token manufacturer and model, or "file".
    pub description: String,
    /// Token serial number, empty for the file store.
    pub serial: String,
    /// False for the file store: never use it for production keys.
    pub production: bool,
    /// Where new ML-DSA keys go by default: `token` (the token's own PKCS#11 3.2 ML-DSA), `sealed-by-token`
    /// (the wrapped path, for tokens without ML-DSA) or `file`.
    pub ml_dsa: KeyStorage,
}

/// A place where keys are generated and used without their private halves leaving it in clear.
///
/// Implemented by [`crate::Pkcs11Store`] (any PKCS#11 module) and [`crate::FileStore`] (development).
/// The trait is object safe; keep stores as `Arc<dyn KeyStore>` and share them between threads: every
/// method takes `&self` and may be called from many threads at once.
///
/// Output encodings: `sign` returns DER `ECDSA-Sig-Value` for ECDSA, the octet string for RSA and the raw
/// FIPS 204 signature for ML-DSA; `public_key_spki` returns DER SubjectPublicKeyInfo; `encrypt` returns
/// `version (1) || nonce (12) || ciphertext || tag (16)` (AES-256-GCM) that only `decrypt` with the same key
/// and associated data opens.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// What this store is.
    fn info(&self) -> StoreInfo;

    /// Generates a key inside the store, with options (see [`GenerateOptions`]).
    fn generate_with(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        options: GenerateOptions,
    ) -> Result<KeyInfo>;

    /// Generates a non-extractable, sensitive key inside the store.
    fn generate(&self, label: &str, algorithm: KeyAlgorithm) -> Result<KeyInfo> {
        self.generate_with(label, algorithm, GenerateOptions::default())
    }

    /// Finds a key by label or by RFC 7512 PKCS#11 URI (`pkcs11:object=...;id=...;type=...`).
    fn find(&self, name: &str) -> Result<KeyInfo>;

    /// Every key in the store (labels, ids, types; never values).
    fn list(&self) -> Result<Vec<KeyInfo>>;

    /// The public key of a signing key as DER SubjectPublicKeyInfo.
    fn public_key_spki(&self, key: &KeyInfo) -> Result<Vec<u8>>;

    /// Signs `message` with an explicit scheme (hashing, where the scheme hashes, is part of the scheme).
    fn sign_with(&self, key: &KeyInfo, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>>;

    /// Signs `message` with the key's default scheme ([`KeyAlgorithm::default_scheme`]).
    fn sign(&self, key: &KeyInfo, message: &[u8]) -> Result<Vec<u8>> {
        let scheme = key
            .algorithm
            .default_scheme()
            .ok_or_else(|| Error::NotPermitted {
                key: key.label.clone(),
                operation: "sign",
                reason: format!("{} is not a signing key", key.algorithm),
            })?;
        self.sign_with(key, scheme, message)
    }

    /// AES-256-GCM encryption under a key-encryption key of the store, with a fresh random nonce.
    fn encrypt(&self, kek: &KeyInfo, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>>;

    /// Opens what [`KeyStore::encrypt`] sealed; fails with [`Error::DecryptFailed`] on any alteration.
    fn decrypt(&self, kek: &KeyInfo, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>>;

    /// Wraps an extractable key under a key-encryption key (`CKM_AES_KEY_WRAP_PAD`, RFC 5649).
    fn wrap_key(&self, kek: &KeyInfo, key: &KeyInfo) -> Result<Vec<u8>>;

    /// Unwraps what [`KeyStore::wrap_key`] produced into a new non-extractable key of the store.
    fn unwrap_key(
        &self,
        kek: &KeyInfo,
        wrapped: &[u8],
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo>;

    /// Fills `out` with random bytes from the store's generator (the token's RNG for PKCS#11).
    fn random(&self, out: &mut [u8]) -> Result<()>;

    /// Destroys a key (both halves).
    fn delete(&self, key: &KeyInfo) -> Result<()>;
}

/// Verifies a signature made by [`KeyStore::sign_with`] against an SPKI public key, on the host (aws-lc-rs).
pub fn verify_signature(
    spki: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> Result<()> {
    let bits = crate::der::spki_public_key_bits(spki)
        .ok_or_else(|| Error::Crypto("public key is not a DER SubjectPublicKeyInfo".into()))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(scheme.verification(), bits)
        .verify(message, signature)
        .map_err(|_| Error::Crypto(format!("{scheme:?} signature does not verify")))
}

/// Refuses a key-encryption key that is not AES-256.
pub(crate) fn check_kek(kek: &KeyInfo, operation: &'static str) -> Result<()> {
    if kek.algorithm == KeyAlgorithm::Aes256 {
        return Ok(());
    }
    Err(Error::NotPermitted {
        key: kek.label.clone(),
        operation,
        reason: format!(
            "needs an AES-256 key-encryption key, this is {}",
            kek.algorithm
        ),
    })
}

/// Refuses a scheme that does not fit the key's algorithm.
pub(crate) fn check_scheme(key: &KeyInfo, scheme: SignatureScheme) -> Result<()> {
    if scheme.key_algorithm() == key.algorithm {
        return Ok(());
    }
    Err(Error::NotPermitted {
        key: key.label.clone(),
        operation: "sign",
        reason: format!(
            "{scheme:?} needs a {} key, this is {}",
            scheme.key_algorithm(),
            key.algorithm
        ),
    })
}

pub(crate) fn check_label(label: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidLabel {
            label: label.to_string(),
            reason: reason.into(),
        })
    };
    if label.is_empty() {
        return bad("it is empty");
    }
    if label.len() > 128 {
        return bad("longer than 128 bytes");
    }
    if label.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if label.starts_with("pkcs11:") {
        return bad("a label may not look like a PKCS#11 URI");
    }
    Ok(())
}
