//! PINs and passphrases: zeroized on drop, `[redacted]` in Debug, read from a file or an environment variable.

use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A PIN or passphrase. The value never appears in `Debug` output or logs and is erased on drop.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Wraps a secret that is already in memory.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// Reads the secret from a file: the first line, without its line ending.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source_name = format!("file {}", path.display());
        let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::PinSource {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?);
        let line = raw.lines().next().unwrap_or("");
        Self::checked(line, source_name)
    }

    /// Reads the secret from an environment variable.
    pub fn from_env(name: &str) -> Result<Self> {
        let source_name = format!("env {name}");
        let value = Zeroizing::new(std::env::var(name).map_err(|e| Error::PinSource {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?);
        Self::checked(value.trim_end_matches(['\r', '\n']), source_name)
    }

    /// Reads the secret from `file:PATH` or `env:NAME` (the form used in configuration files).
    pub fn from_source(spec: &str) -> Result<Self> {
        if let Some(path) = spec.strip_prefix("file:") {
            Self::from_file(path)
        } else if let Some(name) = spec.strip_prefix("env:") {
            Self::from_env(name)
        } else {
            Err(Error::PinSource {
                source_name: spec.to_string(),
                reason:
                    "expected `file:PATH` or `env:NAME`; a PIN is never written into configuration"
                        .into(),
            })
        }
    }

    fn checked(value: &str, source_name: String) -> Result<Self> {
        if value.is_empty() {
            return Err(Error::PinSource {
                source_name,
                reason: "it is empty".into(),
            });
        }
        Ok(Self::new(value))
    }

    /// The secret itself, for handing to the token. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let pin = Pin::new("123456-secret");
        let shown = format!("{pin:?}");
        assert!(!shown.contains("123456"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn file_takes_first_line_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "4321\nignored\n").unwrap();
        assert_eq!(Pin::from_file(&path).unwrap().expose(), "4321");
        assert_eq!(
            Pin::from_source(&format!("file:{}", path.display()))
                .unwrap()
                .expose(),
            "4321"
        );
    }

    #[test]
    fn missing_or_empty_sources_are_errors_that_name_the_source() {
        let err = Pin::from_file("/nonexistent/qsi-pin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/qsi-pin"), "{err}");
        let err = Pin::from_env("QSI_TEST_SURELY_UNSET_PIN_VAR")
            .unwrap_err()
            .to_string();
        assert!(err.contains("QSI_TEST_SURELY_UNSET_PIN_VAR"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            Pin::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            Pin::from_source("123456")
                .unwrap_err()
                .to_string()
                .contains("file:PATH")
        );
    }
}
