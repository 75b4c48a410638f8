//! Key management: QKD key pools over ETSI GS QKD 014, lifecycle, at-most-once delivery, audit

#![forbid(unsafe_code)]
