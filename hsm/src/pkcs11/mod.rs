//! The PKCS#11 backend: any module (SoftHSM2 in tests, a vendor HSM in production) through cryptoki.

mod faults;
mod module;
mod pool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, KeyType, MlDsaParameterSetType, ObjectClass, ObjectHandle,
    ParameterSetType,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

pub use faults::PinRetryLimit;
pub use module::{
    SOFTHSM2_MODULE_PATHS, TokenSelector, TokenSummary, default_module_path, find_slot, init_token,
    list_tokens, shared_context,
};

use crate::der;
use crate::error::{Error, PinFlags, Result};
use crate::key::{GenerateOptions, KeyAlgorithm, KeyInfo, KeyStorage, MlDsaMode, SignatureScheme};
use crate::mldsa::{self, SealedKey};
use crate::pin::Pin;
use crate::store::{Backend, KeyStore, StoreInfo, check_kek, check_label, check_scheme};
use crate::uri::Pkcs11Uri;

/// Label of the AES key that seals ML-DSA private keys on tokens without ML-DSA.
pub const ML_DSA_SEALING_KEY_LABEL: &str = "qsi-ml-dsa-sealing-key";

/// Sealed blobs start with a version byte.
const SEALED_V1: u8 = 1;
const GCM_NONCE: usize = 12;
const GCM_TAG: usize = 16;

/// How to reach a token.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Pin,
    /// Most sessions open at once (threads beyond this wait). Default 8.
    pub max_sessions: usize,
}

impl Pkcs11Config {
    /// A configuration with the default session bound.
    pub fn new(module: impl Into<PathBuf>, token: TokenSelector, pin: Pin) -> Self {
        Pkcs11Config {
            module: module.into(),
            token,
            pin,
            max_sessions: 8,
        }
    }
}

/// Cache key of an object handle: (class, id, label).
type HandleKey = (u64, Vec<u8>, String);

/// Keys on a PKCS#11 token. Cheap to share: put it in an `Arc` and use it from many threads.
pub struct Pkcs11Store {
    ctx: Pkcs11,
    module: PathBuf,
    slot: Slot,
    token: String,
    serial: String,
    description: String,
    pin: Pin,
    pool: pool::Pool,
    mechanisms: Vec<MechanismType>,
    handles: Mutex<HashMap<HandleKey, ObjectHandle>>,
    sealing_key: Mutex<Option<KeyInfo>>,
    faults: Option<Arc<PinRetryLimit>>,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("serial", &self.serial)
            .field("max_sessions", &self.pool.max())
            .finish_non_exhaustive()
    }
}

fn class_code(class: ObjectClass) -> u64 {
    if class == ObjectClass::PRIVATE_KEY {
        3
    } else if class == ObjectClass::SECRET_KEY {
        4
    } else if class == ObjectClass::PUBLIC_KEY {
        2
    } else {
        0
    }
}

impl Pkcs11Store {
    /// Loads the module, finds the token, logs in, and keeps the first session in the pool.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        Self::open_inner(config, None)
    }

    /// Like [`Pkcs11Store::open`], with a [`PinRetryLimit`] fault injector between this store and the real
    /// module (tests and drills of the PIN-lockout path; SoftHSM2 never locks by itself).
    pub fn open_with_fault_injector(
        config: Pkcs11Config,
        limit: Arc<PinRetryLimit>,
    ) -> Result<Self> {
        Self::open_inner(config, Some(limit))
    }

    fn open_inner(config: Pkcs11Config, faults: Option<Arc<PinRetryLimit>>) -> Result<Self> {
        let ctx = shared_context(&config.module)?;
        let (slot, info) = module::find_token(&ctx, &config.module, &config.token)?;
        let mechanisms = ctx.get_mechanism_list(slot).map_err(|e| Error::Pkcs11 {
            token: info.label().to_string(),
            function: "C_GetMechanismList".into(),
            detail: e.to_string(),
        })?;
        let store = Pkcs11Store {
            ctx,
            module: config.module,
            slot,
            token: info.label().to_string(),
            serial: info.serial_number().to_string(),
            description: format!("{} {}", info.manufacturer_id(), info.model()),
            pin: config.pin,
            pool: pool::Pool::new(config.max_sessions),
            mechanisms,
            handles: Mutex::new(HashMap::new()),
            sealing_key: Mutex::new(None),
            faults,
        };
        // Open (and log in) the first session now, so a wrong PIN shows at open, not at first use.
        drop(store.session()?);
        tracing::info!(token = %store.token, serial = %store.serial, module = %store.module.display(), "opened PKCS#11 token");
        Ok(store)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    /// The module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// Sessions this store has open now (at most `max_sessions`), for metrics and tests.
    pub fn sessions_open(&self) -> usize {
        self.pool.open_count()
    }

    /// Names of the mechanisms the token offers (`CKM_...`).
    pub fn mechanisms(&self) -> Vec<String> {
        self.mechanisms.iter().map(|m| m.to_string()).collect()
    }

    /// Whether the token offers a mechanism.
    pub fn supports(&self, mechanism: MechanismType) -> bool {
        self.mechanisms.contains(&mechanism)
    }

    /// The token's PIN flags now (with the fault injector's, if any).
    pub fn pin_flags(&self) -> Result<PinFlags> {
        let info = self
            .ctx
            .get_token_info(self.slot)
            .map_err(|e| self.p11("C_GetTokenInfo", e))?;
        let real = module::pin_flags(&info);
        Ok(match &self.faults {
            Some(f) => f.merge(real),
            None => real,
        })
    }

    /// Whether the token implements PKCS#11 3.2 ML-DSA itself (`CKM_ML_DSA_KEY_PAIR_GEN` and `CKM_ML_DSA`
    /// in its mechanism list). Where it does, new ML-DSA keys are token key pairs signed by the token;
    /// elsewhere they are sealed by the token's AES key and signed on the host (see the crate docs).
    pub fn native_ml_dsa(&self) -> bool {
        offers_native_ml_dsa(&self.mechanisms)
    }

    fn p11(&self, function: &str, e: cryptoki::error::Error) -> Error {
        match e {
            cryptoki::error::Error::Pkcs11(RvError::MechanismInvalid, _) => {
                Error::MechanismNotSupported {
                    mechanism: function.to_string(),
                    token: self.token.clone(),
                }
            }
            other => Error::Pkcs11 {
                token: self.token.clone(),
                function: function.to_string(),
                detail: other.to_string(),
            },
        }
    }

    fn require(&self, mechanism: MechanismType) -> Result<()> {
        if self.supports(mechanism) {
            Ok(())
        } else {
            Err(Error::MechanismNotSupported {
                mechanism: mechanism.to_string(),
                token: self.token.clone(),
            })
        }
    }

    fn session(&self) -> Result<pool::Pooled<'_>> {
        self.pool.get(|| {
            let session = self
                .ctx
                .open_rw_session(self.slot)
                .map_err(|e| self.p11("C_OpenSession", e))?;
            let state = session
                .get_session_info()
                .map_err(|e| self.p11("C_GetSessionInfo", e))?
                .session_state();
            if !matches!(state, SessionState::RwUser | SessionState::RoUser) {
                self.login(&session)?;
            }
            Ok(session)
        })
    }

    fn login(&self, session: &Session) -> Result<()> {
        if let Some(f) = &self.faults {
            if f.locked() {
                return Err(Error::PinLocked {
                    token: self.token.clone(),
                    flags: self.pin_flags()?,
                });
            }
        }
        let pin = AuthPin::from(self.pin.expose());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                if let Some(f) = &self.faults {
                    f.record_success();
                }
                Ok(())
            }
            Err(cryptoki::error::Error::Pkcs11(RvError::PinIncorrect, _)) => {
                if let Some(f) = &self.faults {
                    f.record_failure();
                }
                let flags = self.pin_flags()?;
                tracing::warn!(token = %self.token, count_low = flags.count_low, final_try = flags.final_try, locked = flags.locked, "wrong PIN");
                if flags.locked {
                    Err(Error::PinLocked {
                        token: self.token.clone(),
                        flags,
                    })
                } else {
                    Err(Error::WrongPin {
                        token: self.token.clone(),
                        flags,
                    })
                }
            }
            Err(cryptoki::error::Error::Pkcs11(RvError::PinLocked, _)) => Err(Error::PinLocked {
                token: self.token.clone(),
                flags: self.pin_flags()?,
            }),
            Err(e) => Err(self.p11("C_Login", e)),
        }
    }

    /// Runs `op` on a pooled session; a session whose handle went bad is closed and the op retried once.
    fn with_session<T>(&self, mut op: impl FnMut(&Session) -> Result<T>) -> Result<T> {
        let mut pooled = self.session()?;
        match op(pooled.session()) {
            Err(Error::Pkcs11 { detail, .. })
                if detail.contains("session") && detail.contains("handle") =>
            {
                pooled.discard();
                drop(pooled);
                let pooled = self.session()?;
                op(pooled.session())
            }
            other => other,
        }
    }

    fn key_not_found(&self, name: &str) -> Error {
        Error::KeyNotFound {
            name: name.to_string(),
            token: self.token.clone(),
        }
    }

    /// The handle of one object of `class` with the key's id (or its label when the id is empty).
    fn handle(&self, session: &Session, key: &KeyInfo, class: ObjectClass) -> Result<ObjectHandle> {
        let cache_key = (class_code(class), key.id.clone(), key.label.clone());
        if let Ok(map) = self.handles.lock() {
            if let Some(h) = map.get(&cache_key) {
                return Ok(*h);
            }
        }
        let mut template = vec![Attribute::Class(class)];
        if key.id.is_empty() {
            template.push(Attribute::Label(key.label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(key.id.clone()));
        }
        if class == ObjectClass::DATA {
            template = vec![
                Attribute::Class(class),
                Attribute::Application(mldsa::APPLICATION.to_vec()),
                Attribute::Label(key.label.as_bytes().to_vec()),
            ];
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| self.p11("C_FindObjects", e))?;
        let handle = match found.as_slice() {
            [] => return Err(self.key_not_found(&key.uri())),
            [h] => *h,
            many => {
                return Err(Error::AmbiguousKey {
                    name: key.uri(),
                    token: self.token.clone(),
                    count: many.len(),
                });
            }
        };
        if let Ok(mut map) = self.handles.lock() {
            map.insert(cache_key, handle);
        }
        Ok(handle)
    }

    fn forget_handles(&self, key: &KeyInfo) {
        if let Ok(mut map) = self.handles.lock() {
            map.retain(|(_, id, label), _| !(id == &key.id && label == &key.label));
        }
    }

    fn new_id(&self, session: &Session) -> Result<Vec<u8>> {
        session
            .generate_random_vec(16)
            .map_err(|e| self.p11("C_GenerateRandom", e))
    }

    fn info_for(
        &self,
        label: &str,
        id: Vec<u8>,
        algorithm: KeyAlgorithm,
        storage: KeyStorage,
        extractable: bool,
    ) -> KeyInfo {
        KeyInfo {
            label: label.to_string(),
            id,
            algorithm,
            storage,
            token: self.token.clone(),
            extractable,
        }
    }

    /// Reads the attributes that describe a key object; `None` for key types this crate does not use.
    fn describe(
        &self,
        session: &Session,
        handle: ObjectHandle,
        class: ObjectClass,
    ) -> Result<Option<KeyInfo>> {
        if class == ObjectClass::DATA {
            let attrs = session
                .get_attributes(handle, &[AttributeType::Label, AttributeType::Value])
                .map_err(|e| self.p11("C_GetAttributeValue", e))?;
            let mut label = String::new();
            let mut value = Vec::new();
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Value(v) => value = v,
                    _ => {}
                }
            }
            let sealed = SealedKey::decode(&value).ok_or_else(|| Error::Corrupt {
                name: label.clone(),
                reason: "not a sealed ML-DSA key".into(),
            })?;
            return Ok(Some(self.info_for(
                &label,
                sealed.id,
                sealed.algorithm,
                KeyStorage::SealedByToken,
                false,
            )));
        }
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Modulus,
                    AttributeType::ValueLen,
                    AttributeType::Extractable,
                ],
            )
            .map_err(|e| self.p11("C_GetAttributeValue", e))?;
        let (
            mut label,
            mut id,
            mut key_type,
            mut ec_params,
            mut modulus_len,
            mut value_len,
            mut extractable,
        ) = (String::new(), Vec::new(), None, None, 0usize, 0usize, false);
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(i) => id = i,
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(p) => ec_params = Some(p),
                Attribute::Modulus(m) => modulus_len = m.len(),
                Attribute::ValueLen(v) => value_len = usize::from(v),
                Attribute::Extractable(x) => extractable = x,
                _ => {}
            }
        }
        let algorithm = match key_type {
            Some(t) if t == KeyType::ML_DSA => self.ml_dsa_parameter_set(session, handle)?,
            Some(t) if t == KeyType::EC => ec_params.as_deref().and_then(der::curve_from_ec_params),
            Some(t) if t == KeyType::RSA && modulus_len == 384 => Some(KeyAlgorithm::Rsa3072),
            Some(t) if t == KeyType::AES && value_len == 32 => Some(KeyAlgorithm::Aes256),
            _ => None,
        };
        Ok(algorithm.map(|alg| self.info_for(&label, id, alg, KeyStorage::Token, extractable)))
    }

    /// The algorithm of a native ML-DSA key from its `CKA_PARAMETER_SET`; `None` for ML-DSA-44, which
    /// this crate does not use.
    fn ml_dsa_parameter_set(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<Option<KeyAlgorithm>> {
        let attrs = session
            .get_attributes(handle, &[AttributeType::ParameterSet])
            .map_err(|e| self.p11("C_GetAttributeValue(CKA_PARAMETER_SET)", e))?;
        Ok(attrs.into_iter().find_map(|a| match a {
            Attribute::ParameterSet(p) => ml_dsa_algorithm(p),
            _ => None,
        }))
    }

    fn all_keys(&self, session: &Session) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            for h in session
                .find_objects(&[Attribute::Class(class)])
                .map_err(|e| self.p11("C_FindObjects", e))?
            {
                if let Some(k) = self.describe(session, h, class)? {
                    out.push(k);
                }
            }
        }
        let data = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(mldsa::APPLICATION.to_vec()),
            ])
            .map_err(|e| self.p11("C_FindObjects", e))?;
        for h in data {
            if let Some(k) = self.describe(session, h, ObjectClass::DATA)? {
                out.push(k);
            }
        }
        Ok(out)
    }

    fn gcm_encrypt(
        &self,
        session: &Session,
        kek: ObjectHandle,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut nonce = session
            .generate_random_vec(GCM_NONCE as u32)
            .map_err(|e| self.p11("C_GenerateRandom", e))?;
        let params = GcmParams::new(&mut nonce, aad, (GCM_TAG as u64 * 8).into())
            .map_err(|e| self.p11("CK_GCM_PARAMS", e))?;
        let ct = session
            .encrypt(&Mechanism::AesGcm(params), kek, plaintext)
            .map_err(|e| self.p11("C_Encrypt(CKM_AES_GCM)", e))?;
        Ok((nonce, ct))
    }

    fn gcm_decrypt(
        &self,
        session: &Session,
        kek: ObjectHandle,
        label: &str,
        nonce: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut nonce = nonce.to_vec();
        let params = GcmParams::new(&mut nonce, aad, (GCM_TAG as u64 * 8).into())
            .map_err(|e| self.p11("CK_GCM_PARAMS", e))?;
        match session.decrypt(&Mechanism::AesGcm(params), kek, ct) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(cryptoki::error::Error::Pkcs11(
                // SoftHSM2 answers a GCM tag mismatch with CKR_GENERAL_ERROR.
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::GeneralError,
                _,
            )) => Err(Error::DecryptFailed {
                key: label.to_string(),
            }),
            Err(e) => Err(self.p11("C_Decrypt(CKM_AES_GCM)", e)),
        }
    }

    /// The token's ML-DSA sealing key, created on first use (AES-256, non-extractable, sensitive).
    fn sealing_key(&self, session: &Session) -> Result<KeyInfo> {
        let mut cached = self.sealing_key.lock().map_err(|_| Error::Pkcs11 {
            token: self.token.clone(),
            function: "sealing key".into(),
            detail: "a thread panicked while creating the sealing key".into(),
        })?;
        if let Some(k) = cached.as_ref() {
            return Ok(k.clone());
        }
        let existing: Vec<KeyInfo> = self
            .all_keys(session)?
            .into_iter()
            .filter(|k| k.label == ML_DSA_SEALING_KEY_LABEL && k.algorithm == KeyAlgorithm::Aes256)
            .collect();
        let key = match existing.into_iter().next() {
            Some(k) => k,
            None => self.generate_aes(
                session,
                ML_DSA_SEALING_KEY_LABEL,
                GenerateOptions::default(),
            )?,
        };
        *cached = Some(key.clone());
        Ok(key)
    }

    fn generate_aes(
        &self,
        session: &Session,
        label: &str,
        options: GenerateOptions,
    ) -> Result<KeyInfo> {
        self.require(MechanismType::AES_KEY_GEN)?;
        let id = self.new_id(session)?;
        let mut template = aes_template(label, &id, options.extractable);
        template.push(Attribute::ValueLen(32.into()));
        session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| self.p11("C_GenerateKey(CKM_AES_KEY_GEN)", e))?;
        Ok(self.info_for(
            label,
            id,
            KeyAlgorithm::Aes256,
            KeyStorage::Token,
            options.extractable,
        ))
    }

    fn generate_pair(
        &self,
        session: &Session,
        label: &str,
        algorithm: KeyAlgorithm,
        options: GenerateOptions,
    ) -> Result<KeyInfo> {
        let id = self.new_id(session)?;
        let common_pub = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(options.extractable),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let (mechanism, mut public) = match algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                self.require(MechanismType::ECC_KEY_PAIR_GEN)?;
                let params = if algorithm == KeyAlgorithm::EcP256 {
                    der::OID_P256
                } else {
                    der::OID_P384
                };
                (
                    Mechanism::EccKeyPairGen,
                    vec![Attribute::EcParams(params.to_vec())],
                )
            }
            KeyAlgorithm::Rsa3072 => {
                self.require(MechanismType::RSA_PKCS_KEY_PAIR_GEN)?;
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::ModulusBits(3072.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                    ],
                )
            }
            KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87 => {
                self.require(MechanismType::ML_DSA_KEY_PAIR_GEN)?;
                let set = ml_dsa_parameter_set(algorithm).ok_or_else(|| {
                    Error::Crypto(format!("{algorithm} has no ML-DSA parameter set"))
                })?;
                // PKCS#11 3.2: the parameter set goes in the public template; the token copies it.
                (
                    Mechanism::MlDsaKeyPairGen,
                    vec![Attribute::ParameterSet(set.into())],
                )
            }
            _ => {
                return Err(Error::NotPermitted {
                    key: label.into(),
                    operation: "generate as a token key pair",
                    reason: format!("{algorithm} is not an EC, RSA or ML-DSA algorithm"),
                });
            }
        };
        public.extend(common_pub);
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| self.p11(&format!("C_GenerateKeyPair({algorithm})"), e))?;
        Ok(self.info_for(label, id, algorithm, KeyStorage::Token, options.extractable))
    }

    fn generate_ml_dsa(
        &self,
        session: &Session,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo> {
        self.require(MechanismType::AES_GCM)?;
        let kek = self.sealing_key(session)?;
        let kek_handle = self.handle(session, &kek, ObjectClass::SECRET_KEY)?;
        let id = self.new_id(session)?;
        let (pkcs8, public_key) = mldsa::generate(algorithm)
            .ok_or_else(|| Error::Crypto(format!("{algorithm} key generation failed")))?;
        let aad = SealedKey::header(algorithm, &id, &kek.id, &public_key)
            .ok_or_else(|| Error::Crypto("sealed key header".into()))?;
        let (nonce, ciphertext) = self.gcm_encrypt(session, kek_handle, &aad, &pkcs8)?;
        drop(pkcs8);
        let sealed = SealedKey {
            algorithm,
            id: id.clone(),
            kek_id: kek.id.clone(),
            public_key,
            nonce: nonce
                .as_slice()
                .try_into()
                .map_err(|_| Error::Crypto("nonce length".into()))?,
            ciphertext,
        };
        let blob = sealed
            .encode()
            .ok_or_else(|| Error::Crypto("sealed key encoding".into()))?;
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(mldsa::APPLICATION.to_vec()),
                Attribute::Value(blob),
            ])
            .map_err(|e| self.p11("C_CreateObject(sealed ML-DSA key)", e))?;
        Ok(self.info_for(label, id, algorithm, KeyStorage::SealedByToken, false))
    }

    /// One byte-string attribute of an object, or [`Error::Corrupt`] naming what is missing.
    fn read_bytes(
        &self,
        session: &Session,
        h: ObjectHandle,
        ty: AttributeType,
        key: &KeyInfo,
    ) -> Result<Vec<u8>> {
        let attrs = session
            .get_attributes(h, &[ty])
            .map_err(|e| self.p11(&format!("C_GetAttributeValue({ty})"), e))?;
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v)
                | Attribute::EcPoint(v)
                | Attribute::Modulus(v)
                | Attribute::PublicExponent(v) => Some(v),
                _ => None,
            })
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::Corrupt {
                name: key.label.clone(),
                reason: format!("the object has no {ty}"),
            })
    }

    fn sealed_key(&self, session: &Session, key: &KeyInfo) -> Result<SealedKey> {
        let h = self.handle(session, key, ObjectClass::DATA)?;
        let value = self.read_bytes(session, h, AttributeType::Value, key)?;
        SealedKey::decode(&value).ok_or_else(|| Error::Corrupt {
            name: key.label.clone(),
            reason: "not a sealed ML-DSA key".into(),
        })
    }

    fn sign_ml_dsa(&self, session: &Session, key: &KeyInfo, message: &[u8]) -> Result<Vec<u8>> {
        let sealed = self.sealed_key(session, key)?;
        let kek_handle = {
            let found = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Id(sealed.kek_id.clone()),
                ])
                .map_err(|e| self.p11("C_FindObjects", e))?;
            *found.first().ok_or_else(|| Error::KeyNotFound {
                name: format!(
                    "sealing key id {} of {}",
                    hex::encode(&sealed.kek_id),
                    key.label
                ),
                token: self.token.clone(),
            })?
        };
        let aad = sealed
            .aad()
            .ok_or_else(|| Error::Crypto("sealed key header".into()))?;
        let pkcs8 = self.gcm_decrypt(
            session,
            kek_handle,
            &key.label,
            &sealed.nonce,
            &aad,
            &sealed.ciphertext,
        )?;
        let sig =
            mldsa::sign(sealed.algorithm, &pkcs8, &sealed.public_key, message).ok_or_else(|| {
                Error::Corrupt {
                    name: key.label.clone(),
                    reason: "sealed private key does not match its public key".into(),
                }
            });
        drop(pkcs8); // zeroized here, right after the one signature
        sig
    }
}

/// Whether a mechanism list offers PKCS#11 3.2 ML-DSA: key-pair generation and pure `CKM_ML_DSA`
/// signing. Both are needed; a token with only one of them gets the sealed path.
pub fn offers_native_ml_dsa(mechanisms: &[MechanismType]) -> bool {
    mechanisms.contains(&MechanismType::ML_DSA_KEY_PAIR_GEN)
        && mechanisms.contains(&MechanismType::ML_DSA)
}

/// `CKA_PARAMETER_SET` of an ML-DSA algorithm.
fn ml_dsa_parameter_set(algorithm: KeyAlgorithm) -> Option<MlDsaParameterSetType> {
    match algorithm {
        KeyAlgorithm::MlDsa65 => Some(MlDsaParameterSetType::ML_DSA_65),
        KeyAlgorithm::MlDsa87 => Some(MlDsaParameterSetType::ML_DSA_87),
        _ => None,
    }
}

/// The ML-DSA algorithm of a `CKA_PARAMETER_SET` (ML-DSA-44 is not used here).
fn ml_dsa_algorithm(set: ParameterSetType) -> Option<KeyAlgorithm> {
    let set = MlDsaParameterSetType::from(set);
    if set == MlDsaParameterSetType::ML_DSA_65 {
        Some(KeyAlgorithm::MlDsa65)
    } else if set == MlDsaParameterSetType::ML_DSA_87 {
        Some(KeyAlgorithm::MlDsa87)
    } else {
        None
    }
}

/// FIPS 204 public key sizes.
fn ml_dsa_public_len(algorithm: KeyAlgorithm) -> Option<usize> {
    match algorithm {
        KeyAlgorithm::MlDsa65 => Some(1952),
        KeyAlgorithm::MlDsa87 => Some(2592),
        _ => None,
    }
}

/// The template of an AES-256 token key: private, sensitive, for encrypt/decrypt/wrap/unwrap.
fn aes_template(label: &str, id: &[u8], extractable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// The PKCS#11 mechanism (hashing on the token) of an RSA signature scheme.
fn rsa_mechanism(scheme: SignatureScheme) -> Option<(Mechanism<'static>, &'static str)> {
    let pss = |hash_alg, mgf, s_len: u64| PkcsPssParams {
        hash_alg,
        mgf,
        s_len: s_len.into(),
    };
    use SignatureScheme as S;
    Some(match scheme {
        S::RsaPkcs1Sha256 => (Mechanism::Sha256RsaPkcs, "CKM_SHA256_RSA_PKCS"),
        S::RsaPkcs1Sha384 => (Mechanism::Sha384RsaPkcs, "CKM_SHA384_RSA_PKCS"),
        S::RsaPkcs1Sha512 => (Mechanism::Sha512RsaPkcs, "CKM_SHA512_RSA_PKCS"),
        S::RsaPssSha256 => (
            Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32)),
            "CKM_SHA256_RSA_PKCS_PSS",
        ),
        S::RsaPssSha384 => (
            Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48)),
            "CKM_SHA384_RSA_PKCS_PSS",
        ),
        S::RsaPssSha512 => (
            Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64)),
            "CKM_SHA512_RSA_PKCS_PSS",
        ),
        _ => return None,
    })
}

impl KeyStore for Pkcs11Store {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            backend: Backend::Pkcs11,
            token: self.token.clone(),
            description: self.description.clone(),
            serial: self.serial.clone(),
            production: true,
            ml_dsa: MlDsaMode::Auto
                .storage(self.native_ml_dsa())
                .unwrap_or(KeyStorage::SealedByToken),
        }
    }

    fn generate_with(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        options: GenerateOptions,
    ) -> Result<KeyInfo> {
        check_label(label)?;
        self.with_session(|session| {
            if self.all_keys(session)?.iter().any(|k| k.label == label) {
                return Err(Error::KeyExists { label: label.into(), token: self.token.clone() });
            }
            let key = match algorithm {
                KeyAlgorithm::Aes256 => self.generate_aes(session, label, options)?,
                KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87 => {
                    if options.extractable {
                        return Err(Error::NotPermitted {
                            key: label.into(),
                            operation: "generate as extractable",
                            reason: "ML-DSA keys (native or sealed) are never exported".into(),
                        });
                    }
                    match options.ml_dsa.storage(self.native_ml_dsa()) {
                        Some(KeyStorage::Token) => {
                            self.generate_pair(session, label, algorithm, options)?
                        }
                        Some(_) => self.generate_ml_dsa(session, label, algorithm)?,
                        None => {
                            return Err(Error::MechanismNotSupported {
                                mechanism: "CKM_ML_DSA_KEY_PAIR_GEN and CKM_ML_DSA (native ML-DSA was demanded)"
                                    .into(),
                                token: self.token.clone(),
                            });
                        }
                    }
                }
                _ => self.generate_pair(session, label, algorithm, options)?,
            };
            tracing::info!(token = %self.token, label, algorithm = %algorithm, storage = ?key.storage, id = %hex::encode(&key.id), "generated key");
            Ok(key)
        })
    }

    fn find(&self, name: &str) -> Result<KeyInfo> {
        let uri = if name.starts_with("pkcs11:") || name.starts_with("PKCS11:") {
            Some(Pkcs11Uri::parse(name)?)
        } else {
            None
        };
        if let Some(u) = &uri {
            let other_token = u.token.as_ref().is_some_and(|t| t != &self.token)
                || u.serial.as_ref().is_some_and(|s| s != &self.serial);
            if other_token {
                return Err(self.key_not_found(name));
            }
        }
        let keys = self.list()?;
        let hits: Vec<KeyInfo> = keys
            .into_iter()
            .filter(|k| match &uri {
                None => k.label == name,
                Some(u) => {
                    u.object.as_ref().is_none_or(|o| o == &k.label)
                        && u.id.as_ref().is_none_or(|i| i == &k.id)
                        && u.object_type.as_deref().is_none_or(|t| match t {
                            "secret" => k.algorithm == KeyAlgorithm::Aes256,
                            "private" | "public" => k.algorithm.is_signing(),
                            "data" => k.storage == KeyStorage::SealedByToken,
                            _ => false,
                        })
                }
            })
            .collect();
        match hits.len() {
            0 => Err(self.key_not_found(name)),
            1 => Ok(hits
                .into_iter()
                .next()
                .ok_or_else(|| self.key_not_found(name))?),
            n => Err(Error::AmbiguousKey {
                name: name.into(),
                token: self.token.clone(),
                count: n,
            }),
        }
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.with_session(|session| self.all_keys(session))
    }

    fn public_key_spki(&self, key: &KeyInfo) -> Result<Vec<u8>> {
        self.with_session(|session| match key.algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let h = self.handle(session, key, ObjectClass::PUBLIC_KEY)?;
                let point = self.read_bytes(session, h, AttributeType::EcPoint, key)?;

                let coord = if key.algorithm == KeyAlgorithm::EcP256 {
                    32
                } else {
                    48
                };
                let point =
                    der::ec_point_from_attribute(&point, coord).ok_or_else(|| Error::Corrupt {
                        name: key.label.clone(),
                        reason: "malformed CKA_EC_POINT".into(),
                    })?;
                der::spki_ec(key.algorithm, &point).ok_or_else(|| Error::Crypto("SPKI".into()))
            }
            KeyAlgorithm::Rsa3072 => {
                let h = self.handle(session, key, ObjectClass::PUBLIC_KEY)?;
                let n = self.read_bytes(session, h, AttributeType::Modulus, key)?;
                let e = self.read_bytes(session, h, AttributeType::PublicExponent, key)?;
                Ok(der::spki_rsa(&n, &e))
            }
            KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87 if key.storage == KeyStorage::Token => {
                // PKCS#11 3.2: CKA_VALUE of an ML-DSA public key is the FIPS 204 encoded public key.
                let h = self.handle(session, key, ObjectClass::PUBLIC_KEY)?;
                let public = self.read_bytes(session, h, AttributeType::Value, key)?;
                if Some(public.len()) != ml_dsa_public_len(key.algorithm) {
                    return Err(Error::Corrupt {
                        name: key.label.clone(),
                        reason: format!("{} public key of {} bytes", key.algorithm, public.len()),
                    });
                }
                der::spki_ml_dsa(key.algorithm, &public).ok_or_else(|| Error::Crypto("SPKI".into()))
            }
            KeyAlgorithm::MlDsa65 | KeyAlgorithm::MlDsa87 => {
                let sealed = self.sealed_key(session, key)?;
                der::spki_ml_dsa(sealed.algorithm, &sealed.public_key)
                    .ok_or_else(|| Error::Crypto("SPKI".into()))
            }
            KeyAlgorithm::Aes256 => Err(Error::NotPermitted {
                key: key.label.clone(),
                operation: "export a public key",
                reason: "an AES key has no public half".into(),
            }),
        })
    }

    fn sign_with(&self, key: &KeyInfo, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        check_scheme(key, scheme)?;
        use aws_lc_rs::digest;
        self.with_session(|session| {
            if key.algorithm.is_ml_dsa() && key.storage == KeyStorage::SealedByToken {
                return self.sign_ml_dsa(session, key, message);
            }
            let h = self.handle(session, key, ObjectClass::PRIVATE_KEY)?;
            let run = |mech: &Mechanism, data: &[u8], name: &str| {
                session.sign(mech, h, data).map_err(|e| match e {
                    cryptoki::error::Error::Pkcs11(RvError::MechanismInvalid, _) => {
                        Error::MechanismNotSupported {
                            mechanism: name.to_string(),
                            token: self.token.clone(),
                        }
                    }
                    e => self.p11(&format!("C_Sign({name})"), e),
                })
            };
            match scheme {
                SignatureScheme::MlDsa65 | SignatureScheme::MlDsa87 => {
                    // Pure ML-DSA with an empty context: no parameter, which PKCS#11 3.2 defines as
                    // hedged-or-deterministic at the token's choice and no context string.
                    self.require(MechanismType::ML_DSA)?;
                    let mechanism =
                        Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None));
                    run(&mechanism, message, "CKM_ML_DSA")
                }
                SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => {
                    // SoftHSM2 2.6 offers raw CKM_ECDSA only: hash here, let the token sign the digest.
                    self.require(MechanismType::ECDSA)?;
                    let alg = if scheme == SignatureScheme::EcdsaP256Sha256 {
                        &digest::SHA256
                    } else {
                        &digest::SHA384
                    };
                    let hash = digest::digest(alg, message);
                    let raw = run(&Mechanism::Ecdsa, hash.as_ref(), "CKM_ECDSA")?;
                    der::ecdsa_sig_from_raw(&raw).ok_or_else(|| {
                        Error::Crypto("token returned a malformed ECDSA signature".into())
                    })
                }
                rsa => {
                    let (mechanism, name) = rsa_mechanism(rsa)
                        .ok_or_else(|| Error::Crypto(format!("{rsa:?} is not an RSA scheme")))?;
                    run(&mechanism, message, name)
                }
            }
        })
    }

    fn encrypt(&self, kek: &KeyInfo, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        check_kek(kek, "encrypt")?;
        self.require(MechanismType::AES_GCM)?;
        self.with_session(|session| {
            let h = self.handle(session, kek, ObjectClass::SECRET_KEY)?;
            let (nonce, ct) = self.gcm_encrypt(session, h, aad, plaintext)?;
            let mut out = Vec::with_capacity(1 + nonce.len() + ct.len());
            out.push(SEALED_V1);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
            Ok(out)
        })
    }

    fn decrypt(&self, kek: &KeyInfo, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        check_kek(kek, "decrypt")?;
        self.require(MechanismType::AES_GCM)?;
        if sealed.len() < 1 + GCM_NONCE + GCM_TAG || sealed[0] != SEALED_V1 {
            return Err(Error::DecryptFailed {
                key: kek.label.clone(),
            });
        }
        let (nonce, ct) = sealed[1..].split_at(GCM_NONCE);
        self.with_session(|session| {
            let h = self.handle(session, kek, ObjectClass::SECRET_KEY)?;
            self.gcm_decrypt(session, h, &kek.label, nonce, aad, ct)
        })
    }

    fn wrap_key(&self, kek: &KeyInfo, key: &KeyInfo) -> Result<Vec<u8>> {
        check_kek(kek, "wrap")?;
        if key.algorithm != KeyAlgorithm::Aes256 {
            return Err(Error::NotPermitted {
                key: key.label.clone(),
                operation: "wrap",
                reason: "only AES keys are wrapped (an asymmetric key would also need its public half moved)".into(),
            });
        }
        self.require(MechanismType::AES_KEY_WRAP_PAD)?;
        self.with_session(|session| {
            let wrapping = self.handle(session, kek, ObjectClass::SECRET_KEY)?;
            let target = self.handle(session, key, ObjectClass::SECRET_KEY)?;
            session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, target).map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(RvError::KeyUnextractable | RvError::KeyNotWrappable, _) => Error::NotPermitted {
                    key: key.label.clone(),
                    operation: "wrap",
                    reason: "the key is not extractable (CKA_EXTRACTABLE is false): it can never leave the token".into(),
                },
                e => self.p11("C_WrapKey(CKM_AES_KEY_WRAP_PAD)", e),
            })
        })
    }

    fn unwrap_key(
        &self,
        kek: &KeyInfo,
        wrapped: &[u8],
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo> {
        check_kek(kek, "unwrap")?;
        check_label(label)?;
        if algorithm != KeyAlgorithm::Aes256 {
            return Err(Error::NotPermitted {
                key: label.into(),
                operation: "unwrap",
                reason: "only AES keys are unwrapped".into(),
            });
        }
        self.require(MechanismType::AES_KEY_WRAP_PAD)?;
        self.with_session(|session| {
            if self.all_keys(session)?.iter().any(|k| k.label == label) {
                return Err(Error::KeyExists {
                    label: label.into(),
                    token: self.token.clone(),
                });
            }
            let unwrapping = self.handle(session, kek, ObjectClass::SECRET_KEY)?;
            let id = self.new_id(session)?;
            let template = aes_template(label, &id, false);
            session
                .unwrap_key(&Mechanism::AesKeyWrapPad, unwrapping, wrapped, &template)
                .map_err(|e| match e {
                    cryptoki::error::Error::Pkcs11(
                        RvError::WrappedKeyInvalid
                        | RvError::EncryptedDataInvalid
                        | RvError::WrappedKeyLenRange,
                        _,
                    ) => Error::DecryptFailed {
                        key: kek.label.clone(),
                    },
                    e => self.p11("C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)", e),
                })?;
            Ok(self.info_for(label, id, KeyAlgorithm::Aes256, KeyStorage::Token, false))
        })
    }

    fn random(&self, out: &mut [u8]) -> Result<()> {
        self.with_session(|session| {
            session
                .generate_random_slice(out)
                .map_err(|e| self.p11("C_GenerateRandom", e))
        })
    }

    fn delete(&self, key: &KeyInfo) -> Result<()> {
        let result = self.with_session(|session| {
            let classes: &[ObjectClass] = match (key.algorithm, key.storage) {
                (_, KeyStorage::SealedByToken) => &[ObjectClass::DATA],
                (KeyAlgorithm::Aes256, _) => &[ObjectClass::SECRET_KEY],
                _ => &[ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY],
            };
            let mut destroyed = 0;
            for class in classes {
                match self.handle(session, key, *class) {
                    Ok(h) => {
                        session.destroy_object(h).map_err(|e| self.p11("C_DestroyObject", e))?;
                        destroyed += 1;
                    }
                    Err(Error::KeyNotFound { .. }) if *class == ObjectClass::PUBLIC_KEY => {}
                    Err(e) => return Err(e),
                }
                self.forget_handles(key);
            }
            tracing::info!(token = %self.token, label = %key.label, objects = destroyed, "deleted key");
            Ok(())
        });
        self.forget_handles(key);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_ml_dsa_needs_both_key_generation_and_pure_signing() {
        use MechanismType as M;
        let softhsm26 = [
            M::AES_GCM,
            M::ECDSA,
            M::ECC_KEY_PAIR_GEN,
            M::RSA_PKCS_KEY_PAIR_GEN,
        ];
        assert!(!offers_native_ml_dsa(&softhsm26));
        assert!(!offers_native_ml_dsa(&[M::ML_DSA_KEY_PAIR_GEN]));
        assert!(!offers_native_ml_dsa(&[M::ML_DSA, M::HASH_ML_DSA]));
        assert!(!offers_native_ml_dsa(&[
            M::ML_DSA_KEY_PAIR_GEN,
            M::HASH_ML_DSA_SHA512
        ]));
        assert!(offers_native_ml_dsa(&[
            M::AES_GCM,
            M::ML_DSA,
            M::ML_DSA_KEY_PAIR_GEN
        ]));
    }

    #[test]
    fn parameter_sets_round_trip_and_44_is_not_ours() {
        for alg in [KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa87] {
            let set = ml_dsa_parameter_set(alg).unwrap();
            assert_eq!(ml_dsa_algorithm(set.into()), Some(alg));
        }
        assert_eq!(
            ml_dsa_algorithm(MlDsaParameterSetType::ML_DSA_44.into()),
            None
        );
        assert_eq!(ml_dsa_parameter_set(KeyAlgorithm::EcP384), None);
    }
}
