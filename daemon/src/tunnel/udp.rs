//! UDP services over QUIC datagrams (unreliable, unordered, like UDP itself).
//!
//! A request datagram is `0x01, flow u32, name length u8, service name, payload`; a reply is
//! `0x02, flow u32, payload`. The forwarding side allocates a flow per local client address; the exposing
//! side keeps one connected socket per flow and drops it after [`IDLE`] without traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Daemon, DataConn, PeerRuntime};
use crate::config::{Forward, Protocol};
use crate::metrics::inc;

/// A UDP flow is forgotten after this long without a datagram.
const IDLE: Duration = Duration::from_secs(60);
const REQUEST: u8 = 1;
const REPLY: u8 = 2;

/// Per-peer UDP flow tables.
#[derive(Default)]
pub struct UdpState {
    next: AtomicU32,
    /// Flows we forward: flow -> (our listening socket, the local client).
    outbound: Mutex<HashMap<u32, (Arc<UdpSocket>, SocketAddr)>>,
    /// Flows the peer forwards to us: flow -> socket connected to our target.
    inbound: Mutex<HashMap<u32, Arc<UdpSocket>>>,
}

/// A parsed datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// From the forwarding side.
    Request {
        /// Flow.
        flow: u32,
        /// Service name.
        service: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
    /// From the exposing side.
    Reply {
        /// Flow.
        flow: u32,
        /// Payload.
        payload: &'a [u8],
    },
}

/// Parses a datagram; `None` if malformed.
pub fn parse(d: &[u8]) -> Option<Datagram<'_>> {
    let (&kind, rest) = d.split_first()?;
    let flow = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let rest = &rest[4..];
    match kind {
        REQUEST => {
            let (&n, rest) = rest.split_first()?;
            let service = std::str::from_utf8(rest.get(..n as usize)?).ok()?;
            Some(Datagram::Request {
                flow,
                service,
                payload: &rest[n as usize..],
            })
        }
        REPLY => Some(Datagram::Reply {
            flow,
            payload: rest,
        }),
        _ => None,
    }
}

fn request(flow: u32, service: &str, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(6 + service.len() + payload.len());
    b.put_u8(REQUEST);
    b.put_u32(flow);
    b.put_u8(service.len() as u8);
    b.put_slice(service.as_bytes());
    b.put_slice(payload);
    b.freeze()
}

fn reply(flow: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(REPLY);
    b.put_u32(flow);
    b.put_slice(payload);
    b.freeze()
}

fn quic_of(rt: &PeerRuntime) -> Option<quinn::Connection> {
    match rt.data.borrow().as_ref().map(|e| &e.conn) {
        Some(DataConn::Quic(c)) => Some(c.clone()),
        _ => None,
    }
}

/// A local UDP listener carried to the peer.
pub async fn forward_udp(
    d: Arc<Daemon>,
    f: Forward,
    sock: Arc<UdpSocket>,
    token: CancellationToken,
) {
    let mut clients: HashMap<SocketAddr, u32> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            _ = token.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
        };
        let Some(rt) = d.peer(&f.peer) else { continue };
        let flow = *clients
            .entry(from)
            .or_insert_with(|| rt.udp.next.fetch_add(1, Ordering::Relaxed));
        rt.udp
            .outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow, (sock.clone(), from));
        let Some(conn) = quic_of(&rt) else {
            d.metrics.failure(&f.peer, "tunnel_down");
            continue;
        };
        if conn
            .send_datagram(request(flow, &f.name, &buf[..n]))
            .is_ok()
        {
            inc(&rt.counters.datagrams_sent);
        } else {
            d.metrics.failure(&f.peer, "datagram_too_large");
        }
    }
}

/// Receives the peer's datagrams on one QUIC data connection.
pub async fn serve_datagrams(d: Arc<Daemon>, rt: Arc<PeerRuntime>, conn: quinn::Connection) {
    while let Ok(dg) = conn.read_datagram().await {
        inc(&rt.counters.datagrams_received);
        match parse(&dg) {
            Some(Datagram::Reply { flow, payload }) => {
                let target = rt
                    .udp
                    .outbound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&flow)
                    .cloned();
                if let Some((sock, client)) = target {
                    let _ = sock.send_to(payload, client).await;
                }
            }
            Some(Datagram::Request {
                flow,
                service,
                payload,
            }) => {
                let existing = rt
                    .udp
                    .inbound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&flow)
                    .cloned();
                let sock = match existing {
                    Some(s) => s,
                    None => {
                        let cfg = d.config();
                        let Some(target) = cfg
                            .expose(&rt.cfg.name, service)
                            .filter(|e| e.protocol == Protocol::Udp)
                            .map(|e| e.target.clone())
                        else {
                            d.metrics.failure(&rt.cfg.name, "no_such_service");
                            continue;
                        };
                        let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else {
                            continue;
                        };
                        if let Err(e) = s.connect(target.as_str()).await {
                            warn!(peer = %rt.cfg.name, service, error = %e, "UDP target unreachable");
                            d.metrics.failure(&rt.cfg.name, "target_unreachable");
                            continue;
                        }
                        let s = Arc::new(s);
                        rt.udp
                            .inbound
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(flow, s.clone());
                        tokio::spawn(replies(rt.clone(), flow, s.clone()));
                        s
                    }
                };
                let _ = sock.send(payload).await;
            }
            None => d.metrics.failure(&rt.cfg.name, "datagram_malformed"),
        }
    }
}

async fn replies(rt: Arc<PeerRuntime>, flow: u32, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(IDLE, sock.recv(&mut buf)).await {
        if let Some(conn) = quic_of(&rt)
            && conn.send_datagram(reply(flow, &buf[..n])).is_ok()
        {
            inc(&rt.counters.datagrams_sent);
        }
    }
    rt.udp
        .inbound
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&flow);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_roundtrip_and_garbage_is_none() {
        let r = request(7, "dns", b"q");
        assert_eq!(
            parse(&r),
            Some(Datagram::Request {
                flow: 7,
                service: "dns",
                payload: b"q"
            })
        );
        let r = reply(7, b"a");
        assert_eq!(
            parse(&r),
            Some(Datagram::Reply {
                flow: 7,
                payload: b"a"
            })
        );
        for g in [&b""[..], b"\x01", b"\x01\0\0\0\x01\x09ab", b"\x07\0\0\0\0"] {
            assert_eq!(parse(g), None);
        }
    }
}
