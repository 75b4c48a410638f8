//! Errors of the KMS library.

use crate::audit::AuditError;
use crate::kek::SealError;
use crate::lifecycle::LifecycleError;

/// Everything the KMS can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The redb database failed (disk full, I/O error, already open by another process).
    #[error("key store database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not parse: the file was altered or written by another version.
    #[error("corrupt record in the key store: {0}")]
    Corrupt(String),
    /// The KEK or the signing key failed, or a wrapped key did not authenticate.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The audit log failed verification.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// A managed key's lifecycle refused the operation.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The store's writer stopped (the service is shutting down or hit a fatal error).
    #[error("the key store is closed")]
    Closed,
    /// No such link in the configuration.
    #[error("unknown link {0:?}")]
    UnknownLink(String),
    /// No such batch (an internal sequencing error).
    #[error("unknown batch {0}")]
    UnknownBatch(u64),
    /// No such managed key.
    #[error("unknown managed key {0:?}")]
    UnknownManagedKey(String),
    /// The pool has no key to hand out.
    #[error("no key available on link {link}{hint}")]
    Exhausted {
        /// Link name.
        link: String,
        /// What the operator can check.
        hint: &'static str,
    },
    /// The key ID is not in memory: never announced, not fetched yet, or already used.
    #[error("key {0} is not available (never announced, not fetched yet, or already used)")]
    NotAvailable(String),
    /// The operation is for the other role (a master call on a slave link or the reverse).
    #[error("link {link} is a {role} link; {what} is for the other side")]
    WrongRole {
        /// Link name.
        link: String,
        /// Its role.
        role: &'static str,
        /// The refused call.
        what: &'static str,
    },
    /// The pool is full (a bound protects memory).
    #[error("link {0}: pool full")]
    Full(String),
    /// The key source (KME) failed.
    #[error(transparent)]
    Fetch(#[from] crate::source::FetchError),
}
