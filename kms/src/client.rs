//! The ETSI GS QKD 014 client: this site's SAE talking to its KME over HTTPS with mutual TLS. One code
//! path for qkd-sim and for vendor devices; the per-link configuration names the KME URL, the SAE IDs,
//! the CA, the SAE certificate and the timeouts.
//!
//! Only failures where the KME certainly delivered nothing (connection refused, TLS failure, 503) are
//! retried, with exponential backoff. A request that was sent and then timed out, or whose connection
//! dropped, is never retried inside the same batch: the caller writes that batch off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use qsi_etsi014::{
    ErrorBody, KeyContainer, KeyIds, KeyRequest, Status, dec_keys_path, enc_keys_path, status_path,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::secret::KeyMaterial;
use crate::source::{BoxFuture, DeliveredKey, FetchError, KeySource, LinkStatus};

/// Most bytes read from a KME answer (a container of 10,000 keys of 8 kbit is about 14 MB).
const MAX_BODY: usize = 32 << 20;

/// Where and how to reach one KME, as one SAE.
#[derive(Clone)]
pub struct ClientSettings {
    /// `https://host:port` (optionally followed by a path prefix before `/api/v1`).
    pub kme_url: String,
    /// TLS server name to verify, if it differs from the URL's host.
    pub server_name: Option<String>,
    /// The peer SAE: the slave SAE ID when this side is master (enc_keys, status), the master SAE ID
    /// when this side is slave (dec_keys).
    pub peer_sae_id: String,
    /// Timeout of one request, from sending to the end of the answer.
    pub timeout: Duration,
    /// Timeout of connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// Retries of requests that certainly delivered nothing.
    pub retries: u32,
    /// First backoff; doubles per retry.
    pub backoff: Duration,
    /// Client TLS configuration (trust anchors and the SAE certificate).
    pub tls: Arc<rustls::ClientConfig>,
}

struct Target {
    host: String,
    port: u16,
    prefix: String,
}

fn parse_url(url: &str) -> Result<Target, FetchError> {
    let bad = |why: &str| FetchError::Request(format!("KME URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in IPv6 address"))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), "443"),
        }
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("port is not a number"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Target {
        host,
        port,
        prefix: prefix.to_string(),
    })
}

/// An ETSI 014 client for one link (one SAE pair), keeping one HTTP/1.1 keep-alive connection.
pub struct Etsi014Client {
    s: ClientSettings,
    target: Target,
    name: ServerName<'static>,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

enum Sent {
    /// Status and body.
    Answer(u16, Bytes),
}

impl Etsi014Client {
    /// Checks the settings; connects lazily.
    pub fn new(s: ClientSettings) -> Result<Self, FetchError> {
        let target = parse_url(&s.kme_url)?;
        let host = s.server_name.clone().unwrap_or_else(|| target.host.clone());
        let name = ServerName::try_from(host.clone())
            .map_err(|_| FetchError::Request(format!("{host:?} is not a valid TLS server name")))?;
        Ok(Self {
            s,
            target,
            name,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    fn url(&self) -> String {
        self.s.kme_url.clone()
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, FetchError> {
        let url = self.url();
        let connect_err = |reason: String| FetchError::Connect {
            url: url.clone(),
            reason,
        };
        let fut = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| connect_err(format!("TCP: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(self.s.tls.clone())
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| {
                    connect_err(format!(
                        "TLS handshake (check the CA, the SAE certificate and the server name): {e}"
                    ))
                })?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| connect_err(format!("HTTP: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "KME connection ended");
                }
            });
            Ok(send)
        };
        tokio::time::timeout(self.s.connect_timeout, fut)
            .await
            .map_err(|_| {
                connect_err(format!(
                    "no connection within {} ms",
                    self.s.connect_timeout.as_millis()
                ))
            })?
    }

    /// One request on a live connection. Errors say whether the request may have reached the KME.
    async fn send_once(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Sent, FetchError> {
        let mut guard = self.conn.lock().await;
        let reusable = match guard.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => {
                let mut s = self.connect().await?;
                // TLS 1.3 lets the client finish its handshake before the server has judged the client
                // certificate; a refusal then surfaces on the first request. Prove a fresh connection
                // with a status request, which moves no key, so that a refused or broken connection is
                // known to have delivered nothing.
                self.probe(&mut s).await?;
                s
            }
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.target.prefix, path))
            .header(
                hyper::header::HOST,
                format!("{}:{}", self.target.host, self.target.port),
            )
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let timeout = self.s.timeout;
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(|e| {
                if e.is_canceled() {
                    // hyper never wrote the request
                    FetchError::Connect {
                        url: self.url(),
                        reason: format!("request not sent: {e}"),
                    }
                } else {
                    FetchError::Dropped(e.to_string())
                }
            })?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Dropped(format!("while reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, FetchError>(Sent::Answer(status, body))
        };
        let r = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout.as_millis() as u64))?;
        if r.is_ok() {
            *guard = Some(sender);
        }
        r
    }

    async fn probe(&self, sender: &mut SendRequest<Full<Bytes>>) -> Result<(), FetchError> {
        let req = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri(format!(
                "{}{}",
                self.target.prefix,
                status_path(&self.s.peer_sae_id)
            ))
            .header(
                hyper::header::HOST,
                format!("{}:{}", self.target.host, self.target.port),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let refused = |why: String| FetchError::Connect {
            url: self.url(),
            reason: format!(
                "the KME closed the new connection ({why}): check this SAE's certificate and the KME's trust anchors"
            ),
        };
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| refused(e.to_string()))?;
            // any HTTP answer proves the connection; drain the body so the next request can follow
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await;
            sender.ready().await.map_err(|e| refused(e.to_string()))
        };
        tokio::time::timeout(self.s.connect_timeout, exchange)
            .await
            .map_err(|_| refused("no answer to the status probe".into()))?
    }

    /// A request with retries (only for failures that delivered nothing) and ETSI error mapping.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, FetchError> {
        let mut backoff = self.s.backoff;
        let mut attempt = 0;
        loop {
            let e = match self.send_once(method.clone(), path, body.clone()).await {
                Ok(Sent::Answer(200, b)) => return Ok(b),
                Ok(Sent::Answer(status, b)) => kme_error(status, &b),
                Err(e) => e,
            };
            let retryable = matches!(
                &e,
                FetchError::Connect { .. } | FetchError::Kme { status: 503, .. }
            );
            if !retryable || attempt >= self.s.retries {
                return Err(e);
            }
            attempt += 1;
            warn!(url = %self.s.kme_url, error = %e, attempt, "KME request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// ETSI 014 Get status for the peer SAE.
    pub async fn get_status(&self) -> Result<LinkStatus, FetchError> {
        let b = self
            .call(hyper::Method::GET, &status_path(&self.s.peer_sae_id), None)
            .await?;
        let s: Status = serde_json::from_slice(&b)
            .map_err(|e| FetchError::Malformed(format!("Status: {e}")))?;
        Ok(LinkStatus {
            key_size: s.key_size,
            stored_key_count: s.stored_key_count,
            max_key_per_request: s.max_key_per_request,
            max_key_size: s.max_key_size,
            min_key_size: s.min_key_size,
        })
    }

    /// ETSI 014 Get key (POST enc_keys).
    pub async fn get_keys(&self, number: u32, size: u32) -> Result<Vec<DeliveredKey>, FetchError> {
        let body = serde_json::to_vec(&KeyRequest::new(number, size))
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let b = self
            .call(
                hyper::Method::POST,
                &enc_keys_path(&self.s.peer_sae_id),
                Some(body),
            )
            .await?;
        decode_container(&b)
    }

    /// ETSI 014 Get key with key IDs (POST dec_keys).
    pub async fn get_keys_by_id(&self, ids: &[String]) -> Result<Vec<DeliveredKey>, FetchError> {
        if ids.is_empty() {
            return Err(FetchError::Request("no key IDs".into()));
        }
        let body = serde_json::to_vec(&KeyIds::new(ids.iter().cloned()))
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let b = self
            .call(
                hyper::Method::POST,
                &dec_keys_path(&self.s.peer_sae_id),
                Some(body),
            )
            .await?;
        decode_container(&b)
    }
}

/// A non-200 answer as a clear error: the ETSI Error body's message and details, or the raw text.
fn kme_error(status: u16, body: &[u8]) -> FetchError {
    match ErrorBody::from_json(body) {
        Ok(e) => FetchError::Kme {
            status,
            message: e.message,
            details: e
                .details
                .filter(|d| !d.is_empty())
                .map(|d| {
                    format!(
                        " ({})",
                        serde_json::Value::from(
                            d.into_iter()
                                .map(serde_json::Value::Object)
                                .collect::<Vec<_>>()
                        )
                    )
                })
                .unwrap_or_default(),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
            FetchError::Kme {
                status,
                message: if text.is_empty() {
                    "no ETSI Error body".into()
                } else {
                    format!("no ETSI Error body: {text:?}")
                },
                details: String::new(),
            }
        }
    }
}

/// Parses a Key container and decodes every key. Per-key problems (size, duplicate IDs) are left to the
/// store, which refuses those keys one by one and keeps the rest; a body that is not a container at all
/// is `Malformed` (the KME thinks it delivered: the batch is written off).
fn decode_container(body: &[u8]) -> Result<Vec<DeliveredKey>, FetchError> {
    let c = KeyContainer::from_json(body).map_err(|e| FetchError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(c.keys.len());
    for k in c.keys {
        let bytes = k
            .key
            .decode()
            .map_err(|e| FetchError::Malformed(format!("key {}: {e}", k.key_id)))?;
        out.push((k.key_id, KeyMaterial::new(bytes.to_vec())));
    }
    Ok(out)
}

impl KeySource for Etsi014Client {
    fn status(&self) -> BoxFuture<'_, Result<LinkStatus, FetchError>> {
        Box::pin(self.get_status())
    }

    fn enc_keys(
        &self,
        number: u32,
        size: u32,
    ) -> BoxFuture<'_, Result<Vec<DeliveredKey>, FetchError>> {
        Box::pin(self.get_keys(number, size))
    }

    fn dec_keys<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<DeliveredKey>, FetchError>> {
        Box::pin(self.get_keys_by_id(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_port_and_prefix() {
        let t = parse_url("https://kme.example:8443/qkd").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("kme.example", 8443, "/qkd")
        );
        let t = parse_url("https://[::1]:9000/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("::1", 9000, "")
        );
        assert_eq!(parse_url("https://k").unwrap().port, 443);
        assert!(parse_url("http://k:1").is_err());
        assert!(parse_url("https://k:x").is_err());
    }

    #[test]
    fn error_bodies_become_clear_errors() {
        let e = kme_error(
            400,
            br#"{"message":"key not found","details":[{"key_ID":"abc"}]}"#,
        );
        let s = e.to_string();
        assert!(
            s.contains("400") && s.contains("key not found") && s.contains("abc"),
            "{s}"
        );
        assert!(e.nothing_delivered());
        let e = kme_error(503, b"<html>busy</html>");
        assert!(e.to_string().contains("no ETSI Error body"), "{e}");
    }

    #[test]
    fn malformed_containers_are_refused_whole() {
        assert!(matches!(
            decode_container(b"{\"keys\": 5}"),
            Err(FetchError::Malformed(_))
        ));
        assert!(matches!(
            decode_container(b"not json"),
            Err(FetchError::Malformed(_))
        ));
        let bad_b64 = br#"{"keys":[{"key_ID":"a","key":"!!!"}]}"#;
        assert!(matches!(
            decode_container(bad_b64),
            Err(FetchError::Malformed(_))
        ));
        let ok = br#"{"Keys":[{"key_ID":"a","key":"AAEC"}]}"#;
        assert_eq!(decode_container(ok).unwrap()[0].1.expose(), &[0, 1, 2]);
    }
}
