//! The development key store: keys in files, sealed under a key derived from a passphrase (Argon2id).
//!
//! NOT FOR PRODUCTION. There is no tamper resistance, the keys pass through ordinary process memory, and
//! anyone who copies the directory can attack the passphrase offline. It exists so that `qsi demo` and
//! developers without SoftHSM2 can run every code path; every log line it writes says so.
//!
//! Layout: `store.json` (KDF parameters, salt, a check value that detects a wrong passphrase) and
//! `keys/<id>.json` per key (label, algorithm, public key, the private key sealed with AES-256-GCM under
//! the passphrase key, the key's identity bound in as associated data).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, PqdsaKeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::der;
use crate::error::{Error, Result};
use crate::key::{GenerateOptions, KeyAlgorithm, KeyInfo, KeyStorage, MlDsaMode, SignatureScheme};
use crate::pin::Pin;
use crate::store::{Backend, KeyStore, StoreInfo, check_kek, check_label, check_scheme};

const NOT_FOR_PRODUCTION: &str =
    "file key store: NOT FOR PRODUCTION (development only; use a PKCS#11 HSM)";
const FORMAT: &str = "qsi-file-keystore-v1";
const CHECK_PLAINTEXT: &[u8] = b"qsi file key store passphrase check";

/// Argon2id parameters (RFC 9106 second recommendation, with 64 MiB of memory).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct KdfParams {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

const DEFAULT_KDF: KdfParams = KdfParams {
    m_cost_kib: 64 * 1024,
    t_cost: 3,
    p_cost: 1,
};

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: String,
    kdf: String,
    params: KdfParams,
    salt: String,
    check: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    label: String,
    id: String,
    algorithm: KeyAlgorithm,
    extractable: bool,
    public_spki: Option<String>,
    sealed: String,
}

/// A fresh private key (zeroizing) and its SPKI public key (none for AES).
type NewKeyMaterial = (Zeroizing<Vec<u8>>, Option<Vec<u8>>);

/// Keys in a directory, sealed under a passphrase. Development only.
pub struct FileStore {
    dir: PathBuf,
    key: LessSafeKey,
    rng: SystemRandom,
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .field("production", &false)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn derive(passphrase: &Pin, salt: &[u8], params: KdfParams) -> Result<LessSafeKey> {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| Error::Crypto(format!("Argon2id parameters: {e}")))?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.expose().as_bytes(), salt, &mut *out)
        .map_err(|e| Error::Crypto(format!("Argon2id: {e}")))?;
    let unbound = UnboundKey::new(&AES_256_GCM, &*out)
        .map_err(|_| Error::Crypto("AES-256-GCM key".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn seal_with(
    key: &LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::SecureRandom::fill(rng, &mut nonce)
        .map_err(|_| Error::Crypto("random nonce".into()))?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| Error::Crypto("AES-GCM seal".into()))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
    out.push(1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let rest = sealed.strip_prefix(&[1u8])?;
    let (nonce, ct) = rest.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

fn key_aad(label: &str, algorithm: KeyAlgorithm, id: &[u8]) -> Vec<u8> {
    format!(
        "qsi-file-key|{}|{}|{}",
        algorithm.name(),
        hex::encode(id),
        label
    )
    .into_bytes()
}

impl FileStore {
    /// Opens the store in `dir`, creating it (with a new salt) if it does not exist.
    pub fn open_or_create(dir: impl AsRef<Path>, passphrase: &Pin) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.join("store.json").exists() {
            Self::open(dir, passphrase)
        } else {
            Self::create(dir, passphrase)
        }
    }

    /// Creates a new store in `dir` (which may exist but must not hold a store).
    pub fn create(dir: impl AsRef<Path>, passphrase: &Pin) -> Result<Self> {
        Self::create_with(dir.as_ref(), passphrase, DEFAULT_KDF)
    }

    fn create_with(dir: &Path, passphrase: &Pin, params: KdfParams) -> Result<Self> {
        let meta = dir.join("store.json");
        if meta.exists() {
            return Err(Error::Io {
                path: meta,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a key store exists here already",
                ),
            });
        }
        std::fs::create_dir_all(dir.join("keys")).map_err(io(dir))?;
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::SecureRandom::fill(&rng, &mut salt)
            .map_err(|_| Error::Crypto("random salt".into()))?;
        let key = derive(passphrase, &salt, params)?;
        let check = seal_with(&key, &rng, b"check", CHECK_PLAINTEXT)?;
        let file = StoreFile {
            format: FORMAT.into(),
            kdf: "argon2id".into(),
            params,
            salt: B64.encode(salt),
            check: B64.encode(check),
        };
        let body = serde_json::to_vec_pretty(&file).map_err(|e| Error::Crypto(e.to_string()))?;
        std::fs::write(&meta, body).map_err(io(&meta))?;
        tracing::warn!(backend = "file", dir = %dir.display(), "{NOT_FOR_PRODUCTION}: created");
        Ok(FileStore {
            dir: dir.to_path_buf(),
            key,
            rng,
            write_lock: Mutex::new(()),
        })
    }

    /// Opens an existing store; [`Error::WrongPassphrase`] if the passphrase does not match.
    pub fn open(dir: impl AsRef<Path>, passphrase: &Pin) -> Result<Self> {
        let dir = dir.as_ref();
        let meta = dir.join("store.json");
        let raw = std::fs::read(&meta).map_err(io(&meta))?;
        let file: StoreFile = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            name: meta.display().to_string(),
            reason: e.to_string(),
        })?;
        if file.format != FORMAT || file.kdf != "argon2id" {
            return Err(Error::Corrupt {
                name: meta.display().to_string(),
                reason: format!("unknown format {}", file.format),
            });
        }
        let decode = |s: &str| {
            B64.decode(s).map_err(|e| Error::Corrupt {
                name: meta.display().to_string(),
                reason: e.to_string(),
            })
        };
        let salt = decode(&file.salt)?;
        let key = derive(passphrase, &salt, file.params)?;
        match open_with(&key, b"check", &decode(&file.check)?) {
            Some(p) if p.as_slice() == CHECK_PLAINTEXT => {}
            _ => {
                return Err(Error::WrongPassphrase {
                    path: dir.to_path_buf(),
                });
            }
        }
        tracing::warn!(backend = "file", dir = %dir.display(), "{NOT_FOR_PRODUCTION}: opened");
        Ok(FileStore {
            dir: dir.to_path_buf(),
            key,
            rng: SystemRandom::new(),
            write_lock: Mutex::new(()),
        })
    }

    fn token_name(&self) -> String {
        self.dir.display().to_string()
    }

    fn key_path(&self, id: &[u8]) -> PathBuf {
        self.dir
            .join("keys")
            .join(format!("{}.json", hex::encode(id)))
    }

    fn read_all(&self) -> Result<Vec<(KeyInfo, KeyFile)>> {
        let keys_dir = self.dir.join("keys");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&keys_dir).map_err(io(&keys_dir))? {
            let path = entry.map_err(io(&keys_dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let raw = std::fs::read(&path).map_err(io(&path))?;
            let kf: KeyFile = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
                name: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let id = hex::decode(&kf.id).map_err(|e| Error::Corrupt {
                name: path.display().to_string(),
                reason: e.to_string(),
            })?;
            out.push((
                KeyInfo {
                    label: kf.label.clone(),
                    id,
                    algorithm: kf.algorithm,
                    storage: KeyStorage::File,
                    token: self.token_name(),
                    extractable: kf.extractable,
                },
                kf,
            ));
        }
        out.sort_by(|a, b| a.0.label.cmp(&b.0.label));
        Ok(out)
    }

    fn load(&self, key: &KeyInfo) -> Result<KeyFile> {
        let path = self.key_path(&key.id);
        let raw = std::fs::read(&path).map_err(|_| Error::KeyNotFound {
            name: key.label.clone(),
            token: self.token_name(),
        })?;
        let kf: KeyFile = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if kf.label != key.label || kf.algorithm != key.algorithm {
            return Err(Error::KeyNotFound {
                name: key.label.clone(),
                token: self.token_name(),
            });
        }
        Ok(kf)
    }

    fn private(&self, key: &KeyInfo) -> Result<Zeroizing<Vec<u8>>> {
        let kf = self.load(key)?;
        let sealed = B64.decode(&kf.sealed).map_err(|e| Error::Corrupt {
            name: key.label.clone(),
            reason: e.to_string(),
        })?;
        open_with(
            &self.key,
            &key_aad(&key.label, key.algorithm, &key.id),
            &sealed,
        )
        .ok_or_else(|| Error::Corrupt {
            name: key.label.clone(),
            reason: "sealed private key does not open".into(),
        })
    }

    fn store_key(
        &self,
        info: &KeyInfo,
        private: &[u8],
        public_spki: Option<Vec<u8>>,
    ) -> Result<()> {
        let sealed = seal_with(
            &self.key,
            &self.rng,
            &key_aad(&info.label, info.algorithm, &info.id),
            private,
        )?;
        let kf = KeyFile {
            label: info.label.clone(),
            id: hex::encode(&info.id),
            algorithm: info.algorithm,
            extractable: info.extractable,
            public_spki: public_spki.map(|p| B64.encode(p)),
            sealed: B64.encode(sealed),
        };
        let path = self.key_path(&info.id);
        let body = serde_json::to_vec_pretty(&kf).map_err(|e| Error::Crypto(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn aes(&self, kek: &KeyInfo, operation: &'static str) -> Result<LessSafeKey> {
        check_kek(kek, operation)?;
        let raw = self.private(kek)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| Error::Corrupt {
            name: kek.label.clone(),
            reason: "not an AES-256 key".into(),
        })?;
        Ok(LessSafeKey::new(unbound))
    }

    fn new_key_material(&self, algorithm: KeyAlgorithm) -> Result<NewKeyMaterial> {
        let fail = |what: &str| Error::Crypto(format!("{algorithm} {what} failed"));
        Ok(match algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let alg = if algorithm == KeyAlgorithm::EcP256 {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(alg, &self.rng).map_err(|_| fail("generation"))?;
                let kp =
                    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).map_err(|_| fail("parse"))?;
                let spki = der::spki_ec(algorithm, kp.public_key().as_ref())
                    .ok_or_else(|| fail("SPKI"))?;
                (Zeroizing::new(pkcs8.as_ref().to_vec()), Some(spki))
            }
            KeyAlgorithm::Rsa3072 => {
                let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                    .map_err(|_| fail("generation"))?;
                let pkcs8 = kp.as_der().map_err(|_| fail("PKCS#8"))?;
                let spki = kp.public_key().as_der().map_err(|_| fail("SPKI"))?;
                (
                    Zeroizing::new(pkcs8.as_ref().to_vec()),
                    Some(spki.as_ref().to_vec()),
                )
            }
            KeyAlgorithm::Aes256 => {
                let mut raw = Zeroizing::new(vec![0u8; 32]);
                aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut raw)
                    .map_err(|_| fail("generation"))?;
                (raw, None)
            }
            KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87 => {
                let (pkcs8, public) =
                    crate::mldsa::generate(algorithm).ok_or_else(|| fail("generation"))?;
                (
                    pkcs8,
                    Some(der::spki_ml_dsa(algorithm, &public).ok_or_else(|| fail("SPKI"))?),
                )
            }
        })
    }

    fn insert(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        extractable: bool,
        private: &[u8],
        spki: Option<Vec<u8>>,
    ) -> Result<KeyInfo> {
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| Error::Crypto("file store lock poisoned".into()))?;
        if self.read_all()?.iter().any(|(k, _)| k.label == label) {
            return Err(Error::KeyExists {
                label: label.into(),
                token: self.token_name(),
            });
        }
        let mut id = vec![0u8; 16];
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut id)
            .map_err(|_| Error::Crypto("random id".into()))?;
        let info = KeyInfo {
            label: label.into(),
            id,
            algorithm,
            storage: KeyStorage::File,
            token: self.token_name(),
            extractable,
        };
        self.store_key(&info, private, spki)?;
        tracing::warn!(backend = "file", label, algorithm = %algorithm, "{NOT_FOR_PRODUCTION}: stored key");
        Ok(info)
    }
}

impl KeyStore for FileStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            backend: Backend::File,
            token: self.token_name(),
            description: NOT_FOR_PRODUCTION.into(),
            serial: String::new(),
            production: false,
            ml_dsa: KeyStorage::File,
        }
    }

    fn generate_with(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        options: GenerateOptions,
    ) -> Result<KeyInfo> {
        check_label(label)?;
        if options.extractable && algorithm != KeyAlgorithm::Aes256 {
            return Err(Error::NotPermitted {
                key: label.into(),
                operation: "generate as extractable",
                reason: "only AES keys can be wrapped out of a store".into(),
            });
        }
        if algorithm.is_ml_dsa() && options.ml_dsa == MlDsaMode::Native {
            return Err(Error::NotPermitted {
                key: label.into(),
                operation: "generate on a token's native ML-DSA",
                reason: "the file store has no token; use a PKCS#11 token with CKM_ML_DSA".into(),
            });
        }
        let (private, spki) = self.new_key_material(algorithm)?;
        self.insert(label, algorithm, options.extractable, &private, spki)
    }

    fn find(&self, name: &str) -> Result<KeyInfo> {
        let uri = if name.starts_with("pkcs11:") {
            Some(crate::uri::Pkcs11Uri::parse(name)?)
        } else {
            None
        };
        let hits: Vec<KeyInfo> = self
            .read_all()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| match &uri {
                None => k.label == name,
                Some(u) => {
                    u.object.as_ref().is_none_or(|o| o == &k.label)
                        && u.id.as_ref().is_none_or(|i| i == &k.id)
                }
            })
            .collect();
        match hits.len() {
            0 => Err(Error::KeyNotFound {
                name: name.into(),
                token: self.token_name(),
            }),
            1 => hits.into_iter().next().ok_or_else(|| Error::KeyNotFound {
                name: name.into(),
                token: self.token_name(),
            }),
            n => Err(Error::AmbiguousKey {
                name: name.into(),
                token: self.token_name(),
                count: n,
            }),
        }
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        Ok(self.read_all()?.into_iter().map(|(k, _)| k).collect())
    }

    fn public_key_spki(&self, key: &KeyInfo) -> Result<Vec<u8>> {
        let kf = self.load(key)?;
        let spki = kf.public_spki.ok_or_else(|| Error::NotPermitted {
            key: key.label.clone(),
            operation: "export a public key",
            reason: "an AES key has no public half".into(),
        })?;
        B64.decode(spki).map_err(|e| Error::Corrupt {
            name: key.label.clone(),
            reason: e.to_string(),
        })
    }

    fn sign_with(&self, key: &KeyInfo, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        check_scheme(key, scheme)?;
        let private = self.private(key)?;
        let bad = || Error::Corrupt {
            name: key.label.clone(),
            reason: "private key does not parse".into(),
        };
        let failed = || Error::Crypto(format!("{scheme:?} signing failed"));
        match scheme {
            SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => {
                let alg = if scheme == SignatureScheme::EcdsaP256Sha256 {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let kp = EcdsaKeyPair::from_pkcs8(alg, &private).map_err(|_| bad())?;
                Ok(kp
                    .sign(&self.rng, message)
                    .map_err(|_| failed())?
                    .as_ref()
                    .to_vec())
            }
            SignatureScheme::MlDsa65 | SignatureScheme::MlDsa87 => {
                let alg = if scheme == SignatureScheme::MlDsa65 {
                    &signature::ML_DSA_65_SIGNING
                } else {
                    &signature::ML_DSA_87_SIGNING
                };
                let kp = PqdsaKeyPair::from_pkcs8(alg, &private).map_err(|_| bad())?;
                let mut sig = vec![0u8; alg.signature_len()];
                let n = kp.sign(message, &mut sig).map_err(|_| failed())?;
                sig.truncate(n);
                Ok(sig)
            }
            rsa => {
                let encoding: &'static dyn signature::RsaEncoding = match rsa {
                    SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
                    SignatureScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                    SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                    SignatureScheme::RsaPssSha384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let kp = RsaKeyPair::from_pkcs8(&private).map_err(|_| bad())?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(encoding, &self.rng, message, &mut sig)
                    .map_err(|_| failed())?;
                Ok(sig)
            }
        }
    }

    fn encrypt(&self, kek: &KeyInfo, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let key = self.aes(kek, "encrypt")?;
        seal_with(&key, &self.rng, aad, plaintext)
    }

    fn decrypt(&self, kek: &KeyInfo, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let key = self.aes(kek, "decrypt")?;
        open_with(&key, aad, sealed).ok_or_else(|| Error::DecryptFailed {
            key: kek.label.clone(),
        })
    }

    fn wrap_key(&self, kek: &KeyInfo, key: &KeyInfo) -> Result<Vec<u8>> {
        use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
        if kek.algorithm != KeyAlgorithm::Aes256 || key.algorithm != KeyAlgorithm::Aes256 {
            return Err(Error::NotPermitted {
                key: key.label.clone(),
                operation: "wrap",
                reason: "only AES keys, under an AES key".into(),
            });
        }
        if !key.extractable {
            return Err(Error::NotPermitted {
                key: key.label.clone(),
                operation: "wrap",
                reason: "the key is not extractable: it can never leave the store".into(),
            });
        }
        let kek_raw = self.private(kek)?;
        let target = self.private(key)?;
        let wrapper =
            AesKek::new(&AES_256, &kek_raw).map_err(|_| Error::Crypto("AES KEK".into()))?;
        let mut out = vec![0u8; target.len() + 16];
        let n = wrapper
            .wrap_with_padding(&target, &mut out)
            .map_err(|_| Error::Crypto("AES key wrap".into()))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    fn unwrap_key(
        &self,
        kek: &KeyInfo,
        wrapped: &[u8],
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo> {
        use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
        check_label(label)?;
        if kek.algorithm != KeyAlgorithm::Aes256 || algorithm != KeyAlgorithm::Aes256 {
            return Err(Error::NotPermitted {
                key: label.into(),
                operation: "unwrap",
                reason: "only AES keys, under an AES key".into(),
            });
        }
        let kek_raw = self.private(kek)?;
        let wrapper =
            AesKek::new(&AES_256, &kek_raw).map_err(|_| Error::Crypto("AES KEK".into()))?;
        let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
        let n = wrapper
            .unwrap_with_padding(wrapped, &mut out)
            .map_err(|_| Error::DecryptFailed {
                key: kek.label.clone(),
            })?
            .len();
        out.truncate(n);
        if out.len() != 32 {
            return Err(Error::DecryptFailed {
                key: kek.label.clone(),
            });
        }
        self.insert(label, algorithm, false, &out, None)
    }

    fn random(&self, out: &mut [u8]) -> Result<()> {
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, out)
            .map_err(|_| Error::Crypto("random".into()))
    }

    fn delete(&self, key: &KeyInfo) -> Result<()> {
        self.load(key)?;
        let path = self.key_path(&key.id);
        std::fs::remove_file(&path).map_err(io(&path))?;
        tracing::warn!(backend = "file", label = %key.label, "{NOT_FOR_PRODUCTION}: deleted key");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn wrong_passphrase_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        FileStore::create_with(dir.path(), &Pin::new("right"), FAST).unwrap();
        assert!(matches!(
            FileStore::open(dir.path(), &Pin::new("wrong")),
            Err(Error::WrongPassphrase { .. })
        ));
        FileStore::open(dir.path(), &Pin::new("right")).unwrap();
    }

    #[test]
    fn every_algorithm_signs_and_verifies_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::create_with(dir.path(), &Pin::new("pw"), FAST).unwrap();
        for alg in KeyAlgorithm::ALL.into_iter().filter(|a| a.is_signing()) {
            let key = store.generate(&format!("k-{alg}"), alg).unwrap();
            let spki = store.public_key_spki(&key).unwrap();
            let sig = store.sign(&key, b"msg").unwrap();
            crate::verify_signature(&spki, alg.default_scheme().unwrap(), b"msg", &sig).unwrap();
            assert!(
                crate::verify_signature(&spki, alg.default_scheme().unwrap(), b"other", &sig)
                    .is_err()
            );
        }
        drop(store);
        let store = FileStore::open(dir.path(), &Pin::new("pw")).unwrap();
        let key = store.find("k-ml-dsa-65").unwrap();
        let sig = store.sign(&key, b"after reopen").unwrap();
        crate::verify_signature(
            &store.public_key_spki(&key).unwrap(),
            SignatureScheme::MlDsa65,
            b"after reopen",
            &sig,
        )
        .unwrap();
        // Key material is not in the files in clear: the public key is, the sealed blob is not PKCS#8.
        let raw = std::fs::read_to_string(store.key_path(&key.id)).unwrap();
        assert!(raw.contains("\"sealed\""));
    }

    #[test]
    fn aes_encrypt_wrap_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::create_with(dir.path(), &Pin::new("pw"), FAST).unwrap();
        let kek = store.generate("kek", KeyAlgorithm::Aes256).unwrap();
        let sealed = store.encrypt(&kek, b"aad", b"secret").unwrap();
        assert_eq!(
            &store.decrypt(&kek, b"aad", &sealed).unwrap()[..],
            b"secret"
        );
        assert!(matches!(
            store.decrypt(&kek, b"other", &sealed),
            Err(Error::DecryptFailed { .. })
        ));
        let movable = store
            .generate_with(
                "movable",
                KeyAlgorithm::Aes256,
                GenerateOptions {
                    extractable: true,
                    ..GenerateOptions::default()
                },
            )
            .unwrap();
        let wrapped = store.wrap_key(&kek, &movable).unwrap();
        let copy = store
            .unwrap_key(&kek, &wrapped, "copy", KeyAlgorithm::Aes256)
            .unwrap();
        let c = store.encrypt(&movable, b"", b"x").unwrap();
        assert_eq!(&store.decrypt(&copy, b"", &c).unwrap()[..], b"x");
        assert!(matches!(
            store.wrap_key(&kek, &kek),
            Err(Error::NotPermitted { .. })
        ));
    }
}
