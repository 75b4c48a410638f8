//! Signature verification for certificates, CRLs and OCSP responses.
//!
//! aws-lc-rs verifies RSA (PKCS #1 v1.5 and PSS), ECDSA, Ed25519 and ML-DSA-44/65/87 (RFC 9881); the
//! RustCrypto `dsa` crate verifies DSA, which aws-lc-rs lacks and PKITS still uses (section 4.1.4-6),
//! including DSA parameters inherited from the issuer's key (RFC 5280 6.1.4 f).

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, ObjectIdentifier as Oid};
use der::{Decode, Encode, Sequence};
use dsa::signature::hazmat::PrehashVerifier;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// Signature algorithm OIDs we accept.
mod alg {
    use const_oid::ObjectIdentifier as O;
    pub const RSA: O = O::new_unwrap("1.2.840.113549.1.1.1");
    pub const RSA_SHA1: O = O::new_unwrap("1.2.840.113549.1.1.5");
    pub const RSA_SHA256: O = O::new_unwrap("1.2.840.113549.1.1.11");
    pub const RSA_SHA384: O = O::new_unwrap("1.2.840.113549.1.1.12");
    pub const RSA_SHA512: O = O::new_unwrap("1.2.840.113549.1.1.13");
    pub const RSA_PSS: O = O::new_unwrap("1.2.840.113549.1.1.10");
    pub const ECDSA_SHA256: O = O::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: O = O::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_SHA512: O = O::new_unwrap("1.2.840.10045.4.3.4");
    pub const EC_PUBLIC_KEY: O = O::new_unwrap("1.2.840.10045.2.1");
    pub const P256: O = O::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: O = O::new_unwrap("1.3.132.0.34");
    pub const P521: O = O::new_unwrap("1.3.132.0.35");
    pub const ED25519: O = O::new_unwrap("1.3.101.112");
    pub const DSA: O = O::new_unwrap("1.2.840.10040.4.1");
    pub const DSA_SHA1: O = O::new_unwrap("1.2.840.10040.4.3");
    pub const DSA_SHA256: O = O::new_unwrap("2.16.840.1.101.3.4.3.2");
    pub const ML_DSA_44: O = O::new_unwrap("2.16.840.1.101.3.4.3.17");
    pub const ML_DSA_65: O = O::new_unwrap("2.16.840.1.101.3.4.3.18");
    pub const ML_DSA_87: O = O::new_unwrap("2.16.840.1.101.3.4.3.19");
    pub const SHA1: O = O::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: O = O::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: O = O::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: O = O::new_unwrap("2.16.840.1.101.3.4.2.3");
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The signature algorithm is not one we support.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(ObjectIdentifier),
    /// The key's algorithm does not fit the signature algorithm.
    #[error("signature algorithm {sig} cannot be used with a {key} key")]
    KeyMismatch {
        /// Signature algorithm.
        sig: ObjectIdentifier,
        /// Key algorithm.
        key: ObjectIdentifier,
    },
    /// Parameters of the algorithm or key are malformed or unsupported.
    #[error("bad algorithm parameters: {0}")]
    BadParameters(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
}

#[derive(Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mgf: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_len: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer: Option<u32>,
}

fn pss_algorithm(params: Option<&Any>) -> Result<&'static sig::RsaParameters, SigError> {
    let bad = |m: &str| SigError::BadParameters(m.to_string());
    let p = params.ok_or_else(|| bad("RSASSA-PSS without parameters"))?;
    let p: PssParams = p
        .decode_as()
        .map_err(|e: der::Error| SigError::BadParameters(e.to_string()))?;
    let hash = p.hash.map(|h| h.oid).unwrap_or(alg::SHA1);
    let mgf_hash = match p.mgf {
        Some(m) => {
            let inner = m.parameters.ok_or_else(|| bad("MGF1 without hash"))?;
            AlgorithmIdentifierOwned::from_der(&inner.to_der().map_err(|e| bad(&e.to_string()))?)
                .map_err(|e| bad(&e.to_string()))?
                .oid
        }
        None => alg::SHA1,
    };
    if mgf_hash != hash || p.trailer.unwrap_or(1) != 1 {
        return Err(bad("PSS with MGF1 hash differing from the message hash"));
    }
    let salt = p.salt_len.unwrap_or(20);
    match (hash, salt) {
        (alg::SHA256, 32) => Ok(&sig::RSA_PSS_2048_8192_SHA256),
        (alg::SHA384, 48) => Ok(&sig::RSA_PSS_2048_8192_SHA384),
        (alg::SHA512, 64) => Ok(&sig::RSA_PSS_2048_8192_SHA512),
        _ => Err(bad(
            "PSS hash/salt combination not supported (need SHA-2 with salt = hash length)",
        )),
    }
}

fn ec_curve(spki: &SubjectPublicKeyInfoOwned) -> Result<ObjectIdentifier, SigError> {
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or_else(|| SigError::BadParameters("EC key without curve".into()))?;
    params
        .decode_as::<Oid>()
        .map_err(|e| SigError::BadParameters(e.to_string()))
}

/// Verifies `signature` over `msg` made with `algorithm` by the key in `spki`. `inherited` carries DSA
/// domain parameters from the issuer when the key itself has none.
pub fn verify(
    algorithm: &AlgorithmIdentifierOwned,
    signature: &[u8],
    msg: &[u8],
    spki: &SubjectPublicKeyInfoOwned,
    inherited: Option<&Any>,
) -> Result<(), SigError> {
    let key_alg = spki.algorithm.oid;
    let key = spki.subject_public_key.raw_bytes();
    let mismatch = || SigError::KeyMismatch {
        sig: algorithm.oid,
        key: key_alg,
    };
    let verify_with = |a: &'static dyn VerificationAlgorithm| {
        UnparsedPublicKey::new(a, key)
            .verify(msg, signature)
            .map_err(|_| SigError::Invalid)
    };
    match algorithm.oid {
        alg::RSA_SHA1 | alg::RSA_SHA256 | alg::RSA_SHA384 | alg::RSA_SHA512 => {
            if key_alg != alg::RSA {
                return Err(mismatch());
            }
            let a: &'static sig::RsaParameters = match algorithm.oid {
                // RSA keys below 2048 bits are refused (NIST SP 800-131A); SHA-1 only for old CAs.
                alg::RSA_SHA1 => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                alg::RSA_SHA256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                alg::RSA_SHA384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                _ => &sig::RSA_PKCS1_2048_8192_SHA512,
            };
            verify_with(a)
        }
        alg::RSA_PSS => {
            if key_alg != alg::RSA && key_alg != alg::RSA_PSS {
                return Err(mismatch());
            }
            verify_with(pss_algorithm(algorithm.parameters.as_ref())?)
        }
        alg::ECDSA_SHA256 | alg::ECDSA_SHA384 | alg::ECDSA_SHA512 => {
            if key_alg != alg::EC_PUBLIC_KEY {
                return Err(mismatch());
            }
            let a: &'static sig::EcdsaVerificationAlgorithm = match (ec_curve(spki)?, algorithm.oid)
            {
                (alg::P256, alg::ECDSA_SHA256) => &sig::ECDSA_P256_SHA256_ASN1,
                (alg::P256, alg::ECDSA_SHA384) => &sig::ECDSA_P256_SHA384_ASN1,
                (alg::P384, alg::ECDSA_SHA256) => &sig::ECDSA_P384_SHA256_ASN1,
                (alg::P384, alg::ECDSA_SHA384) => &sig::ECDSA_P384_SHA384_ASN1,
                (alg::P521, alg::ECDSA_SHA512) => &sig::ECDSA_P521_SHA512_ASN1,
                (alg::P521, alg::ECDSA_SHA384) => &sig::ECDSA_P521_SHA384_ASN1,
                (alg::P521, alg::ECDSA_SHA256) => &sig::ECDSA_P521_SHA256_ASN1,
                (curve, _) => {
                    return Err(SigError::BadParameters(format!(
                        "curve {curve} with {}",
                        algorithm.oid
                    )));
                }
            };
            verify_with(a)
        }
        alg::ED25519 => {
            if key_alg != alg::ED25519 {
                return Err(mismatch());
            }
            verify_with(&sig::ED25519)
        }
        alg::ML_DSA_44 | alg::ML_DSA_65 | alg::ML_DSA_87 => {
            if key_alg != algorithm.oid {
                return Err(mismatch());
            }
            if algorithm.parameters.is_some() {
                // RFC 9881: parameters MUST be absent.
                return Err(SigError::BadParameters("ML-DSA with parameters".into()));
            }
            let a: &'static sig::PqdsaVerificationAlgorithm = match algorithm.oid {
                alg::ML_DSA_44 => &sig::ML_DSA_44,
                alg::ML_DSA_65 => &sig::ML_DSA_65,
                _ => &sig::ML_DSA_87,
            };
            verify_with(a)
        }
        alg::DSA_SHA1 | alg::DSA_SHA256 => {
            if key_alg != alg::DSA {
                return Err(mismatch());
            }
            verify_dsa(algorithm.oid, signature, msg, spki, inherited)
        }
        other => Err(SigError::UnsupportedAlgorithm(other)),
    }
}

fn verify_dsa(
    algorithm: ObjectIdentifier,
    signature: &[u8],
    msg: &[u8],
    spki: &SubjectPublicKeyInfoOwned,
    inherited: Option<&Any>,
) -> Result<(), SigError> {
    use dsa::pkcs8::DecodePublicKey;
    let mut key = spki.clone();
    if key.algorithm.parameters.as_ref().is_none_or(Any::is_null) {
        key.algorithm.parameters = Some(inherited.cloned().ok_or_else(|| {
            SigError::BadParameters("DSA key without parameters to inherit".into())
        })?);
    }
    let der = key
        .to_der()
        .map_err(|e| SigError::BadParameters(e.to_string()))?;
    let vk = dsa::VerifyingKey::from_public_key_der(&der)
        .map_err(|e| SigError::BadParameters(format!("DSA key: {e}")))?;
    let s = dsa::Signature::from_der(signature).map_err(|_| SigError::Invalid)?;
    let digest = if algorithm == alg::DSA_SHA1 {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, msg)
    } else {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg)
    };
    vk.verify_prehash(digest.as_ref(), &s)
        .map_err(|_| SigError::Invalid)
}

/// DSA domain parameters of a key, for inheritance by a subordinate DSA key without them.
pub fn dsa_parameters(spki: &SubjectPublicKeyInfoOwned) -> Option<Any> {
    if spki.algorithm.oid == alg::DSA {
        spki.algorithm.parameters.clone().filter(|p| !p.is_null())
    } else {
        None
    }
}

/// True when the key is a DSA key without domain parameters (they come from the issuer).
pub fn dsa_without_parameters(spki: &SubjectPublicKeyInfoOwned) -> bool {
    spki.algorithm.oid == alg::DSA && spki.algorithm.parameters.as_ref().is_none_or(Any::is_null)
}
