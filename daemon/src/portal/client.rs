//! The client side of the portal: one TLS connection (post-quantum, mutual, with the card's key), HTTP/1.1
//! on it, and the session token that only this connection may use.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use zeroize::Zeroizing;

/// An answer from the portal.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body (`{"error": ...}` on failure).
    pub body: serde_json::Value,
}

impl Answer {
    /// The portal's error message, if any.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(|e| e.as_str())
    }
}

/// One connection to the portal.
pub struct PortalClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: Option<Zeroizing<String>>,
    chuid: Option<Vec<u8>>,
    host: String,
    /// The key exchange group TLS negotiated (for display: it is always post-quantum).
    pub group: String,
}

impl std::fmt::Debug for PortalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalClient")
            .field("host", &self.host)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl PortalClient {
    /// Connects and completes the TLS handshake (the card signs here).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| anyhow::anyhow!("{server_name:?} is not a valid server name"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the portal at {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| anyhow::anyhow!("TLS handshake with the portal at {addr} failed: {e}"))?;
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "portal connection ended");
            }
        });
        Ok(PortalClient {
            sender,
            token: None,
            chuid: None,
            host: server_name.to_owned(),
            group,
        })
    }

    /// Sends a request with the session token (if any) and reads the JSON answer.
    pub async fn request(&mut self, method: Method, path: &str) -> anyhow::Result<Answer> {
        let token = self.token.as_ref().map(|t| t.as_str().to_owned());
        self.request_with_token(method, path, token.as_deref())
            .await
    }

    /// Sends a request with an explicit token (tests replay tokens across connections with this).
    pub async fn request_with_token(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Answer> {
        self.send(method, path, token, Bytes::new()).await
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&bytes) }));
        Ok(Answer { status, body })
    }

    /// The card's CHUID that [`PortalClient::login`] presents.
    pub fn with_chuid(mut self, chuid: Option<Vec<u8>>) -> Self {
        self.chuid = chuid;
        self
    }

    /// Logs in (presenting the CHUID given by [`PortalClient::with_chuid`], if any); on success keeps the
    /// token for the following requests on this connection.
    pub async fn login(&mut self) -> anyhow::Result<Answer> {
        let chuid = self.chuid.clone();
        self.login_with_chuid(chuid.as_deref()).await
    }

    /// Logs in presenting the card's signed CHUID (read from the card), which the portal checks against
    /// the certificate the card authenticated with.
    pub async fn login_with_chuid(&mut self, chuid: Option<&[u8]>) -> anyhow::Result<Answer> {
        use base64::Engine as _;
        let body = match chuid {
            Some(c) => Bytes::from(
                serde_json::json!({ "chuid": base64::engine::general_purpose::STANDARD.encode(c) })
                    .to_string(),
            ),
            None => Bytes::new(),
        };
        let a = self.send(Method::POST, "/login", None, body).await?;
        if a.status == StatusCode::OK {
            self.token = a
                .body
                .get("token")
                .and_then(|t| t.as_str())
                .map(|t| Zeroizing::new(t.to_owned()));
        }
        Ok(a)
    }

    /// Logs out and forgets the token.
    pub async fn logout(&mut self) -> anyhow::Result<Answer> {
        let a = self.request(Method::POST, "/logout").await?;
        self.token = None;
        Ok(a)
    }

    /// The session token of this connection (to test that it is useless elsewhere).
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.as_str())
    }
}
