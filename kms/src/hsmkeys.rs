//! The KEK and the audit signing key in the HSM, through the qsi-hsm seam. The KEK is an AES-256 key
//! generated on the token (sensitive, non-extractable); data keys are sealed under it with AES-256-GCM
//! (`C_Encrypt`/`C_Decrypt`), their batch number bound as associated data. The audit key is an ECDSA
//! P-256 key on the token; checkpoints are verified on the host against its public key.

use std::sync::Arc;

use qsi_hsm::{
    FileStore, KeyAlgorithm, KeyInfo, KeyStore, Pin, Pkcs11Config, Pkcs11Store, SignatureScheme,
    TokenSelector,
};

use crate::config::HsmSettings;
use crate::kek::{CheckpointSigner, Kek, SealError};
use crate::secret::KeyMaterial;

fn backend(e: qsi_hsm::Error) -> SealError {
    SealError::Backend(e.to_string())
}

/// The KEK in a key store.
pub struct HsmKek {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
}

impl Kek for HsmKek {
    fn wrap(&self, key: &KeyMaterial, context: &[u8]) -> Result<Vec<u8>, SealError> {
        self.store
            .encrypt(&self.key, context, key.expose())
            .map_err(backend)
    }

    fn unwrap(&self, blob: &[u8], context: &[u8]) -> Result<KeyMaterial, SealError> {
        match self.store.decrypt(&self.key, context, blob) {
            Ok(k) => Ok(KeyMaterial::new(k.to_vec())),
            Err(qsi_hsm::Error::DecryptFailed { .. }) => Err(SealError::Unauthentic),
            Err(e) => Err(backend(e)),
        }
    }

    fn label(&self) -> String {
        self.key.label.clone()
    }
}

/// The audit signing key in a key store.
pub struct HsmSigner {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
    spki: Vec<u8>,
    scheme: SignatureScheme,
}

impl CheckpointSigner for HsmSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SealError> {
        self.store
            .sign_with(&self.key, self.scheme, msg)
            .map_err(backend)
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<bool, SealError> {
        Ok(qsi_hsm::verify_signature(&self.spki, self.scheme, msg, sig).is_ok())
    }

    fn label(&self) -> String {
        self.key.label.clone()
    }
}

fn find_or_create(
    store: &dyn KeyStore,
    label: &str,
    alg: KeyAlgorithm,
    create: bool,
) -> Result<KeyInfo, SealError> {
    match store.find(label) {
        Ok(k) if k.algorithm == alg => Ok(k),
        Ok(k) => Err(SealError::Backend(format!(
            "key {label:?} on the token is {}, the KMS needs {}",
            k.algorithm.name(),
            alg.name()
        ))),
        Err(qsi_hsm::Error::KeyNotFound { .. }) if create => {
            store.generate(label, alg).map_err(backend)
        }
        Err(qsi_hsm::Error::KeyNotFound { .. }) => Err(SealError::Backend(format!(
            "no key {label:?} on the token: create it (`qsi hsm generate {label} {}`) or set create_missing = true",
            alg.name()
        ))),
        Err(e) => Err(backend(e)),
    }
}

/// Finds (or, with `create`, generates) the KEK and the audit key in `store`.
pub fn open_keys(
    store: Arc<dyn KeyStore>,
    kek_label: &str,
    signer_label: &str,
    create: bool,
) -> Result<(Arc<HsmKek>, Arc<HsmSigner>), SealError> {
    let kek = find_or_create(store.as_ref(), kek_label, KeyAlgorithm::Aes256, create)?;
    let sk = find_or_create(store.as_ref(), signer_label, KeyAlgorithm::EcP256, create)?;
    let spki = store.public_key_spki(&sk).map_err(backend)?;
    Ok((
        Arc::new(HsmKek {
            store: store.clone(),
            key: kek,
        }),
        Arc::new(HsmSigner {
            store,
            key: sk,
            spki,
            scheme: SignatureScheme::EcdsaP256Sha256,
        }),
    ))
}

/// Opens the key store the configuration names and the two keys in it.
pub fn open(settings: &HsmSettings) -> Result<(Arc<HsmKek>, Arc<HsmSigner>), SealError> {
    match settings {
        HsmSettings::Pkcs11 {
            module,
            token,
            pin,
            kek_label,
            signer_label,
            create_missing,
        } => {
            let module = match module {
                Some(m) => m.clone(),
                None => qsi_hsm::pkcs11::default_module_path().map_err(backend)?,
            };
            let pin = Pin::from_source(pin).map_err(backend)?;
            let store = Pkcs11Store::open(Pkcs11Config::new(
                module,
                TokenSelector::Label(token.clone()),
                pin,
            ))
            .map_err(backend)?;
            open_keys(Arc::new(store), kek_label, signer_label, *create_missing)
        }
        HsmSettings::File {
            dir,
            pin,
            kek_label,
            signer_label,
            create_missing,
        } => {
            let pin = Pin::from_source(pin).map_err(backend)?;
            let store = FileStore::open_or_create(dir, &pin).map_err(backend)?;
            open_keys(Arc::new(store), kek_label, signer_label, *create_missing)
        }
    }
}
