//! Site configuration: one TOML file per site.
//!
//! Two stages, so every refusal names the field and the fix: serde parses the file into the `Raw*` structs
//! (`deny_unknown_fields`, so a typo is an error, not a silently ignored key), then [`RawConfig::validate`]
//! turns them into the typed [`Config`] the daemon runs on: addresses parsed, files read, the key checked
//! against its certificate, names cross-referenced. Relative paths are relative to the config file.
//!
//! ```toml
//! site = "site-a"
//! [listen]
//! quic = "127.0.0.1:7443"            # UDP
//! tls = "127.0.0.1:7443"             # TCP
//! [tls]
//! certificate = "site-a.crt"         # PEM chain, end-entity first
//! private_key = "site-a.key"         # PEM (PKCS#8, SEC1 or PKCS#1), or an RFC 7512 URI of a key in an
//!                                    # HSM: "pkcs11:token=site-a;object=tls-2026;type=private"
//! trust_anchors = ["ca.crt"]
//! intermediates = ["bridge.p7c"]     # untrusted: intermediates, bridge cross-certificates (PEM/DER/.p7c)
//! policies = ["2.16.840.1.101.3.2.1.3.13"]  # acceptable policies (initial-policy-set); none = any
//! revocation = "require"             # "require" (default), "best-effort", "off"
//! crls = ["ca.crl"]                  # CRL files; distribution points are fetched over HTTP as well
//! crl_stale_grace_secs = 0           # a CRL past nextUpdate is refused (default) or used this long
//! # [tls.pkcs11]                     # with a pkcs11: private_key
//! # module = "/usr/lib/softhsm/libsofthsm2.so"   # default: SoftHSM2's usual paths
//! # pin = "file:site-a.pin"          # or "env:QSI_SITE_PIN"; never the PIN itself
//! key_exchange = ["x25519mlkem768"]  # default policy for every peer
//! [[peer]]
//! name = "site-b"
//! identity = { dns = "site-b.qsi.test" }   # or { uri = "urn:qsi:site:site-b" }
//! transport = "quic"                 # or "tls"
//! address = "127.0.0.1:7444"         # we dial it; without it we wait for the peer to dial us
//! rekey_interval = "1h"              # new data connection (full handshake) this often ...
//! rekey_bytes = "64GiB"              # ... or after this many bytes one way; then KeyUpdate every as many
//! rekey_hard_limit = "2h"            # no data connection lives longer (default: twice rekey_interval)
//! # qkd = "require"                  # QKD keys in the data handshakes: "require", "prefer" or "off"
//! # qkd_link = "a-to-b"              # the KMS link (master if we dial, slave if we are dialed)
//! # [kms]                            # the KMS qsid runs in-process (needed for qkd):
//! # config = "kms.toml"              # its own file, the format of `qsi kms serve`
//! # sae_id = "sae-a"                 # this site's SAE ID at its QKD key manager
//! [[forward]]                        # a local listener whose connections go to the peer's `expose`
//! name = "web"
//! peer = "site-b"
//! listen = "127.0.0.1:18080"
//! [[expose]]                         # what the peer may reach here, by name
//! name = "ssh"
//! peer = "site-b"
//! target = "127.0.0.1:22"
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Why a config was refused. Every message names the field and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("cannot read config file {path}: {source}; check the path given to --config")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, or a value of the wrong type (serde names the key).
    #[error("{path}: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// toml/serde's message, which names the key and the line.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{field}: {problem}; {fix}")]
    Invalid {
        /// Dotted path of the field, e.g. `peer[1].address`.
        field: String,
        /// What is wrong.
        problem: String,
        /// What to write instead.
        fix: String,
    },
    /// A file named by a field could not be read or parsed.
    #[error("{field}: cannot use {path}: {problem}; {fix}")]
    File {
        /// The field naming the file.
        field: String,
        /// The file as resolved against the config directory.
        path: PathBuf,
        /// What went wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "tls.private_key ({key}) does not match the public key of tls.certificate ({cert}); point both at the same key pair (the certificate's first PEM block must be the end-entity)"
    )]
    KeyMismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
}

/// A banner marking, UNCLASSIFIED when absent.
fn parse_label(field: &str, raw: Option<&str>) -> Result<qsi_labels::Label, ConfigError> {
    raw.map_or(Ok(qsi_labels::Label::bottom()), |m| {
        m.parse().map_err(|e| {
            invalid(
                field,
                format!("{e}"),
                "write a banner marking such as \"SECRET//X\"",
            )
        })
    })
}

fn invalid(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Stage 1: raw serde structs.

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This site's name (used in logs and metrics).
    pub site: String,
    /// Listening addresses for peers.
    #[serde(default)]
    pub listen: RawListen,
    /// Credentials and policy.
    pub tls: RawTls,
    /// Admin socket.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Peer sites.
    #[serde(default)]
    pub peer: Vec<RawPeer>,
    /// Local listeners carried to a peer.
    #[serde(default)]
    pub forward: Vec<RawForward>,
    /// Local targets a peer may reach.
    #[serde(default)]
    pub expose: Vec<RawExpose>,
    /// The site's KMS, run inside qsid (QKD keys for the tunnels).
    pub kms: Option<RawKms>,
    /// The login portal qsid hosts (the keys of a standalone portal.toml, under `[portal]`).
    pub portal: Option<crate::portal::config::RawConfig>,
}

/// `[kms]`: the KMS qsid runs in-process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKms {
    /// The KMS's own config file (the format of `qsi kms serve`, config/kms.toml): store, HSM, KME
    /// links, ETSI 014 server towards local SAEs, admin socket.
    pub config: PathBuf,
    /// This site's SAE ID at its KME (the master SAE ID the tunnels put in their handshakes).
    pub sae_id: String,
}

/// `[listen]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// UDP address for QUIC.
    pub quic: Option<String>,
    /// TCP address for TLS 1.3.
    pub tls: Option<String>,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key, or a `pkcs11:` URI (RFC 7512) of a key in a token.
    pub private_key: PathBuf,
    /// PEM trust anchors.
    pub trust_anchors: Vec<PathBuf>,
    /// Default key-exchange groups, in preference order.
    pub key_exchange: Option<Vec<String>>,
    /// Untrusted certificates for path building (PEM, DER or .p7c files).
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    /// Acceptable certificate policy OIDs (user-initial-policy-set); empty accepts any valid path.
    #[serde(default)]
    pub policies: Vec<String>,
    /// initial-explicit-policy (default: true when `policies` is given).
    pub require_explicit_policy: Option<bool>,
    /// initial-policy-mapping-inhibit (default false).
    pub inhibit_policy_mapping: Option<bool>,
    /// `require` (default), `best-effort` or `off`.
    pub revocation: Option<String>,
    /// CRL files (PEM or DER).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Fetch CRLs from the certificates' http:// distribution points (default true).
    pub crl_fetch: Option<bool>,
    /// Seconds a CRL past nextUpdate stays usable when no fresh one can be had (default 0: refused).
    pub crl_stale_grace_secs: Option<u64>,
    /// The token of a `pkcs11:` private key.
    pub pkcs11: Option<RawPkcs11>,
}

/// `[tls.pkcs11]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPkcs11 {
    /// The PKCS#11 module (default: SoftHSM2's usual paths, or the URI's `module-path`).
    pub module: Option<PathBuf>,
    /// `file:PATH` or `env:NAME` (or the URI's `pin-source`).
    pub pin: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// TCP address of the Prometheus text endpoint.
    pub listen: Option<String>,
}

/// `[[peer]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// Peer site name.
    pub name: String,
    /// Expected identity in the peer's certificate.
    pub identity: Identity,
    /// `quic` or `tls`.
    pub transport: String,
    /// Where to dial the peer (host:port).
    pub address: Option<String>,
    /// Key-exchange groups for this peer (overrides `tls.key_exchange`).
    pub key_exchange: Option<Vec<String>>,
    /// The highest label this tunnel is cleared to carry (banner marking); default UNCLASSIFIED.
    pub clearance: Option<String>,
    /// QKD keys in the data handshakes: `require`, `prefer` or `off` (default).
    pub qkd: Option<String>,
    /// The KMS link (`[[link]]` name in the KMS config) that carries this peer's QKD keys.
    pub qkd_link: Option<String>,
    /// The peer's SAE ID (default: the link's `peer_sae_id`; if given, must equal it).
    pub sae_id: Option<String>,
    /// Keys announced and held ready for this peer's handshakes (default 8).
    pub qkd_reserve: Option<usize>,
    /// A new data connection (full handshake) this often, e.g. "1h"; default [`RekeyPolicy::DEFAULT_INTERVAL`].
    pub rekey_interval: Option<String>,
    /// ... or after this many bytes in either direction, e.g. "64GiB"; default [`RekeyPolicy::DEFAULT_BYTES`].
    pub rekey_bytes: Option<String>,
    /// No data connection lives longer than this, e.g. "2h"; default twice `rekey_interval`.
    pub rekey_hard_limit: Option<String>,
}

/// `[[forward]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// Service name, matched against the peer's `[[expose]]`.
    pub name: String,
    /// Peer site name.
    pub peer: String,
    /// Local address to listen on.
    pub listen: String,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
    /// Classification of the service (banner marking); default UNCLASSIFIED.
    pub label: Option<String>,
}

/// `[[expose]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpose {
    /// Service name the peer asks for.
    pub name: String,
    /// Peer site allowed to reach it.
    pub peer: String,
    /// Local target (host:port).
    pub target: String,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
    /// Classification of the service (banner marking); default UNCLASSIFIED.
    pub label: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Stage 2: the typed config.

/// The identity a peer's certificate must carry as a subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Identity {
    /// A dNSName SAN.
    Dns(String),
    /// A uniformResourceIdentifier SAN.
    Uri(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Dns(d) => write!(f, "dns:{d}"),
            Identity::Uri(u) => write!(f, "uri:{u}"),
        }
    }
}

/// Transport of a peer's control and data connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC (quinn): one stream per flow, UDP services as datagrams.
    Quic,
    /// TLS 1.3 over TCP (tokio-rustls) with our flow framing.
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::Tls => "tls",
        })
    }
}

/// A post-quantum key-exchange group we offer or accept. Classical-only groups have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum KxGroup {
    /// X25519 + ML-KEM-768 hybrid (default).
    X25519MlKem768,
    /// P-256 + ML-KEM-768 hybrid.
    Secp256r1MlKem768,
    /// Pure ML-KEM-1024 (CNSA 2.0).
    MlKem1024,
}

impl KxGroup {
    /// The name used in configs, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            KxGroup::X25519MlKem768 => "X25519MLKEM768",
            KxGroup::Secp256r1MlKem768 => "SECP256R1MLKEM768",
            KxGroup::MlKem1024 => "MLKEM1024",
        }
    }

    /// Parses a config name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "x25519mlkem768" => Some(KxGroup::X25519MlKem768),
            "secp256r1mlkem768" | "p256mlkem768" => Some(KxGroup::Secp256r1MlKem768),
            "mlkem1024" => Some(KxGroup::MlKem1024),
            _ => None,
        }
    }
}

impl fmt::Display for KxGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Service protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP connections, one flow each.
    Tcp,
    /// UDP datagrams (QUIC peers only).
    Udp,
}

/// The site's private key: zeroized on drop, never printed.
pub struct SecretKey(PrivateKeyDer<'static>);

impl SecretKey {
    /// A copy for rustls (which parses it into aws-lc and drops the copy).
    pub fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.0.clone_key()
    }

    /// The DER bytes (for comparison on reload).
    pub fn secret_der(&self) -> &[u8] {
        self.0.secret_der()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Where the site's private key is.
#[derive(Clone)]
pub enum SiteKey {
    /// A PEM file, held in memory (zeroized on drop).
    File(std::sync::Arc<SecretKey>),
    /// A key in a PKCS#11 token: every TLS signature is made by the token.
    Hsm {
        /// The key's RFC 7512 URI as configured.
        uri: String,
        /// The signing key.
        key: std::sync::Arc<qsi_hsm::HsmSigningKey>,
    },
}

/// The site's certificate chain and key, checked to match.
#[derive(Clone)]
pub struct Credentials {
    /// End-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: SiteKey,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            SiteKey::File(_) => "[redacted]".to_string(),
            SiteKey::Hsm { uri, .. } => uri.clone(),
        };
        f.debug_struct("Credentials")
            .field("chain_len", &self.chain.len())
            .field("key", &key)
            .finish()
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
            && match (&self.key, &other.key) {
                (SiteKey::File(a), SiteKey::File(b)) => a.secret_der() == b.secret_der(),
                (SiteKey::Hsm { uri: a, key: ka }, SiteKey::Hsm { uri: b, key: kb }) => {
                    a == b && ka.spki() == kb.spki()
                }
                _ => false,
            }
    }
}

impl Credentials {
    /// The chain with a rustls signing key (parsed by `provider` for a file key; the token's for an HSM key).
    pub fn certified_key(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, rustls::Error> {
        let signer: std::sync::Arc<dyn rustls::sign::SigningKey> = match &self.key {
            SiteKey::File(k) => provider.key_provider.load_private_key(k.clone_key())?,
            SiteKey::Hsm { key, .. } => key.clone(),
        };
        Ok(std::sync::Arc::new(rustls::sign::CertifiedKey::new(
            self.chain.clone(),
            signer,
        )))
    }
}

/// One peer site.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Peer site name.
    pub name: String,
    /// Expected SAN.
    pub identity: Identity,
    /// Transport.
    pub transport: Transport,
    /// Where we dial it (host:port), if we dial.
    pub address: Option<String>,
    /// Accepted groups, in preference order.
    pub key_exchange: Vec<KxGroup>,
    /// The highest label the tunnel may carry.
    pub clearance: qsi_labels::Label,
    /// QKD settings, when the peer's data connections take QKD keys.
    pub qkd: Option<QkdPeer>,
    /// When data connections are replaced (make-before-break) and re-keyed in place.
    pub rekey: RekeyPolicy,
}

pub use crate::qkd::QkdPolicy;

/// A peer's QKD settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QkdPeer {
    /// require or prefer.
    pub policy: QkdPolicy,
    /// KMS link name.
    pub link: String,
    /// The peer's SAE ID.
    pub peer_sae_id: String,
    /// Keys held ready (announced and acknowledged).
    pub reserve: usize,
}

/// The in-process KMS.
#[derive(Debug, Clone)]
pub struct KmsSite {
    /// The KMS config file.
    pub config_path: PathBuf,
    /// This site's SAE ID.
    pub sae_id: String,
    /// The loaded KMS config.
    pub settings: std::sync::Arc<qsi_kms::config::KmsConfig>,
}

impl PartialEq for KmsSite {
    fn eq(&self, other: &Self) -> bool {
        self.config_path == other.config_path && self.sae_id == other.sae_id
    }
}

/// When a peer's data connections are replaced and re-keyed (see `tunnel::rekey` and docs/decisions.md).
///
/// A data connection is *due* once it is `interval` old or has carried `bytes` in either direction: the
/// dialer then opens a new one (full handshake, fresh QKD key), new flows go to it, and the old one drains.
/// A connection past `bytes` refreshes its traffic keys in place every further `bytes` (TLS 1.3 KeyUpdate,
/// QUIC key update) while it drains. None lives past `hard_limit`: a draining one is closed with whatever
/// flows it still carries, and a current one whose replacement could not be opened is closed (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Age at which a data connection is replaced.
    pub interval: std::time::Duration,
    /// Bytes (one direction) after which it is replaced, and then re-keyed in place every as many bytes.
    pub bytes: u64,
    /// Age at which a data connection is closed, whatever it carries.
    pub hard_limit: std::time::Duration,
}

impl RekeyPolicy {
    /// strongSwan's CHILD_SA rekey time and common IPsec SA lifetimes are one hour.
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
    /// 64 GiB: far below AES-GCM's TLS 1.3 limit (2^24.5 full records, about 2^38.5 bytes, RFC 8446 5.5),
    /// and a fresh QKD key at least every minute at 10 Gbit/s.
    pub const DEFAULT_BYTES: u64 = 1 << 36;
    /// Shortest interval accepted: every rekey is a full handshake and spends a QKD key.
    pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
    /// Smallest byte limit accepted.
    pub const MIN_BYTES: u64 = 1 << 20;
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy {
            interval: Self::DEFAULT_INTERVAL,
            bytes: Self::DEFAULT_BYTES,
            hard_limit: 2 * Self::DEFAULT_INTERVAL,
        }
    }
}

/// Parses "500ms", "90s", "30m", "1h", "1d" (a number and a unit; the unit is required).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(n.checked_mul(ms)?))
}

/// Parses "1048576", "512KiB", "64MiB", "64GiB", "1TiB" (binary) or "10GB" (decimal).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Validates a peer's `rekey_*` fields; `f` names a field of this peer (`peer[0].rekey_bytes`).
fn parse_rekey(
    f: &dyn Fn(&str) -> String,
    interval: Option<&str>,
    bytes: Option<&str>,
    hard_limit: Option<&str>,
) -> Result<RekeyPolicy, ConfigError> {
    let duration = |name: &str, v: &str| {
        parse_duration(v).ok_or_else(|| {
            invalid(
                f(name),
                format!("{v:?} is not a duration"),
                "write a number and a unit: \"500ms\", \"90s\", \"30m\", \"1h\" or \"1d\"",
            )
        })
    };
    let interval = match interval {
        Some(v) => duration("rekey_interval", v)?,
        None => RekeyPolicy::DEFAULT_INTERVAL,
    };
    if interval < RekeyPolicy::MIN_INTERVAL {
        return Err(invalid(
            f("rekey_interval"),
            "shorter than 1s: every rekey is a full handshake and spends a QKD key",
            "write \"1s\" or more (\"1h\" is usual)",
        ));
    }
    let bytes = match bytes {
        Some(v) => parse_bytes(v).ok_or_else(|| {
            invalid(
                f("rekey_bytes"),
                format!("{v:?} is not a byte count"),
                "write a number with an optional unit: \"64GiB\", \"512MiB\", \"10GB\"",
            )
        })?,
        None => RekeyPolicy::DEFAULT_BYTES,
    };
    if bytes < RekeyPolicy::MIN_BYTES {
        return Err(invalid(
            f("rekey_bytes"),
            format!("{bytes} bytes is below 1MiB: the tunnel would spend its time re-keying"),
            "write \"1MiB\" or more (\"64GiB\" is usual)",
        ));
    }
    let hard_limit = match hard_limit {
        Some(v) => duration("rekey_hard_limit", v)?,
        None => interval.saturating_mul(2),
    };
    if hard_limit <= interval {
        return Err(invalid(
            f("rekey_hard_limit"),
            format!(
                "{hard_limit:?} is not longer than rekey_interval ({interval:?}), so no connection could drain"
            ),
            "make it longer than rekey_interval (twice is usual), or leave it out",
        ));
    }
    Ok(RekeyPolicy {
        interval,
        bytes,
        hard_limit,
    })
}

/// A local listener carried to a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Service name.
    pub name: String,
    /// Peer site name.
    pub peer: String,
    /// Local address.
    pub listen: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// The service's label (never above the peer's clearance).
    pub label: qsi_labels::Label,
}

/// A local target a peer may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Expose {
    /// Service name.
    pub name: String,
    /// Peer site name.
    pub peer: String,
    /// Target host:port.
    pub target: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service's label (never above the peer's clearance).
    pub label: qsi_labels::Label,
}

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Site name.
    pub site: String,
    /// QUIC listen address.
    pub listen_quic: Option<SocketAddr>,
    /// TLS listen address.
    pub listen_tls: Option<SocketAddr>,
    /// Our certificate chain and key.
    pub credentials: Credentials,
    /// How peers are validated (anchors, intermediates, policies, revocation).
    pub trust: crate::auth::TrustSettings,
    /// Admin socket path.
    pub admin_socket: Option<PathBuf>,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Forwards.
    pub forwards: Vec<Forward>,
    /// Exposes.
    pub exposes: Vec<Expose>,
    /// The in-process KMS, if configured.
    pub kms: Option<KmsSite>,
    /// The login portal, when qsid hosts it.
    pub portal: Option<crate::portal::PortalConfig>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base)
    }

    /// Parses and validates TOML text; `base` resolves relative paths; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.validate(base)
    }

    /// The peer entry with this name.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The service a peer may open under `name`.
    pub fn expose(&self, peer: &str, name: &str) -> Option<&Expose> {
        self.exposes
            .iter()
            .find(|e| e.peer == peer && e.name == name)
    }
}

/// Parses `name` as an IP socket address.
fn parse_listen(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            field,
            format!("{value:?} is not an IP address with a port"),
            "write e.g. \"127.0.0.1:7443\" or \"[::]:7443\"",
        )
    })
}

/// Checks `host:port` without resolving (resolution happens at connect time).
fn check_host_port(field: &str, value: &str) -> Result<(), ConfigError> {
    let fix = "write host:port, e.g. \"192.0.2.10:7443\" or \"site-b.example:7443\"";
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(invalid(field, format!("{value:?} has no port"), fix));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(field, format!("{value:?} has no valid port"), fix));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !host_ok {
        return Err(invalid(
            field,
            format!("{host:?} is not a valid host name or IP address"),
            fix,
        ));
    }
    Ok(())
}

fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a usable name"),
            "use 1-64 characters from letters, digits, '-', '_' and '.'",
        ))
    }
}

fn parse_groups(field: &str, names: &[String]) -> Result<Vec<KxGroup>, ConfigError> {
    let fix =
        "choose from \"x25519mlkem768\" (default), \"secp256r1mlkem768\", \"mlkem1024\" (CNSA 2.0)";
    if names.is_empty() {
        return Err(invalid(field, "the list is empty", fix));
    }
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let Some(g) = KxGroup::parse(n) else {
            let classical = [
                "x25519",
                "secp256r1",
                "secp384r1",
                "secp521r1",
                "x448",
                "ffdhe2048",
                "p256",
                "p384",
            ];
            let problem = if classical.contains(&n.to_ascii_lowercase().as_str()) {
                format!("{n:?} is a classical-only group, which QSI never offers or accepts")
            } else {
                format!("{n:?} is not a known key-exchange group")
            };
            return Err(invalid(format!("{field}[{i}]"), problem, fix));
        };
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

fn parse_protocol(field: &str, value: Option<&str>) -> Result<Protocol, ConfigError> {
    match value.unwrap_or("tcp") {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(invalid(
            field,
            format!("{other:?} is not a protocol"),
            "write \"tcp\" or \"udp\"",
        )),
    }
}

fn read_file(
    field: &str,
    base: &Path,
    path: &Path,
    fix: &str,
) -> Result<(PathBuf, Zeroizing<Vec<u8>>), ConfigError> {
    let full = base.join(path);
    match std::fs::read(&full) {
        Ok(bytes) => Ok((full, Zeroizing::new(bytes))),
        Err(e) => Err(ConfigError::File {
            field: field.into(),
            path: full,
            problem: e.to_string(),
            fix: fix.into(),
        }),
    }
}

/// Reads every PEM certificate in a file.
pub fn read_certs(
    field: &str,
    base: &Path,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let (full, bytes) = read_file(
        field,
        base,
        path,
        "check the path (relative paths start at the config file's directory)",
    )?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &bytes[..]).collect();
    let bad = |problem: String| ConfigError::File {
        field: field.into(),
        path: full.clone(),
        problem,
        fix: "give a PEM file with one or more -----BEGIN CERTIFICATE----- blocks".into(),
    };
    let certs = certs.map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    for c in &certs {
        webpki::EndEntityCert::try_from(c)
            .map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
    }
    Ok(certs)
}

fn read_key(field: &str, base: &Path, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let (full, bytes) = read_file(
        field,
        base,
        path,
        "check the path (relative paths start at the config file's directory)",
    )?;
    let bad = |problem: String| ConfigError::File {
        field: field.into(),
        path: full.clone(),
        problem,
        fix: "give a PEM private key (PKCS#8, SEC1 or PKCS#1)".into(),
    };
    match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(bad("no private key found".into())),
        Err(e) => Err(bad(format!("not PEM: {e}"))),
    }
}

impl RawConfig {
    /// Validates every field and builds the typed config. Relative file paths resolve against `base`.
    pub fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        check_name("site", &self.site)?;
        let listen_quic = self
            .listen
            .quic
            .as_deref()
            .map(|v| parse_listen("listen.quic", v))
            .transpose()?;
        let listen_tls = self
            .listen
            .tls
            .as_deref()
            .map(|v| parse_listen("listen.tls", v))
            .transpose()?;

        let credentials = read_credentials(&self.tls, base)?;
        let trust = read_trust(&self.tls, base, &credentials)?;
        let default_kx = match &self.tls.key_exchange {
            Some(list) => parse_groups("tls.key_exchange", list)?,
            None => vec![KxGroup::X25519MlKem768],
        };

        let admin_socket = self.admin.socket.map(|p| base.join(p));
        let metrics_listen = self
            .metrics
            .listen
            .as_deref()
            .map(|v| parse_listen("metrics.listen", v))
            .transpose()?;

        let kms = match &self.kms {
            None => None,
            Some(k) => {
                let path = base.join(&k.config);
                let settings =
                    qsi_kms::config::KmsConfig::load(&path).map_err(|e| ConfigError::File {
                        field: "kms.config".into(),
                        path: path.clone(),
                        problem: e.to_string(),
                        fix: "point kms.config at a KMS config (the format of config/kms.toml)"
                            .into(),
                    })?;
                if k.sae_id.is_empty() {
                    return Err(invalid(
                        "kms.sae_id",
                        "empty",
                        "write this site's SAE ID at its QKD key manager, e.g. \"sae-a\"",
                    ));
                }
                Some(KmsSite {
                    config_path: path,
                    sae_id: k.sae_id.clone(),
                    settings: std::sync::Arc::new(settings),
                })
            }
        };

        let mut peers: Vec<PeerConfig> = Vec::new();
        for (i, p) in self.peer.into_iter().enumerate() {
            let f = |name: &str| format!("peer[{i}].{name}");
            check_name(&f("name"), &p.name)?;
            if peers.iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    f("name"),
                    format!("peer {:?} is listed twice", p.name),
                    "give each peer one entry",
                ));
            }
            if p.name == self.site {
                return Err(invalid(
                    f("name"),
                    "a peer cannot be this site itself",
                    "name the other site",
                ));
            }
            let transport = match p.transport.as_str() {
                "quic" => Transport::Quic,
                "tls" => Transport::Tls,
                other => {
                    return Err(invalid(
                        f("transport"),
                        format!("{other:?} is not a transport"),
                        "write \"quic\" or \"tls\"",
                    ));
                }
            };
            match transport {
                Transport::Quic if listen_quic.is_none() && p.address.is_none() => {
                    return Err(invalid(
                        f("address"),
                        "no address to dial and no listen.quic to accept on",
                        "set peer address or listen.quic",
                    ));
                }
                Transport::Tls if listen_tls.is_none() && p.address.is_none() => {
                    return Err(invalid(
                        f("address"),
                        "no address to dial and no listen.tls to accept on",
                        "set peer address or listen.tls",
                    ));
                }
                _ => {}
            }
            if let Some(a) = &p.address {
                check_host_port(&f("address"), a)?;
            }
            match &p.identity {
                Identity::Dns(d) if rustls_pki_types::DnsName::try_from(d.as_str()).is_err() => {
                    return Err(invalid(
                        f("identity.dns"),
                        format!("{d:?} is not a DNS name"),
                        "write the dNSName SAN of the peer's certificate",
                    ));
                }
                Identity::Uri(u) if !u.contains(':') || u.chars().any(char::is_whitespace) => {
                    return Err(invalid(
                        f("identity.uri"),
                        format!("{u:?} is not a URI"),
                        "write the URI SAN of the peer's certificate, e.g. \"urn:qsi:site:site-b\"",
                    ));
                }
                _ => {}
            }
            if peers.iter().any(|q| q.identity == p.identity) {
                return Err(invalid(
                    f("identity"),
                    format!("identity {} is already used by another peer", p.identity),
                    "give each peer its own certificate identity",
                ));
            }
            let key_exchange = match &p.key_exchange {
                Some(list) => parse_groups(&f("key_exchange"), list)?,
                None => default_kx.clone(),
            };
            let clearance = parse_label(&f("clearance"), p.clearance.as_deref())?;
            let qkd = validate_qkd(&f, &p, kms.as_ref())?;
            let rekey = parse_rekey(
                &f,
                p.rekey_interval.as_deref(),
                p.rekey_bytes.as_deref(),
                p.rekey_hard_limit.as_deref(),
            )?;
            peers.push(PeerConfig {
                name: p.name,
                identity: p.identity,
                transport,
                address: p.address,
                key_exchange,
                clearance,
                qkd,
                rekey,
            });
        }

        let peer_names: BTreeSet<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        let check_peer = |field: String, peer: &str| -> Result<(), ConfigError> {
            if peer_names.contains(peer) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("no [[peer]] is named {peer:?}"),
                    "add the peer or correct the name",
                ))
            }
        };
        let udp_needs_quic = |field: String, peer: &str| -> Result<(), ConfigError> {
            match peers.iter().find(|p| p.name == peer) {
                Some(p) if p.transport != Transport::Quic => Err(invalid(
                    field,
                    "UDP services ride QUIC datagrams, but this peer uses transport \"tls\"",
                    "set the peer's transport to \"quic\" or use protocol \"tcp\"",
                )),
                _ => Ok(()),
            }
        };

        // A tunnel cleared to a level refuses to carry a service labelled above it.
        let cleared_for = |field: String, peer: &str, raw: Option<&str>| {
            let label = parse_label(&field, raw)?;
            match peers.iter().find(|p| p.name == peer) {
                Some(p) if !p.clearance.dominates(&label) => Err(invalid(
                    field,
                    format!(
                        "{label} is above the clearance {} of the tunnel to {peer:?}",
                        p.clearance
                    ),
                    "lower the service's label, or raise the peer's clearance if the link is accredited for it",
                )),
                _ => Ok(label),
            }
        };

        let mut forwards: Vec<Forward> = Vec::new();
        for (i, fw) in self.forward.into_iter().enumerate() {
            let f = |name: &str| format!("forward[{i}].{name}");
            check_name(&f("name"), &fw.name)?;
            check_peer(f("peer"), &fw.peer)?;
            let label = cleared_for(f("label"), &fw.peer, fw.label.as_deref())?;
            let listen = parse_listen(&f("listen"), &fw.listen)?;
            let protocol = parse_protocol(&f("protocol"), fw.protocol.as_deref())?;
            if protocol == Protocol::Udp {
                udp_needs_quic(f("protocol"), &fw.peer)?;
            }
            if forwards
                .iter()
                .any(|o| o.listen == listen && o.protocol == protocol)
            {
                return Err(invalid(
                    f("listen"),
                    format!("{listen} is used by another forward"),
                    "give each forward its own address",
                ));
            }
            if forwards
                .iter()
                .any(|o| o.name == fw.name && o.peer == fw.peer)
            {
                return Err(invalid(
                    f("name"),
                    format!("forward {:?} to {:?} is listed twice", fw.name, fw.peer),
                    "keep one entry",
                ));
            }
            forwards.push(Forward {
                name: fw.name,
                peer: fw.peer,
                listen,
                protocol,
                label,
            });
        }

        let mut exposes: Vec<Expose> = Vec::new();
        for (i, ex) in self.expose.into_iter().enumerate() {
            let f = |name: &str| format!("expose[{i}].{name}");
            check_name(&f("name"), &ex.name)?;
            check_peer(f("peer"), &ex.peer)?;
            let label = cleared_for(f("label"), &ex.peer, ex.label.as_deref())?;
            check_host_port(&f("target"), &ex.target)?;
            let protocol = parse_protocol(&f("protocol"), ex.protocol.as_deref())?;
            if protocol == Protocol::Udp {
                udp_needs_quic(f("protocol"), &ex.peer)?;
            }
            if exposes
                .iter()
                .any(|o| o.name == ex.name && o.peer == ex.peer)
            {
                return Err(invalid(
                    f("name"),
                    format!("service {:?} is exposed to {:?} twice", ex.name, ex.peer),
                    "keep one entry",
                ));
            }
            exposes.push(Expose {
                name: ex.name,
                peer: ex.peer,
                target: ex.target,
                protocol,
                label,
            });
        }

        check_own_key_policy(&credentials, &peers)?;
        let portal = self
            .portal
            .map(|p| {
                crate::portal::PortalConfig::validate(p, base).map_err(|e| match e {
                    crate::portal::config::ConfigError::Field { field, message } => invalid(
                        format!("portal.{field}"),
                        message,
                        "see config/portal/portal.toml for the keys of [portal]",
                    ),
                    other => invalid("portal", other.to_string(), "fix the [portal] section"),
                })
            })
            .transpose()?;
        Ok(Config {
            site: self.site,
            listen_quic,
            listen_tls,
            credentials,
            trust,
            admin_socket,
            metrics_listen,
            peers,
            forwards,
            exposes,
            kms,
            portal,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// The [tls] section: the site's credentials (a PEM key or a key in a PKCS#11 token) and how peers are
// validated (anchors, intermediates and bridge cross-certificates, policies, revocation).

const PKCS11_URI_FIX: &str = "write an RFC 7512 URI naming the token and the key, e.g. \"pkcs11:token=site-a;object=tls-2026;type=private\"";

/// Reads the chain and key, opens the token for a `pkcs11:` key, and checks that they belong together.
fn read_credentials(tls: &RawTls, base: &Path) -> Result<Credentials, ConfigError> {
    let chain = read_certs("tls.certificate", base, &tls.certificate)?;
    let key_text = tls.private_key.to_string_lossy();
    let key = if key_text.starts_with("pkcs11:") || key_text.starts_with("PKCS11:") {
        open_hsm_key(&key_text, tls.pkcs11.as_ref(), base)?
    } else {
        if tls.pkcs11.is_some() {
            return Err(invalid(
                "tls.pkcs11",
                "a token is configured but tls.private_key is a file",
                format!(
                    "set tls.private_key to the key's URI ({PKCS11_URI_FIX}) or remove [tls.pkcs11]"
                ),
            ));
        }
        let der = read_key("tls.private_key", base, &tls.private_key)?;
        SiteKey::File(std::sync::Arc::new(SecretKey(der)))
    };
    let creds = Credentials { chain, key };
    let key_path = base.join(&tls.private_key);
    let certified = creds
        .certified_key(&crate::tls::base_provider())
        .map_err(|e| ConfigError::File {
            field: "tls.private_key".into(),
            path: key_path.clone(),
            problem: format!("the key cannot sign: {e}"),
            fix: "use an ECDSA P-256/P-384 or ML-DSA-65/87 key".into(),
        })?;
    match certified.keys_match() {
        Ok(()) => Ok(creds),
        Err(rustls::Error::InconsistentKeys(_)) => Err(ConfigError::KeyMismatch {
            cert: base.join(&tls.certificate),
            key: key_path,
        }),
        Err(e) => Err(ConfigError::File {
            field: "tls.private_key".into(),
            path: key_path,
            problem: format!("cannot compare the key with the certificate: {e}"),
            fix: "use an ECDSA P-256/P-384 or ML-DSA-65/87 key".into(),
        }),
    }
}

/// Opens the token a `pkcs11:` URI names (module and PIN from `[tls.pkcs11]` or the URI's query) and
/// finds the key.
fn open_hsm_key(
    uri_text: &str,
    raw: Option<&RawPkcs11>,
    base: &Path,
) -> Result<SiteKey, ConfigError> {
    let uri = qsi_hsm::Pkcs11Uri::parse(uri_text)
        .map_err(|e| invalid("tls.private_key", e.to_string(), PKCS11_URI_FIX))?;
    let token = match (&uri.token, &uri.serial) {
        (Some(label), _) => qsi_hsm::TokenSelector::Label(label.clone()),
        (None, Some(serial)) => qsi_hsm::TokenSelector::Serial(serial.clone()),
        (None, None) => {
            return Err(invalid(
                "tls.private_key",
                "the URI names no token",
                "add token=<label> (or serial=<serial>) to the URI",
            ));
        }
    };
    if uri.object.is_none() && uri.id.is_none() {
        return Err(invalid(
            "tls.private_key",
            "the URI names no key",
            "add object=<key label> (or id=<hex id>) to the URI",
        ));
    }
    let module = match (raw.and_then(|r| r.module.as_ref()), &uri.module_path) {
        (Some(m), _) => base.join(m),
        (None, Some(m)) => PathBuf::from(m),
        (None, None) => qsi_hsm::pkcs11::default_module_path().map_err(|e| {
            invalid(
                "tls.pkcs11.module",
                format!("no module given and none found: {e}"),
                "set tls.pkcs11.module to your HSM vendor's PKCS#11 library",
            )
        })?,
    };
    let pin_spec = match (raw.and_then(|r| r.pin.as_deref()), &uri.pin_source) {
        (Some(p), _) => p.to_string(),
        (None, Some(p)) if p.starts_with("file:") || p.starts_with("env:") => p.clone(),
        (None, Some(p)) => format!("file:{p}"),
        (None, None) => {
            return Err(invalid(
                "tls.pkcs11.pin",
                "no PIN source for the token",
                "add [tls.pkcs11] pin = \"file:/etc/qsi/site.pin\" (or \"env:NAME\"); never the PIN itself",
            ));
        }
    };
    // A relative PIN file is relative to the config file, like every other path here.
    let pin_spec = match pin_spec.strip_prefix("file:") {
        Some(path) => format!("file:{}", base.join(path).display()),
        None => pin_spec,
    };
    let pin = qsi_hsm::Pin::from_source(&pin_spec).map_err(|e| {
        invalid(
            "tls.pkcs11.pin",
            e.to_string(),
            "point pin at a readable file (file:PATH) or a set environment variable (env:NAME)",
        )
    })?;
    let store = qsi_hsm::Pkcs11Store::open(qsi_hsm::Pkcs11Config::new(&module, token, pin))
        .map_err(|e| ConfigError::File {
            field: "tls.pkcs11".into(),
            path: module.clone(),
            problem: e.to_string(),
            fix: "check the module path, the token named in tls.private_key and the PIN (`qsi hsm list` shows the tokens)".into(),
        })?;
    let store: std::sync::Arc<dyn qsi_hsm::KeyStore> = std::sync::Arc::new(store);
    let info = store.find(uri_text).map_err(|e| {
        invalid(
            "tls.private_key",
            e.to_string(),
            "generate the key (`qsi hsm generate`) or correct object=/id= in the URI",
        )
    })?;
    let key = qsi_hsm::HsmSigningKey::new(store, info).map_err(|e| {
        invalid(
            "tls.private_key",
            e.to_string(),
            "name a signing key (ECDSA P-256/P-384 or ML-DSA-65/87)",
        )
    })?;
    tracing::info!(uri = uri_text, "site key is in the token");
    Ok(SiteKey::Hsm {
        uri: uri_text.to_string(),
        key: std::sync::Arc::new(key),
    })
}

/// Reads the anchors, intermediates and CRLs and builds the validator.
fn read_trust(
    tls: &RawTls,
    base: &Path,
    creds: &Credentials,
) -> Result<crate::auth::TrustSettings, ConfigError> {
    use qsi_pki::validate::RevocationMode;
    if tls.trust_anchors.is_empty() {
        return Err(invalid(
            "tls.trust_anchors",
            "no trust anchor given, so no peer could be authenticated",
            "list the PEM file(s) of the CA(s) that issue your peers' certificates",
        ));
    }
    let mut anchors = Vec::new();
    for (i, p) in tls.trust_anchors.iter().enumerate() {
        let field = format!("tls.trust_anchors[{i}]");
        for c in read_certs(&field, base, p)? {
            qsi_pki::validate::Cert::from_der(&c).map_err(|e| ConfigError::File {
                field: field.clone(),
                path: base.join(p),
                problem: format!("not usable as a trust anchor: {e}"),
                fix: "give the CA certificate in PEM".into(),
            })?;
            anchors.push(c);
        }
    }
    let mut t = crate::auth::TrustSettings::new(anchors);
    for (i, p) in tls.intermediates.iter().enumerate() {
        let field = format!("tls.intermediates[{i}]");
        let (full, bytes) = read_file(&field, base, p, "check the path")?;
        let certs = qsi_pki::validate::load_certs(&bytes).map_err(|e| ConfigError::File {
            field: field.clone(),
            path: full.clone(),
            problem: e.to_string(),
            fix: "give PEM or DER certificates or a .p7c bundle".into(),
        })?;
        if certs.is_empty() {
            return Err(ConfigError::File {
                field,
                path: full,
                problem: "no certificate found".into(),
                fix: "give PEM or DER certificates or a .p7c bundle".into(),
            });
        }
        t.intermediates
            .extend(certs.iter().map(|c| c.der().to_vec()));
    }
    for (i, p) in tls.crls.iter().enumerate() {
        let field = format!("tls.crls[{i}]");
        let (full, bytes) = read_file(&field, base, p, "check the path")?;
        let crls = qsi_pki::revocation::Crl::load(&bytes).map_err(|e| ConfigError::File {
            field: field.clone(),
            path: full.clone(),
            problem: e.to_string(),
            fix: "give a CRL in PEM or DER (`qsi ca crl` writes one)".into(),
        })?;
        if crls.is_empty() {
            return Err(ConfigError::File {
                field,
                path: full,
                problem: "no CRL found".into(),
                fix: "give a CRL in PEM (-----BEGIN X509 CRL-----) or DER".into(),
            });
        }
        t.crls.extend(crls.iter().map(|c| c.der().to_vec()));
    }
    for (i, p) in tls.policies.iter().enumerate() {
        if p.parse::<const_oid::ObjectIdentifier>().is_err() {
            return Err(invalid(
                format!("tls.policies[{i}]"),
                format!("{p:?} is not a dotted OID"),
                "write the policy's OID, e.g. \"2.16.840.1.101.3.2.1.3.13\"",
            ));
        }
    }
    t.policies = tls.policies.clone();
    t.require_explicit_policy = tls
        .require_explicit_policy
        .unwrap_or(!tls.policies.is_empty());
    t.inhibit_policy_mapping = tls.inhibit_policy_mapping.unwrap_or(false);
    t.revocation = match tls.revocation.as_deref().unwrap_or("require") {
        "require" => RevocationMode::Require,
        "best-effort" => RevocationMode::BestEffort,
        "off" => RevocationMode::Off,
        other => {
            return Err(invalid(
                "tls.revocation",
                format!("{other:?} is not a revocation mode"),
                "write \"require\" (default: no status, no tunnel), \"best-effort\" or \"off\"",
            ));
        }
    };
    t.crl_fetch = tls.crl_fetch.unwrap_or(true);
    t.crl_stale_grace_secs = tls.crl_stale_grace_secs.unwrap_or(0);
    // Fail at load rather than at every handshake: with revocation required there must be a CRL source.
    let own_has_dp = creds.chain.first().is_some_and(|c| {
        qsi_pki::validate::Cert::from_der(c).is_ok_and(|c| !c.crl_uris().is_empty())
    });
    if t.revocation == RevocationMode::Require && t.crls.is_empty() && !(t.crl_fetch && own_has_dp)
    {
        return Err(invalid(
            "tls.revocation",
            "revocation is required but there is no CRL source: tls.crls is empty and this site's certificate names no CRL distribution point (so the peers' from the same CA would not either)",
            "list the CA's CRL in tls.crls = [\"ca.crl\"], issue certificates with a CRL distribution point, or set revocation = \"best-effort\"",
        ));
    }
    t.build().map_err(|e| {
        invalid(
            "tls",
            e.to_string(),
            "check tls.trust_anchors, tls.intermediates, tls.crls and tls.policies",
        )
    })
}

/// Our own key must be one the peers' key policies accept, or every handshake would fail at the peer.
fn check_own_key_policy(creds: &Credentials, peers: &[PeerConfig]) -> Result<(), ConfigError> {
    let Some(own) = creds.chain.first() else {
        return Ok(());
    };
    let kt = crate::auth::key_type_of(own);
    for (i, p) in peers.iter().enumerate() {
        let policy = crate::tls::key_policy(p);
        if !policy.allows(kt) {
            return Err(invalid(
                format!("peer[{i}].key_exchange"),
                format!(
                    "peer {:?} is held to {}, but tls.certificate has an {kt} key",
                    p.name,
                    policy.name()
                ),
                match policy {
                    crate::auth::KeyPolicy::Cnsa => {
                        "issue this site an ML-DSA-87 certificate (key in the HSM or a PEM file), or give this peer a non-CNSA key_exchange"
                    }
                    crate::auth::KeyPolicy::Standard => {
                        "issue this site an ECDSA P-256/P-384 or ML-DSA-65/87 certificate"
                    }
                },
            ));
        }
    }
    Ok(())
}

/// A peer's `qkd`, `qkd_link`, `sae_id` and `qkd_reserve`, checked against the KMS config: the link must
/// exist, and its role must match who dials (the dialer is the QKD master).
fn validate_qkd(
    f: &dyn Fn(&str) -> String,
    p: &RawPeer,
    kms: Option<&KmsSite>,
) -> Result<Option<QkdPeer>, ConfigError> {
    let policy = match p.qkd.as_deref() {
        None | Some("off") => {
            if p.qkd_link.is_some() || p.qkd_reserve.is_some() {
                return Err(invalid(
                    f("qkd_link"),
                    "QKD settings given but qkd is off",
                    "set qkd = \"require\" or \"prefer\", or drop qkd_link/qkd_reserve",
                ));
            }
            return Ok(None);
        }
        Some("require") => QkdPolicy::Require,
        Some("prefer") => QkdPolicy::Prefer,
        Some(other) => {
            return Err(invalid(
                f("qkd"),
                format!("{other:?} is not a QKD policy"),
                "write \"require\" (fail closed), \"prefer\" (fall back to the hybrid) or \"off\"",
            ));
        }
    };
    let Some(kms) = kms else {
        return Err(invalid(
            f("qkd"),
            "QKD keys need the site's KMS, and there is no [kms] section",
            "add [kms] with config = \"kms.toml\" and sae_id = \"<this site's SAE ID>\"",
        ));
    };
    let Some(link_name) = &p.qkd_link else {
        return Err(invalid(
            f("qkd_link"),
            "missing",
            "name the [[link]] of the KMS config that joins this site to the peer",
        ));
    };
    let Some(link) = kms.settings.links.iter().find(|l| &l.name == link_name) else {
        let names: Vec<&str> = kms.settings.links.iter().map(|l| l.name.as_str()).collect();
        return Err(invalid(
            f("qkd_link"),
            format!("the KMS config has no link {link_name:?} (it has {names:?})"),
            "use one of those names, or add the link to the KMS config",
        ));
    };
    let want = if p.address.is_some() {
        qsi_kms::store::Role::Master
    } else {
        qsi_kms::store::Role::Slave
    };
    if link.role != want {
        return Err(invalid(
            f("qkd_link"),
            format!(
                "link {link_name:?} has role {}, but the side that dials (has `address`) is the QKD master and the other the slave",
                link.role.as_str()
            ),
            format!("use a link with role = \"{}\"", want.as_str()),
        ));
    }
    let peer_sae_id = match &p.sae_id {
        Some(s) if s != &link.peer_sae_id => {
            return Err(invalid(
                f("sae_id"),
                format!(
                    "{s:?} differs from the link's peer_sae_id {:?}",
                    link.peer_sae_id
                ),
                "make them the same (or drop sae_id: it defaults to the link's)",
            ));
        }
        Some(s) => s.clone(),
        None => link.peer_sae_id.clone(),
    };
    let reserve = p.qkd_reserve.unwrap_or(8);
    if reserve == 0 || reserve > 1024 {
        return Err(invalid(
            f("qkd_reserve"),
            format!("{reserve} is out of range"),
            "hold 1 to 1024 keys ready",
        ));
    }
    Ok(Some(QkdPeer {
        policy,
        link: link_name.clone(),
        peer_sae_id,
        reserve,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_parse_and_classical_is_refused() {
        assert_eq!(
            KxGroup::parse("X25519MLKEM768"),
            Some(KxGroup::X25519MlKem768)
        );
        assert_eq!(KxGroup::parse("mlkem1024"), Some(KxGroup::MlKem1024));
        assert_eq!(KxGroup::parse("x25519"), None);
        let err = parse_groups("tls.key_exchange", &["x25519".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.key_exchange[0]") && err.contains("classical-only"),
            "{err}"
        );
        assert!(parse_groups("f", &[]).is_err());
    }

    #[test]
    fn host_port_checks() {
        assert!(check_host_port("f", "127.0.0.1:80").is_ok());
        assert!(check_host_port("f", "[::1]:80").is_ok());
        assert!(check_host_port("f", "site-b.example:7443").is_ok());
        for bad in [
            "site-b",
            "site b:80",
            ":80",
            "host:0",
            "host:99999",
            "a..b:1",
        ] {
            let e = check_host_port("peer[0].address", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("peer[0].address:"), "{e}");
        }
    }

    proptest::proptest! {
        /// As the `config` fuzz target: any text is refused or accepted, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "(site|tls|peer|\\[|\\]|=|\"|[a-z_.]|\n| |[0-9:]){0,300}") {
            let _ = Config::from_toml(&text, Path::new("p.toml"), Path::new("/nonexistent"));
        }
    }

    #[test]
    fn rekey_fields_parse_and_refusals_name_the_field() {
        let f = |n: &str| format!("peer[0].{n}");
        let p = parse_rekey(&f, None, None, None).unwrap();
        assert_eq!(p, RekeyPolicy::default());
        assert_eq!(p.hard_limit, std::time::Duration::from_secs(7200));
        let p = parse_rekey(&f, Some("90s"), Some("512MiB"), None).unwrap();
        assert_eq!(p.interval, std::time::Duration::from_secs(90));
        assert_eq!(p.bytes, 512 << 20);
        assert_eq!(p.hard_limit, std::time::Duration::from_secs(180));
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("1d"),
            Some(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(parse_bytes("10GB"), Some(10_000_000_000));
        assert_eq!(parse_bytes("4096"), Some(4096));
        for (args, field, hint) in [
            (
                (Some("1 hour"), None, None),
                "peer[0].rekey_interval",
                "a number and a unit",
            ),
            (
                (Some("3600"), None, None),
                "peer[0].rekey_interval",
                "a number and a unit",
            ),
            (
                (Some("500ms"), None, None),
                "peer[0].rekey_interval",
                "shorter than 1s",
            ),
            (
                (None, Some("lots"), None),
                "peer[0].rekey_bytes",
                "not a byte count",
            ),
            (
                (None, Some("64KiB"), None),
                "peer[0].rekey_bytes",
                "below 1MiB",
            ),
            (
                (None, Some("99999999TiB"), None),
                "peer[0].rekey_bytes",
                "not a byte count",
            ),
            (
                (Some("1h"), None, Some("30m")),
                "peer[0].rekey_hard_limit",
                "not longer than",
            ),
            (
                (None, None, Some("1h")),
                "peer[0].rekey_hard_limit",
                "not longer than",
            ),
        ] {
            let e = parse_rekey(&f, args.0, args.1, args.2)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(field) && e.contains(hint), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = "site = \"a\"\nsitee = 1\n[tls]\ncertificate=\"c\"\nprivate_key=\"k\"\ntrust_anchors=[]\n";
        let e = Config::from_toml(text, Path::new("a.toml"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sitee"), "{e}");
    }
}
