//! The flow framing on TLS 1.3/TCP data connections: a pure codec (no I/O), fuzzed in `fuzz/`.
//!
//! Every frame is a 9-byte header (type u8, flow id u32, payload length u32, big-endian) and a payload.
//! Flow ids are chosen by the side that opens the flow: odd from the dialer, even from the acceptor, never
//! reused on a connection. Flow control is per flow and credit-based: a sender may have at most
//! [`INITIAL_WINDOW`] bytes of DATA outstanding; the receiver returns credit with WINDOW as its local reader
//! drains, so a stalled reader stops only its own flow.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Header length in bytes.
pub const HEADER_LEN: usize = 9;
/// Largest DATA payload a sender produces.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest payload the decoder accepts for any frame (larger is a protocol error).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Credit each flow starts with, in each direction.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;
/// Largest service name in OPEN.
pub const MAX_SERVICE: usize = 255;
/// Largest reason text in RESET.
pub const MAX_REASON: usize = 1024;

const T_OPEN: u8 = 0;
const T_DATA: u8 = 1;
const T_WINDOW: u8 = 2;
const T_FIN: u8 = 3;
const T_RESET: u8 = 4;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Open a flow to the peer's exposed service `service`.
    Open {
        /// New flow id.
        flow: u32,
        /// Service name.
        service: String,
    },
    /// Bytes of a flow.
    Data {
        /// Flow id.
        flow: u32,
        /// Payload.
        data: Bytes,
    },
    /// Credit returned to the sender.
    Window {
        /// Flow id.
        flow: u32,
        /// Bytes of credit added.
        increment: u32,
    },
    /// The sender will send no more data on this flow (TCP half-close).
    Fin {
        /// Flow id.
        flow: u32,
    },
    /// The flow ends abnormally, both directions.
    Reset {
        /// Flow id.
        flow: u32,
        /// Why, for logs and the operator.
        reason: String,
    },
}

/// Why a byte stream is not valid framing. Any of these closes the data connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Payload longer than the type allows.
    #[error("frame payload of {0} bytes is too long")]
    TooLong(usize),
    /// Payload of the wrong shape for its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// The flow the frame belongs to.
    pub fn flow(&self) -> u32 {
        match self {
            Frame::Open { flow, .. }
            | Frame::Data { flow, .. }
            | Frame::Window { flow, .. }
            | Frame::Fin { flow }
            | Frame::Reset { flow, .. } => *flow,
        }
    }

    /// Appends the encoding to `out`. Oversized names and reasons are truncated (at a char boundary).
    pub fn encode(&self, out: &mut BytesMut) {
        let (t, flow, payload): (u8, u32, &[u8]) = match self {
            Frame::Open { flow, service } => {
                (T_OPEN, *flow, truncate(service, MAX_SERVICE).as_bytes())
            }
            Frame::Data { flow, data } => (T_DATA, *flow, data),
            Frame::Window { flow, increment } => {
                out.reserve(HEADER_LEN + 4);
                out.put_u8(T_WINDOW);
                out.put_u32(*flow);
                out.put_u32(4);
                out.put_u32(*increment);
                return;
            }
            Frame::Fin { flow } => (T_FIN, *flow, &[]),
            Frame::Reset { flow, reason } => {
                (T_RESET, *flow, truncate(reason, MAX_REASON).as_bytes())
            }
        };
        out.reserve(HEADER_LEN + payload.len());
        out.put_u8(t);
        out.put_u32(flow);
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` when more bytes are needed.
    /// DATA payloads are split off without copying.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let t = buf[0];
        let flow = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
        let max = match t {
            T_OPEN => MAX_SERVICE,
            T_DATA => MAX_PAYLOAD,
            T_WINDOW => 4,
            T_FIN => 0,
            T_RESET => MAX_REASON,
            other => return Err(FrameError::UnknownType(other)),
        };
        if len > max {
            return Err(FrameError::TooLong(len));
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        let text = |what: &'static str| {
            std::str::from_utf8(&payload)
                .map(str::to_owned)
                .map_err(|_| FrameError::Malformed(what))
        };
        Ok(Some(match t {
            T_OPEN => {
                let service = text("OPEN")?;
                if service.is_empty() {
                    return Err(FrameError::Malformed("OPEN"));
                }
                Frame::Open { flow, service }
            }
            T_DATA => Frame::Data {
                flow,
                data: payload,
            },
            T_WINDOW => {
                if payload.len() != 4 {
                    return Err(FrameError::Malformed("WINDOW"));
                }
                let increment =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if increment == 0 {
                    return Err(FrameError::Malformed("WINDOW"));
                }
                Frame::Window { flow, increment }
            }
            T_FIN => Frame::Fin { flow },
            _ => Frame::Reset {
                flow,
                reason: text("RESET")?,
            },
        }))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Receive-side credit accounting of one flow (pure): how much the peer may still send, and when to
/// return credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    /// Bytes received and not yet consumed by the local reader.
    pub buffered: u32,
    /// Bytes consumed and not yet returned as credit.
    pub unacked: u32,
}

impl RecvWindow {
    /// A fresh window.
    pub const fn new() -> Self {
        RecvWindow {
            buffered: 0,
            unacked: 0,
        }
    }

    /// Accounts `n` received bytes; `Err` when the peer overran its credit.
    pub fn on_data(&mut self, n: usize) -> Result<(), FrameError> {
        let total = self.buffered as u64 + self.unacked as u64 + n as u64;
        if total > INITIAL_WINDOW as u64 {
            return Err(FrameError::Malformed("DATA beyond the flow's credit"));
        }
        self.buffered += n as u32;
        Ok(())
    }

    /// Accounts `n` bytes consumed locally; returns credit to send once a quarter window has accumulated.
    pub fn on_consumed(&mut self, n: usize) -> Option<u32> {
        let n = (n as u32).min(self.buffered);
        self.buffered -= n;
        self.unacked += n;
        if self.unacked >= INITIAL_WINDOW / 4 {
            let inc = self.unacked;
            self.unacked = 0;
            Some(inc)
        } else {
            None
        }
    }
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        // Feed byte by byte: partial input never yields a frame early.
        let all = b.clone();
        let mut partial = BytesMut::new();
        for (i, byte) in all.iter().enumerate() {
            partial.put_u8(*byte);
            let got = Frame::decode(&mut partial).unwrap();
            if i + 1 < all.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::Open {
            flow: 1,
            service: "web".into(),
        });
        roundtrip(Frame::Data {
            flow: 7,
            data: Bytes::from_static(b"hello"),
        });
        roundtrip(Frame::Window {
            flow: u32::MAX,
            increment: 65536,
        });
        roundtrip(Frame::Fin { flow: 2 });
        roundtrip(Frame::Reset {
            flow: 3,
            reason: "target refused".into(),
        });
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut b = BytesMut::from(&[9u8, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::UnknownType(9)));
        let mut b = BytesMut::from(&[1u8, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(Frame::decode(&mut b), Err(FrameError::TooLong(_))));
        let mut b = BytesMut::from(&[2u8, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Malformed("WINDOW")));
        let mut b = BytesMut::from(&[0u8, 0, 0, 0, 1, 0, 0, 0, 1, 0xff][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Malformed("OPEN")));
    }

    proptest::proptest! {
        /// The same property as the `flow_framing` fuzz target, run in every `cargo test`.
        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_frames_reencode(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = Frame::decode(&mut buf) {
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                proptest::prop_assert_eq!(Frame::decode(&mut again), Ok(Some(frame)));
            }
        }
    }

    #[test]
    fn window_accounting() {
        let mut w = RecvWindow::new();
        w.on_data(INITIAL_WINDOW as usize).unwrap();
        assert!(w.on_data(1).is_err(), "overrun must be refused");
        assert_eq!(w.on_consumed(1000), None);
        let credit = w.on_consumed((INITIAL_WINDOW / 4) as usize).unwrap();
        assert_eq!(credit, INITIAL_WINDOW / 4 + 1000);
        w.on_data(credit as usize).unwrap();
        assert!(w.on_data(1).is_err());
    }
}
