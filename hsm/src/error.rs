//! Errors a person can act on: each variant says what went wrong and carries what is needed to fix it.

use std::path::PathBuf;

/// The PIN state flags a token reports (`CKF_USER_PIN_COUNT_LOW`, `..._FINAL_TRY`, `..._LOCKED`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PinFlags {
    /// At least one wrong PIN was entered since the last successful login.
    pub count_low: bool,
    /// The next wrong PIN locks the PIN.
    pub final_try: bool,
    /// The PIN is locked: the security officer must reset it (`C_InitPIN`).
    pub locked: bool,
}

impl std::fmt::Display for PinFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.count_low {
            parts.push("count low");
        }
        if self.final_try {
            parts.push("final try");
        }
        if self.locked {
            parts.push("locked");
        }
        if parts.is_empty() {
            f.write_str("no PIN flags raised")
        } else {
            write!(f, "PIN flags: {}", parts.join(", "))
        }
    }
}

/// Everything that can go wrong in a key store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PKCS#11 module (a shared library) could not be loaded.
    #[error(
        "cannot load PKCS#11 module {path}: {reason}. Install SoftHSM2 (`apt-get install softhsm2`, \
         module /usr/lib/softhsm/libsofthsm2.so) or give the path of your HSM vendor's PKCS#11 module"
    )]
    ModuleNotFound {
        /// The path that was tried.
        path: PathBuf,
        /// Why loading failed.
        reason: String,
    },

    /// No token with the wanted label or serial number is present.
    #[error(
        "no token {wanted:?} in PKCS#11 module {module}; tokens present: {}",
        present_list(present)
    )]
    TokenNotFound {
        /// The label or serial asked for.
        wanted: String,
        /// The module searched.
        module: PathBuf,
        /// Labels of the tokens that are present (initialized) in this module.
        present: Vec<String>,
    },

    /// `init-token` was asked for a label that a token of the module already has.
    #[error(
        "a token labelled {label:?} exists already; choose another label (tokens are never re-initialized here)"
    )]
    TokenExists {
        /// The label.
        label: String,
    },

    /// The token rejected the PIN.
    #[error(
        "wrong PIN for token {token:?} ({flags}); check the PIN file or variable, and stop before the PIN locks"
    )]
    WrongPin {
        /// Token label.
        token: String,
        /// The token's PIN flags after the failed attempt.
        flags: PinFlags,
    },

    /// The user PIN is locked after too many wrong attempts.
    #[error(
        "the user PIN of token {token:?} is locked ({flags}); the security officer must reset it (`C_InitPIN`, e.g. `pkcs11-tool --init-pin --login --login-type so`)"
    )]
    PinLocked {
        /// Token label.
        token: String,
        /// The token's PIN flags.
        flags: PinFlags,
    },

    /// A PIN or passphrase could not be read from its file or environment variable.
    #[error("cannot read secret from {source_name}: {reason}")]
    PinSource {
        /// Where it was read from (`file /path` or `env NAME`).
        source_name: String,
        /// Why it failed.
        reason: String,
    },

    /// No key matches the label or PKCS#11 URI.
    #[error("no key {name:?} on token {token:?}; `qsi hsm list` shows the keys present")]
    KeyNotFound {
        /// The label or URI asked for.
        name: String,
        /// Token label (or file store path).
        token: String,
    },

    /// More than one key matches a label or URI.
    #[error(
        "{count} keys match {name:?} on token {token:?}; name the key by its PKCS#11 URI with id="
    )]
    AmbiguousKey {
        /// The label or URI asked for.
        name: String,
        /// Token label.
        token: String,
        /// How many matched.
        count: usize,
    },

    /// A key with this label exists already.
    #[error(
        "a key labelled {label:?} exists already on token {token:?}; choose another label or delete the old key"
    )]
    KeyExists {
        /// The label.
        label: String,
        /// Token label.
        token: String,
    },

    /// The token does not offer a mechanism this operation needs.
    #[error(
        "token {token:?} does not support {mechanism}; `qsi hsm test` lists the mechanisms it offers"
    )]
    MechanismNotSupported {
        /// The mechanism (PKCS#11 name).
        mechanism: String,
        /// Token label.
        token: String,
    },

    /// The key cannot be used for this operation (wrong type, or its attributes forbid it).
    #[error("key {key:?} cannot be used to {operation}: {reason}")]
    NotPermitted {
        /// Label of the key.
        key: String,
        /// What was attempted.
        operation: &'static str,
        /// Why not.
        reason: String,
    },

    /// Authenticated decryption failed: wrong key, wrong associated data, or tampered ciphertext.
    #[error(
        "decryption under key {key:?} failed: the ciphertext or its associated data was altered, or it was sealed under another key"
    )]
    DecryptFailed {
        /// Label of the key-encryption key.
        key: String,
    },

    /// A PKCS#11 URI (RFC 7512) could not be parsed.
    #[error("invalid PKCS#11 URI {uri:?}: {reason}")]
    InvalidUri {
        /// The URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A label is empty, too long, or contains control characters.
    #[error("invalid key label {label:?}: {reason}")]
    InvalidLabel {
        /// The label.
        label: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Any other PKCS#11 failure, with the function and return value.
    #[error("PKCS#11 {function} failed on token {token:?}: {detail}")]
    Pkcs11 {
        /// Token label (empty before a token is chosen).
        token: String,
        /// The PKCS#11 function or step.
        function: String,
        /// The return value or library error.
        detail: String,
    },

    /// A stored key object or file is malformed.
    #[error("stored key {name:?} is corrupt: {reason}")]
    Corrupt {
        /// Label or path.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The passphrase of a file key store is wrong.
    #[error("wrong passphrase for the file key store at {path}")]
    WrongPassphrase {
        /// Store directory.
        path: PathBuf,
    },

    /// A file of the file key store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Setting up a SoftHSM2 token (test and demo helper) failed.
    #[error("SoftHSM2 setup failed: {0}")]
    SoftHsmSetup(String),

    /// A host-side cryptographic operation (aws-lc-rs) failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
}

fn present_list(present: &[String]) -> String {
    if present.is_empty() {
        "none (initialize one with `qsi hsm init-token`)".to_string()
    } else {
        present
            .iter()
            .map(|l| format!("{l:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
