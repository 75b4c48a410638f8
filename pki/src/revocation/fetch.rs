//! Runtime revocation for the daemon: CRLs fetched over HTTP from the distribution points of the
//! certificates being validated, cached, refreshed before their nextUpdate, with a per-deployment policy
//! for a CRL that could not be refreshed in time ([`StalePolicy`]).
//!
//! The cache only fetches and parses; the validator still checks every CRL's signature, scope and
//! freshness (a stale CRL is accepted within the grace period only, and logged).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::Crl;
use crate::validate::{Cert, unix_secs};

/// Errors fetching a CRL or bundle.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Only http:// URIs are fetched (CRLs and bundles are signed objects; LDAP is not supported).
    #[error("unsupported URI scheme in {0} (only http:// is fetched)")]
    UnsupportedScheme(String),
    /// Network trouble.
    #[error("fetching {uri}: {err}")]
    Io {
        /// The URI.
        uri: String,
        /// The error.
        err: std::io::Error,
    },
    /// The server answered something other than 200.
    #[error("fetching {uri}: HTTP status {status}")]
    Status {
        /// The URI.
        uri: String,
        /// The status code.
        status: u16,
    },
    /// The answer is not HTTP, or too large.
    #[error("fetching {uri}: {why}")]
    BadResponse {
        /// The URI.
        uri: String,
        /// What was wrong.
        why: String,
    },
    /// The body is not a CRL.
    #[error("{uri} is not a CRL: {err}")]
    Parse {
        /// The URI.
        uri: String,
        /// The parse error.
        err: crate::validate::ParseError,
    },
}

/// A plain HTTP/1.1 GET (CRLs and .p7c bundles are served over http:// so that fetching them does not
/// depend on the PKI being validated). Bounded in time and size.
pub fn http_get(uri: &str, timeout: Duration, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| FetchError::UnsupportedScheme(uri.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let io = |err| FetchError::Io {
        uri: uri.to_string(),
        err,
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| FetchError::BadResponse {
            uri: uri.to_string(),
            why: "host does not resolve".into(),
        })?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let host = authority;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\nUser-Agent: qsi-pki\r\n\r\n"
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.take((max_bytes + 16384) as u64)
        .read_to_end(&mut buf)
        .map_err(io)?;
    let bad = |why: &str| FetchError::BadResponse {
        uri: uri.to_string(),
        why: why.to_string(),
    };
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    if status != 200 {
        return Err(FetchError::Status {
            uri: uri.to_string(),
            status,
        });
    }
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked encoding"))?;
    } else if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(bad("body shorter than Content-Length"));
        }
        body.truncate(len);
    }
    if body.len() > max_bytes {
        return Err(bad("body too large"));
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Where CRL bytes come from (HTTP in production; anything for tests of the cache logic).
pub trait CrlSource: Send + Sync {
    /// The DER (or PEM) CRL at `uri`.
    fn get(&self, uri: &str) -> Result<Vec<u8>, FetchError>;
}

/// Fetches over HTTP.
#[derive(Clone, Debug)]
pub struct HttpSource {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Largest CRL accepted.
    pub max_bytes: usize,
}

impl Default for HttpSource {
    fn default() -> Self {
        HttpSource {
            timeout: Duration::from_secs(5),
            max_bytes: 32 << 20,
        }
    }
}

impl CrlSource for HttpSource {
    fn get(&self, uri: &str) -> Result<Vec<u8>, FetchError> {
        http_get(uri, self.timeout, self.max_bytes)
    }
}

/// What to do with a CRL whose nextUpdate has passed because a refresh failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalePolicy {
    /// Do not use it: certificates it covers have an unknown status (fail closed).
    Refuse,
    /// Use it for this long past nextUpdate, with a warning in the log each time.
    Grace(Duration),
}

impl StalePolicy {
    /// The grace in seconds (0 for Refuse), as [`crate::validate::ValidationOptions::crl_grace_secs`]
    /// takes it.
    pub fn grace_secs(&self) -> u64 {
        match self {
            StalePolicy::Refuse => 0,
            StalePolicy::Grace(d) => d.as_secs(),
        }
    }
}

#[derive(Clone, Debug)]
struct Cached {
    crl: Crl,
    fetched_at: u64,
}

/// A cache of CRLs keyed by distribution-point URI.
pub struct CrlCache {
    source: Arc<dyn CrlSource>,
    entries: Mutex<HashMap<String, Cached>>,
    /// Refresh this long before nextUpdate.
    refresh_margin: Duration,
    /// Refetch a CRL without nextUpdate after this long.
    max_age: Duration,
    stale: StalePolicy,
}

impl std::fmt::Debug for CrlCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlCache")
            .field("refresh_margin", &self.refresh_margin)
            .field("stale", &self.stale)
            .finish()
    }
}

impl CrlCache {
    /// A cache over `source`.
    pub fn new(source: Arc<dyn CrlSource>, refresh_margin: Duration, stale: StalePolicy) -> Self {
        CrlCache {
            source,
            entries: Mutex::new(HashMap::new()),
            refresh_margin,
            max_age: Duration::from_secs(3600),
            stale,
        }
    }

    /// The stale policy.
    pub fn stale_policy(&self) -> StalePolicy {
        self.stale
    }

    fn due(&self, c: &Cached, now: u64) -> bool {
        match c.crl.next_update() {
            Some(nu) => now + self.refresh_margin.as_secs() >= nu,
            None => now >= c.fetched_at + self.max_age.as_secs(),
        }
    }

    /// Fetches `uri` now, replacing the cached copy when the new CRL is at least as recent.
    pub fn refresh(&self, uri: &str, now: SystemTime) -> Result<Crl, FetchError> {
        let body = self.source.get(uri)?;
        let crl = Crl::load(&body)
            .map_err(|err| FetchError::Parse {
                uri: uri.to_string(),
                err,
            })?
            .into_iter()
            .next()
            .ok_or_else(|| FetchError::BadResponse {
                uri: uri.to_string(),
                why: "empty body".into(),
            })?;
        if let Ok(mut e) = self.entries.lock() {
            let newer = e
                .get(uri)
                .is_none_or(|old| crl.this_update() >= old.crl.this_update());
            if newer {
                e.insert(
                    uri.to_string(),
                    Cached {
                        crl: crl.clone(),
                        fetched_at: unix_secs(now),
                    },
                );
            }
        }
        tracing::info!(uri, next_update = ?crl.next_update(), entries = crl.len(), "CRL fetched");
        Ok(crl)
    }

    /// The CRLs for the distribution points (and freshestCRL points) of `certs`, fetching what is
    /// missing or due. A failed refresh keeps the old copy; a copy past nextUpdate is handed out only
    /// under [`StalePolicy::Grace`] (the validator then applies the same grace and logs it).
    pub fn crls_for(&self, certs: &[Cert], now: SystemTime) -> Vec<Crl> {
        let t = unix_secs(now);
        let mut uris: Vec<String> = Vec::new();
        for c in certs {
            for u in c.crl_uris().into_iter().chain(freshest_uris(c)) {
                if u.starts_with("http://") && !uris.contains(&u) {
                    uris.push(u);
                }
            }
        }
        let mut out = Vec::new();
        for uri in uris {
            let cached = self.entries.lock().ok().and_then(|e| e.get(&uri).cloned());
            let crl = match cached {
                Some(c) if !self.due(&c, t) => Some(c.crl),
                Some(c) => match self.refresh(&uri, now) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(uri, error = %e, "CRL refresh failed; keeping the cached copy");
                        Some(c.crl)
                    }
                },
                None => match self.refresh(&uri, now) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(uri, error = %e, "CRL fetch failed");
                        None
                    }
                },
            };
            if let Some(crl) = crl {
                let stale = crl.next_update().is_some_and(|nu| nu < t);
                if stale {
                    match self.stale {
                        StalePolicy::Refuse => {
                            tracing::error!(
                                uri,
                                "CRL is past nextUpdate and could not be refreshed: refused"
                            );
                            continue;
                        }
                        StalePolicy::Grace(g) => {
                            let nu = crl.next_update().unwrap_or(t);
                            if nu + g.as_secs() < t {
                                tracing::error!(
                                    uri,
                                    "CRL is past nextUpdate and its grace period: refused"
                                );
                                continue;
                            }
                            tracing::warn!(
                                uri,
                                "CRL is past nextUpdate; used within the grace period"
                            );
                        }
                    }
                }
                out.push(crl);
            }
        }
        out
    }

    /// Refreshes every cached CRL that is due (call periodically; see [`CrlCache::spawn_refresher`]).
    pub fn refresh_due(&self, now: SystemTime) -> usize {
        let t = unix_secs(now);
        let due: Vec<String> = self
            .entries
            .lock()
            .map(|e| {
                e.iter()
                    .filter(|(_, c)| self.due(c, t))
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        due.iter()
            .filter(|u| {
                self.refresh(u, now)
                    .map_err(|e| tracing::warn!(uri = %u, error = %e, "CRL refresh failed"))
                    .is_ok()
            })
            .count()
    }

    /// Runs [`CrlCache::refresh_due`] every `every` on the tokio runtime (blocking I/O on the blocking
    /// pool).
    pub fn spawn_refresher(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let me = self.clone();
                let _ =
                    tokio::task::spawn_blocking(move || me.refresh_due(SystemTime::now())).await;
            }
        })
    }
}

fn freshest_uris(c: &Cert) -> Vec<String> {
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    c.ext()
        .freshest_crl
        .iter()
        .flatten()
        .filter_map(|dp| match &dp.distribution_point {
            Some(DistributionPointName::FullName(n)) => Some(n.iter().filter_map(|g| match g {
                GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                _ => None,
            })),
            _ => None,
        })
        .flatten()
        .collect()
}
