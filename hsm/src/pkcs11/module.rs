//! Loading PKCS#11 modules once per process, finding tokens, initializing them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::slot::{Slot, TokenInfo};
use cryptoki::types::AuthPin;

use crate::error::{Error, Result};
use crate::pin::Pin;

/// Where SoftHSM2's module is installed on Debian/Ubuntu and elsewhere, in the order tried.
pub const SOFTHSM2_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// The module named by `QSI_PKCS11_MODULE`, else the first SoftHSM2 module found on this machine.
pub fn default_module_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("QSI_PKCS11_MODULE") {
        return Ok(PathBuf::from(path));
    }
    SOFTHSM2_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::ModuleNotFound {
            path: PathBuf::from(SOFTHSM2_MODULE_PATHS[0]),
            reason: format!(
                "no SoftHSM2 module in any of {} and QSI_PKCS11_MODULE is not set",
                SOFTHSM2_MODULE_PATHS.join(", ")
            ),
        })
}

struct Loaded {
    ctx: Pkcs11,
    /// Serializes token initialization (the free slot is shared by everyone in the process).
    init_lock: std::sync::Arc<Mutex<()>>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Loaded>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Loaded>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-wide, initialized context of a PKCS#11 module.
///
/// A module may be `C_Initialize`d only once per process, so every store, the token helper and any raw
/// cryptoki code (tests, smart-card login) must share this context instead of calling `Pkcs11::new`.
pub fn shared_context(module: &Path) -> Result<Pkcs11> {
    Ok(loaded(module)?.0)
}

fn loaded(module: &Path) -> Result<(Pkcs11, std::sync::Arc<Mutex<()>>)> {
    let key = module
        .canonicalize()
        .unwrap_or_else(|_| module.to_path_buf());
    let mut map = registry().lock().map_err(|_| Error::Pkcs11 {
        token: String::new(),
        function: "module registry".into(),
        detail: "a thread panicked while loading a module".into(),
    })?;
    if let Some(l) = map.get(&key) {
        return Ok((l.ctx.clone(), l.init_lock.clone()));
    }
    if !module.exists() {
        return Err(Error::ModuleNotFound {
            path: module.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let ctx = Pkcs11::new(module).map_err(|e| Error::ModuleNotFound {
        path: module.to_path_buf(),
        reason: e.to_string(),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            let hint = if module.to_string_lossy().contains("softhsm") {
                format!(
                    "{e}; SoftHSM2 reads its configuration from SOFTHSM2_CONF (now {:?}) or /etc/softhsm/softhsm2.conf: \
                     check that the file exists and its tokendir is writable",
                    std::env::var_os("SOFTHSM2_CONF")
                )
            } else {
                e.to_string()
            };
            return Err(Error::ModuleNotFound {
                path: module.to_path_buf(),
                reason: format!("C_Initialize failed: {hint}"),
            });
        }
    }
    let init_lock = std::sync::Arc::new(Mutex::new(()));
    map.insert(
        key,
        Loaded {
            ctx: ctx.clone(),
            init_lock: init_lock.clone(),
        },
    );
    Ok((ctx, init_lock))
}

/// How a token is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token (the `token=` of a PKCS#11 URI).
    Label(String),
    /// By serial number (the `serial=` of a PKCS#11 URI).
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// A token as `qsi hsm list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenSummary {
    /// PKCS#11 slot id.
    pub slot: u64,
    /// Token label.
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// PIN flags.
    pub pin_flags: crate::error::PinFlags,
}

pub(crate) fn pin_flags(info: &TokenInfo) -> crate::error::PinFlags {
    crate::error::PinFlags {
        count_low: info.user_pin_count_low(),
        final_try: info.user_pin_final_try(),
        locked: info.user_pin_locked(),
    }
}

fn p11(token: &str, function: &str, e: cryptoki::error::Error) -> Error {
    Error::Pkcs11 {
        token: token.to_string(),
        function: function.to_string(),
        detail: e.to_string(),
    }
}

/// The initialized tokens of a module with their slots. A token removed under us (SoftHSM2: deleted by
/// another process) answers `C_GetTokenInfo` with an error and is skipped.
fn initialized_tokens(ctx: &Pkcs11) -> Result<Vec<(Slot, TokenInfo)>> {
    let slots = ctx
        .get_all_slots()
        .map_err(|e| p11("", "C_GetSlotList", e))?;
    Ok(slots
        .into_iter()
        .filter_map(|slot| ctx.get_token_info(slot).ok().map(|info| (slot, info)))
        .filter(|(_, info)| info.token_initialized())
        .collect())
}

/// Every initialized token of a module.
pub fn list_tokens(module: &Path) -> Result<Vec<TokenSummary>> {
    let ctx = shared_context(module)?;
    Ok(initialized_tokens(&ctx)?
        .into_iter()
        .map(|(slot, info)| TokenSummary {
            slot: slot.id(),
            label: info.label().to_string(),
            serial: info.serial_number().to_string(),
            manufacturer: info.manufacturer_id().to_string(),
            model: info.model().to_string(),
            pin_flags: pin_flags(&info),
        })
        .collect())
}

/// The slot holding a token, for raw cryptoki code sharing [`shared_context`].
pub fn find_slot(module: &Path, selector: &TokenSelector) -> Result<Slot> {
    let ctx = shared_context(module)?;
    Ok(find_token(&ctx, module, selector)?.0)
}

pub(crate) fn find_token(
    ctx: &Pkcs11,
    module: &Path,
    selector: &TokenSelector,
) -> Result<(Slot, TokenInfo)> {
    let mut present = Vec::new();
    for (slot, info) in initialized_tokens(ctx)? {
        let hit = match selector {
            TokenSelector::Label(l) => info.label() == l,
            TokenSelector::Serial(s) => info.serial_number() == s,
        };
        if hit {
            return Ok((slot, info));
        }
        present.push(info.label().to_string());
    }
    Err(Error::TokenNotFound {
        wanted: selector.to_string(),
        module: module.to_path_buf(),
        present,
    })
}

/// Initializes a token in a free (uninitialized) slot of the module and sets its user PIN.
///
/// Never re-initializes (erases) an existing token: fails if a token with this label exists or no slot
/// is free. Token labels are at most 32 bytes.
pub fn init_token(
    module: &Path,
    label: &str,
    so_pin: &Pin,
    user_pin: &Pin,
) -> Result<TokenSummary> {
    if label.is_empty() || label.len() > 32 {
        return Err(Error::InvalidLabel {
            label: label.into(),
            reason: "a token label has 1 to 32 bytes".into(),
        });
    }
    let (ctx, init_lock) = loaded(module)?;
    let _guard = init_lock
        .lock()
        .map_err(|_| p11(label, "C_InitToken", cryptoki::error::Error::NotSupported))?;
    let mut free = None;
    for slot in ctx
        .get_all_slots()
        .map_err(|e| p11(label, "C_GetSlotList", e))?
    {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if info.token_initialized() {
            if info.label() == label {
                return Err(Error::TokenExists {
                    label: label.into(),
                });
            }
        } else if free.is_none() {
            free = Some(slot);
        }
    }
    let slot = free.ok_or_else(|| Error::Pkcs11 {
        token: label.into(),
        function: "C_InitToken".into(),
        detail: "no free slot: every token of this module is initialized (SoftHSM2 always offers one; a hardware \
                 HSM needs a slot made free by its vendor tool)"
            .into(),
    })?;
    ctx.init_token(slot, &AuthPin::from(so_pin.expose()), label)
        .map_err(|e| p11(label, "C_InitToken", e))?;
    // SoftHSM2 gives the new token a slot id of its own; find it by label.
    let (slot, _) = find_token(&ctx, module, &TokenSelector::Label(label.to_string()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| p11(label, "C_OpenSession", e))?;
    session
        .login(UserType::So, Some(&AuthPin::from(so_pin.expose())))
        .map_err(|e| p11(label, "C_Login(SO)", e))?;
    session
        .init_pin(&AuthPin::from(user_pin.expose()))
        .map_err(|e| p11(label, "C_InitPIN", e))?;
    session.logout().map_err(|e| p11(label, "C_Logout", e))?;
    drop(session);
    tracing::info!(token = label, module = %module.display(), "initialized token");
    list_tokens(module)?
        .into_iter()
        .find(|t| t.label == label)
        .ok_or_else(|| Error::TokenNotFound {
            wanted: label.into(),
            module: module.to_path_buf(),
            present: vec![],
        })
}
