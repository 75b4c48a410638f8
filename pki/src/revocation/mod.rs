//! Revocation evidence: CRLs (complete, delta, indirect, partitioned by distribution point and reason)
//! and OCSP responses, as the pure validator consumes them, plus the daemon's runtime side
//! ([`fetch`]): CRLs fetched over HTTP from distribution points, cached, refreshed before nextUpdate.

pub mod crl;
pub mod fetch;
pub mod ocsp;

pub use crl::Crl;
pub use fetch::{CrlCache, CrlSource, FetchError, HttpSource, StalePolicy};
pub use ocsp::OcspResponse;
