//! Decoy-state BB84 QKD link simulator with post-processing and ETSI GS QKD 014 key managers

#![forbid(unsafe_code)]
