//! qsi-daemon: `qsid`, the site daemon (tunnels over TLS 1.3 and QUIC), and `qsi`, the operator CLI.

#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
