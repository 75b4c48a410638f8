//! The simulated device pair's key managers (KMEs): ETSI GS QKD 014 v1.1.1 over HTTPS with
//! mutual TLS, fed by the link model.
//!
//! - [`pool`]: the pure core, both sides' key streams and the keys awaiting dec_keys;
//! - [`api`]: one KME's answer to one request (pure, over the pool);
//! - [`http`], [`tls`]: the HTTPS edge (hyper, tokio-rustls), SAE identity from certificates;
//! - [`serve`]: the running pair with its link thread and admin socket; [`config`]: `link.toml`;
//! - [`supply`]: the seam to the link model; [`synthetic`]: a stand-in used by the benchmark only;
//! - [`certs`]: throw-away certificates; [`client`]: a minimal SAE client; [`bench`].

pub mod api;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod link_supply;
pub mod pool;
pub mod serve;
pub mod supply;
pub mod synthetic;
pub mod tls;
