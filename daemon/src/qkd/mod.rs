//! QKD keys in the tunnel handshake: the seam between the key-exchange group ([`kx`]) and the KMS.
//!
//! The side that dials a data connection is the QKD *master*: it takes a key its KMS already announced to
//! the peer ([`QkdKeySource`], one per peer link) and names it in its key share. The accepting side is the
//! *slave*: it finds that key by the master SAE ID and key_ID in the share ([`QkdKeyLookup`], one for the
//! whole server). Both calls happen inside the TLS handshake, which rustls drives synchronously (and quinn
//! under its endpoint lock), so implementations answer from memory: no network, no fsync.
//!
//! Every key is handed out at most once. A lookup of an ID that was never announced, or was already used,
//! fails without consuming anything, so a forged or replayed share costs the pool nothing.
//!
//! [`MemoryKeySource`] and [`MemoryKeyLookup`] are the in-memory implementations the tests use (and a
//! reference for the contract); the KMS-backed ones live next to the KMS.
//!
//! ```
//! use qsi_daemon::qkd::{memory_link, QkdKeyLookup, QkdKeySource};
//! let (source, lookup) = memory_link("site-a", "site-b", 2, 32).unwrap();
//! let k = source.take().unwrap();
//! let same = lookup.take(&k.master_sae_id, &k.key_id).unwrap();
//! assert_eq!(k.key, same.key);
//! // Used once: the second lookup fails and leaves the rest of the reserve alone.
//! assert!(lookup.take(&k.master_sae_id, &k.key_id).is_err());
//! assert_eq!(lookup.len(), 1);
//! ```

pub mod kms;
pub mod kx;

pub use kx::QkdHandshake;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;

use zeroize::Zeroizing;

/// Longest SAE ID or key_ID we put in (or accept from) a key share, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Shortest QKD key the group accepts (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// Longest QKD key the group accepts (8192 bits).
pub const MAX_KEY_LEN: usize = 1024;

/// One QKD key for one handshake; its bytes are erased on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct QkdKey {
    /// The SAE that took the key from its KME with `enc_keys` (the dialing side).
    pub master_sae_id: String,
    /// The SAE the key was issued for (the accepting side, which fetched it with `dec_keys`).
    pub slave_sae_id: String,
    /// The ETSI GS QKD 014 key_ID (not secret; it travels in the key share).
    pub key_id: String,
    /// The key bytes.
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for QkdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QkdKey")
            .field("master_sae_id", &self.master_sae_id)
            .field("slave_sae_id", &self.slave_sae_id)
            .field("key_id", &self.key_id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Which key a connection used, and the SAE at the other end of it (IDs only, nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QkdKeyRef {
    /// The master SAE ID named in the key share.
    pub master_sae_id: String,
    /// The slave SAE ID of the key.
    pub slave_sae_id: String,
    /// The key_ID named in the key share.
    pub key_id: String,
}

impl From<&QkdKey> for QkdKeyRef {
    fn from(k: &QkdKey) -> Self {
        QkdKeyRef {
            master_sae_id: k.master_sae_id.clone(),
            slave_sae_id: k.slave_sae_id.clone(),
            key_id: k.key_id.clone(),
        }
    }
}

/// Why no QKD key could be produced, found or accepted. Becomes the text of the handshake error and, via
/// [`QkdKxError::label`], a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QkdKxError {
    /// The link's reserve holds no announced key (the reason says why: empty, link down, eavesdropper).
    #[error("no QKD key available: {0}")]
    NoKey(String),
    /// The share names a key_ID this side never received for that master SAE.
    #[error("QKD key_ID {key_id} from SAE {master_sae_id} was never announced")]
    Unannounced {
        /// Master SAE ID named in the share.
        master_sae_id: String,
        /// key_ID named in the share.
        key_id: String,
    },
    /// The share names a key_ID that an earlier handshake already used.
    #[error("QKD key_ID {key_id} from SAE {master_sae_id} was already used")]
    AlreadyUsed {
        /// Master SAE ID named in the share.
        master_sae_id: String,
        /// key_ID named in the share.
        key_id: String,
    },
    /// The share names a master SAE no configured link belongs to.
    #[error("unknown QKD master SAE {0}")]
    UnknownSae(String),
    /// The key share or the key itself does not have the expected shape.
    #[error("malformed QKD key share: {0}")]
    Malformed(String),
    /// The key store failed (the text says how).
    #[error("QKD key store: {0}")]
    Store(String),
    /// The peer's certificate belongs to a different SAE than the one the key was shared with.
    #[error(
        "peer certificate belongs to SAE {expected}, but the QKD key was shared with SAE {named}"
    )]
    WrongSae {
        /// The SAE ID configured for the authenticated peer.
        expected: String,
        /// The SAE ID the handshake's key was shared with.
        named: String,
    },
    /// A QKD check was asked for on a connection whose handshake did not use a QKD key.
    #[error("the handshake did not use a QKD key")]
    NotUsed,
}

impl QkdKxError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            QkdKxError::NoKey(_) => "no_key",
            QkdKxError::Unannounced { .. } => "unannounced",
            QkdKxError::AlreadyUsed { .. } => "already_used",
            QkdKxError::UnknownSae(_) => "unknown_sae",
            QkdKxError::Malformed(_) => "malformed",
            QkdKxError::Store(_) => "store",
            QkdKxError::WrongSae { .. } => "wrong_sae",
            QkdKxError::NotUsed => "not_used",
        }
    }
}

/// Client side (the QKD master, which dials): one per peer link.
///
/// `take` hands out a key that is already in memory and already announced to the peer; it must not block
/// on the network. The key is gone from the source once taken.
pub trait QkdKeySource: Send + Sync + fmt::Debug {
    /// The next announced key for this link, removed from the reserve.
    fn take(&self) -> Result<QkdKey, QkdKxError>;

    /// Returns a key whose ID never left this process (the connection was abandoned before its
    /// ClientHello was built). The default erases it, which is always safe; a source may put it back.
    fn give_back(&self, key: QkdKey) {
        drop(key);
    }
}

/// Server side (the QKD slave, which accepts): one for the whole server, finding the link by master SAE ID.
///
/// `take` removes the key on success. An unannounced or already used ID fails WITHOUT consuming anything.
/// It must not block on the network or wait for the disk.
pub trait QkdKeyLookup: Send + Sync + fmt::Debug {
    /// The key `key_id` shared with `master_sae_id`, removed from the reserve.
    fn take(&self, master_sae_id: &str, key_id: &str) -> Result<QkdKey, QkdKxError>;
}

/// What a peer link does when no QKD key can be used for a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QkdPolicy {
    /// No QKD key, no data connection (fail closed and say why).
    Require,
    /// Fall back to the hybrid group alone, loudly, and count it.
    Prefer,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-memory [`QkdKeySource`] for one link: a queue of announced keys, handed out in order.
#[derive(Default)]
pub struct MemoryKeySource {
    keys: Mutex<VecDeque<QkdKey>>,
}

impl fmt::Debug for MemoryKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeySource")
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryKeySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a key to the reserve.
    pub fn push(&self, key: QkdKey) {
        lock(&self.keys).push_back(key);
    }

    /// How many keys are left.
    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// True when no key is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl QkdKeySource for MemoryKeySource {
    fn take(&self) -> Result<QkdKey, QkdKxError> {
        lock(&self.keys)
            .pop_front()
            .ok_or_else(|| QkdKxError::NoKey("the link's reserve is empty".into()))
    }

    fn give_back(&self, key: QkdKey) {
        lock(&self.keys).push_front(key);
    }
}

#[derive(Default)]
struct LookupState {
    keys: HashMap<(String, String), QkdKey>,
    used: HashSet<(String, String)>,
}

/// In-memory [`QkdKeyLookup`]: announced keys by (master SAE ID, key_ID), plus the IDs already used.
#[derive(Default)]
pub struct MemoryKeyLookup {
    state: Mutex<LookupState>,
}

impl fmt::Debug for MemoryKeyLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyLookup")
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryKeyLookup {
    /// An empty lookup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a key available (as if fetched by ID after the master announced it). Replaces a key with the
    /// same IDs that was not used yet; an ID already used stays used.
    pub fn announce(&self, key: QkdKey) {
        let id = (key.master_sae_id.clone(), key.key_id.clone());
        let mut s = lock(&self.state);
        if !s.used.contains(&id) {
            s.keys.insert(id, key);
        }
    }

    /// How many announced keys are still unused.
    pub fn len(&self) -> usize {
        lock(&self.state).keys.len()
    }

    /// True when no announced key is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Is this key still available?
    pub fn contains(&self, master_sae_id: &str, key_id: &str) -> bool {
        lock(&self.state)
            .keys
            .contains_key(&(master_sae_id.to_string(), key_id.to_string()))
    }
}

impl QkdKeyLookup for MemoryKeyLookup {
    fn take(&self, master_sae_id: &str, key_id: &str) -> Result<QkdKey, QkdKxError> {
        let id = (master_sae_id.to_string(), key_id.to_string());
        let mut s = lock(&self.state);
        match s.keys.remove(&id) {
            Some(k) => {
                s.used.insert(id);
                Ok(k)
            }
            None if s.used.contains(&id) => Err(QkdKxError::AlreadyUsed {
                master_sae_id: id.0,
                key_id: id.1,
            }),
            None => Err(QkdKxError::Unannounced {
                master_sae_id: id.0,
                key_id: id.1,
            }),
        }
    }
}

/// A random key with a fresh UUID key_ID, as a KME would deliver it.
pub fn random_key(master: &str, slave: &str, len: usize) -> Result<QkdKey, QkdKxError> {
    let mut key = Zeroizing::new(vec![0u8; len]);
    aws_lc_rs::rand::fill(&mut key)
        .map_err(|_| QkdKxError::Store("the random generator failed".into()))?;
    Ok(QkdKey {
        master_sae_id: master.to_string(),
        slave_sae_id: slave.to_string(),
        key_id: uuid::Uuid::new_v4().to_string(),
        key,
    })
}

/// Both ends of an in-memory link with `count` announced keys of `len` bytes each.
pub fn memory_link(
    master: &str,
    slave: &str,
    count: usize,
    len: usize,
) -> Result<(MemoryKeySource, MemoryKeyLookup), QkdKxError> {
    let source = MemoryKeySource::new();
    let lookup = MemoryKeyLookup::new();
    for _ in 0..count {
        let k = random_key(master, slave, len)?;
        lookup.announce(k.clone());
        source.push(k);
    }
    Ok((source, lookup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_once_and_failures_consume_nothing() {
        let (source, lookup) = memory_link("a", "b", 3, 32).unwrap();
        let k = source.take().unwrap();
        assert_eq!(source.len(), 2);
        assert!(matches!(
            lookup.take("a", "no-such-id"),
            Err(QkdKxError::Unannounced { .. })
        ));
        assert!(matches!(
            lookup.take("x", &k.key_id),
            Err(QkdKxError::Unannounced { .. })
        ));
        assert_eq!(lookup.len(), 3, "failed lookups must not consume");
        let got = lookup.take("a", &k.key_id).unwrap();
        assert_eq!(got.key, k.key);
        assert_eq!(lookup.len(), 2);
        let again = lookup.take("a", &k.key_id).unwrap_err();
        assert_eq!(again.label(), "already_used");
        assert_eq!(lookup.len(), 2);
        // Re-announcing a used ID does not revive it.
        lookup.announce(k.clone());
        assert!(lookup.take("a", &k.key_id).is_err());
    }

    #[test]
    fn source_runs_dry_and_takes_back() {
        let (source, _) = memory_link("a", "b", 1, 32).unwrap();
        let k = source.take().unwrap();
        assert_eq!(source.take().unwrap_err().label(), "no_key");
        source.give_back(k.clone());
        assert_eq!(source.take().unwrap().key_id, k.key_id);
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let mut k = random_key("a", "b", 16).unwrap();
        k.key = Zeroizing::new(vec![0xAB; 16]);
        k.key_id = "id-1".into();
        let s = format!("{k:?}");
        assert!(s.contains("[redacted]") && s.contains("id-1"), "{s}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab"),
            "{s}"
        );
    }
}
