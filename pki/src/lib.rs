//! Certificate profiles, issuance, CRL and OCSP, RFC 5280 path validation through bridges

#![forbid(unsafe_code)]
pub mod ca;
pub mod chuid;
pub mod fascn;
pub mod path;
pub mod profiles;
pub mod revocation;
pub mod validate;
