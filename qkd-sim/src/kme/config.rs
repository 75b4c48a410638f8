//! `link.toml`: the configuration of `qkd-sim serve` (two stages: raw serde, then validated).
//!
//! ```toml
//! admin_socket = "qkd-sim.sock"   # optional; relative paths are relative to this file
//!
//! [link]
//! params = "gys"                  # named parameter set (gys, lmc05, modern) or a parameter TOML file
//! distance_km = 25.0
//! seed = 1
//! speedup = 1.0                   # link time runs this many times faster than wall-clock time
//! eve_fraction = 0.0              # intercept-resend eavesdropper from the start (0..1)
//! # block_pulses = 10000000       # pulses per block (default: about 65,536 sifted bits)
//!
//! [limits]                        # what Status announces and requests are checked against
//! key_size = 256
//! max_key_count = 100000
//! max_key_per_request = 1024
//! min_key_size = 64
//! max_key_size = 8192
//! max_sae_id_count = 2
//!
//! [tls]
//! ca = "ca.pem"                   # the CA that issued the SAE certificates
//!
//! [alice]
//! kme_id = "KME-Alice"
//! listen = "127.0.0.1:8443"
//! cert = "kme-alice.pem"          # certificate chain, PEM
//! key = "kme-alice.key"           # private key, PEM
//! sae = [{ id = "sae-a", cert = "sae-a.pem" }]   # SAEs attached, by certificate
//!
//! [bob]
//! # the same fields
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use qsi_etsi014::Limits;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin_socket: Option<PathBuf>,
    link: RawLink,
    #[serde(default)]
    limits: RawLimits,
    tls: RawTls,
    alice: RawKme,
    bob: RawKme,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    #[serde(default = "default_params")]
    params: String,
    distance_km: f64,
    #[serde(default)]
    seed: u64,
    #[serde(default = "one")]
    speedup: f64,
    #[serde(default)]
    eve_fraction: f64,
    block_pulses: Option<u64>,
}

fn default_params() -> String {
    "gys".into()
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    key_size: Option<u32>,
    max_key_count: Option<u64>,
    max_key_per_request: Option<u32>,
    min_key_size: Option<u32>,
    max_key_size: Option<u32>,
    max_sae_id_count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKme {
    kme_id: String,
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    sae: Vec<RawSae>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSae {
    id: String,
    cert: PathBuf,
}

/// The link model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Named parameter set or path to a parameter TOML file.
    pub params: String,
    /// Fibre length.
    pub distance_km: f64,
    /// Seed of the simulation.
    pub seed: u64,
    /// Link time per wall-clock time.
    pub speedup: f64,
    /// Eavesdropper's fraction at start.
    pub eve_fraction: f64,
    /// Pulses per block (default: about 65,536 sifted signal bits).
    pub block_pulses: Option<u64>,
}

/// An SAE attached to a KME.
#[derive(Debug, Clone, PartialEq)]
pub struct SaeConfig {
    /// Its SAE ID.
    pub id: String,
    /// Its certificate (PEM); a client presenting this certificate is this SAE.
    pub cert: PathBuf,
}

/// One KME.
#[derive(Debug, Clone, PartialEq)]
pub struct KmeConfig {
    /// KME ID.
    pub kme_id: String,
    /// Address to listen on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// SAEs attached.
    pub saes: Vec<SaeConfig>,
}

/// The validated configuration of `qkd-sim serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Link model.
    pub link: LinkConfig,
    /// Limits of both KMEs.
    pub limits: Limits,
    /// CA of the SAE certificates.
    pub ca: PathBuf,
    /// Alice's KME.
    pub alice: KmeConfig,
    /// Bob's KME.
    pub bob: KmeConfig,
    /// A fault injected into Bob's KME (set by `qkd-sim serve --fault`, never from the file).
    pub fault: Option<super::api::Fault>,
}

impl ServeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}: create one with `qkd-sim certs DIR`, which writes DIR/link.toml",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and validates config text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).context("malformed configuration")?;
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let d = Limits::default();
        let l = raw.limits;
        let limits = Limits {
            key_size: l.key_size.unwrap_or(d.key_size),
            max_key_count: l.max_key_count.unwrap_or(d.max_key_count),
            max_key_per_request: l.max_key_per_request.unwrap_or(d.max_key_per_request),
            max_key_size: l.max_key_size.unwrap_or(d.max_key_size),
            min_key_size: l.min_key_size.unwrap_or(d.min_key_size),
            max_sae_id_count: l.max_sae_id_count.unwrap_or(2),
        };
        limits.check().context("[limits]")?;
        if limits.max_sae_id_count as usize >= super::pool::MAX_SLAVES {
            bail!(
                "[limits] max_sae_id_count = {}: at most {} additional slave SAEs",
                limits.max_sae_id_count,
                super::pool::MAX_SLAVES - 1
            );
        }
        let link = raw.link;
        if !(link.speedup.is_finite() && link.speedup > 0.0) {
            bail!(
                "[link] speedup = {}: must be a positive number",
                link.speedup
            );
        }
        if !(0.0..=1.0).contains(&link.eve_fraction) {
            bail!(
                "[link] eve_fraction = {}: must lie in 0..1",
                link.eve_fraction
            );
        }
        if link.block_pulses == Some(0) {
            bail!("[link] block_pulses = 0: a block needs pulses (leave it out for the default)");
        }
        if !(link.distance_km.is_finite() && link.distance_km >= 0.0) {
            bail!("[link] distance_km = {}: must be >= 0", link.distance_km);
        }
        let kme = |name: &str, k: RawKme| -> anyhow::Result<KmeConfig> {
            if k.kme_id.is_empty() {
                bail!("[{name}] kme_id must not be empty");
            }
            let listen = k.listen.parse().with_context(|| {
                format!(
                    "[{name}] listen = {:?}: give IP:PORT, e.g. 127.0.0.1:8443",
                    k.listen
                )
            })?;
            Ok(KmeConfig {
                kme_id: k.kme_id,
                listen,
                cert: rel(&k.cert),
                key: rel(&k.key),
                saes: k
                    .sae
                    .into_iter()
                    .map(|s| SaeConfig {
                        id: s.id,
                        cert: rel(&s.cert),
                    })
                    .collect(),
            })
        };
        let alice = kme("alice", raw.alice)?;
        let bob = kme("bob", raw.bob)?;
        let mut seen = std::collections::HashSet::new();
        for s in alice.saes.iter().chain(&bob.saes) {
            if s.id.is_empty() || !seen.insert(s.id.clone()) {
                bail!(
                    "SAE ID {:?} is empty or attached twice: each SAE belongs to one KME",
                    s.id
                );
            }
        }
        if alice.kme_id == bob.kme_id {
            bail!("[alice] and [bob] have the same kme_id {:?}", alice.kme_id);
        }
        Ok(ServeConfig {
            admin_socket: rel(&raw.admin_socket.unwrap_or_else(|| "qkd-sim.sock".into())),
            link: LinkConfig {
                params: if link.params.ends_with(".toml") {
                    rel(Path::new(&link.params)).to_string_lossy().into_owned()
                } else {
                    link.params
                },
                distance_km: link.distance_km,
                seed: link.seed,
                speedup: link.speedup,
                eve_fraction: link.eve_fraction,
                block_pulses: link.block_pulses,
            },
            limits,
            ca: rel(&raw.tls.ca),
            alice,
            bob,
            fault: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[link]
distance_km = 10.0
[tls]
ca = "ca.pem"
[alice]
kme_id = "A"
listen = "127.0.0.1:0"
cert = "a.pem"
key = "a.key"
sae = [{ id = "sae-a", cert = "sae-a.pem" }]
[bob]
kme_id = "B"
listen = "127.0.0.1:0"
cert = "/abs/b.pem"
key = "b.key"
sae = [{ id = "sae-b", cert = "sae-b.pem" }]
"#;

    #[test]
    fn parses_with_defaults_and_relative_paths() {
        let c = ServeConfig::parse(GOOD, Path::new("/etc/q")).unwrap();
        assert_eq!(c.alice.cert, Path::new("/etc/q/a.pem"));
        assert_eq!(c.bob.cert, Path::new("/abs/b.pem"));
        assert_eq!(c.admin_socket, Path::new("/etc/q/qkd-sim.sock"));
        assert_eq!(c.link.params, "gys");
        assert_eq!(c.limits.key_size, 256);
        assert_eq!(c.alice.saes[0].id, "sae-a");
    }

    #[test]
    fn refuses_what_would_bite_later() {
        for (from, to, needle) in [
            (
                "distance_km = 10.0",
                "distance_km = 10.0\nspeedup = 0",
                "speedup",
            ),
            (
                "distance_km = 10.0",
                "distance_km = 10.0\neve_fraction = 2",
                "eve_fraction",
            ),
            (
                "distance_km = 10.0",
                "distance_km = 10.0\ncolour = 1",
                "colour",
            ),
            ("kme_id = \"B\"", "kme_id = \"A\"", "same kme_id"),
            ("id = \"sae-b\"", "id = \"sae-a\"", "attached twice"),
            (
                "listen = \"127.0.0.1:0\"\ncert = \"a.pem\"",
                "listen = \"localhost\"\ncert = \"a.pem\"",
                "IP:PORT",
            ),
        ] {
            let text = GOOD.replacen(from, to, 1);
            let e = format!(
                "{:#}",
                ServeConfig::parse(&text, Path::new(".")).unwrap_err()
            );
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let text = format!("{GOOD}\n[limits]\nkey_size = 100\n");
        assert!(ServeConfig::parse(&text, Path::new(".")).is_err());
    }
}
