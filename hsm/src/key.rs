//! What a key is, independent of where it lives.

use std::fmt;
use std::str::FromStr;

use crate::uri::Pkcs11Uri;

/// The kinds of key the seam can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 (secp256r1).
    EcP256,
    /// ECDSA on NIST P-384 (secp384r1): CA and site keys.
    EcP384,
    /// RSA with a 3072-bit modulus, for interoperability.
    Rsa3072,
    /// AES-256: key-encryption keys (AES-GCM, AES key wrap with padding).
    Aes256,
    /// ML-DSA-65 (FIPS 204).
    MlDsa65,
    /// ML-DSA-87 (FIPS 204), the CNSA 2.0 choice.
    MlDsa87,
}

impl KeyAlgorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Aes256,
        KeyAlgorithm::MlDsa65,
        KeyAlgorithm::MlDsa87,
    ];

    /// Short name used on the command line and in JSON (`ec-p256`, `ml-dsa-65`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::EcP384 => "ec-p384",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Aes256 => "aes-256",
            KeyAlgorithm::MlDsa65 => "ml-dsa-65",
            KeyAlgorithm::MlDsa87 => "ml-dsa-87",
        }
    }

    /// Whether this is a signing (asymmetric) key with a public half.
    pub fn is_signing(self) -> bool {
        !matches!(self, KeyAlgorithm::Aes256)
    }

    /// Whether this is an ML-DSA key.
    pub fn is_ml_dsa(self) -> bool {
        matches!(self, KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87)
    }

    /// The signature scheme [`crate::KeyStore::sign`] uses for this key, `None` for AES.
    pub fn default_scheme(self) -> Option<SignatureScheme> {
        Some(match self {
            KeyAlgorithm::EcP256 => SignatureScheme::EcdsaP256Sha256,
            KeyAlgorithm::EcP384 => SignatureScheme::EcdsaP384Sha384,
            KeyAlgorithm::Rsa3072 => SignatureScheme::RsaPkcs1Sha256,
            KeyAlgorithm::MlDsa65 => SignatureScheme::MlDsa65,
            KeyAlgorithm::MlDsa87 => SignatureScheme::MlDsa87,
            KeyAlgorithm::Aes256 => return None,
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.to_ascii_lowercase().replace('_', "-");
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = KeyAlgorithm::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown key algorithm {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A signature scheme: the key type, the hash, and the encoding of the result.
///
/// ECDSA signatures are DER `ECDSA-Sig-Value` (RFC 3279), RSA signatures the modulus-sized octet string,
/// ML-DSA signatures the raw FIPS 204 encoding (pure ML-DSA, empty context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// ECDSA P-256 over SHA-256.
    EcdsaP256Sha256,
    /// ECDSA P-384 over SHA-384.
    EcdsaP384Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    RsaPssSha512,
    /// ML-DSA-65, pure, empty context.
    MlDsa65,
    /// ML-DSA-87, pure, empty context.
    MlDsa87,
}

impl SignatureScheme {
    /// The key algorithm this scheme needs.
    pub fn key_algorithm(self) -> KeyAlgorithm {
        match self {
            SignatureScheme::EcdsaP256Sha256 => KeyAlgorithm::EcP256,
            SignatureScheme::EcdsaP384Sha384 => KeyAlgorithm::EcP384,
            SignatureScheme::RsaPkcs1Sha256
            | SignatureScheme::RsaPkcs1Sha384
            | SignatureScheme::RsaPkcs1Sha512
            | SignatureScheme::RsaPssSha256
            | SignatureScheme::RsaPssSha384
            | SignatureScheme::RsaPssSha512 => KeyAlgorithm::Rsa3072,
            SignatureScheme::MlDsa65 => KeyAlgorithm::MlDsa65,
            SignatureScheme::MlDsa87 => KeyAlgorithm::MlDsa87,
        }
    }

    /// The aws-lc-rs verification algorithm for this scheme (public key as SPKI DER via
    /// [`crate::verify_signature`]).
    pub(crate) fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature as s;
        match self {
            SignatureScheme::EcdsaP256Sha256 => &s::ECDSA_P256_SHA256_ASN1,
            SignatureScheme::EcdsaP384Sha384 => &s::ECDSA_P384_SHA384_ASN1,
            SignatureScheme::RsaPkcs1Sha256 => &s::RSA_PKCS1_2048_8192_SHA256,
            SignatureScheme::RsaPkcs1Sha384 => &s::RSA_PKCS1_2048_8192_SHA384,
            SignatureScheme::RsaPkcs1Sha512 => &s::RSA_PKCS1_2048_8192_SHA512,
            SignatureScheme::RsaPssSha256 => &s::RSA_PSS_2048_8192_SHA256,
            SignatureScheme::RsaPssSha384 => &s::RSA_PSS_2048_8192_SHA384,
            SignatureScheme::RsaPssSha512 => &s::RSA_PSS_2048_8192_SHA512,
            SignatureScheme::MlDsa65 => &s::ML_DSA_65,
            SignatureScheme::MlDsa87 => &s::ML_DSA_87,
        }
    }
}

/// Where and how a key's private half is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStorage {
    /// A key object of the token, used through the token's own mechanisms (for ML-DSA: the PKCS#11 3.2
    /// `CKM_ML_DSA_KEY_PAIR_GEN` and `CKM_ML_DSA` of a token that offers them).
    Token,
    /// An ML-DSA private key the token cannot hold natively: stored on the token as a data object,
    /// encrypted under an AES key of the token, decrypted in host memory only to sign.
    SealedByToken,
    /// A key in the development file store (not for production).
    File,
}

/// A key in a store: what callers hold and pass back to [`crate::KeyStore`] operations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// The key's label (`CKA_LABEL`).
    pub label: String,
    /// The key's id (`CKA_ID`), shared by the private and public halves; may be empty for keys
    /// made by other tools.
    #[serde(serialize_with = "hex_bytes")]
    pub id: Vec<u8>,
    /// What kind of key it is.
    pub algorithm: KeyAlgorithm,
    /// How the private half is held.
    pub storage: KeyStorage,
    /// Label of the token (or the file store's path) that holds it.
    pub token: String,
    /// Whether the key may leave the token wrapped under a key-encryption key (never in clear).
    pub extractable: bool,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

impl KeyInfo {
    /// The key's RFC 7512 PKCS#11 URI, e.g. `pkcs11:token=qsi-ca;object=root-2026;id=%01%02;type=private`.
    pub fn uri(&self) -> String {
        let object_type = match (self.algorithm, self.storage) {
            (KeyAlgorithm::Aes256, _) => "secret",
            (_, KeyStorage::SealedByToken) => "data",
            _ => "private",
        };
        Pkcs11Uri {
            token: Some(self.token.clone()),
            object: Some(self.label.clone()),
            id: (!self.id.is_empty()).then(|| self.id.clone()),
            object_type: Some(object_type.to_string()),
            ..Pkcs11Uri::default()
        }
        .to_string()
    }
}

/// Options for [`crate::KeyStore::generate_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Allow the key to leave the token wrapped under a key-encryption key (`CKA_EXTRACTABLE`).
    /// The key stays sensitive: it never leaves in clear. Default: false (the key never leaves).
    pub extractable: bool,
    /// Where an ML-DSA key goes on a PKCS#11 token (ignored for other algorithms and by the file store,
    /// which refuses [`MlDsaMode::Native`]). Default: [`MlDsaMode::Auto`].
    pub ml_dsa: MlDsaMode,
}

/// How a PKCS#11 store holds a new ML-DSA key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlDsaMode {
    /// Native when the token offers `CKM_ML_DSA_KEY_PAIR_GEN` and `CKM_ML_DSA`, sealed otherwise.
    #[default]
    Auto,
    /// Native, or fail with [`crate::Error::MechanismNotSupported`] on a token without ML-DSA.
    Native,
    /// Sealed by the token's AES key and signed on the host even where the token has ML-DSA (the
    /// wrapped path: e.g. a key that must be usable on a second, older token through a backup).
    Sealed,
}

impl MlDsaMode {
    /// Where a new ML-DSA key goes under this mode, given whether the token offers native ML-DSA;
    /// `None` when native is demanded and not offered.
    pub fn storage(self, token_has_ml_dsa: bool) -> Option<KeyStorage> {
        match (self, token_has_ml_dsa) {
            (MlDsaMode::Auto | MlDsaMode::Native, true) => Some(KeyStorage::Token),
            (MlDsaMode::Auto | MlDsaMode::Sealed, _) => Some(KeyStorage::SealedByToken),
            (MlDsaMode::Native, false) => None,
        }
    }
}

impl FromStr for MlDsaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(MlDsaMode::Auto),
            "native" => Ok(MlDsaMode::Native),
            "sealed" | "wrapped" => Ok(MlDsaMode::Sealed),
            _ => Err(format!(
                "unknown ML-DSA mode {s:?}; expected auto, native or sealed"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in KeyAlgorithm::ALL {
            assert_eq!(alg.name().parse::<KeyAlgorithm>().unwrap(), alg);
        }
        assert_eq!(
            "ML_DSA_65".parse::<KeyAlgorithm>().unwrap(),
            KeyAlgorithm::MlDsa65
        );
        assert!(
            "ed25519"
                .parse::<KeyAlgorithm>()
                .unwrap_err()
                .contains("ml-dsa-87")
        );
    }

    #[test]
    fn ml_dsa_mode_picks_native_only_where_the_token_has_it() {
        use KeyStorage::{SealedByToken, Token};
        assert_eq!(MlDsaMode::Auto.storage(true), Some(Token));
        assert_eq!(MlDsaMode::Auto.storage(false), Some(SealedByToken));
        assert_eq!(MlDsaMode::Native.storage(true), Some(Token));
        assert_eq!(MlDsaMode::Native.storage(false), None);
        assert_eq!(MlDsaMode::Sealed.storage(true), Some(SealedByToken));
        assert_eq!(MlDsaMode::Sealed.storage(false), Some(SealedByToken));
        assert_eq!(GenerateOptions::default().ml_dsa, MlDsaMode::Auto);
        assert_eq!("WRAPPED".parse::<MlDsaMode>().unwrap(), MlDsaMode::Sealed);
        assert!("hsm".parse::<MlDsaMode>().is_err());
    }

    #[test]
    fn default_schemes_match_their_key_algorithm() {
        for alg in KeyAlgorithm::ALL {
            match alg.default_scheme() {
                Some(scheme) => assert_eq!(scheme.key_algorithm(), alg),
                None => assert_eq!(alg, KeyAlgorithm::Aes256),
            }
        }
    }
}
