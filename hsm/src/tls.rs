//! Keys of a [`KeyStore`] where TLS and certificate code expects them: a rustls [`SigningKey`] (TLS 1.3
//! CertificateVerify signed by the token, for site keys and smart-card login) and an rcgen signing key
//! (certificates whose subject key, or issuer key, lives in the token).
//!
//! [`SigningKey`]: rustls::sign::SigningKey

use std::sync::Arc;

use rustls::SignatureScheme as Tls;
use rustls_pki_types::SubjectPublicKeyInfoDer;

use crate::error::{Error, Result};
use crate::key::{KeyAlgorithm, KeyInfo, SignatureScheme};
use crate::store::KeyStore;

/// The TLS signature schemes a key can make, in order of preference, with our scheme for each.
fn tls_schemes(algorithm: KeyAlgorithm) -> &'static [(Tls, SignatureScheme)] {
    match algorithm {
        KeyAlgorithm::EcP256 => &[(Tls::ECDSA_NISTP256_SHA256, SignatureScheme::EcdsaP256Sha256)],
        KeyAlgorithm::EcP384 => &[(Tls::ECDSA_NISTP384_SHA384, SignatureScheme::EcdsaP384Sha384)],
        // TLS 1.3 allows only PSS in CertificateVerify; PKCS#1 v1.5 stays for TLS 1.2 peers.
        KeyAlgorithm::Rsa3072 => &[
            (Tls::RSA_PSS_SHA256, SignatureScheme::RsaPssSha256),
            (Tls::RSA_PSS_SHA384, SignatureScheme::RsaPssSha384),
            (Tls::RSA_PSS_SHA512, SignatureScheme::RsaPssSha512),
            (Tls::RSA_PKCS1_SHA256, SignatureScheme::RsaPkcs1Sha256),
            (Tls::RSA_PKCS1_SHA384, SignatureScheme::RsaPkcs1Sha384),
            (Tls::RSA_PKCS1_SHA512, SignatureScheme::RsaPkcs1Sha512),
        ],
        KeyAlgorithm::MlDsa65 => &[(Tls::ML_DSA_65, SignatureScheme::MlDsa65)],
        KeyAlgorithm::MlDsa87 => &[(Tls::ML_DSA_87, SignatureScheme::MlDsa87)],
        KeyAlgorithm::Aes256 => &[],
    }
}

fn signing_key_check(key: &KeyInfo) -> Result<()> {
    if key.algorithm.is_signing() {
        Ok(())
    } else {
        Err(Error::NotPermitted {
            key: key.label.clone(),
            operation: "serve as a TLS or certificate signing key",
            reason: format!("{} is not a signing key", key.algorithm),
        })
    }
}

/// A rustls signing key whose private half stays in the store.
#[derive(Debug)]
pub struct HsmSigningKey {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
    spki: Vec<u8>,
}

impl HsmSigningKey {
    /// Wraps a signing key of `store` (reads its public key once).
    pub fn new(store: Arc<dyn KeyStore>, key: KeyInfo) -> Result<Self> {
        signing_key_check(&key)?;
        let spki = store.public_key_spki(&key)?;
        Ok(HsmSigningKey { store, key, spki })
    }

    /// The key's SubjectPublicKeyInfo (DER).
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
}

impl rustls::sign::SigningKey for HsmSigningKey {
    fn choose_scheme(&self, offered: &[Tls]) -> Option<Box<dyn rustls::sign::Signer>> {
        let (tls, scheme) = tls_schemes(self.key.algorithm)
            .iter()
            .find(|(t, _)| offered.contains(t))?;
        Some(Box::new(HsmSigner {
            store: self.store.clone(),
            key: self.key.clone(),
            tls: *tls,
            scheme: *scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.key.algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => rustls::SignatureAlgorithm::ECDSA,
            KeyAlgorithm::Rsa3072 => rustls::SignatureAlgorithm::RSA,
            // rustls has no SignatureAlgorithm for ML-DSA and uses this value for its own ML-DSA keys.
            _ => rustls::SignatureAlgorithm::Unknown(0),
        }
    }
}

#[derive(Debug)]
struct HsmSigner {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
    tls: Tls,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.store
            .sign_with(&self.key, self.scheme, message)
            .map_err(|e| {
                tracing::warn!(key = %self.key.label, error = %e, "TLS signature failed");
                rustls::Error::General(format!("key {} could not sign: {e}", self.key.label))
            })
    }

    fn scheme(&self) -> Tls {
        self.tls
    }
}

/// An rcgen key whose private half stays in the store: use it as the subject key of a certificate
/// (`params.signed_by(&key, &issuer)`) or as the issuer's key (`rcgen::Issuer::new(params, key)`).
#[derive(Debug)]
pub struct HsmRcgenKey {
    store: Arc<dyn KeyStore>,
    key: KeyInfo,
    spki: Vec<u8>,
    public_bits: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl HsmRcgenKey {
    /// Wraps a signing key of `store`. Certificates it signs use the key's default scheme (ECDSA with
    /// SHA-256/384, RSA PKCS#1 v1.5 with SHA-256, pure ML-DSA).
    pub fn new(store: Arc<dyn KeyStore>, key: KeyInfo) -> Result<Self> {
        signing_key_check(&key)?;
        let algorithm = match key.algorithm {
            KeyAlgorithm::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
            KeyAlgorithm::MlDsa87 => &rcgen::PKCS_ML_DSA_87,
            KeyAlgorithm::Aes256 => {
                return Err(Error::Crypto("unreachable: AES checked above".into()));
            }
        };
        let spki = store.public_key_spki(&key)?;
        let public_bits = crate::der::spki_public_key_bits(&spki)
            .ok_or_else(|| Error::Corrupt {
                name: key.label.clone(),
                reason: "public key is not an SPKI".into(),
            })?
            .to_vec();
        Ok(HsmRcgenKey {
            store,
            key,
            spki,
            public_bits,
            algorithm,
        })
    }
}

impl rcgen::PublicKeyData for HsmRcgenKey {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.public_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for HsmRcgenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.store.sign(&self.key, msg).map_err(|e| {
            tracing::warn!(key = %self.key.label, error = %e, "certificate signature failed");
            rcgen::Error::RemoteKeyError
        })
    }
}
