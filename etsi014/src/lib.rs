//! ETSI GS QKD 014 v1.1.1 message types, validation and errors

#![forbid(unsafe_code)]
