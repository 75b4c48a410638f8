//! Key management: QKD key pools over ETSI GS QKD 014, lifecycle, at-most-once delivery, audit.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod hsmkeys;
pub mod http;
pub mod kek;
pub mod lifecycle;
pub mod pool;
pub mod secret;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
#[doc(hidden)]
pub mod testkit;
pub mod tls;

pub use error::KmsError;
pub use secret::KeyMaterial;
