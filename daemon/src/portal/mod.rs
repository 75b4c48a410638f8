//! The login portal: HTTPS over the same post-quantum TLS 1.3 as the tunnels, mutual authentication with
//! smart cards (PIV, PIV-I), sessions bound to their TLS connection, and labels enforced on every data
//! object and forwarded service.
//!
//! - [`tls`]: PQ-only TLS 1.3 configurations and the exporter binding.
//! - [`validate`]: the seam to the certificate path validator.
//! - [`session`]: the session table (pure).
//! - [`config`]: the portal's TOML configuration.
//! - [`server`]: request handling and the accept loop.
//! - [`admin`]: the access admin socket `qsi access` talks to while the portal runs.
//! - [`client`]: the client side, used by `qsi login`, the tests and the benchmark.

pub mod admin;
pub mod client;
pub mod config;
pub mod server;
pub mod session;
pub mod testbed;
pub mod tls;
pub mod validate;

pub use config::PortalConfig;
pub use server::{ConnInfo, Portal};
pub use validate::{CardRefusal, CardValidator, ValidatedCard, WebPkiCardValidator};
