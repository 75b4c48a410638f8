//! The control connection: a long-lived mutual-TLS channel per peer beside the data connections.
//!
//! Messages are a typed enum, each sent as a 4-byte big-endian length and a JSON body. Today it carries the
//! greeting, heartbeats, and the QKD key-ID announcements: the master side (the dialer) sends the IDs of
//! keys its KMS took from its KME ([`ControlMessage::KeyIds`], at most [`MAX_KEY_IDS`] per batch, one batch
//! outstanding), the slave fetches them by ID and answers with the IDs it holds
//! ([`ControlMessage::KeyAck`]); the master only ever uses acknowledged IDs. A receiver that meets a variant
//! it does not know logs and skips it, so the two sites can be upgraded one at a time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the control protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest control message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Interval between heartbeats.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which the peer is declared gone.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// Most key IDs in one announcement.
pub const MAX_KEY_IDS: usize = 64;
/// Longest key ID accepted (ETSI 014 key IDs are UUIDs; vendors may add a prefix).
pub const MAX_KEY_ID_LEN: usize = 128;

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// First message each way: who we are and which protocol we speak.
    Hello {
        /// Sender's site name.
        site: String,
        /// Sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Heartbeat.
    Ping {
        /// Echoed in the Pong.
        seq: u64,
    },
    /// Heartbeat answer.
    Pong {
        /// The Ping's seq.
        seq: u64,
    },
    /// Master to slave: IDs of QKD keys the master's KMS took from its KME for this tunnel; the slave
    /// fetches them by ID (`dec_keys`) and answers with a [`ControlMessage::KeyAck`].
    KeyIds {
        /// Batch number, echoed in the ack.
        batch: u64,
        /// Key IDs, at most [`MAX_KEY_IDS`].
        ids: Vec<String>,
    },
    /// Slave to master: of a batch, the IDs the slave holds in memory now (claimed for this tunnel).
    KeyAck {
        /// The batch acknowledged.
        batch: u64,
        /// IDs held; the master uses only these.
        held: Vec<String>,
    },
    /// The sender is closing the tunnel on purpose.
    Goodbye {
        /// Why (logged by the receiver).
        reason: String,
    },
}

/// Why the control channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Transport error.
    #[error("control connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A message over [`MAX_MESSAGE`].
    #[error("control message of {0} bytes is too large")]
    TooLarge(usize),
    /// The peer said goodbye.
    #[error("peer closed the tunnel: {0}")]
    Goodbye(String),
    /// The peer went silent.
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    /// Wrong first message or version.
    #[error("control handshake failed: {0}")]
    Handshake(String),
}

/// Decodes a message body; `Ok(None)` for a well-formed message of a type this build does not know.
pub fn decode(body: &[u8]) -> Result<Option<ControlMessage>, ControlError> {
    match serde_json::from_slice::<ControlMessage>(body) {
        Ok(m) => Ok(Some(m)),
        Err(_) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if v.get("type").and_then(|t| t.as_str()).is_some() => Ok(None),
            _ => Err(ControlError::Handshake("malformed control message".into())),
        },
    }
}

/// Encodes a message with its length prefix.
pub fn encode(msg: &ControlMessage) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes one message.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ControlMessage,
) -> Result<(), ControlError> {
    w.write_all(&encode(msg)).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message (skipping unknown types).
pub async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Result<ControlMessage, ControlError> {
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(ControlError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        match decode(&body)? {
            Some(m) => return Ok(m),
            None => tracing::warn!("skipping a control message of a type this qsid does not know"),
        }
    }
}

/// Exchanges Hello; returns the peer's site name.
pub async fn greet<R, W>(r: &mut R, w: &mut W, site: &str) -> Result<String, ControlError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    send(
        w,
        &ControlMessage::Hello {
            site: site.into(),
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    match tokio::time::timeout(DEAD_AFTER, recv(r)).await {
        Err(_) => Err(ControlError::Silent(DEAD_AFTER)),
        Ok(Ok(ControlMessage::Hello { site, version })) if version == PROTOCOL_VERSION => Ok(site),
        Ok(Ok(ControlMessage::Hello { version, .. })) => Err(ControlError::Handshake(format!(
            "peer speaks control protocol {version}, we speak {PROTOCOL_VERSION}"
        ))),
        Ok(Ok(other)) => Err(ControlError::Handshake(format!(
            "expected hello, got {other:?}"
        ))),
        Ok(Err(e)) => Err(e),
    }
}

/// Runs heartbeats until the peer goes silent, says goodbye, or the transport fails.
pub async fn run<R, W>(r: R, w: W) -> ControlError
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let (_keep, outbox) = tokio::sync::mpsc::channel(1);
    let (inbox, _drop) = tokio::sync::mpsc::channel(1);
    run_with(r, w, outbox, inbox).await
}

/// Checks an announcement's bounds: at most [`MAX_KEY_IDS`] IDs, each non-empty, printable ASCII and at
/// most [`MAX_KEY_ID_LEN`] long, none twice.
pub fn check_key_ids(ids: &[String]) -> Result<(), String> {
    if ids.len() > MAX_KEY_IDS {
        return Err(format!(
            "{} key IDs in one batch (most {MAX_KEY_IDS})",
            ids.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if id.is_empty()
            || id.len() > MAX_KEY_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
            || !seen.insert(id.as_str())
        {
            return Err(format!("malformed or repeated key ID {id:?}"));
        }
    }
    Ok(())
}

/// Runs heartbeats like [`run`], and also sends what arrives on `outbox` and passes the QKD messages
/// received ([`ControlMessage::KeyIds`], [`ControlMessage::KeyAck`]) to `inbox`. The inbox is never
/// awaited (heartbeats must not wait on a KMS): if it is full, the message is dropped with a warning
/// and the master's batch times out.
pub async fn run_with<R, W>(
    mut r: R,
    mut w: W,
    mut outbox: tokio::sync::mpsc::Receiver<ControlMessage>,
    inbox: tokio::sync::mpsc::Sender<ControlMessage>,
) -> ControlError
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut outbox_open = true;
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() > DEAD_AFTER {
                    return ControlError::Silent(DEAD_AFTER);
                }
                seq += 1;
                if let Err(e) = send(&mut w, &ControlMessage::Ping { seq }).await {
                    return e;
                }
            }
            m = outbox.recv(), if outbox_open => match m {
                Some(m) => {
                    if let Err(e) = send(&mut w, &m).await {
                        return e;
                    }
                }
                None => outbox_open = false,
            },
            m = recv(&mut r) => {
                last_heard = tokio::time::Instant::now();
                match m {
                    Ok(m @ (ControlMessage::KeyIds { .. } | ControlMessage::KeyAck { .. })) => {
                        if inbox.try_send(m).is_err() {
                            tracing::warn!("QKD control message dropped: its handler is busy or gone");
                        }
                    }
                    Ok(ControlMessage::Ping { seq }) => {
                        if let Err(e) = send(&mut w, &ControlMessage::Pong { seq }).await {
                            return e;
                        }
                    }
                    Ok(ControlMessage::Pong { .. }) | Ok(ControlMessage::Hello { .. }) => {}
                    Ok(ControlMessage::Goodbye { reason }) => return ControlError::Goodbye(reason),
                    Err(e) => return e,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_roundtrip_and_unknown_types_are_skipped() {
        let m = ControlMessage::Hello {
            site: "a".into(),
            version: 1,
        };
        let wire = encode(&m);
        assert_eq!(decode(&wire[4..]).unwrap(), Some(m));
        assert_eq!(decode(br#"{"type":"key_ids","ids":["x"]}"#).unwrap(), None);
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn key_id_batches_are_bounded() {
        let ok: Vec<String> = (0..MAX_KEY_IDS).map(|i| format!("id-{i}")).collect();
        assert!(check_key_ids(&ok).is_ok());
        let mut big = ok.clone();
        big.push("one-more".into());
        assert!(check_key_ids(&big).is_err());
        assert!(check_key_ids(&["a".into(), "a".into()]).is_err());
        assert!(check_key_ids(&["".into()]).is_err());
        assert!(check_key_ids(&["a b".into()]).is_err());
        assert!(check_key_ids(&["x".repeat(MAX_KEY_ID_LEN + 1)]).is_err());
        let m = ControlMessage::KeyAck {
            batch: 3,
            held: vec!["k1".into()],
        };
        assert_eq!(decode(&encode(&m)[4..]).unwrap(), Some(m));
    }

    #[tokio::test]
    async fn key_messages_reach_the_inbox_and_the_outbox_is_sent() {
        let (a, b) = tokio::io::duplex(4096);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (to_a, out_a) = tokio::sync::mpsc::channel(4);
        let (in_a, _keep_a) = tokio::sync::mpsc::channel(4);
        let (_to_b, out_b) = tokio::sync::mpsc::channel(4);
        let (in_b, mut got_b) = tokio::sync::mpsc::channel(4);
        let ta = tokio::spawn(run_with(ar, aw, out_a, in_a));
        let tb = tokio::spawn(run_with(br, bw, out_b, in_b));
        let m = ControlMessage::KeyIds {
            batch: 1,
            ids: vec!["k1".into(), "k2".into()],
        };
        to_a.send(m.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), got_b.recv())
            .await
            .unwrap();
        assert_eq!(got, Some(m));
        ta.abort();
        tb.abort();
    }

    #[tokio::test]
    async fn greeting_and_heartbeat() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let (x, y) = tokio::join!(
            greet(&mut ar, &mut aw, "site-a"),
            greet(&mut br, &mut bw, "site-b")
        );
        assert_eq!(x.unwrap(), "site-b");
        assert_eq!(y.unwrap(), "site-a");
        send(
            &mut bw,
            &ControlMessage::Goodbye {
                reason: "bye".into(),
            },
        )
        .await
        .unwrap();
        match run(ar, aw).await {
            ControlError::Goodbye(r) => assert_eq!(r, "bye"),
            other => panic!("{other:?}"),
        }
    }
}
