//! Throw-away Kryoptic tokens: a PKCS#11 3.2 soft token with native ML-DSA, for the tests and the
//! benchmark of the native ML-DSA path (SoftHSM2 2.6 has no ML-DSA).
//!
//! Kryoptic (github.com/latchset/kryoptic, a Rust PKCS#11 module on OpenSSL 3.5) reads its slots from the
//! TOML file `KRYOPTIC_CONF` names, once per process at `C_Initialize`. The repository's
//! `.cargo/config.toml` points it at `target/kryoptic/token.conf`; [`ensure_kryoptic_conf`] writes that
//! file on first use with [`SLOTS`] slots, each backed by its own sqlite file beside it. A slot without a
//! database holds an uninitialized token: [`KryopticToken::create`] initializes the first such slot
//! through `C_InitToken` (the same code path as any token) and drop deletes its database, so the slot is
//! free again for the next process. `scripts/install-kryoptic` builds and installs the module.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::pin::Pin;
use crate::pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector, find_slot, init_token};
use crate::softhsm::{random_pin, token_label};

/// Where `scripts/install-kryoptic` (and distributions) put the module, in the order tried.
pub const KRYOPTIC_MODULE_PATHS: &[&str] = &[
    "/usr/local/lib/kryoptic/libkryoptic_pkcs11.so",
    "/usr/lib/x86_64-linux-gnu/pkcs11/libkryoptic_pkcs11.so",
    "/usr/lib64/pkcs11/libkryoptic_pkcs11.so",
];

/// Slots in the development configuration: tokens one process can create.
pub const SLOTS: u32 = 16;

/// The module named by `QSI_KRYOPTIC_MODULE`, else the first of [`KRYOPTIC_MODULE_PATHS`] present.
pub fn kryoptic_module_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("QSI_KRYOPTIC_MODULE") {
        return Ok(PathBuf::from(path));
    }
    KRYOPTIC_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::ModuleNotFound {
            path: PathBuf::from(KRYOPTIC_MODULE_PATHS[0]),
            reason: format!(
                "no Kryoptic module in any of {} and QSI_KRYOPTIC_MODULE is not set; build and install it \
                 with scripts/install-kryoptic (cargo, OpenSSL 3.5 sources from the openssl-src crate, libclang)",
                KRYOPTIC_MODULE_PATHS.join(", ")
            ),
        })
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes the Kryoptic configuration at the path `KRYOPTIC_CONF` names if it does not exist yet
/// ([`SLOTS`] sqlite slots beside it), and returns that path.
pub fn ensure_kryoptic_conf() -> Result<PathBuf> {
    let conf = std::env::var_os("KRYOPTIC_CONF").map(PathBuf::from).ok_or_else(|| {
        Error::SoftHsmSetup(
            "KRYOPTIC_CONF is not set in this process. Run through cargo from the repository (its .cargo/config.toml \
             sets it), or export KRYOPTIC_CONF=/some/dir/token.conf (the file is created if missing)"
                .into(),
        )
    })?;
    if conf.exists() {
        return Ok(conf);
    }
    let dir = conf
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let dir = dir.canonicalize().map_err(|e| io(dir, e))?;
    let mut body = String::from("# written by qsi-hsm for tests and development tokens\n");
    for slot in 1..=SLOTS {
        body.push_str(&format!(
            "\n[[slots]]\nslot = {slot}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            slot_db(&dir, slot).display()
        ));
    }
    // Write beside and rename, so a concurrent reader never sees half a file.
    let tmp = dir.join(format!(".token.conf.{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &conf).map_err(|e| io(&conf, e))?;
    Ok(conf)
}

fn slot_db(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("slot-{slot}.sql"))
}

/// A Kryoptic token made for one test or benchmark, erased on drop.
#[derive(Debug)]
pub struct KryopticToken {
    /// Token label (unique per process).
    pub label: String,
    /// The user PIN.
    pub user_pin: Pin,
    /// The security officer PIN.
    pub so_pin: Pin,
    /// The Kryoptic module.
    pub module: PathBuf,
    /// The configuration this process uses (`KRYOPTIC_CONF`).
    pub conf: PathBuf,
    db: PathBuf,
}

impl KryopticToken {
    /// Initializes a free slot as a token labelled `<prefix>-<pid>-<n>` with random PINs.
    pub fn create(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let conf = ensure_kryoptic_conf()?;
        let module = kryoptic_module_path()?;
        let label = token_label(prefix, COUNTER.fetch_add(1, Ordering::Relaxed));
        let so_pin = random_pin(8)?;
        let user_pin = random_pin(8)?;
        init_token(&module, &label, &so_pin, &user_pin).map_err(|e| match e {
            Error::Pkcs11 { function, detail, .. } if function == "C_InitToken" && detail.contains("no free slot") => {
                Error::SoftHsmSetup(format!(
                    "every Kryoptic slot of {} is in use; a crashed run may have left databases behind: \
                     delete the slot-*.sql files beside it",
                    conf.display()
                ))
            }
            other => other,
        })?;
        let slot = find_slot(&module, &TokenSelector::Label(label.clone()))?;
        let dir = conf.parent().unwrap_or(Path::new("."));
        let dir = dir.canonicalize().map_err(|e| io(dir, e))?;
        let db = slot_db(&dir, u32::try_from(slot.id()).unwrap_or(u32::MAX));
        Ok(KryopticToken {
            label,
            user_pin,
            so_pin,
            module,
            conf,
            db,
        })
    }

    /// The configuration that opens this token.
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config::new(
            &self.module,
            TokenSelector::Label(self.label.clone()),
            self.user_pin.clone(),
        )
    }

    /// Opens a store on this token.
    pub fn open(&self) -> Result<Pkcs11Store> {
        Pkcs11Store::open(self.config())
    }

    /// Environment a child process needs to see this token (`KRYOPTIC_CONF`, `QSI_KRYOPTIC_MODULE`).
    pub fn child_env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("KRYOPTIC_CONF", self.conf.clone().into_os_string()),
            ("QSI_KRYOPTIC_MODULE", self.module.clone().into_os_string()),
        ]
    }
}

impl Drop for KryopticToken {
    fn drop(&mut self) {
        // The module keeps its open database (unlinked) until the process ends; the next process sees
        // the slot free.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.db.clone().into_os_string();
            path.push(suffix);
            let path = PathBuf::from(path);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(token = %self.label, path = %path.display(), error = %e, "could not delete test token database");
                }
            }
        }
    }
}
