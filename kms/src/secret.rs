//! Key bytes in memory: zeroized on drop, never printed.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Secret key material (a QKD key, a data key, a managed key). Zeroized on drop; `Debug` prints
/// `[redacted]` and the length only, so a key never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<Vec<u8>>);

impl KeyMaterial {
    /// Takes ownership of `bytes`; they are zeroized when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key bytes. Callers copy them only into other zeroizing buffers.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty key (never valid, but possible in a malformed KME answer).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in bits, as ETSI GS QKD 014 counts key sizes.
    pub fn bits(&self) -> usize {
        self.0.len() * 8
    }

    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial([redacted; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let k = KeyMaterial::new(vec![0xAB; 32]);
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(s.contains("32 bytes"));
        assert_eq!(k.bits(), 256);
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        let a = KeyMaterial::new(vec![1, 2, 3]);
        assert!(a.ct_eq(&KeyMaterial::new(vec![1, 2, 3])));
        assert!(!a.ct_eq(&KeyMaterial::new(vec![1, 2, 4])));
        assert!(!a.ct_eq(&KeyMaterial::new(vec![1, 2])));
    }
}
