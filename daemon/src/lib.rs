//! qsi-daemon: `qsid`, the site daemon (tunnels over TLS 1.3 and QUIC), and `qsi`, the operator CLI.
//!
//! Map: [`config`] (site TOML, two-stage validation), [`tls`] (post-quantum providers, peer verification
//! seam), [`tunnel`] (control and data connections, flows, the TLS/TCP framing), [`admin`] (Unix admin
//! socket), [`metrics`] (Prometheus text), [`qkd`] (QKD keys in the handshake: key source/lookup seam and the
//! key-exchange group), [`server`] (the qsid process), [`testbed`] (throw-away sites for
//! the demo, the benchmark and the end-to-end tests), [`cli`] (`qsi`).

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod auth;
pub mod card;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod portal;
pub mod qkd;
pub mod server;
pub mod testbed;
pub mod tls;
pub mod tunnel;
