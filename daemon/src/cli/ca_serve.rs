//! `qsi ca serve`: the CA as a service. HTTP: `POST /ocsp` and `GET /ocsp/{base64}` (RFC 6960
//! appendix A), `GET /crl/{name}.crl`, `GET /p7c/issued-to-{name}.p7c` and
//! `/p7c/issued-by-{name}.p7c`. A new CRL is signed at half its validity, so relying parties never
//! see one past nextUpdate. The admin socket (`admin.sock`) takes the other `qsi ca` commands
//! while the service owns the database; only the same user (or root) may use it.

use super::ca::{AdminRequest, AdminResponse, handle, open_authority};
use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use qsi_pki::ca::authority::Authority;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Shared {
    ca: Authority,
    crl: RwLock<Vec<u8>>,
    dir: PathBuf,
}

fn der_response(content_type: &'static str, body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StatusCode> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn ocsp_post(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match blocking(move || s.ca.ocsp(&body, SystemTime::now())).await {
        Ok(der) => der_response("application/ocsp-response", der),
        Err(code) => code.into_response(),
    }
}

async fn ocsp_get(State(s): State<Arc<Shared>>, UrlPath(b64): UrlPath<String>) -> Response {
    let Ok(req) = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) else {
        return (StatusCode::BAD_REQUEST, "not base64").into_response();
    };
    match blocking(move || s.ca.ocsp(&req, SystemTime::now())).await {
        Ok(der) => der_response("application/ocsp-response", der),
        Err(code) => code.into_response(),
    }
}

async fn crl_get(State(s): State<Arc<Shared>>, UrlPath(file): UrlPath<String>) -> Response {
    if file != format!("{}.crl", s.ca.name) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let crl = s.crl.read().map(|c| c.clone()).unwrap_or_default();
    der_response("application/pkix-crl", crl)
}

async fn p7c_get(State(s): State<Arc<Shared>>, UrlPath(file): UrlPath<String>) -> Response {
    let name = s.ca.name.clone();
    let which = if file == format!("issued-to-{name}.p7c") {
        true
    } else if file == format!("issued-by-{name}.p7c") {
        false
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let s2 = s.clone();
    let res = blocking(move || {
        if which {
            s2.ca.p7c_issued_to()
        } else {
            s2.ca.p7c_issued_by()
        }
    })
    .await;
    match res {
        Ok(Ok(der)) => der_response("application/pkcs7-mime", der),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn refresh_crl(s: &Shared, dir: &std::path::Path) -> Result<()> {
    let crl = s.ca.crl(SystemTime::now()).map_err(|e| anyhow!("{e}"))?;
    std::fs::create_dir_all(dir.join("published"))?;
    std::fs::write(
        dir.join("published").join(format!("{}.crl", s.ca.name)),
        &crl,
    )?;
    if let Ok(mut c) = s.crl.write() {
        *c = crl;
    }
    Ok(())
}

async fn admin_conn(s: Arc<Shared>, stream: tokio::net::UnixStream, owner: u32) -> Result<()> {
    let cred = stream.peer_cred()?;
    if cred.uid() != owner && cred.uid() != 0 {
        tracing::warn!(
            uid = cred.uid(),
            "admin socket: refused a peer of another user"
        );
        return Ok(());
    }
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(req) => {
                let s2 = s.clone();
                let is_revoke = matches!(req, AdminRequest::Revoke { .. });
                let resp = blocking(move || handle(&s2.ca, req, SystemTime::now()))
                    .await
                    .map_err(|_| anyhow!("admin task failed"))?;
                if is_revoke && resp.error.is_none() {
                    // Relying parties see a revocation in the CRL at once, not at the next refresh.
                    let s3 = s.clone();
                    let dir = s.dir.clone();
                    let _ = blocking(move || refresh_crl(&s3, &dir)).await;
                }
                resp
            }
            Err(e) => AdminResponse {
                error: Some(format!("bad request: {e}")),
                ..Default::default()
            },
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// The HTTP routes of a CA (OCSP, CRL, .p7c); the CRL is signed once here and re-signed by
/// [`run`]'s refresher. Used by `serve` and by `qsi bench ca`.
pub fn router(ca: Authority, dir: PathBuf) -> Result<Router> {
    let shared = Arc::new(Shared {
        ca,
        crl: RwLock::new(Vec::new()),
        dir: dir.clone(),
    });
    refresh_crl(&shared, &dir)?;
    Ok(routes(shared))
}

fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*req}", get(ocsp_get))
        .route("/crl/{file}", get(crl_get))
        .route("/p7c/{file}", get(p7c_get))
        .with_state(shared)
}

/// Runs the service until interrupted.
pub fn run(dir: PathBuf, listen: Option<String>, crl_validity_secs: u64) -> Result<()> {
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("{} does not exist", dir.display()))?;
    let sock = dir.join("admin.sock");
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(anyhow!(
            "a CA service already runs for {} (admin socket answers)",
            dir.display()
        ));
    }
    let _ = std::fs::remove_file(&sock);
    let mut ca = open_authority(&dir)?;
    ca.crl_validity = Duration::from_secs(crl_validity_secs.max(2));
    let cfg_listen =
        toml::from_str::<super::ca::CaConfig>(&std::fs::read_to_string(dir.join("ca.toml"))?)?
            .listen;
    let listen = listen.unwrap_or(cfg_listen);
    let shared = Arc::new(Shared {
        ca,
        crl: RwLock::new(Vec::new()),
        dir: dir.clone(),
    });
    refresh_crl(&shared, &dir)?;
    let owner = std::fs::metadata(&dir)?.uid();
    super::block_on(async move {
        let app = routes(shared.clone());
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| {
                format!("binding {listen}: is another service on it? pass --listen")
            })?;
        let admin = tokio::net::UnixListener::bind(&sock)
            .with_context(|| format!("binding the admin socket {}", sock.display()))?;
        println!(
            "CA {} serving on http://{listen} (admin socket {})",
            shared.ca.name,
            sock.display()
        );
        let refresher = {
            let s = shared.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                let period = Duration::from_secs((crl_validity_secs / 2).max(1));
                loop {
                    tokio::time::sleep(period).await;
                    let s2 = s.clone();
                    let d = dir.clone();
                    match blocking(move || refresh_crl(&s2, &d)).await {
                        Ok(Ok(())) => tracing::info!("CRL re-issued"),
                        _ => tracing::error!(
                            "CRL re-issue failed; relying parties will see the old one"
                        ),
                    }
                }
            })
        };
        let admin_task = {
            let s = shared.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok((stream, _)) = admin.accept().await {
                        let s2 = s.clone();
                        tokio::spawn(async move {
                            if let Err(e) = admin_conn(s2, stream, owner).await {
                                tracing::warn!(error = %e, "admin connection");
                            }
                        });
                    }
                }
            })
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let res = server.await;
        refresher.abort();
        admin_task.abort();
        let _ = std::fs::remove_file(&sock);
        res.map_err(|e| anyhow!("HTTP server: {e}"))
    })?
}
