//! ETSI GS QKD 014 v1.1.1 ("Protocol and data format of REST-based key delivery API"): the
//! message types, their validation, the error answers with their status codes, and the URL paths.
//!
//! Pure: no I/O. The simulated KMEs in `qkd-sim` and the KMS's ETSI 014 client and server both
//! build on these types, so what the simulator answers and what the KMS expects cannot drift
//! apart, and the KMS code path is the same for the simulator and for vendor hardware.
//!
//! The protocol in one paragraph: a master SAE asks its KME for keys shared with a slave SAE
//! (`enc_keys`, path names the slave); the KME answers keys with fresh UUID key IDs and removes
//! them from its pool; the master sends the IDs to the slave over its own channel; the slave asks
//! its KME for those IDs (`dec_keys`, path names the master) and gets the same keys, once. Every
//! connection is HTTPS with mutual TLS; the KME knows the calling SAE by its certificate. Errors
//! are 400 (bad request), 401 (unauthorized) or 503 (server), with an [`ErrorBody`].
//!
//! Slips in the spec and how we read them: clause 5.1 says "KME ID" where the status path takes
//! the slave SAE ID; the GET dec_keys example puts the slave SAE ID in the path where Table 7
//! names the master SAE ID (we follow the table); Table 11 spells the container's array `Keys`
//! where the examples use `keys` (we write `keys`, read both).
//!
//! ```
//! use qsi_etsi014::{KeyRequest, Limits, validate_key_request, Etsi014Error, Endpoint};
//!
//! // A KME parses the path, then the body, then checks the request against its limits.
//! let ep = Endpoint::parse("/api/v1/keys/sae-b/enc_keys").unwrap();
//! assert_eq!(ep, Endpoint::EncKeys { slave_sae_id: "sae-b".into() });
//! let req = KeyRequest::from_json(br#"{"number": 2, "size": 100}"#).unwrap();
//! let err = validate_key_request(&req, &Limits::default(), "sae-b").unwrap_err();
//! assert_eq!(err.status(), 400);
//! assert_eq!(err.body().message, qsi_etsi014::error::MSG_BAD_PARAMETERS);
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod messages;
pub mod paths;
pub mod validate;

pub use error::{Etsi014Error, ParamProblem};
pub use messages::{
    ErrorBody, Key, KeyContainer, KeyIdRef, KeyIds, KeyMaterial, KeyRequest, Status,
};
pub use paths::{
    EncKeysQuery, Endpoint, dec_keys_path, enc_keys_path, parse_dec_keys_query, status_path,
};
pub use validate::{KeyId, Limits, ValidKeyRequest, validate_key_ids, validate_key_request};
