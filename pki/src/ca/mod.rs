//! The CA: issuance from PKCS#10 requests under a profile, CRLs, OCSP (RFC 6960), the redb CA
//! database and the publication of certificates as .p7c bundles.

pub mod authority;
pub mod crl;
pub mod csr;
pub mod db;
pub mod hsm_signer;
pub mod issue;
pub mod ocsp;
pub mod p7c;
pub mod signer;
