//! The portal's request handling. A connection is accepted over post-quantum TLS 1.3 with a client
//! certificate; `POST /login` validates that certificate, maps its card identity to a person and opens a
//! session bound to the connection. Every later request carries the session token and is checked against
//! the connection; labelled data and services are reachable only when the session dominates their label,
//! and otherwise answer exactly as if they did not exist.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use qsi_labels::Label;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::json;

use super::config::PortalConfig;
use super::session::{NewSession, Session, Sessions, Token, TokenRefusal};
use super::tls::{BINDING_LEN, EXPORTER_LABEL};
use super::validate::{CardRefusal, CardValidator};
use crate::access::{AccessStore, AuditEvent, CardIdentity};

/// Largest request body the portal reads.
pub const MAX_BODY: usize = 1 << 20;

/// The clock the portal reads (Unix seconds); injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp())
}

/// What the portal knows about one TLS connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The connection's exporter value, which sessions are bound to.
    pub binding: [u8; BINDING_LEN],
    /// The client's certificate chain (end entity first).
    pub chain: Vec<CertificateDer<'static>>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl ConnInfo {
    /// Reads the binding and the client chain from an established server connection.
    pub fn from_tls(
        conn: &rustls::ServerConnection,
        peer: SocketAddr,
    ) -> Result<Self, rustls::Error> {
        let binding = conn.export_keying_material([0u8; BINDING_LEN], EXPORTER_LABEL, None)?;
        let chain = conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        Ok(ConnInfo {
            binding,
            chain,
            peer,
        })
    }
}

/// Why a login was refused; the message is what the person sees.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefusal {
    /// The certificate path is not valid.
    #[error(transparent)]
    Card(#[from] CardRefusal),
    /// The certificate carries no card identity.
    #[error("{0}")]
    NotACard(String),
    /// No person is registered for this card.
    #[error(
        "your card is not registered at this site: ask a security officer to grant you a clearance"
    )]
    UnknownPerson,
    /// The person's clearance was revoked.
    #[error("your clearance at this site has been withdrawn: contact a security officer")]
    ClearanceWithdrawn,
    /// The store failed.
    #[error("the access store failed; try again or contact the administrator")]
    Store,
}

/// The login portal.
pub struct Portal {
    store: Arc<AccessStore>,
    validator: Arc<dyn CardValidator>,
    config: PortalConfig,
    sessions: Mutex<Sessions>,
    clock: Clock,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    json_response(status, json!({ "error": message.to_string() }))
}

/// The one answer for "no such thing" and "not for you": identical bytes, so a probe learns nothing.
fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "not found")
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

impl Portal {
    /// A portal over an access store and a validator.
    pub fn new(
        config: PortalConfig,
        store: Arc<AccessStore>,
        validator: Arc<dyn CardValidator>,
        clock: Clock,
    ) -> Self {
        Portal {
            store,
            validator,
            config,
            sessions: Mutex::new(Sessions::default()),
            clock,
        }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The portal's clock (Unix seconds).
    pub fn clock_now(&self) -> i64 {
        self.now()
    }

    /// The access store this portal owns.
    pub fn store(&self) -> &AccessStore {
        &self.store
    }

    /// Ends the live sessions of a person whose record changed, so a withdrawn or lowered clearance
    /// applies at once (they log in again under the new record).
    pub fn person_changed(&self, person: &str) {
        let gone = self.sessions().end_person(person);
        for s in gone {
            tracing::info!(%person, session = %s.id, "session ended: the person's clearance changed");
            self.audit(AuditEvent::Logout {
                person: s.person,
                session: s.id,
            });
        }
    }

    fn audit(&self, event: AuditEvent) {
        // The record is durable before the answer goes out; its fsync must not hold a runtime worker,
        // or concurrent logins could not share a group commit.
        let now = self.now();
        let write = || self.store.audit(now, event);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(write)
            }
            _ => write(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "could not write the access audit log");
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Validates the connection's card and opens a session (no CHUID presented).
    pub fn login(&self, conn: &ConnInfo) -> Result<(Token, Session), LoginRefusal> {
        self.login_with(conn, None)
    }

    /// Validates the connection's card, and the CHUID the client read from it, and opens a session.
    pub fn login_with(
        &self,
        conn: &ConnInfo,
        chuid: Option<&[u8]>,
    ) -> Result<(Token, Session), LoginRefusal> {
        let now = self.now();
        let result = self.try_login(conn, chuid, now);
        match &result {
            Ok((_, s)) => self.audit(AuditEvent::Login {
                person: s.person.clone(),
                clearance: s.clearance.to_string(),
                session: s.id.clone(),
                peer: conn.peer.to_string(),
            }),
            Err(e) => {
                let card = conn
                    .chain
                    .first()
                    .and_then(|c| CardIdentity::from_cert_der(c).ok())
                    .map(|c| c.to_string());
                tracing::info!(reason = %e, card = ?card, peer = %conn.peer, "login refused");
                self.audit(AuditEvent::LoginRefused {
                    reason: e.to_string(),
                    card,
                    peer: conn.peer.to_string(),
                });
            }
        }
        result
    }

    /// Checks a card's CHUID against its validated certificate: the CMS signature, a content signer this
    /// site trusts (path and id-PIV-content-signing EKU), the expiry date, and that its FASC-N and UUID are
    /// the certificate's.
    fn check_chuid(
        &self,
        ee: &CertificateDer<'_>,
        chuid: Option<&[u8]>,
        now: i64,
    ) -> Result<(), CardRefusal> {
        use super::config::ChuidMode;
        let refuse = |m: String| CardRefusal::Chuid(m);
        let buf = match (self.config.chuid, chuid) {
            (ChuidMode::Off, _) | (ChuidMode::IfPresent, None) => return Ok(()),
            (ChuidMode::Require, None) => {
                return Err(refuse(
                    "this site requires your card's signed CHUID and none was sent: use `qsi login`, and have a card office re-provision the card if it has no CHUID".into(),
                ));
            }
            (_, Some(b)) => b,
        };
        let v = qsi_pki::chuid::VerifiedChuid::verify(buf)
            .map_err(|e| refuse(format!("your card's CHUID is not validly signed: {e}")))?;
        let signer_der = der::Encode::to_der(&v.signer)
            .map_err(|e| refuse(format!("the CHUID signer certificate: {e}")))?;
        let secs = u64::try_from(now).unwrap_or(0);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        self.validator
            .validate_content_signer(&CertificateDer::from(signer_der), at)?;
        let content_signing = qsi_pki::profiles::oid::PIV_CONTENT_SIGNING;
        let eku = v
            .signer
            .tbs_certificate()
            .get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>()
            .ok()
            .flatten()
            .is_some_and(|(_, e)| e.0.contains(&content_signing));
        if !eku {
            return Err(refuse(
                "your card's CHUID was signed by a certificate that is not a PIV content signer"
                    .into(),
            ));
        }
        let today = time::OffsetDateTime::from_unix_timestamp(now)
            .map(|t| format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()))
            .unwrap_or_default();
        if v.chuid.expiry < today {
            return Err(refuse(format!(
                "your card expired on {} (CHUID): ask your card office for a new card",
                v.chuid.expiry
            )));
        }
        let id = CardIdentity::from_cert_der(ee).map_err(|e| refuse(e.to_string()))?;
        let fascn_ok = id
            .fascn
            .as_ref()
            .is_none_or(|f| *f == hex::encode_upper(&v.fascn_bytes));
        let uuid_ok = id.uuid.is_none_or(|u| u == v.chuid.guid);
        if !fascn_ok || !uuid_ok {
            return Err(refuse(
                "the CHUID on your card names another card (its FASC-N or UUID differs from your certificate's)".into(),
            ));
        }
        Ok(())
    }

    fn try_login(
        &self,
        conn: &ConnInfo,
        chuid: Option<&[u8]>,
        now: i64,
    ) -> Result<(Token, Session), LoginRefusal> {
        let (ee, intermediates) = conn.chain.split_first().ok_or(CardRefusal::NoCertificate)?;
        let secs = u64::try_from(now).unwrap_or(0);
        let validated = self.validator.validate(
            ee,
            intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        )?;
        let accepted = &self.config.accepted_policies;
        if !accepted.is_empty() && !validated.policies.iter().any(|p| accepted.contains(p)) {
            return Err(CardRefusal::PolicyNotAccepted.into());
        }
        self.check_chuid(ee, chuid, now)?;
        let id =
            CardIdentity::from_cert_der(ee).map_err(|e| LoginRefusal::NotACard(e.to_string()))?;
        let person = self
            .store
            .person_for(&id)
            .map_err(|e| {
                tracing::error!(error = %e, "access store");
                LoginRefusal::Store
            })?
            .ok_or(LoginRefusal::UnknownPerson)?;
        let clearance = person.clearance.ok_or(LoginRefusal::ClearanceWithdrawn)?;
        // A session never exceeds what the site itself may hold.
        let clearance = clearance.glb(&self.config.clearance);
        let mut random = [0u8; 48];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| LoginRefusal::Store)?;
        let new = NewSession {
            person: person.key,
            name: person.name,
            clearance,
            policies: validated.policies,
        };
        Ok(self.sessions().create(
            new,
            conn.binding,
            now,
            self.config.session_ttl_secs,
            &random,
        ))
    }

    fn session(&self, conn: &ConnInfo, token: Option<&str>) -> Result<Session, Box<Resp>> {
        let now = self.now();
        let checked = self.sessions().check(token, &conn.binding, now);
        checked.map_err(|e| Box::new(self.token_refused(conn, e)))
    }

    fn token_refused(&self, conn: &ConnInfo, e: TokenRefusal) -> Resp {
        tracing::info!(reason = %e, peer = %conn.peer, "session token refused");
        self.audit(AuditEvent::TokenRefused {
            reason: e.to_string(),
            session: e.session(),
            peer: conn.peer.to_string(),
        });
        error(StatusCode::UNAUTHORIZED, e)
    }

    fn denied(&self, s: &Session, resource: String, label: &Label) -> Resp {
        tracing::info!(person = %s.person, %resource, "request above the session's clearance");
        self.audit(AuditEvent::AccessDenied {
            person: s.person.clone(),
            resource,
            label: label.to_string(),
            clearance: s.clearance.to_string(),
        });
        not_found()
    }

    /// Ends the sessions of a closed connection.
    pub fn connection_closed(&self, conn: &ConnInfo) {
        let gone = self.sessions().connection_closed(&conn.binding);
        for s in gone {
            self.audit(AuditEvent::Logout {
                person: s.person,
                session: s.id,
            });
        }
    }

    fn login_answer(&self, conn: &ConnInfo, chuid: Option<&[u8]>) -> Resp {
        match self.login_with(conn, chuid) {
            Ok((token, s)) => json_response(
                StatusCode::OK,
                json!({
                    "token": token.expose(),
                    "session": s.id,
                    "person": s.person,
                    "name": s.name,
                    "clearance": s.clearance.to_string(),
                    "policies": s.policies,
                    "expires_at": s.expires_at,
                }),
            ),
            Err(e) => error(StatusCode::FORBIDDEN, e),
        }
    }

    /// Handles one request on a connection.
    pub async fn handle(&self, conn: &ConnInfo, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        let token = bearer(&req);
        let segments: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["login"]) => match login_body(req).await {
                Ok(chuid) => self.login_answer(conn, chuid.as_deref()),
                Err(why) => {
                    self.audit(AuditEvent::LoginRefused {
                        reason: why.clone(),
                        card: None,
                        peer: conn.peer.to_string(),
                    });
                    error(StatusCode::BAD_REQUEST, why)
                }
            },
            (&Method::POST, ["logout"]) => {
                let now = self.now();
                let r = self.sessions().logout(token.as_deref(), &conn.binding, now);
                match r {
                    Ok(s) => {
                        self.audit(AuditEvent::Logout {
                            person: s.person,
                            session: s.id.clone(),
                        });
                        json_response(StatusCode::OK, json!({ "logged_out": s.id }))
                    }
                    Err(e) => self.token_refused(conn, e),
                }
            }
            (&Method::GET, ["whoami"]) => match self.session(conn, token.as_deref()) {
                Ok(s) => json_response(
                    StatusCode::OK,
                    json!({
                        "session": s.id, "person": s.person, "name": s.name,
                        "clearance": s.clearance.to_string(), "expires_at": s.expires_at,
                    }),
                ),
                Err(r) => *r,
            },
            (&Method::GET, ["data"]) => match self.session(conn, token.as_deref()) {
                Ok(s) => {
                    let visible: Vec<_> = self
                        .config
                        .objects
                        .iter()
                        .filter(|(_, o)| s.clearance.dominates(&o.label))
                        .map(|(id, o)| json!({ "id": id, "label": o.label.to_string() }))
                        .collect();
                    json_response(StatusCode::OK, json!({ "objects": visible }))
                }
                Err(r) => *r,
            },
            (&Method::GET, ["data", id]) => match self.session(conn, token.as_deref()) {
                Ok(s) => self.data(&s, id).await,
                Err(r) => *r,
            },
            (_, ["service", name, ..]) => {
                let name = (*name).to_owned();
                let rest = segments.get(2).map_or(String::new(), |r| (*r).to_owned());
                match self.session(conn, token.as_deref()) {
                    Ok(s) => self.forward(&s, &name, &rest, req).await,
                    Err(r) => *r,
                }
            }
            _ => not_found(),
        }
    }

    async fn data(&self, s: &Session, id: &str) -> Resp {
        let Some(obj) = self.config.objects.get(id) else {
            return not_found();
        };
        if !s.clearance.dominates(&obj.label) {
            return self.denied(s, format!("/data/{id}"), &obj.label);
        }
        match tokio::fs::read(&obj.file).await {
            Ok(content) => json_response(
                StatusCode::OK,
                json!({
                    "id": id,
                    "label": obj.label.to_string(),
                    "content": String::from_utf8_lossy(&content),
                }),
            ),
            Err(e) => {
                tracing::error!(file = %obj.file.display(), error = %e, "data object unreadable");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the object could not be read",
                )
            }
        }
    }

    async fn forward(&self, s: &Session, name: &str, rest: &str, req: Request<Incoming>) -> Resp {
        let Some(svc) = self.config.services.get(name) else {
            return not_found();
        };
        if !s.clearance.dominates(&svc.label) {
            return self.denied(s, format!("/service/{name}"), &svc.label);
        }
        match forward_http(svc.upstream, s, rest, req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "upstream failed");
                error(
                    StatusCode::BAD_GATEWAY,
                    format!("service {name} is unavailable"),
                )
            }
        }
    }

    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = listener.accept().await?;
            let portal = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Err(e) = portal.serve_connection(acceptor, tcp, peer).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> anyhow::Result<()> {
        let _ = tcp.set_nodelay(true);
        let tls = acceptor.accept(tcp).await?;
        let conn = Arc::new(ConnInfo::from_tls(tls.get_ref().1, peer)?);
        let portal = self.clone();
        let c2 = conn.clone();
        let svc = hyper::service::service_fn(move |req| {
            let portal = portal.clone();
            let conn = c2.clone();
            async move { Ok::<_, std::convert::Infallible>(portal.handle(&conn, req).await) }
        });
        let result = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
            .await;
        self.connection_closed(&conn);
        result.map_err(Into::into)
    }
}

/// The body of `POST /login`: empty, or JSON `{"chuid": "<base64 of the card's CHUID>"}`.
async fn login_body(req: Request<Incoming>) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine as _;
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("the login request could not be read: {e}"))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the login request is not JSON: {e}"))?;
    match v.get("chuid") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|_| "the login request's chuid is not base64".to_owned()),
        Some(_) => Err("the login request's chuid must be a base64 string".to_owned()),
    }
}

/// Forwards a request to a plain-HTTP upstream (on loopback or a tunnel's local end), telling it who asks.
async fn forward_http(
    upstream: SocketAddr,
    s: &Session,
    rest: &str,
    req: Request<Incoming>,
) -> anyhow::Result<Resp> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("request body: {e}"))?
        .to_bytes();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(format!("/{rest}{query}"))
        .header(hyper::header::HOST, upstream.to_string())
        .header("x-qsi-person", &s.person)
        .header("x-qsi-clearance", s.clearance.to_string());
    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        out = out.header(hyper::header::CONTENT_TYPE, ct);
    }
    let out = out.body(Full::new(body))?;
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let resp = sender.send_request(out).await?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("response body: {e}"))?
        .to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))
}

/// DER blocks of `label` from a PEM file, or the file itself when it is DER.
fn pem_or_der(bytes: &[u8], label: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let begin = format!("-----BEGIN {label}-----");
    if !text.contains(&begin) {
        return vec![bytes.to_vec()];
    }
    use base64::Engine as _;
    let end = format!("-----END {label}-----");
    text.split(&begin)
        .skip(1)
        .filter_map(|rest| rest.split(&end).next())
        .filter_map(|b64| {
            let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD.decode(clean).ok()
        })
        .collect()
}

/// A portal started by [`start`]: its address; dropping it stops the portal and its admin socket.
#[derive(Debug)]
pub struct RunningPortal {
    /// Where the portal listens.
    pub addr: SocketAddr,
    /// The access admin socket.
    pub admin_socket: std::path::PathBuf,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    admin: tokio::task::JoinHandle<()>,
}

impl RunningPortal {
    /// Waits until the portal's accept loop fails.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }
}

impl Drop for RunningPortal {
    fn drop(&mut self) {
        self.server.abort();
        self.admin.abort();
        let _ = std::fs::remove_file(&self.admin_socket);
    }
}

/// Builds the portal a config describes (store, PKI validator, TLS), binds its listener and its access
/// admin socket, and serves them in the background: `qsi access serve` and qsid's `[portal]` both start
/// it here.
pub async fn start(config: PortalConfig) -> anyhow::Result<RunningPortal> {
    let mut anchors = Vec::new();
    for p in &config.anchors {
        anchors.extend(pem_or_der(&read(p, "trust anchor")?, "CERTIFICATE"));
    }
    let mut candidates = Vec::new();
    for p in &config.intermediates {
        let bytes = read(p, "intermediate")?;
        let certs = qsi_pki::validate::load_certs(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        candidates.extend(certs.iter().map(|c| c.der().to_vec()));
    }
    let mut crls = Vec::new();
    for p in &config.crls {
        crls.extend(pem_or_der(&read(p, "CRL")?, "X509 CRL"));
    }
    let validator = super::validate::PkiCardValidator::new(
        &anchors,
        &candidates,
        &crls,
        &config.accepted_policies,
        config.revocation,
    )
    .map_err(|e| anyhow::anyhow!("trust settings: {e}"))?;
    let chain: Vec<CertificateDer<'static>> =
        pem_or_der(&read(&config.tls_cert, "tls.cert")?, "CERTIFICATE")
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let key_pem = read(&config.tls_key, "tls.key")?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "tls.key {} holds no PEM private key",
                config.tls_key.display()
            )
        })?;
    let tls = super::tls::server_config(chain, key)?;
    let store = Arc::new(AccessStore::open(&config.store)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let socket = config.admin_socket.clone();
    let portal = Arc::new(Portal::new(
        config,
        store,
        Arc::new(validator),
        system_clock(),
    ));
    // Bound before the portal announces itself, so `qsi access` finds it once we are up.
    let admin = tokio::spawn(super::admin::serve(
        portal.clone(),
        super::admin::bind(&socket)?,
    ));
    let server = tokio::spawn(portal.serve(listener, Arc::new(tls)));
    tracing::info!(%addr, socket = %socket.display(), "login portal listening");
    Ok(RunningPortal {
        addr,
        admin_socket: socket,
        server,
        admin,
    })
}

/// Runs the portal a config describes until the process ends (`qsi access serve`).
pub async fn serve_config(config: PortalConfig) -> anyhow::Result<()> {
    let running = start(config).await?;
    println!("portal listening on {}", running.addr);
    running.wait().await
}
