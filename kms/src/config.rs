//! `qsi kms serve` configuration: TOML, parsed strictly into raw structs, then validated into the
//! runtime settings with messages that name the field and the fix. Paths are relative to the file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pool::PoolPolicy;
use crate::store::Role;

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A value is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: RawStore,
    admin: RawAdmin,
    hsm: RawHsm,
    server: Option<RawServer>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
    checkpoint_every: Option<u64>,
    checkpoint_interval_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    backend: String,
    module: Option<PathBuf>,
    token: Option<String>,
    dir: Option<PathBuf>,
    pin: String,
    kek_label: Option<String>,
    signer_label: Option<String>,
    #[serde(default)]
    create_missing: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    max_keys_per_request: Option<u32>,
    #[serde(default)]
    sae: Vec<RawSae>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSae {
    id: String,
    certificate: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: String,
    role: String,
    kme_url: String,
    server_name: Option<String>,
    peer_sae_id: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    key_bits: Option<u32>,
    capacity: Option<usize>,
    low_water: Option<usize>,
    batch: Option<usize>,
    stall_after_s: Option<u64>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    retries: Option<u32>,
    #[serde(default)]
    remote_saes: Vec<String>,
    #[serde(default)]
    local_saes: Vec<String>,
}

/// Where the KEK and the audit signing key live.
#[derive(Clone, Debug)]
pub enum HsmSettings {
    /// A PKCS#11 token.
    Pkcs11 {
        /// Module path; `None`: the system's SoftHSM2 module.
        module: Option<PathBuf>,
        /// Token label.
        token: String,
        /// PIN source (`file:PATH` or `env:NAME`).
        pin: String,
        /// Label of the AES-256 KEK.
        kek_label: String,
        /// Label of the ECDSA audit signing key.
        signer_label: String,
        /// Generate the two keys on first start if missing.
        create_missing: bool,
    },
    /// The development file store of qsi-hsm (not for production).
    File {
        /// Directory.
        dir: PathBuf,
        /// Passphrase source.
        pin: String,
        /// Label of the KEK.
        kek_label: String,
        /// Label of the signing key.
        signer_label: String,
        /// Generate the keys if missing.
        create_missing: bool,
    },
}

/// The ETSI 014 server towards local SAEs.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA of the local SAEs' certificates.
    pub client_ca: PathBuf,
    /// Most keys per request.
    pub max_keys_per_request: u32,
    /// Local SAEs: ID and pinned certificate file.
    pub saes: Vec<(String, PathBuf)>,
}

/// One KME link.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// Link name.
    pub name: String,
    /// This site's role.
    pub role: Role,
    /// KME URL.
    pub kme_url: String,
    /// TLS name of the KME, if not the URL host.
    pub server_name: Option<String>,
    /// SAE ID of the peer (slave if master, master if slave).
    pub peer_sae_id: String,
    /// CA of the KME's certificate.
    pub ca: PathBuf,
    /// This SAE's certificate.
    pub cert: PathBuf,
    /// This SAE's key.
    pub key: PathBuf,
    /// Key size.
    pub key_bits: u32,
    /// Pool sizing.
    pub policy: PoolPolicy,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Retries of requests that delivered nothing.
    pub retries: u32,
    /// SAE IDs of applications at the peer site reached over this link.
    pub remote_saes: Vec<String>,
    /// Local SAE IDs allowed to use this link.
    pub local_saes: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct KmsConfig {
    /// redb file.
    pub store_path: PathBuf,
    /// Audit checkpoint every N records.
    pub checkpoint_every: u64,
    /// Audit checkpoint at least this often.
    pub checkpoint_interval: Duration,
    /// Admin socket.
    pub admin_socket: PathBuf,
    /// Key store.
    pub hsm: HsmSettings,
    /// ETSI 014 server, if any.
    pub server: Option<ServerSettings>,
    /// Links.
    pub links: Vec<LinkSettings>,
}

impl KmsConfig {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<config>".into(),
            message: e.to_string(),
        })?;
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let hsm = match raw.hsm.backend.as_str() {
            "pkcs11" => HsmSettings::Pkcs11 {
                module: raw.hsm.module.as_deref().map(abs),
                token: raw.hsm.token.ok_or_else(|| {
                    invalid(
                        "hsm.token",
                        "the PKCS#11 token label is required (e.g. token = \"qsi-kms\")",
                    )
                })?,
                pin: raw.hsm.pin,
                kek_label: raw.hsm.kek_label.unwrap_or_else(|| "qsi-kms-kek".into()),
                signer_label: raw
                    .hsm
                    .signer_label
                    .unwrap_or_else(|| "qsi-kms-audit".into()),
                create_missing: raw.hsm.create_missing,
            },
            "file" => HsmSettings::File {
                dir: abs(&raw.hsm.dir.ok_or_else(|| {
                    invalid(
                        "hsm.dir",
                        "the file backend needs a directory (development only)",
                    )
                })?),
                pin: raw.hsm.pin,
                kek_label: raw.hsm.kek_label.unwrap_or_else(|| "qsi-kms-kek".into()),
                signer_label: raw
                    .hsm
                    .signer_label
                    .unwrap_or_else(|| "qsi-kms-audit".into()),
                create_missing: raw.hsm.create_missing,
            },
            other => {
                return Err(invalid(
                    "hsm.backend",
                    format!("{other:?}: use \"pkcs11\" (production) or \"file\" (development)"),
                ));
            }
        };
        let server = match raw.server {
            None => None,
            Some(s) => {
                let listen = s.listen.parse().map_err(|_| {
                    invalid(
                        "server.listen",
                        format!("{:?} is not an address like 127.0.0.1:8443", s.listen),
                    )
                })?;
                let mut ids = HashSet::new();
                for sae in &s.sae {
                    if sae.id.is_empty() || !ids.insert(sae.id.clone()) {
                        return Err(invalid(
                            "server.sae.id",
                            format!("{:?} is empty or given twice", sae.id),
                        ));
                    }
                }
                Some(ServerSettings {
                    listen,
                    cert: abs(&s.cert),
                    key: abs(&s.key),
                    client_ca: abs(&s.client_ca),
                    max_keys_per_request: s.max_keys_per_request.unwrap_or(128).clamp(1, 1024),
                    saes: s
                        .sae
                        .iter()
                        .map(|x| (x.id.clone(), abs(&x.certificate)))
                        .collect(),
                })
            }
        };
        let mut names = HashSet::new();
        let mut remote: HashMap<(String, Role), String> = HashMap::new();
        let mut links = Vec::new();
        for (i, l) in raw.link.into_iter().enumerate() {
            let f = |x: &str| format!("link[{i}].{x}");
            if l.name.is_empty() || !names.insert(l.name.clone()) {
                return Err(invalid(
                    f("name"),
                    format!("{:?} is empty or used by another link", l.name),
                ));
            }
            let role = match l.role.as_str() {
                "master" => Role::Master,
                "slave" => Role::Slave,
                other => {
                    return Err(invalid(
                        f("role"),
                        format!("{other:?}: use \"master\" or \"slave\""),
                    ));
                }
            };
            let key_bits = l.key_bits.unwrap_or(256);
            if key_bits == 0 || key_bits % 8 != 0 || key_bits > 8192 {
                return Err(invalid(
                    f("key_bits"),
                    format!("{key_bits}: a multiple of 8 from 8 to 8192"),
                ));
            }
            let capacity = l.capacity.unwrap_or(4096);
            let batch = l.batch.unwrap_or(256).min(capacity);
            let low_water = l.low_water.unwrap_or(capacity / 8);
            if capacity == 0 || batch == 0 || low_water > capacity {
                return Err(invalid(
                    f("capacity"),
                    "capacity and batch must be > 0 and low_water <= capacity",
                ));
            }
            if !l.kme_url.starts_with("https://") {
                return Err(invalid(
                    f("kme_url"),
                    "ETSI 014 runs over HTTPS: the URL must start with https://",
                ));
            }
            for r in &l.remote_saes {
                if let Some(other) = remote.insert((r.clone(), role), l.name.clone()) {
                    return Err(invalid(
                        f("remote_saes"),
                        format!("{r:?} is already reached over link {other:?}"),
                    ));
                }
            }
            links.push(LinkSettings {
                name: l.name,
                role,
                kme_url: l.kme_url,
                server_name: l.server_name,
                peer_sae_id: l.peer_sae_id,
                ca: abs(&l.ca),
                cert: abs(&l.cert),
                key: abs(&l.key),
                key_bits,
                policy: PoolPolicy {
                    capacity,
                    low_water,
                    batch,
                    stall_after_ms: l.stall_after_s.unwrap_or(30) * 1000,
                },
                timeout: Duration::from_millis(l.timeout_ms.unwrap_or(5000)),
                connect_timeout: Duration::from_millis(l.connect_timeout_ms.unwrap_or(3000)),
                retries: l.retries.unwrap_or(3),
                remote_saes: l.remote_saes,
                local_saes: l.local_saes,
            });
        }
        Ok(Self {
            store_path: abs(&raw.store.path),
            checkpoint_every: raw.store.checkpoint_every.unwrap_or(4096).max(1),
            checkpoint_interval: Duration::from_secs(
                raw.store.checkpoint_interval_s.unwrap_or(10).max(1),
            ),
            admin_socket: abs(&raw.admin.socket),
            hsm,
            server,
            links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[store]
path = "kms.redb"
[admin]
socket = "kms.sock"
[hsm]
backend = "pkcs11"
token = "qsi-kms"
pin = "env:QSI_KMS_PIN"
create_missing = true
[server]
listen = "127.0.0.1:8443"
cert = "kms.pem"
key = "kms.key"
client_ca = "ca.pem"
[[server.sae]]
id = "app-a"
certificate = "app-a.pem"
[[link]]
name = "ab"
role = "master"
kme_url = "https://127.0.0.1:9001"
peer_sae_id = "sae-b"
ca = "ca.pem"
cert = "sae-a.pem"
key = "sae-a.key"
remote_saes = ["app-b"]
local_saes = ["app-a"]
"#;

    #[test]
    fn a_good_file_validates_with_defaults_and_absolute_paths() {
        let c = KmsConfig::parse(GOOD, Path::new("/etc/qsi")).unwrap();
        assert_eq!(c.store_path, PathBuf::from("/etc/qsi/kms.redb"));
        assert_eq!(c.links[0].key_bits, 256);
        assert_eq!(c.links[0].policy.capacity, 4096);
        assert_eq!(c.server.unwrap().saes[0].0, "app-a");
    }

    #[test]
    fn mistakes_name_the_field() {
        let e = KmsConfig::parse(
            &GOOD.replace("role = \"master\"", "role = \"boss\""),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("link[0].role"), "{e}");
        let e = KmsConfig::parse(&GOOD.replace("https://", "http://"), Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("kme_url"), "{e}");
        let e = KmsConfig::parse(
            &GOOD.replace("[admin]", "[admin]\ncolour = 1"),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn the_example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/kms.toml");
        let c = KmsConfig::load(&p).unwrap();
        assert_eq!(c.links.len(), 2);
    }
}
