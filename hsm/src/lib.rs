//! One seam for keys: PKCS#11 HSMs through cryptoki, and a file backend for development.
//!
//! Every long-lived key of QSI (CA keys, card keys, the KMS key-encryption key, site keys) is used
//! through the object-safe [`KeyStore`] trait, so a CA or KMS does not care whether its key is in SoftHSM2,
//! a vendor HSM or (on a developer's laptop) an encrypted file:
//!
//! - [`Pkcs11Store`]: any PKCS#11 module. Keys are generated on the token, sensitive and non-extractable;
//!   a bounded session pool lets many threads sign at once; the PIN comes from a file or an environment
//!   variable ([`Pin`]). Keys are named by label or RFC 7512 URI (`pkcs11:token=qsi-ca;object=root-2026;type=private`).
//! - ML-DSA-65/87 natively where the token offers the PKCS#11 3.2 mechanisms (`CKM_ML_DSA_KEY_PAIR_GEN`
//!   and `CKM_ML_DSA` in its mechanism list): a non-extractable, sensitive token key pair with
//!   `CKA_PARAMETER_SET`, pure ML-DSA signatures with an empty context made by the token, the public key
//!   exported as an RFC 9881 SPKI. [`Pkcs11Store::native_ml_dsa`] says which path a token gets;
//!   [`MlDsaMode`] can force either.
//! - ML-DSA-65/87 on tokens without ML-DSA (SoftHSM2 2.6): generated with aws-lc-rs, stored on the token
//!   only sealed (AES-256-GCM) under a non-extractable AES key of the token, opened with `C_Decrypt` into
//!   zeroizing memory for one signature and erased right after. Never `C_UnwrapKey`, which would create a
//!   token object holding the key.
//! - ECDSA on SoftHSM2 2.6 is raw `CKM_ECDSA`: the message is hashed on the host and the token's `r || s`
//!   is returned DER-encoded (`ECDSA-Sig-Value`), which is what X.509 and TLS expect.
//! - [`FileStore`]: development only, keys sealed under an Argon2id passphrase key; every log line says
//!   it is not for production.
//! - [`SoftHsmToken`]: a throw-away SoftHSM2 token for tests of any crate; [`KryopticToken`] the same
//!   on Kryoptic, a PKCS#11 3.2 soft token with native ML-DSA (`scripts/install-kryoptic`).
//! - [`HsmSigningKey`] (rustls) and [`HsmRcgenKey`] (rcgen): a store's key as a TLS 1.3 signing key
//!   (ECDSA, RSA-PSS, ML-DSA) or as a certificate's subject or issuer key.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use qsi_hsm::{KeyAlgorithm, KeyStore, Pin, Pkcs11Config, Pkcs11Store, TokenSelector};
//!
//! # fn main() -> Result<(), qsi_hsm::Error> {
//! let config = Pkcs11Config::new(
//!     "/usr/lib/softhsm/libsofthsm2.so",
//!     TokenSelector::Label("qsi-ca".into()),
//!     Pin::from_env("QSI_HSM_PIN")?,
//! );
//! let store: Arc<dyn KeyStore> = Arc::new(Pkcs11Store::open(config)?);
//!
//! // A CA key: P-384, generated on the token, never leaves it.
//! let key = store.generate("root-2026", KeyAlgorithm::EcP384)?;
//! let spki = store.public_key_spki(&key)?; // DER SubjectPublicKeyInfo, for the certificate
//! let signature = store.sign(&key, b"to be signed")?; // DER ECDSA-Sig-Value over SHA-384
//! qsi_hsm::verify_signature(&spki, qsi_hsm::SignatureScheme::EcdsaP384Sha384, b"to be signed", &signature)?;
//!
//! // Later, by URI.
//! let again = store.find(&key.uri())?;
//! assert_eq!(again.id, key.id);
//!
//! // The KMS: a key-encryption key that seals per-batch data keys.
//! let kek = store.generate("kms-kek", KeyAlgorithm::Aes256)?;
//! let sealed = store.encrypt(&kek, b"batch 42", &[7u8; 32])?;
//! let data_key = store.decrypt(&kek, b"batch 42", &sealed)?; // Zeroizing<Vec<u8>>
//! assert_eq!(&data_key[..], &[7u8; 32]);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod der;
mod error;
mod file;
mod key;
pub mod kryoptic;
mod mldsa;
mod pin;
pub mod pkcs11;
pub mod softhsm;
mod store;
pub mod tls;
mod uri;

pub use error::{Error, PinFlags, Result};
pub use file::FileStore;
pub use key::{GenerateOptions, KeyAlgorithm, KeyInfo, KeyStorage, MlDsaMode, SignatureScheme};
pub use kryoptic::KryopticToken;
pub use pin::Pin;
pub use pkcs11::{PinRetryLimit, Pkcs11Config, Pkcs11Store, TokenSelector};
pub use softhsm::SoftHsmToken;
pub use store::{Backend, KeyStore, StoreInfo, verify_signature};
pub use tls::{HsmRcgenKey, HsmSigningKey};
pub use uri::Pkcs11Uri;
pub use zeroize::Zeroizing;
