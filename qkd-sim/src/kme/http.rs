//! The HTTPS front of a KME: TLS accept, the caller's SAE from its certificate (once per
//! connection), HTTP/1.1 keep-alive with hyper, and the answer from [`Kme::handle`]. Every
//! connection is its own task; the only shared state is the pool's short lock.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::api::{Answer, Caller, Kme};
use super::tls::SaeMap;

/// Largest request body accepted (a dec_keys request for 1024 IDs is about 50 KiB).
pub const MAX_BODY: usize = 1 << 20;

/// A response body that zeroizes its bytes when dropped (it may carry keys).
pub struct SecretBody(Option<ZBuf>);

/// The single data frame of a [`SecretBody`].
pub struct ZBuf {
    data: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for ZBuf {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }
    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.data.len());
    }
}

impl SecretBody {
    /// A body of these bytes.
    pub fn new(data: Zeroizing<Vec<u8>>) -> Self {
        SecretBody(Some(ZBuf { data, pos: 0 }))
    }
}

impl Body for SecretBody {
    type Data = ZBuf;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<ZBuf>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.remaining() as u64))
    }
}

fn response(a: Answer) -> Response<SecretBody> {
    let len = a.body.len();
    let mut r = Response::new(SecretBody::new(a.body));
    *r.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::SERVICE_UNAVAILABLE);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(hyper::header::CONTENT_LENGTH, len.into());
    if let Some(allow) = a.allow {
        h.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
    }
    r
}

#[derive(Clone)]
enum Who {
    Anonymous,
    Unregistered,
    Sae(Arc<str>),
}

impl Who {
    fn caller(&self) -> Caller<'_> {
        match self {
            Who::Anonymous => Caller::Anonymous,
            Who::Unregistered => Caller::Unregistered,
            Who::Sae(s) => Caller::Sae(s),
        }
    }
}

/// Serves one KME on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    kme: Arc<Kme>,
    tls: Arc<rustls::ServerConfig>,
    saes: Arc<SaeMap>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(kme = %kme.kme_id, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let kme = kme.clone();
        let saes = saes.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(kme = %kme.kme_id, %peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let who = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => Who::Anonymous,
                Some(c) => match saes.get(c.as_ref()) {
                    Some(id) => Who::Sae(Arc::from(id.as_str())),
                    None => Who::Unregistered,
                },
            };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let kme = kme.clone();
                let who = who.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let answer = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => {
                            let body = b.to_bytes();
                            let mut rng = rand::rng();
                            kme.handle(
                                who.caller(),
                                parts.method.as_str(),
                                parts.uri.path(),
                                parts.uri.query(),
                                &body,
                                &mut rng,
                            )
                        }
                        Err(e) => {
                            let err = qsi_etsi014::Etsi014Error::MalformedJson {
                                detail: format!(
                                    "request body unreadable or above {MAX_BODY} bytes: {e}"
                                ),
                            };
                            Answer {
                                status: err.status(),
                                body: Zeroizing::new(err.body_json()),
                                allow: None,
                            }
                        }
                    };
                    Ok::<_, Infallible>(response(answer))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
