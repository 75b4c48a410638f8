//! The signing seam: the CA signs through [`CaSigner`], so it does not care whether the key is in a
//! PKCS#11 token, a vendor HSM or memory (as rcgen's `SigningKey`). [`SoftSigner`] is the in-memory
//! implementation over aws-lc-rs, for tests, benchmarks and development; production keys sit behind
//! `qsi-hsm`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair, ML_DSA_44, ML_DSA_44_SIGNING, ML_DSA_65, ML_DSA_65_SIGNING,
    ML_DSA_87, ML_DSA_87_SIGNING, PqdsaKeyPair, RsaKeyPair,
};
use const_oid::ObjectIdentifier;
use der::{Any, Decode, asn1::Null};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

/// ecdsa-with-SHA256 (RFC 5758).
pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384 (RFC 5758).
pub const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// sha256WithRSAEncryption (RFC 4055).
pub const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// sha384WithRSAEncryption (RFC 4055).
pub const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
/// id-ml-dsa-44 (RFC 9881).
pub const ID_ML_DSA_44: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17");
/// id-ml-dsa-65 (RFC 9881).
pub const ID_ML_DSA_65: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");
/// id-ml-dsa-87 (RFC 9881).
pub const ID_ML_DSA_87: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19");
/// id-ecPublicKey (RFC 5480).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// rsaEncryption (RFC 3279).
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// secp256r1 (RFC 5480).
pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 (RFC 5480).
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A signature algorithm the CA signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigAlg {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384Sha384,
    /// RSA PKCS#1 v1.5 with SHA-256 (RSA-2048 and up; RSA-3072 for new keys).
    RsaPkcs1Sha256,
    /// ML-DSA-44 (FIPS 204), pure mode, empty context.
    MlDsa44,
    /// ML-DSA-65 (FIPS 204), pure mode, empty context.
    MlDsa65,
    /// ML-DSA-87 (FIPS 204), pure mode, empty context.
    MlDsa87,
}

impl SigAlg {
    /// The signature algorithm OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            SigAlg::EcdsaP256Sha256 => ECDSA_WITH_SHA256,
            SigAlg::EcdsaP384Sha384 => ECDSA_WITH_SHA384,
            SigAlg::RsaPkcs1Sha256 => SHA256_WITH_RSA,
            SigAlg::MlDsa44 => ID_ML_DSA_44,
            SigAlg::MlDsa65 => ID_ML_DSA_65,
            SigAlg::MlDsa87 => ID_ML_DSA_87,
        }
    }

    /// The AlgorithmIdentifier: parameters absent for ECDSA (RFC 5758) and ML-DSA (RFC 9881),
    /// NULL for RSA PKCS#1 v1.5 (RFC 4055).
    pub fn algorithm_identifier(self) -> AlgorithmIdentifierOwned {
        let parameters = match self {
            SigAlg::RsaPkcs1Sha256 => Some(Any::from(Null)),
            _ => None,
        };
        AlgorithmIdentifierOwned {
            oid: self.oid(),
            parameters,
        }
    }

    /// The algorithm named by a signatureAlgorithm field, if we support it.
    pub fn from_algorithm_identifier(alg: &AlgorithmIdentifierOwned) -> Option<Self> {
        let sig = match alg.oid {
            o if o == ECDSA_WITH_SHA256 => SigAlg::EcdsaP256Sha256,
            o if o == ECDSA_WITH_SHA384 => SigAlg::EcdsaP384Sha384,
            o if o == SHA256_WITH_RSA => SigAlg::RsaPkcs1Sha256,
            o if o == ID_ML_DSA_44 => SigAlg::MlDsa44,
            o if o == ID_ML_DSA_65 => SigAlg::MlDsa65,
            o if o == ID_ML_DSA_87 => SigAlg::MlDsa87,
            _ => return None,
        };
        // ML-DSA and ECDSA require absent parameters.
        match (sig, &alg.parameters) {
            (SigAlg::RsaPkcs1Sha256, _) => Some(sig),
            (_, None) => Some(sig),
            _ => None,
        }
    }

    /// Whether this is one of the ML-DSA algorithms.
    pub fn is_ml_dsa(self) -> bool {
        matches!(self, SigAlg::MlDsa44 | SigAlg::MlDsa65 | SigAlg::MlDsa87)
    }

    /// Parses the names the CLI and config use: `p256`, `p384`, `rsa3072`, `ml-dsa-44|65|87`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec-p256" => SigAlg::EcdsaP256Sha256,
            "p384" | "p-384" | "ec-p384" => SigAlg::EcdsaP384Sha384,
            "rsa" | "rsa3072" | "rsa-3072" => SigAlg::RsaPkcs1Sha256,
            "ml-dsa-44" | "mldsa44" => SigAlg::MlDsa44,
            "ml-dsa-65" | "mldsa65" => SigAlg::MlDsa65,
            "ml-dsa-87" | "mldsa87" => SigAlg::MlDsa87,
            _ => return None,
        })
    }
}

/// Why signing or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key could not be generated or loaded.
    #[error("key generation or loading failed: {0}")]
    Key(String),
    /// The signing operation failed (token error, key gone, ...).
    #[error("signing failed: {0}")]
    Sign(String),
    /// The public key could not be encoded or decoded.
    #[error("public key encoding: {0}")]
    PublicKey(String),
    /// The signature does not verify under the key.
    #[error("signature does not verify")]
    BadSignature,
    /// The signature algorithm or key type is not one the CA supports.
    #[error("unsupported algorithm {0}")]
    Unsupported(String),
}

/// The one thing a CA key must do: say what it is and sign.
pub trait CaSigner: Send + Sync {
    /// The signature algorithm this key produces.
    fn algorithm(&self) -> SigAlg;
    /// The key's SubjectPublicKeyInfo.
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned;
    /// Signs `msg` (the whole message; the implementation hashes as the algorithm requires).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignerError>;
}

enum SoftKey {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    MlDsa(PqdsaKeyPair),
}

/// An in-memory key (aws-lc-rs): tests, benchmarks, development. The private key never prints.
pub struct SoftSigner {
    alg: SigAlg,
    key: SoftKey,
    spki: SubjectPublicKeyInfoOwned,
    rng: SystemRandom,
}

impl core::fmt::Debug for SoftSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftSigner")
            .field("alg", &self.alg)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn key_err<E: core::fmt::Debug>(e: E) -> SignerError {
    SignerError::Key(format!("{e:?}"))
}

impl SoftSigner {
    /// Generates a fresh key for `alg` (RSA keys are 3072 bits).
    pub fn generate(alg: SigAlg) -> Result<Self, SignerError> {
        let key = match alg {
            SigAlg::EcdsaP256Sha256 => SoftKey::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(key_err)?,
            ),
            SigAlg::EcdsaP384Sha384 => SoftKey::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)
                    .map_err(key_err)?,
            ),
            SigAlg::RsaPkcs1Sha256 => SoftKey::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072).map_err(key_err)?,
            ),
            SigAlg::MlDsa44 => {
                SoftKey::MlDsa(PqdsaKeyPair::generate(&ML_DSA_44_SIGNING).map_err(key_err)?)
            }
            SigAlg::MlDsa65 => {
                SoftKey::MlDsa(PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).map_err(key_err)?)
            }
            SigAlg::MlDsa87 => {
                SoftKey::MlDsa(PqdsaKeyPair::generate(&ML_DSA_87_SIGNING).map_err(key_err)?)
            }
        };
        Self::from_key(alg, key)
    }

    /// Loads a PKCS#8 private key for `alg`.
    pub fn from_pkcs8(alg: SigAlg, pkcs8: &[u8]) -> Result<Self, SignerError> {
        let key = match alg {
            SigAlg::EcdsaP256Sha256 => SoftKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                    .map_err(key_err)?,
            ),
            SigAlg::EcdsaP384Sha384 => SoftKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8)
                    .map_err(key_err)?,
            ),
            SigAlg::RsaPkcs1Sha256 => SoftKey::Rsa(RsaKeyPair::from_pkcs8(pkcs8).map_err(key_err)?),
            SigAlg::MlDsa44 => SoftKey::MlDsa(
                PqdsaKeyPair::from_pkcs8(&ML_DSA_44_SIGNING, pkcs8).map_err(key_err)?,
            ),
            SigAlg::MlDsa65 => SoftKey::MlDsa(
                PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, pkcs8).map_err(key_err)?,
            ),
            SigAlg::MlDsa87 => SoftKey::MlDsa(
                PqdsaKeyPair::from_pkcs8(&ML_DSA_87_SIGNING, pkcs8).map_err(key_err)?,
            ),
        };
        Self::from_key(alg, key)
    }

    fn from_key(alg: SigAlg, key: SoftKey) -> Result<Self, SignerError> {
        let der = match &key {
            SoftKey::Ecdsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            SoftKey::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            SoftKey::MlDsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|e| SignerError::PublicKey(format!("{e:?}")))?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&der)
            .map_err(|e| SignerError::PublicKey(e.to_string()))?;
        Ok(SoftSigner {
            alg,
            key,
            spki,
            rng: SystemRandom::new(),
        })
    }

    /// The private key as PKCS#8 DER (zeroized on drop). For key backup into a token or a file
    /// encrypted under a token key; never log it.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, SignerError> {
        let doc = match &self.key {
            SoftKey::Ecdsa(k) => k.to_pkcs8v1().map_err(key_err)?.as_ref().to_vec(),
            SoftKey::Rsa(k) => k.as_der().map_err(key_err)?.as_ref().to_vec(),
            SoftKey::MlDsa(k) => k.to_pkcs8v1().map_err(key_err)?.as_ref().to_vec(),
        };
        Ok(Zeroizing::new(doc))
    }
}

impl CaSigner for SoftSigner {
    fn algorithm(&self) -> SigAlg {
        self.alg
    }

    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignerError> {
        let sign_err = |e: aws_lc_rs::error::Unspecified| SignerError::Sign(e.to_string());
        match &self.key {
            SoftKey::Ecdsa(k) => Ok(k.sign(&self.rng, msg).map_err(sign_err)?.as_ref().to_vec()),
            SoftKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .map_err(sign_err)?;
                Ok(sig)
            }
            SoftKey::MlDsa(k) => {
                let mut sig = vec![0u8; k.algorithm().signature_len()];
                let n = k.sign(msg, &mut sig).map_err(sign_err)?;
                sig.truncate(n);
                Ok(sig)
            }
        }
    }
}

/// Verifies `sig` over `msg` by the key in `spki` under the signature algorithm `alg`, checking
/// that the key type fits the algorithm (an EC key cannot verify an RSA signature, an ML-DSA-65 key
/// only ML-DSA-65 signatures). Returns the key's own algorithm.
pub fn verify(
    spki: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<SigAlg, SignerError> {
    let key_alg = key_sig_alg(spki)?;
    let mismatch = || {
        SignerError::Unsupported(format!(
            "signature algorithm {} does not fit the {key_alg:?} key",
            alg.oid
        ))
    };
    // Parameters: absent for ECDSA and ML-DSA, NULL or absent for RSA PKCS#1 v1.5.
    if key_alg != SigAlg::RsaPkcs1Sha256 && alg.parameters.is_some() {
        return Err(mismatch());
    }
    let o = alg.oid;
    let verifier: &dyn signature::VerificationAlgorithm = match key_alg {
        SigAlg::EcdsaP256Sha256 if o == ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        SigAlg::EcdsaP256Sha256 if o == ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        SigAlg::EcdsaP384Sha384 if o == ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        SigAlg::EcdsaP384Sha384 if o == ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        SigAlg::RsaPkcs1Sha256 if o == SHA256_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA256,
        SigAlg::RsaPkcs1Sha256 if o == SHA384_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA384,
        SigAlg::MlDsa44 if o == ID_ML_DSA_44 => &ML_DSA_44,
        SigAlg::MlDsa65 if o == ID_ML_DSA_65 => &ML_DSA_65,
        SigAlg::MlDsa87 if o == ID_ML_DSA_87 => &ML_DSA_87,
        _ => return Err(mismatch()),
    };
    signature::UnparsedPublicKey::new(verifier, spki.subject_public_key.raw_bytes())
        .verify(msg, sig)
        .map_err(|_| SignerError::BadSignature)?;
    Ok(key_alg)
}

/// The signature algorithm a public key signs with in this CA (EC by curve, RSA, ML-DSA by OID).
pub fn key_sig_alg(spki: &SubjectPublicKeyInfoOwned) -> Result<SigAlg, SignerError> {
    let oid = spki.algorithm.oid;
    if oid == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| SignerError::Unsupported("EC key without a named curve".into()))?;
        return match curve {
            c if c == SECP256R1 => Ok(SigAlg::EcdsaP256Sha256),
            c if c == SECP384R1 => Ok(SigAlg::EcdsaP384Sha384),
            c => Err(SignerError::Unsupported(format!("EC curve {c}"))),
        };
    }
    match oid {
        o if o == RSA_ENCRYPTION => Ok(SigAlg::RsaPkcs1Sha256),
        o if o == ID_ML_DSA_44 && spki.algorithm.parameters.is_none() => Ok(SigAlg::MlDsa44),
        o if o == ID_ML_DSA_65 && spki.algorithm.parameters.is_none() => Ok(SigAlg::MlDsa65),
        o if o == ID_ML_DSA_87 && spki.algorithm.parameters.is_none() => Ok(SigAlg::MlDsa87),
        o => Err(SignerError::Unsupported(format!(
            "public key algorithm {o}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn every_algorithm_signs_and_verifies_and_refuses_a_changed_message() {
        for alg in [
            SigAlg::EcdsaP256Sha256,
            SigAlg::EcdsaP384Sha384,
            SigAlg::MlDsa44,
            SigAlg::MlDsa65,
            SigAlg::MlDsa87,
        ] {
            let s = SoftSigner::generate(alg).unwrap();
            let sig = s.sign(b"tbs").unwrap();
            assert_eq!(
                verify(s.public_key(), &alg.algorithm_identifier(), b"tbs", &sig).unwrap(),
                alg
            );
            assert!(verify(s.public_key(), &alg.algorithm_identifier(), b"tbS", &sig).is_err());
            let again = SoftSigner::from_pkcs8(alg, &s.to_pkcs8().unwrap()).unwrap();
            assert_eq!(again.public_key(), s.public_key());
        }
    }

    #[test]
    fn ml_dsa_spki_uses_the_rfc9881_oid_without_parameters() {
        let s = SoftSigner::generate(SigAlg::MlDsa65).unwrap();
        assert_eq!(
            s.public_key().algorithm.oid.to_string(),
            "2.16.840.1.101.3.4.3.18"
        );
        assert!(s.public_key().algorithm.parameters.is_none());
        // RFC 9881: the AlgorithmIdentifier is just the OID: 30 0b 06 09 60 86 48 01 65 03 04 03 12
        let der = SigAlg::MlDsa65.algorithm_identifier().to_der().unwrap();
        assert_eq!(
            der,
            [
                0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12
            ]
        );
    }

    #[test]
    fn key_and_algorithm_must_match() {
        let s = SoftSigner::generate(SigAlg::EcdsaP256Sha256).unwrap();
        let sig = s.sign(b"m").unwrap();
        assert!(
            verify(
                s.public_key(),
                &SigAlg::MlDsa65.algorithm_identifier(),
                b"m",
                &sig
            )
            .is_err()
        );
    }
}
