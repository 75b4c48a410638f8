//! Flows multiplexed on one TLS 1.3/TCP data connection, with per-flow credit (see [`super::frame`]).
//!
//! One reader task decodes frames and hands each flow's bytes to that flow's queue without ever waiting on
//! a flow; one writer task batches queued frames into large writes. A flow may only send DATA it has credit
//! for, so the queues are bounded by the window even when a local reader stalls.
//!
//! Started with [`Mux::start_tls`], the writer also refreshes the TLS 1.3 traffic keys in place (KeyUpdate,
//! RFC 8446 4.6.3) every time it has written another `key_update_bytes`: the rekey policy's byte limit, so a
//! connection that drains past its limit after a rekey never sends more than that under one key.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, INITIAL_WINDOW, MAX_DATA, RecvWindow};

/// Most flows open at once on one data connection; more OPENs are refused with RESET.
pub const MAX_FLOWS: usize = 16_384;
/// Bytes batched into one write to the TLS stream.
const WRITE_BATCH: usize = 256 * 1024;
/// Read buffer size on the TLS stream.
const READ_BUF: usize = 256 * 1024;

/// Why a flow ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The peer reset the flow (its reason).
    #[error("reset by peer: {0}")]
    Reset(String),
    /// The data connection closed under the flow.
    #[error("tunnel connection closed: {0}")]
    Closed(String),
}

enum Event {
    Data(Bytes),
    Fin,
    Reset(String),
}

struct Slot {
    events: mpsc::UnboundedSender<Event>,
    credit: Arc<Semaphore>,
    window: Arc<Mutex<RecvWindow>>,
}

struct Shared {
    out: mpsc::UnboundedSender<Frame>,
    flows: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    closed: CancellationToken,
    reason: Mutex<Option<String>>,
    dialer: bool,
    /// Bytes written to / read from the stream (frames, before TLS).
    sent: AtomicU64,
    received: AtomicU64,
    /// TLS KeyUpdates this side sent.
    key_updates: AtomicU64,
}

impl Shared {
    fn lock_flows(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close_reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".into())
    }

    /// Closes the connection: every flow learns the reason, senders waiting for credit wake up.
    fn close(&self, reason: &str) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.closed.cancel();
        let slots: Vec<Slot> = self.lock_flows().drain().map(|(_, s)| s).collect();
        for s in slots {
            let _ = s.events.send(Event::Reset(self.close_reason()));
            s.credit.close();
        }
    }

    fn new_slot(&self, id: u32) -> SlotParts {
        Self::insert_slot(&mut self.lock_flows(), id)
    }

    fn insert_slot(flows: &mut HashMap<u32, Slot>, id: u32) -> SlotParts {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        let window = Arc::new(Mutex::new(RecvWindow::new()));
        let slot = Slot {
            events: tx,
            credit: credit.clone(),
            window: window.clone(),
        };
        flows.insert(id, slot);
        (rx, credit, window)
    }
}

/// The local ends of a new flow's slot.
type SlotParts = (
    mpsc::UnboundedReceiver<Event>,
    Arc<Semaphore>,
    Arc<Mutex<RecvWindow>>,
);

/// Handle to a multiplexed data connection (cheap to clone).
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

/// A flow the peer opened.
pub struct IncomingFlow {
    /// The service the peer asked for.
    pub service: String,
    /// Sending half.
    pub tx: FlowSender,
    /// Receiving half.
    pub rx: FlowReceiver,
}

struct Guard {
    shared: Arc<Shared>,
    id: u32,
    fin_sent: AtomicBool,
    fin_received: AtomicBool,
    reset: AtomicBool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock_flows().remove(&self.id);
        let clean =
            self.fin_sent.load(Ordering::Relaxed) && self.fin_received.load(Ordering::Relaxed);
        if !clean && !self.reset.load(Ordering::Relaxed) && !self.shared.closed.is_cancelled() {
            let _ = self.shared.out.send(Frame::Reset {
                flow: self.id,
                reason: "flow aborted".into(),
            });
        }
    }
}

/// Sending half of a flow.
pub struct FlowSender {
    guard: Arc<Guard>,
    credit: Arc<Semaphore>,
}

/// Receiving half of a flow.
pub struct FlowReceiver {
    guard: Arc<Guard>,
    events: mpsc::UnboundedReceiver<Event>,
    window: Arc<Mutex<RecvWindow>>,
}

fn make_flow(shared: &Arc<Shared>, id: u32, parts: SlotParts) -> (FlowSender, FlowReceiver) {
    let guard = Arc::new(Guard {
        shared: shared.clone(),
        id,
        fin_sent: AtomicBool::new(false),
        fin_received: AtomicBool::new(false),
        reset: AtomicBool::new(false),
    });
    let (events, credit, window) = parts;
    (
        FlowSender {
            guard: guard.clone(),
            credit,
        },
        FlowReceiver {
            guard,
            events,
            window,
        },
    )
}

impl FlowSender {
    /// Sends bytes, waiting for credit; chunks larger than a frame are split without copying.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), FlowError> {
        let shared = &self.guard.shared;
        while !data.is_empty() {
            let n = data.len().min(MAX_DATA);
            match self.credit.acquire_many(n as u32).await {
                Ok(p) => p.forget(),
                Err(_) => {
                    return Err(if shared.closed.is_cancelled() {
                        FlowError::Closed(shared.close_reason())
                    } else {
                        FlowError::Reset("reset by peer".into())
                    });
                }
            }
            let chunk = data.split_to(n);
            shared
                .out
                .send(Frame::Data {
                    flow: self.guard.id,
                    data: chunk,
                })
                .map_err(|_| FlowError::Closed(shared.close_reason()))?;
        }
        Ok(())
    }

    /// No more data from us (half-close).
    pub fn finish(&mut self) {
        if !self.guard.fin_sent.swap(true, Ordering::Relaxed) {
            let _ = self.guard.shared.out.send(Frame::Fin {
                flow: self.guard.id,
            });
        }
    }

    /// Ends the flow in both directions with a reason the peer logs.
    pub fn reset(&mut self, reason: &str) {
        if !self.guard.reset.swap(true, Ordering::Relaxed) {
            let _ = self.guard.shared.out.send(Frame::Reset {
                flow: self.guard.id,
                reason: reason.into(),
            });
        }
    }
}

impl FlowReceiver {
    /// The next bytes; `Ok(None)` when the peer finished its direction.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, FlowError> {
        match self.events.recv().await {
            Some(Event::Data(b)) => {
                let credit = self
                    .window
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_consumed(b.len());
                if let Some(increment) = credit {
                    let _ = self.guard.shared.out.send(Frame::Window {
                        flow: self.guard.id,
                        increment,
                    });
                }
                Ok(Some(b))
            }
            Some(Event::Fin) => {
                self.guard.fin_received.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Some(Event::Reset(r)) => {
                self.guard.reset.store(true, Ordering::Relaxed);
                Err(if self.guard.shared.closed.is_cancelled() {
                    FlowError::Closed(r)
                } else {
                    FlowError::Reset(r)
                })
            }
            None => Err(FlowError::Closed(self.guard.shared.close_reason())),
        }
    }
}

/// A stream whose traffic keys can be refreshed in place.
pub trait TrafficKeys {
    /// Queues a key update; the next write carries it (TLS 1.3: KeyUpdate with update_requested, so the
    /// peer refreshes its sending keys too).
    fn refresh_traffic_keys(&mut self) -> Result<(), String>;
}

impl<IO> TrafficKeys for tokio_rustls::client::TlsStream<IO> {
    fn refresh_traffic_keys(&mut self) -> Result<(), String> {
        self.get_mut()
            .1
            .refresh_traffic_keys()
            .map_err(|e| e.to_string())
    }
}

impl<IO> TrafficKeys for tokio_rustls::server::TlsStream<IO> {
    fn refresh_traffic_keys(&mut self) -> Result<(), String> {
        self.get_mut()
            .1
            .refresh_traffic_keys()
            .map_err(|e| e.to_string())
    }
}

/// Both halves of one stream behind a lock (as `tokio::io::split` does), so the writer can also reach the
/// TLS session between writes to refresh its keys.
struct Locked<S>(Arc<Mutex<S>>);

impl<S> Locked<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Locked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Locked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

/// The writer's key-update schedule.
struct KeyUpdates {
    every: u64,
    refresh: Box<dyn FnMut() -> Result<(), String> + Send>,
}

impl Mux {
    /// Starts the reader and writer tasks on `io`. `dialer` picks the flow-id parity (odd for the dialer).
    /// Incoming flows arrive on the returned channel.
    pub fn start<S>(io: S, dialer: bool) -> (Mux, mpsc::Receiver<IncomingFlow>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        Self::start_halves(rd, wr, dialer, None)
    }

    /// As [`Mux::start`], on a TLS stream whose traffic keys the writer refreshes after every
    /// `key_update_bytes` it writes.
    pub fn start_tls<S>(
        io: S,
        dialer: bool,
        key_update_bytes: u64,
    ) -> (Mux, mpsc::Receiver<IncomingFlow>)
    where
        S: AsyncRead + AsyncWrite + TrafficKeys + Send + Unpin + 'static,
    {
        let io = Arc::new(Mutex::new(io));
        let keys = Locked(io.clone());
        let updates = KeyUpdates {
            every: key_update_bytes.max(1),
            refresh: Box::new(move || keys.lock().refresh_traffic_keys()),
        };
        Self::start_halves(Locked(io.clone()), Locked(io), dialer, Some(updates))
    }

    fn start_halves<R, W>(
        rd: R,
        wr: W,
        dialer: bool,
        keys: Option<KeyUpdates>,
    ) -> (Mux, mpsc::Receiver<IncomingFlow>)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            flows: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(if dialer { 1 } else { 2 }),
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
            dialer,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            key_updates: AtomicU64::new(0),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(1024);
        tokio::spawn(writer(shared.clone(), wr, out_rx, keys));
        tokio::spawn(reader(
            Arc::downgrade(&shared),
            shared.closed.clone(),
            rd,
            incoming_tx,
        ));
        (Mux { shared }, incoming_rx)
    }

    /// Opens a flow to the peer's service. Data may be sent at once (no round trip).
    pub fn open(&self, service: &str) -> Result<(FlowSender, FlowReceiver), FlowError> {
        let s = &self.shared;
        if s.closed.is_cancelled() {
            return Err(FlowError::Closed(s.close_reason()));
        }
        // Allocate and queue OPEN under the lock, so OPENs leave in id order (the peer checks it).
        let (id, parts) = {
            let mut flows = s.lock_flows();
            let id = s.next_id.fetch_add(2, Ordering::Relaxed);
            if id >= u32::MAX - 2 {
                drop(flows);
                s.close("flow ids exhausted");
                return Err(FlowError::Closed("flow ids exhausted".into()));
            }
            let parts = Shared::insert_slot(&mut flows, id);
            let open = Frame::Open {
                flow: id,
                service: service.into(),
            };
            if s.out.send(open).is_err() {
                return Err(FlowError::Closed("closed".into()));
            }
            (id, parts)
        };
        Ok(make_flow(s, id, parts))
    }

    /// Flows open right now.
    pub fn open_flows(&self) -> usize {
        self.shared.lock_flows().len()
    }

    /// Bytes (frames) written and read so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.received.load(Ordering::Relaxed),
        )
    }

    /// TLS KeyUpdates this side has sent.
    pub fn key_updates(&self) -> u64 {
        self.shared.key_updates.load(Ordering::Relaxed)
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves when the connection closes, with the reason.
    pub async fn closed(&self) -> String {
        self.shared.closed.cancelled().await;
        self.shared.close_reason()
    }

    /// Closes the connection; open flows end with `reason`.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }
}

async fn writer<W: AsyncWrite + Send + Unpin>(
    shared: Arc<Shared>,
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    mut keys: Option<KeyUpdates>,
) {
    let closed = shared.closed.clone();
    // Only the tasks should keep the connection alive, not this one: drop our strong ref early.
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let mut since_update: u64 = 0;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + MAX_DATA);
    let result: std::io::Result<()> = async {
        loop {
            let first = tokio::select! {
                _ = closed.cancelled() => break,
                f = rx.recv() => match f { Some(f) => f, None => break },
            };
            buf.clear();
            first.encode(&mut buf);
            while buf.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => f.encode(&mut buf),
                    Err(_) => break,
                }
            }
            wr.write_all(&buf).await?;
            let n = buf.len() as u64;
            if let Some(s) = weak.upgrade() {
                s.sent.fetch_add(n, Ordering::Relaxed);
                if let Some(k) = keys.as_mut() {
                    since_update += n;
                    if since_update >= k.every {
                        since_update = 0;
                        match (k.refresh)() {
                            Ok(()) => {
                                let total = s.key_updates.fetch_add(1, Ordering::Relaxed) + 1;
                                tracing::debug!(key_updates = total, "TLS traffic keys refreshed");
                            }
                            Err(e) => tracing::warn!(error = %e, "TLS KeyUpdate refused"),
                        }
                    }
                }
            }
            if rx.is_empty() {
                wr.flush().await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result
        && let Some(s) = weak.upgrade()
    {
        s.close(&format!("write to peer failed: {e}"));
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wr.shutdown()).await;
}

async fn reader<R: AsyncRead + Send + Unpin>(
    shared: std::sync::Weak<Shared>,
    closed: CancellationToken,
    mut rd: R,
    incoming: mpsc::Sender<IncomingFlow>,
) {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut last_incoming: u32 = 0;
    let reason = loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(READ_BUF);
        }
        let n = tokio::select! {
            _ = closed.cancelled() => return,
            r = rd.read_buf(&mut buf) => r,
        };
        let n = match n {
            Ok(0) => break "peer closed the data connection".to_string(),
            Err(e) => break format!("read from peer failed: {e}"),
            Ok(n) => n,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.received.fetch_add(n as u64, Ordering::Relaxed);
        let mut failure = None;
        loop {
            match Frame::decode(&mut buf) {
                Ok(None) => break,
                Err(e) => {
                    failure = Some(format!("protocol error: {e}"));
                    break;
                }
                Ok(Some(frame)) => {
                    if let Err(e) = dispatch(&shared, frame, &mut last_incoming, &incoming) {
                        failure = Some(format!("protocol error: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(f) = failure {
            break f;
        }
    };
    if let Some(s) = shared.upgrade() {
        s.close(&reason);
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    frame: Frame,
    last_incoming: &mut u32,
    incoming: &mpsc::Sender<IncomingFlow>,
) -> Result<(), String> {
    match frame {
        Frame::Open { flow, service } => {
            // The peer's ids have the other parity and only grow.
            let peer_parity = if shared.dialer { 0 } else { 1 };
            if flow % 2 != peer_parity || flow <= *last_incoming {
                return Err(format!("OPEN with invalid flow id {flow}"));
            }
            *last_incoming = flow;
            if shared.lock_flows().len() >= MAX_FLOWS {
                let _ = shared.out.send(Frame::Reset {
                    flow,
                    reason: "too many flows".into(),
                });
                return Ok(());
            }
            let parts = shared.new_slot(flow);
            let (tx, rx) = make_flow(shared, flow, parts);
            if let Err(e) = incoming.try_send(IncomingFlow { service, tx, rx }) {
                let mut f = match e {
                    mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
                };
                f.tx.reset("peer is not accepting flows");
            }
        }
        Frame::Data { flow, data } => {
            let flows = shared.lock_flows();
            if let Some(slot) = flows.get(&flow) {
                slot.window
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_data(data.len())
                    .map_err(|e| e.to_string())?;
                let _ = slot.events.send(Event::Data(data));
            }
        }
        Frame::Window { flow, increment } => {
            let flows = shared.lock_flows();
            if let Some(slot) = flows.get(&flow) {
                if slot.credit.available_permits() as u64 + increment as u64 > INITIAL_WINDOW as u64
                {
                    return Err(format!("WINDOW on flow {flow} grants more than the window"));
                }
                slot.credit.add_permits(increment as usize);
            }
        }
        Frame::Fin { flow } => {
            if let Some(slot) = shared.lock_flows().get(&flow) {
                let _ = slot.events.send(Event::Fin);
            }
        }
        Frame::Reset { flow, reason } => {
            if let Some(slot) = shared.lock_flows().remove(&flow) {
                let _ = slot.events.send(Event::Reset(reason));
                slot.credit.close();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flows_carry_bytes_both_ways_and_a_stalled_flow_does_not_block_others() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ma, _ia) = Mux::start(a, true);
        let (_mb, mut ib) = Mux::start(b, false);

        // Flow 1: the far side never reads it. We fill its window completely.
        let (mut stalled_tx, _stalled_rx) = ma.open("stalled").unwrap();
        let big = Bytes::from(vec![7u8; INITIAL_WINDOW as usize]);
        stalled_tx.send(big).await.unwrap();
        let _held = ib.recv().await.unwrap(); // accepted, but never read

        // Flow 2 still works in both directions.
        let (mut tx, mut rx) = ma.open("echo").unwrap();
        let mut inc = ib.recv().await.unwrap();
        assert_eq!(inc.service, "echo");
        tx.send(Bytes::from_static(b"ping")).await.unwrap();
        tx.finish();
        assert_eq!(
            inc.rx.recv().await.unwrap().unwrap(),
            Bytes::from_static(b"ping")
        );
        assert_eq!(inc.rx.recv().await.unwrap(), None);
        inc.tx.send(Bytes::from_static(b"pong")).await.unwrap();
        inc.tx.finish();
        assert_eq!(
            rx.recv().await.unwrap().unwrap(),
            Bytes::from_static(b"pong")
        );
        assert_eq!(rx.recv().await.unwrap(), None);

        // The stalled flow has no credit left: one more byte must wait.
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            stalled_tx.send(Bytes::from_static(b"x")),
        )
        .await;
        assert!(more.is_err(), "a flow without credit must not send");
    }

    #[tokio::test]
    async fn closing_the_connection_ends_flows_with_a_reason() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ma, _ia) = Mux::start(a, true);
        let (mb, mut ib) = Mux::start(b, false);
        let (_tx, mut rx) = ma.open("svc").unwrap();
        let _inc = ib.recv().await.unwrap();
        mb.close("operator stopped the tunnel");
        let err = rx.recv().await.unwrap_err();
        assert!(matches!(err, FlowError::Closed(_)), "{err:?}");
    }

    /// A duplex stream that counts key refreshes (the real one is rustls' KeyUpdate, exercised end to end
    /// in tests/tunnel_rekey.rs); here the writer's schedule is checked.
    struct Counting {
        io: tokio::io::DuplexStream,
        refreshed: Arc<AtomicU64>,
    }

    impl TrafficKeys for Counting {
        fn refresh_traffic_keys(&mut self) -> Result<(), String> {
            self.refreshed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn keys_are_refreshed_after_every_key_update_bytes_written() {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let refreshed = Arc::new(AtomicU64::new(0));
        let io = Counting {
            io: a,
            refreshed: refreshed.clone(),
        };
        const EVERY: u64 = 1 << 20;
        let (ma, _ia) = Mux::start_tls(io, true, EVERY);
        let (mb, mut ib) = Mux::start(b, false);
        let (mut tx, _rx) = ma.open("bulk").unwrap();
        let mut inc = ib.recv().await.unwrap();
        let total: usize = 5 * EVERY as usize + 1000;
        let sender = tokio::spawn(async move {
            for _ in 0..total / MAX_DATA + 1 {
                tx.send(Bytes::from(vec![1u8; MAX_DATA])).await.unwrap();
            }
            tx.finish();
            tx
        });
        let mut got = 0;
        while let Some(b) = inc.rx.recv().await.unwrap() {
            got += b.len();
        }
        let _tx = sender.await.unwrap();
        assert!(got >= total);
        let (sent, _) = ma.bytes();
        let (_, received) = mb.bytes();
        assert_eq!(sent, received, "both ends count the same frames");
        let n = refreshed.load(Ordering::Relaxed);
        assert_eq!(n, ma.key_updates());
        // One refresh per EVERY bytes written (batches may overshoot a boundary by one batch).
        assert!(
            n >= sent / EVERY - 1 && n <= sent / EVERY,
            "{n} refreshes for {sent} bytes"
        );
        assert_eq!(mb.key_updates(), 0, "a plain mux never refreshes keys");
    }
}
