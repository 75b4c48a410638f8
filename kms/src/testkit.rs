//! Test and benchmark support, not for production: a throw-away PKI (rcgen) and a small ETSI 014 KME
//! over real HTTPS with mutual TLS that can misbehave on demand. The tests use it for the cases a real
//! KME (qkd-sim) cannot produce: malformed JSON, keys of the wrong size, duplicate or replayed key IDs,
//! a hang, a dropped connection, and for the crash test's KME that outlives the KMS it serves.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use qsi_etsi014::{Endpoint, ErrorBody, Key, KeyContainer, KeyIds, KeyRequest, Status};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;

use crate::http::{Handler, Req, Resp};
use crate::source::BoxFuture;

/// A CA that issues server and client certificates into a directory.
pub struct TestPki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// Files of one issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl TestPki {
    /// A new CA, written to `dir/ca.pem`.
    pub fn create(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "QSI test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(err)?).map_err(err)?;
        std::fs::write(dir.join("ca.pem"), ca.pem()).map_err(err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// The CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `name` (also the subject CN) with these DNS/IP subject alternative names.
    pub fn issue(&self, name: &str, sans: &[&str]) -> Result<Issued, String> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.ca).map_err(err)?;
        let out = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&out.cert, cert.pem()).map_err(err)?;
        std::fs::write(&out.key, key.serialize_pem()).map_err(err)?;
        Ok(out)
    }
}

/// What the test KME does wrong on the next request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A 200 whose body is not JSON (after removing the keys from its pool).
    MalformedJson,
    /// Keys half the size asked for.
    WrongSize,
    /// The same key ID twice in one answer.
    DuplicateKeyId,
    /// The key ID it handed out last before this request, again (with fresh bytes).
    ReplayKeyId,
    /// Never answers.
    Hang,
    /// Closes the connection after reading the request.
    Drop,
    /// 503 with an ETSI Error body (delivers nothing).
    Unavailable,
}

#[derive(Default)]
struct KmeState {
    key_bits: u32,
    issued: Mutex<HashMap<String, Vec<u8>>>,
    handed_over: Mutex<Vec<String>>,
    faults: Mutex<VecDeque<Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(status: u16, message: &str) -> Resp {
    let body = serde_json::to_vec(&ErrorBody {
        message: message.into(),
        details: None,
    })
    .unwrap_or_default();
    Resp::Json(status, body)
}

impl KmeState {
    fn fresh(&self, bits: u32) -> (String, Vec<u8>) {
        let mut b = vec![0u8; (bits / 8) as usize];
        let _ = SystemRandom::new().fill(&mut b);
        (uuid::Uuid::new_v4().to_string(), b)
    }

    async fn answer(&self, req: Req) -> Resp {
        if req.peer.is_none() {
            return error(401, "no client certificate");
        }
        // faults act on key requests only (the client's connection probe asks for status)
        let fault = if req.path.ends_with("/status") {
            None
        } else {
            lock(&self.faults).pop_front()
        };
        if fault == Some(Fault::Unavailable) {
            return error(503, "not enough key material available");
        }
        let resp = self.respond(req, fault.as_ref());
        // Hang and Drop act after the keys left the pool, as a KME that fails mid-answer would.
        match fault {
            Some(Fault::Hang) => {
                std::future::pending::<()>().await;
                resp
            }
            Some(Fault::Drop) => Resp::Drop,
            _ => resp,
        }
    }

    fn respond(&self, req: Req, fault: Option<&Fault>) -> Resp {
        let ep = match Endpoint::parse(&req.path) {
            Ok(e) => e,
            Err(_) => return error(404, "no such API function"),
        };
        match ep {
            Endpoint::Status { slave_sae_id } => {
                let s = Status {
                    source_kme_id: "test-kme".into(),
                    target_kme_id: "test-kme".into(),
                    master_sae_id: "master".into(),
                    slave_sae_id,
                    key_size: self.key_bits,
                    stored_key_count: 1 << 20,
                    max_key_count: 1 << 20,
                    max_key_per_request: 1024,
                    max_key_size: 8192,
                    min_key_size: 64,
                    max_sae_id_count: 0,
                    status_extension: None,
                };
                Resp::Json(200, serde_json::to_vec(&s).unwrap_or_default())
            }
            Endpoint::EncKeys { .. } => {
                let r = if req.body.is_empty() {
                    KeyRequest::new(1, self.key_bits)
                } else {
                    match KeyRequest::from_json(&req.body) {
                        Ok(r) => r,
                        Err(e) => return error(400, &e.to_string()),
                    }
                };
                let number = r.number.unwrap_or(1).clamp(1, 1024) as usize;
                let bits = r.size.unwrap_or(i64::from(self.key_bits)).clamp(8, 8192) as u32;
                let mut keys = Vec::new();
                {
                    let mut issued = lock(&self.issued);
                    let mut handed = lock(&self.handed_over);
                    let previous = handed.last().cloned();
                    for _ in 0..number {
                        let (id, k) = self.fresh(bits);
                        issued.insert(id.clone(), k.clone());
                        keys.push(Key::new(id, &k));
                    }
                    match fault {
                        Some(Fault::WrongSize) => {
                            if let Some(k) = keys.first_mut() {
                                let short = vec![7u8; (bits / 16) as usize];
                                *k = Key::new(k.key_id.clone(), &short);
                            }
                        }
                        Some(Fault::DuplicateKeyId) if keys.len() >= 2 => {
                            let id = keys[0].key_id.clone();
                            keys[1].key_id = id;
                        }
                        Some(Fault::ReplayKeyId) => {
                            if let (Some(old), Some(k)) = (previous, keys.first_mut()) {
                                let (_, bytes) = self.fresh(bits);
                                *k = Key::new(old, &bytes);
                            }
                        }
                        _ => {}
                    }
                    handed.extend(keys.iter().map(|k| k.key_id.clone()));
                }
                if fault == Some(&Fault::MalformedJson) {
                    return Resp::Json(200, b"{\"keys\": [{\"key_ID\": ".to_vec());
                }
                let c = KeyContainer {
                    keys,
                    key_container_extension: None,
                };
                Resp::Json(200, serde_json::to_vec(&c).unwrap_or_default())
            }
            Endpoint::DecKeys { .. } => {
                let ids = match KeyIds::from_json(&req.body) {
                    Ok(i) => i,
                    Err(e) => return error(400, &e.to_string()),
                };
                let mut issued = lock(&self.issued);
                if let Some(missing) = ids.key_ids.iter().find(|r| !issued.contains_key(&r.key_id))
                {
                    let body = serde_json::json!({"message": "key not found", "details": [{"key_ID": missing.key_id}]});
                    return Resp::Json(400, body.to_string().into_bytes());
                }
                let keys = ids
                    .key_ids
                    .iter()
                    .filter_map(|r| {
                        issued
                            .remove(&r.key_id)
                            .map(|k| Key::new(r.key_id.clone(), &k))
                    })
                    .collect();
                let c = KeyContainer {
                    keys,
                    key_container_extension: None,
                };
                Resp::Json(200, serde_json::to_vec(&c).unwrap_or_default())
            }
        }
    }
}

struct KmeHandler(Arc<KmeState>);

impl Handler for KmeHandler {
    fn handle(&self, req: Req) -> BoxFuture<'_, Resp> {
        Box::pin(self.0.answer(req))
    }
}

/// A KME for tests: `enc_keys` hands out fresh random keys (and remembers them), `dec_keys` hands each
/// remembered key out once more (as the peer KME would), with optional faults.
pub struct TestKme {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<KmeState>,
    task: tokio::task::JoinHandle<()>,
}

impl TestKme {
    /// Starts on 127.0.0.1 (a free port) with this TLS configuration (require client certificates).
    pub async fn start(tls: Arc<rustls::ServerConfig>, key_bits: u32) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", tls, key_bits).await
    }

    /// Starts on a given address.
    pub async fn start_on(
        addr: &str,
        tls: Arc<rustls::ServerConfig>,
        key_bits: u32,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(KmeState {
            key_bits,
            ..Default::default()
        });
        let task = tokio::spawn(crate::http::serve(
            listener,
            tls,
            Arc::new(KmeHandler(state.clone())),
        ));
        Ok(Self { addr, state, task })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Makes the next request misbehave.
    pub fn inject(&self, f: Fault) {
        lock(&self.state.faults).push_back(f);
    }

    /// Every key ID handed over through `enc_keys`, in order, as sent (a duplicated or replayed ID
    /// appears twice).
    pub fn handed_over(&self) -> Vec<String> {
        lock(&self.state.handed_over).clone()
    }

    /// The bytes of a key it issued (to check what a consumer received).
    pub fn key_of(&self, id: &str) -> Option<Vec<u8>> {
        lock(&self.state.issued).get(id).cloned()
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestKme {
    fn drop(&mut self) {
        self.task.abort();
    }
}
