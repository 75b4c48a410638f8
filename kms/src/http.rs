//! A small HTTPS server edge (mutual TLS, HTTP/1.1 keep-alive) shared by the ETSI 014 server towards
//! local SAEs and the fault-injecting KME of the tests. Handlers see the method, path, query, body and
//! the SHA-256 fingerprint of the client's certificate, and answer a status and a JSON body, or ask
//! for the connection to be dropped without an answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::source::BoxFuture;

/// Most bytes accepted in a request body.
const MAX_REQUEST: usize = 1 << 20;

/// A request as a handler sees it.
#[derive(Debug)]
pub struct Req {
    /// HTTP method.
    pub method: hyper::Method,
    /// Path without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Request body.
    pub body: Bytes,
    /// SHA-256 (hex) of the client's leaf certificate.
    pub peer: Option<String>,
}

/// A handler's answer.
#[derive(Debug)]
pub enum Resp {
    /// Status and JSON body.
    Json(u16, Vec<u8>),
    /// Close the connection without answering (fault injection).
    Drop,
}

/// Answers requests.
pub trait Handler: Send + Sync + 'static {
    /// One request.
    fn handle(&self, req: Req) -> BoxFuture<'_, Resp>;
}

/// Accepts connections on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<dyn Handler>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        debug!(%from, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(crate::tls::fingerprint);
            let svc = service_fn(move |r: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                let peer = peer.clone();
                async move {
                    let method = r.method().clone();
                    let path = r.uri().path().to_string();
                    let query = r.uri().query().map(str::to_string);
                    let body = match http_body_util::Limited::new(r.into_body(), MAX_REQUEST)
                        .collect()
                        .await
                    {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return Ok::<_, std::io::Error>(json(
                                400,
                                br#"{"message":"request body too large or broken"}"#.to_vec(),
                            ));
                        }
                    };
                    match handler
                        .handle(Req {
                            method,
                            path,
                            query,
                            body,
                            peer,
                        })
                        .await
                    {
                        Resp::Json(status, body) => Ok(json(status, body)),
                        Resp::Drop => Err(std::io::Error::other("dropped on purpose")),
                    }
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                debug!(%from, error = %e, "connection ended");
            }
        });
    }
}

fn json(status: u16, body: Vec<u8>) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
