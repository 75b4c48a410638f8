//! Portal configuration: TOML into raw structs (unknown fields refused), then validated into
//! [`PortalConfig`] with messages that name the field and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qsi_labels::Label;
use serde::Deserialize;

/// The portal's TOML file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on.
    pub listen: String,
    /// The highest label this site may carry; services and data above it are refused at load.
    pub clearance: String,
    /// The access store (redb file).
    pub store: PathBuf,
    /// The access admin socket `qsi access` talks to (default: the store's path with `.sock`).
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Session lifetime in seconds (default 900).
    #[serde(default)]
    pub session_ttl_secs: Option<u64>,
    /// The portal's TLS certificate and key.
    pub tls: RawTls,
    /// What card certificates are trusted.
    pub trust: RawTrust,
    /// Labelled data objects served at `/data/<id>`.
    #[serde(default, rename = "object")]
    pub objects: Vec<RawObject>,
    /// Labelled services forwarded at `/service/<name>/...`.
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain of the portal.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the portal.
    pub key: PathBuf,
}

/// `[trust]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    /// PEM trust anchors for card certificates (this site's root; a bridge only if trusted directly).
    pub anchors: Vec<PathBuf>,
    /// CRLs (PEM or DER). When any is given, cards whose issuer has no CRL here are refused.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Certificate policy OIDs accepted (after bridge mapping); empty accepts any valid path.
    #[serde(default)]
    pub accepted_policies: Vec<String>,
    /// Untrusted certificates for path building: bridge and partner cross-certificates, intermediates
    /// (PEM files, or .p7c bundles).
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    /// `require` (default): every CA and card on the path needs a CRL here; `best-effort`; `off`.
    #[serde(default)]
    pub revocation: Option<String>,
    /// The card's signed CHUID: `require` (default: a card without one is refused), `if-present`
    /// (checked when the client sends one), `off`.
    #[serde(default)]
    pub chuid: Option<String>,
}

/// `[[object]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObject {
    /// Identifier in `/data/<id>`.
    pub id: String,
    /// Banner marking.
    pub label: String,
    /// File with the content.
    pub file: PathBuf,
}

/// `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Name in `/service/<name>/...`.
    pub name: String,
    /// Banner marking: only sessions that dominate it reach the service.
    pub label: String,
    /// Upstream HTTP address (`host:port`), usually a tunnel's local end.
    pub upstream: String,
}

/// How the portal treats the card's signed CHUID (SP 800-73-4), which `qsi login` reads from the card and
/// sends with the login: its signature must verify under a content signer this site trusts, and its
/// FASC-N and UUID must be the certificate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChuidMode {
    /// Every login must present a valid CHUID.
    Require,
    /// A CHUID sent is checked; a login without one goes on.
    IfPresent,
    /// CHUIDs are ignored.
    Off,
}

/// A labelled data object.
#[derive(Debug, Clone, PartialEq)]
pub struct DataObject {
    /// Its label.
    pub label: Label,
    /// The file.
    pub file: PathBuf,
}

/// A labelled forwarded service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Its label.
    pub label: Label,
    /// Upstream address.
    pub upstream: SocketAddr,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The site's accreditation.
    pub clearance: Label,
    /// Access store path.
    pub store: PathBuf,
    /// Access admin socket path.
    pub admin_socket: PathBuf,
    /// Session lifetime.
    pub session_ttl_secs: i64,
    /// TLS certificate chain file.
    pub tls_cert: PathBuf,
    /// TLS key file.
    pub tls_key: PathBuf,
    /// Trust anchor files.
    pub anchors: Vec<PathBuf>,
    /// CRL files.
    pub crls: Vec<PathBuf>,
    /// Accepted policies.
    pub accepted_policies: Vec<String>,
    /// Candidate certificate files.
    pub intermediates: Vec<PathBuf>,
    /// Revocation mode.
    pub revocation: qsi_pki::validate::RevocationMode,
    /// What to do with the card's CHUID.
    pub chuid: ChuidMode,
    /// Data objects by id.
    pub objects: BTreeMap<String, DataObject>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or unknown field.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field has a bad value.
    #[error("{field}: {message}")]
    Field {
        /// Which field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

impl PortalConfig {
    /// Reads and validates a config file; relative paths are relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(raw, base)
    }

    /// Validates raw config.
    pub fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let rel = |p: &Path| base.join(p);
        let listen = raw.listen.parse().map_err(|_| {
            field(
                "listen",
                format!("{:?} is not host:port, e.g. 127.0.0.1:8443", raw.listen),
            )
        })?;
        let clearance: Label = raw
            .clearance
            .parse()
            .map_err(|e| field("clearance", format!("{e}")))?;
        let ttl = raw.session_ttl_secs.unwrap_or(900);
        if !(10..=86_400).contains(&ttl) {
            return Err(field(
                "session_ttl_secs",
                "must be between 10 and 86400 seconds",
            ));
        }
        if raw.trust.anchors.is_empty() {
            return Err(field(
                "trust.anchors",
                "name at least one trust anchor (PEM file)",
            ));
        }
        let revocation = match raw.trust.revocation.as_deref() {
            None | Some("require") => qsi_pki::validate::RevocationMode::Require,
            Some("best-effort") => qsi_pki::validate::RevocationMode::BestEffort,
            Some("off") => qsi_pki::validate::RevocationMode::Off,
            Some(other) => {
                return Err(field(
                    "trust.revocation",
                    format!("{other:?}: write \"require\", \"best-effort\" or \"off\""),
                ));
            }
        };
        let chuid = match raw.trust.chuid.as_deref() {
            None | Some("require") => ChuidMode::Require,
            Some("if-present") => ChuidMode::IfPresent,
            Some("off") => ChuidMode::Off,
            Some(other) => {
                return Err(field(
                    "trust.chuid",
                    format!("{other:?}: write \"require\", \"if-present\" or \"off\""),
                ));
            }
        };
        for (i, p) in raw.trust.accepted_policies.iter().enumerate() {
            if p.parse::<der::asn1::ObjectIdentifier>().is_err() {
                return Err(field(
                    format!("trust.accepted_policies[{i}]"),
                    format!("{p:?} is not a dotted OID"),
                ));
            }
        }
        let mut objects = BTreeMap::new();
        for (i, o) in raw.objects.into_iter().enumerate() {
            let f = format!("object[{i}]");
            let label: Label = o
                .label
                .parse()
                .map_err(|e| field(format!("{f}.label"), format!("{e}")))?;
            if !clearance.dominates(&label) {
                return Err(field(
                    format!("{f}.label"),
                    format!(
                        "{label} is above this site's clearance {clearance}: the site may not hold it"
                    ),
                ));
            }
            let id_ok = !o.id.is_empty()
                && o.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !id_ok {
                return Err(field(
                    format!("{f}.id"),
                    "use letters, digits, '-', '_' and '.'",
                ));
            }
            let file = rel(&o.file);
            if objects
                .insert(o.id.clone(), DataObject { label, file })
                .is_some()
            {
                return Err(field(
                    format!("{f}.id"),
                    format!("{:?} appears twice", o.id),
                ));
            }
        }
        let mut services = BTreeMap::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let f = format!("service[{i}]");
            let label: Label = s
                .label
                .parse()
                .map_err(|e| field(format!("{f}.label"), format!("{e}")))?;
            if !clearance.dominates(&label) {
                return Err(field(
                    format!("{f}.label"),
                    format!(
                        "{label} is above this site's clearance {clearance}: the site refuses to carry it"
                    ),
                ));
            }
            let upstream = s.upstream.parse().map_err(|_| {
                field(
                    format!("{f}.upstream"),
                    "must be host:port, e.g. 127.0.0.1:9000",
                )
            })?;
            if services
                .insert(s.name.clone(), Service { label, upstream })
                .is_some()
            {
                return Err(field(
                    format!("{f}.name"),
                    format!("{:?} appears twice", s.name),
                ));
            }
        }
        Ok(PortalConfig {
            listen,
            clearance,
            store: rel(&raw.store),
            admin_socket: raw
                .admin_socket
                .as_deref()
                .map_or_else(|| super::admin::default_socket(&rel(&raw.store)), rel),
            session_ttl_secs: ttl as i64,
            tls_cert: rel(&raw.tls.cert),
            tls_key: rel(&raw.tls.key),
            anchors: raw.trust.anchors.iter().map(|p| rel(p)).collect(),
            crls: raw.trust.crls.iter().map(|p| rel(p)).collect(),
            accepted_policies: raw.trust.accepted_policies,
            intermediates: raw.trust.intermediates.iter().map(|p| rel(p)).collect(),
            revocation,
            chuid,
            objects,
            services,
        })
    }
}
