//! Throw-away SoftHSM2 tokens for tests and demos.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) once, at `C_Initialize`, and a module can be
//! initialized only once per process, so all tokens of one process live in one token directory. The
//! repository's `.cargo/config.toml` points `SOFTHSM2_CONF` at `target/softhsm2/softhsm2.conf` for every
//! process cargo runs; [`SoftHsmToken::create`] writes that file on first use (token directory beside it),
//! initializes a token with a unique label in the free slot through `C_InitToken`, sets random SO and user
//! PINs, and deletes the token again on drop (`softhsm2-util --delete-token`). Child processes (`qsi`,
//! `pkcs11-tool`) find the same tokens through [`SoftHsmToken::child_env`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::pin::Pin;
use crate::pkcs11::{Pkcs11Config, Pkcs11Store, TokenSelector, default_module_path, init_token};

/// A SoftHSM2 token made for one test, deleted on drop.
#[derive(Debug)]
pub struct SoftHsmToken {
    /// Token label (unique per process and test).
    pub label: String,
    /// The user PIN.
    pub user_pin: Pin,
    /// The security officer PIN.
    pub so_pin: Pin,
    /// The SoftHSM2 module.
    pub module: PathBuf,
    /// The `softhsm2.conf` this process uses.
    pub conf: PathBuf,
}

/// Writes `softhsm2.conf` at the path `SOFTHSM2_CONF` names if it does not exist yet (token directory
/// `tokens/` beside it), and returns that path.
pub fn ensure_softhsm_conf() -> Result<PathBuf> {
    let conf = std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from).ok_or_else(|| {
        Error::SoftHsmSetup(
            "SOFTHSM2_CONF is not set in this process. Run through cargo from the repository (its .cargo/config.toml \
             sets it), or export SOFTHSM2_CONF=/some/dir/softhsm2.conf (the file is created if missing)"
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
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| Error::Io {
        path: tokens.clone(),
        source: e,
    })?;
    let tokens = tokens.canonicalize().map_err(|e| Error::Io {
        path: tokens.clone(),
        source: e,
    })?;
    let body = format!(
        "# written by qsi-hsm for tests and development tokens\n\
         directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    // Write beside and rename, so a concurrent reader never sees half a file.
    let tmp = dir.join(format!(".softhsm2.conf.{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(|e| Error::Io {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::rename(&tmp, &conf).map_err(|e| Error::Io {
        path: conf.clone(),
        source: e,
    })?;
    Ok(conf)
}

pub(crate) fn random_pin(bytes: usize) -> Result<Pin> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; bytes]);
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| Error::Crypto("random PIN".into()))?;
    Ok(Pin::new(hex::encode(&*raw)))
}

/// `<prefix>-<pid>-<n>`, with the prefix cut so the label fits PKCS#11's 32 bytes.
pub(crate) fn token_label(prefix: &str, n: u32) -> String {
    let suffix = format!("-{}-{n}", std::process::id());
    let keep = 32usize.saturating_sub(suffix.len());
    let cut: String = prefix
        .chars()
        .scan(0, |n, c| {
            *n += c.len_utf8();
            (*n <= keep).then_some(c)
        })
        .collect();
    format!("{cut}{suffix}")
}

impl SoftHsmToken {
    /// Creates a token labelled `<prefix>-<pid>-<n>` (cut to 32 bytes) with random PINs.
    pub fn create(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let conf = ensure_softhsm_conf()?;
        let module = default_module_path()?;
        let label = token_label(prefix, COUNTER.fetch_add(1, Ordering::Relaxed));
        let so_pin = random_pin(8)?;
        let user_pin = random_pin(8)?;
        init_token(&module, &label, &so_pin, &user_pin)?;
        Ok(SoftHsmToken {
            label,
            user_pin,
            so_pin,
            module,
            conf,
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

    /// Environment a child process needs to see this token (`SOFTHSM2_CONF`).
    pub fn child_env(&self) -> Vec<(&'static str, OsString)> {
        vec![("SOFTHSM2_CONF", self.conf.clone().into_os_string())]
    }
}

impl Drop for SoftHsmToken {
    fn drop(&mut self) {
        let out = std::process::Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .env("SOFTHSM2_CONF", &self.conf)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                tracing::warn!(token = %self.label, stderr = %String::from_utf8_lossy(&o.stderr), "could not delete test token")
            }
            Err(e) => {
                tracing::warn!(token = %self.label, error = %e, "could not run softhsm2-util to delete test token")
            }
        }
    }
}
