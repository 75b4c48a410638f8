//! The key-source seam: where QKD keys come from. The ETSI GS QKD 014 client implements it for every KME
//! (qkd-sim and vendor devices alike); the KMS core only sees this trait.

use std::future::Future;
use std::pin::Pin;

use crate::secret::KeyMaterial;

/// A boxed future, so links with different sources can live in one map.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A key as the KME delivered it: ID and bytes (size not yet checked).
pub type DeliveredKey = (String, KeyMaterial);

/// Why a fetch from the KME failed, and whether keys may have left the KME anyway.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The KME answered with an ETSI error (400, 401, 503): it delivered nothing.
    #[error("KME refused ({status}): {message}{details}")]
    Kme {
        /// HTTP status.
        status: u16,
        /// The Error body's `message`.
        message: String,
        /// The Error body's `details`, flattened.
        details: String,
    },
    /// The connection or TLS handshake failed before the request was sent: nothing delivered.
    #[error("cannot reach the KME at {url}: {reason}")]
    Connect {
        /// KME URL.
        url: String,
        /// Cause.
        reason: String,
    },
    /// No answer in time after the request was sent: the KME may have delivered.
    #[error(
        "the KME did not answer within {0} ms (its keys may have left it: the batch is written off)"
    )]
    Timeout(u64),
    /// The connection dropped after the request was sent: the KME may have delivered.
    #[error("the KME dropped the connection mid-request: {0}")]
    Dropped(String),
    /// A success status with a body that is not a valid Key container: the KME thinks it delivered.
    #[error("the KME answered with a malformed key container: {0}")]
    Malformed(String),
    /// The request could not be built (bad SAE ID, bad size): nothing was sent.
    #[error("invalid request: {0}")]
    Request(String),
}

impl FetchError {
    /// True when the KME certainly handed over no key, so the batch is failed rather than written off.
    pub fn nothing_delivered(&self) -> bool {
        matches!(
            self,
            Self::Kme { .. } | Self::Connect { .. } | Self::Request(_)
        )
    }
}

/// What the KME says about a link (ETSI 014 Status, the fields the KMS uses).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkStatus {
    /// Default key size in bits.
    pub key_size: u32,
    /// Keys the KME has ready.
    pub stored_key_count: u64,
    /// Most keys per request.
    pub max_key_per_request: u32,
    /// Largest key size in bits.
    pub max_key_size: u32,
    /// Smallest key size in bits.
    pub min_key_size: u32,
}

/// A source of QKD keys for one link, as the SAE on this site sees its KME.
pub trait KeySource: Send + Sync {
    /// ETSI 014 Get status.
    fn status(&self) -> BoxFuture<'_, Result<LinkStatus, FetchError>>;
    /// ETSI 014 Get key (`enc_keys`, master role): `number` new keys of `size` bits.
    fn enc_keys(
        &self,
        number: u32,
        size: u32,
    ) -> BoxFuture<'_, Result<Vec<DeliveredKey>, FetchError>>;
    /// ETSI 014 Get key with key IDs (`dec_keys`, slave role).
    fn dec_keys<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<DeliveredKey>, FetchError>>;
}
