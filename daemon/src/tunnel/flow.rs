//! One flow, whichever transport carries it: a QUIC stream pair or a framed flow on TLS/TCP, and the splice
//! between it and a local TCP connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::mux::{FlowReceiver, FlowSender};

/// Read size from the local TCP socket.
const READ_CHUNK: usize = 64 * 1024;

/// QUIC application error codes on streams (the reason travels as a code; the text is ours).
pub mod code {
    /// The peer has no such service for us.
    pub const NO_SERVICE: u32 = 1;
    /// The peer could not reach the service's target.
    pub const UNREACHABLE: u32 = 2;
    /// The tunnel is closing.
    pub const CLOSING: u32 = 3;
    /// One side aborted the flow.
    pub const ABORTED: u32 = 4;

    /// Human text for a code.
    pub fn reason(c: u64) -> &'static str {
        match c {
            1 => "no such service on the peer",
            2 => "the peer could not reach the target",
            3 => "the tunnel is closing",
            _ => "flow aborted",
        }
    }
}

/// Sending half of a flow.
pub enum FlowTx {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A framed flow on TLS/TCP.
    Mux(FlowSender),
}

/// Receiving half of a flow.
pub enum FlowRx {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A framed flow on TLS/TCP.
    Mux(FlowReceiver),
}

impl FlowTx {
    /// Sends bytes (waits for flow-control credit).
    pub async fn send(&mut self, b: Bytes) -> Result<(), String> {
        match self {
            FlowTx::Quic(s) => s.write_chunk(b).await.map_err(|e| match e {
                quinn::WriteError::Stopped(c) => code::reason(c.into_inner()).to_string(),
                other => other.to_string(),
            }),
            FlowTx::Mux(s) => s.send(b).await.map_err(|e| e.to_string()),
        }
    }

    /// Half-closes our direction.
    pub fn finish(&mut self) {
        match self {
            FlowTx::Quic(s) => {
                let _ = s.finish();
            }
            FlowTx::Mux(s) => s.finish(),
        }
    }

    /// Ends the flow with a reason (a code on QUIC, text on TLS/TCP).
    pub fn reset(&mut self, code: u32, reason: &str) {
        match self {
            FlowTx::Quic(s) => {
                let _ = s.reset(quinn::VarInt::from_u32(code));
            }
            FlowTx::Mux(s) => s.reset(reason),
        }
    }
}

impl FlowRx {
    /// Next bytes; `Ok(None)` when the peer finished.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            FlowRx::Quic(r) => match r.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => Ok(Some(c.bytes)),
                Ok(None) => Ok(None),
                Err(quinn::ReadError::Reset(c)) => Err(code::reason(c.into_inner()).to_string()),
                Err(e) => Err(e.to_string()),
            },
            FlowRx::Mux(r) => r.recv().await.map_err(|e| e.to_string()),
        }
    }

    /// Tells the peer we will read no more (QUIC only; the TLS mux resets through the sender).
    pub fn stop(&mut self, code: u32) {
        if let FlowRx::Quic(r) = self {
            let _ = r.stop(quinn::VarInt::from_u32(code));
        }
    }
}

/// Byte counters of one flow (shown by `qsi tunnel flows`).
#[derive(Debug, Default)]
pub struct FlowBytes {
    /// Into the tunnel.
    pub sent: AtomicU64,
    /// Out of the tunnel.
    pub received: AtomicU64,
}

/// Copies both ways between a local TCP connection and a flow until both directions finish.
/// On an abnormal end the local connection is reset (RST), so the application sees the flow failed, and
/// the error names the reason.
pub async fn splice(
    mut tcp: TcpStream,
    mut tx: FlowTx,
    mut rx: FlowRx,
    peer: &crate::metrics::PeerCounters,
    flow: Arc<FlowBytes>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let (mut r, mut w) = tcp.split();
    let up = async {
        let mut buf = BytesMut::with_capacity(4 * READ_CHUNK);
        loop {
            if buf.capacity() < READ_CHUNK {
                buf.reserve(4 * READ_CHUNK);
            }
            let n = r
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("local read: {e}"))?;
            if n == 0 {
                tx.finish();
                return Ok::<(), String>(());
            }
            peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            flow.sent.fetch_add(n as u64, Ordering::Relaxed);
            tx.send(buf.split().freeze()).await?;
        }
    };
    let down = async {
        loop {
            match rx.recv().await? {
                Some(b) => {
                    peer.bytes_received
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    flow.received.fetch_add(b.len() as u64, Ordering::Relaxed);
                    w.write_all(&b)
                        .await
                        .map_err(|e| format!("local write: {e}"))?;
                }
                None => {
                    let _ = w.shutdown().await;
                    return Ok::<(), String>(());
                }
            }
        }
    };
    let result = tokio::try_join!(up, down).map(|_| ());
    if result.is_err() {
        tx.reset(code::ABORTED, "flow aborted");
        rx.stop(code::ABORTED);
        let _ = tcp.set_zero_linger();
    }
    result
}
