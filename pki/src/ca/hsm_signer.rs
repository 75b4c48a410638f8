//! [`CaSigner`] over a `qsi-hsm` key store: CA keys in a PKCS#11 token (SoftHSM2 in tests, a
//! vendor HSM in production), ML-DSA keys sealed by the token.

use crate::ca::signer::{CaSigner, SigAlg, SignerError};
use der::Decode;
use qsi_hsm::{KeyAlgorithm, KeyInfo, KeyStore};
use spki::SubjectPublicKeyInfoOwned;
use std::sync::Arc;

/// A CA key held by a [`KeyStore`].
#[derive(Debug)]
pub struct HsmSigner {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
    alg: SigAlg,
    spki: SubjectPublicKeyInfoOwned,
}

/// The store algorithm for a CA signature algorithm.
pub fn key_algorithm(alg: SigAlg) -> Result<KeyAlgorithm, SignerError> {
    Ok(match alg {
        SigAlg::EcdsaP256Sha256 => KeyAlgorithm::EcP256,
        SigAlg::EcdsaP384Sha384 => KeyAlgorithm::EcP384,
        SigAlg::RsaPkcs1Sha256 => KeyAlgorithm::Rsa3072,
        SigAlg::MlDsa65 => KeyAlgorithm::MlDsa65,
        SigAlg::MlDsa87 => KeyAlgorithm::MlDsa87,
        SigAlg::MlDsa44 => {
            return Err(SignerError::Unsupported(
                "ML-DSA-44 CA keys (use ML-DSA-65 or -87)".into(),
            ));
        }
    })
}

fn hsm_err(e: qsi_hsm::Error) -> SignerError {
    SignerError::Sign(e.to_string())
}

impl HsmSigner {
    /// Wraps an existing key of `store`.
    pub fn new(store: Arc<dyn KeyStore>, key: KeyInfo) -> Result<Self, SignerError> {
        let alg = match key.algorithm {
            KeyAlgorithm::EcP256 => SigAlg::EcdsaP256Sha256,
            KeyAlgorithm::EcP384 => SigAlg::EcdsaP384Sha384,
            KeyAlgorithm::Rsa3072 => SigAlg::RsaPkcs1Sha256,
            KeyAlgorithm::MlDsa65 => SigAlg::MlDsa65,
            KeyAlgorithm::MlDsa87 => SigAlg::MlDsa87,
            KeyAlgorithm::Aes256 => {
                return Err(SignerError::Unsupported(format!(
                    "{} is not a signing key",
                    key.label
                )));
            }
        };
        let der = store.public_key_spki(&key).map_err(hsm_err)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&der)
            .map_err(|e| SignerError::PublicKey(e.to_string()))?;
        Ok(HsmSigner {
            store,
            key,
            alg,
            spki,
        })
    }

    /// Generates a new key labelled `label` in `store` and wraps it.
    pub fn generate(
        store: Arc<dyn KeyStore>,
        label: &str,
        alg: SigAlg,
    ) -> Result<Self, SignerError> {
        let key = store
            .generate(label, key_algorithm(alg)?)
            .map_err(|e| SignerError::Key(e.to_string()))?;
        Self::new(store, key)
    }

    /// Finds the key named `name` (label or PKCS#11 URI) in `store`.
    pub fn find(store: Arc<dyn KeyStore>, name: &str) -> Result<Self, SignerError> {
        let key = store
            .find(name)
            .map_err(|e| SignerError::Key(e.to_string()))?;
        Self::new(store, key)
    }

    /// The key's PKCS#11 URI.
    pub fn uri(&self) -> String {
        self.key.uri()
    }
}

impl CaSigner for HsmSigner {
    fn algorithm(&self) -> SigAlg {
        self.alg
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.store.sign(&self.key, msg).map_err(hsm_err)
    }
}
