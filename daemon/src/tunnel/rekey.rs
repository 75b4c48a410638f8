//! Rekey, make-before-break: the life of a peer's data connections (generations).
//!
//! The dialer replaces its data connection with a new one (a full handshake, so a fresh QKD key once the
//! QKD group is in) when the current one is [`due`]: `rekey_interval` old or `rekey_bytes` carried in one
//! direction. The new connection is up before it becomes current, so new flows never wait; the old one
//! keeps its flows (moving live TCP flows is a later step) and is closed by the dialer once they have all
//! ended. UDP datagrams always go out on the current connection. A connection past its byte limit
//! refreshes its traffic keys in place every further `rekey_bytes` (TLS 1.3 KeyUpdate in the mux, a QUIC key
//! update here). No connection outlives `rekey_hard_limit`: a draining one is cut, and a current one whose
//! replacement could not be opened is closed (fail closed) while the dialer keeps retrying with backoff.
//!
//! Both sides run a [`watch`] task per data connection; the acceptor never closes a drained connection
//! itself (the dialer does, after [`DRAIN_GRACE`]) but enforces the hard limit too. The decisions are
//! the pure functions [`due`] and [`judge`]; the tasks only feed them the clock and the counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};

use std::net::SocketAddr;

use super::{Daemon, DataConn, DataEntry, PeerRuntime};
use crate::config::{KxGroup, RekeyPolicy};
use crate::metrics::inc;

/// How often a data connection's age, bytes and flows are looked at.
pub const TICK: Duration = Duration::from_millis(100);
/// A replaced connection is closed no sooner than this after its replacement came up, so a flow the
/// peer opened on it just before it learned of the replacement is not cut (one round trip is enough).
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The acceptor enforces the hard limit this much later than the dialer.
pub const ACCEPTOR_SLACK: Duration = Duration::from_secs(1);

/// What lives and dies with one data connection.
#[derive(Debug)]
pub struct Life {
    /// Per-peer sequence number.
    pub generation: u64,
    /// When the handshake completed.
    pub born: Instant,
    flows: AtomicU64,
    idle: Notify,
    /// Set when we closed it as the current connection at its hard limit (no replacement could be opened).
    failed_closed: AtomicBool,
}

impl Life {
    /// Counts a flow on this connection until the guard drops.
    pub fn flow(self: &Arc<Self>) -> FlowGuard {
        self.flows.fetch_add(1, Ordering::Relaxed);
        FlowGuard(self.clone())
    }

    /// Flows open on this connection now.
    pub fn flows(&self) -> u64 {
        self.flows.load(Ordering::Relaxed)
    }
}

/// Holds one flow on its data connection (see [`Life::flow`]).
#[derive(Debug)]
pub struct FlowGuard(Arc<Life>);

impl Drop for FlowGuard {
    fn drop(&mut self) {
        if self.0.flows.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Per-peer registry of the live data connections and the generation counter.
#[derive(Default)]
pub struct PeerConns {
    live: std::sync::Mutex<BTreeMap<u64, DataEntry>>,
    generations: AtomicU64,
}

impl PeerConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, DataEntry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live data connection, oldest first.
    pub fn all(&self) -> Vec<DataEntry> {
        self.lock().values().cloned().collect()
    }
}

impl DataEntry {
    /// A new data connection of `rt`'s peer, numbered with the next generation.
    pub(super) fn new(
        rt: &PeerRuntime,
        id: u64,
        conn: DataConn,
        group: KxGroup,
        qkd_key: Option<String>,
    ) -> DataEntry {
        DataEntry {
            id,
            conn,
            group,
            qkd_key,
            life: Arc::new(Life {
                generation: rt.conns.generations.fetch_add(1, Ordering::Relaxed) + 1,
                born: Instant::now(),
                flows: AtomicU64::new(0),
                idle: Notify::new(),
                failed_closed: AtomicBool::new(false),
            }),
        }
    }
}

impl DataConn {
    /// Resolves when the connection closes, with the reason.
    pub(super) async fn closed(&self) -> String {
        match self {
            DataConn::Quic(c) => c.closed().await.to_string(),
            DataConn::Tls(m) => m.closed().await,
        }
    }

    /// True once closed.
    pub(super) fn is_closed(&self) -> bool {
        match self {
            DataConn::Quic(c) => c.close_reason().is_some(),
            DataConn::Tls(m) => m.is_closed(),
        }
    }

    /// Bytes (sent, received) on the connection: UDP payload bytes on QUIC, frame bytes on TLS.
    pub(super) fn bytes(&self) -> (u64, u64) {
        match self {
            DataConn::Quic(c) => {
                let s = c.stats();
                (s.udp_tx.bytes, s.udp_rx.bytes)
            }
            DataConn::Tls(m) => m.bytes(),
        }
    }
}

/// True when a connection of this age and (sent, received) bytes should be replaced.
pub fn due(p: &RekeyPolicy, age: Duration, bytes: (u64, u64)) -> bool {
    age >= p.interval || bytes.0.max(bytes.1) >= p.bytes
}

/// Where a data connection stands, as [`judge`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    /// Since its handshake.
    pub age: Duration,
    /// How long ago a newer connection replaced it; `None` while it is current.
    pub replaced_for: Option<Duration>,
    /// Flows open on it.
    pub flows: u64,
    /// True on the side that dials (and so closes drained connections).
    pub dialer: bool,
}

/// Why a data connection must close now, or `None` to keep it.
pub fn judge(p: &RekeyPolicy, s: Standing) -> Option<String> {
    if s.age >= p.hard_limit {
        return Some(match s.replaced_for {
            None => format!(
                "reached rekey_hard_limit ({}s) and no replacement could be opened: closed (fail closed)",
                p.hard_limit.as_secs()
            ),
            Some(_) => format!(
                "drain deadline: reached rekey_hard_limit ({}s) with {} flows still open",
                p.hard_limit.as_secs(),
                s.flows
            ),
        });
    }
    match s.replaced_for {
        Some(d) if s.dialer && d >= DRAIN_GRACE && s.flows == 0 => {
            Some("drained: its last flow ended after a rekey".into())
        }
        _ => None,
    }
}

/// Makes `entry` the peer's current data connection (new flows and datagrams go to it from now on), counts
/// a rekey if it replaces a live one, and starts its [`watch`].
pub(super) fn adopt(rt: &Arc<PeerRuntime>, entry: DataEntry) {
    let replaced = rt
        .data
        .borrow()
        .as_ref()
        .is_some_and(|e| !e.conn.is_closed());
    rt.conns.lock().insert(entry.id, entry.clone());
    rt.install(entry.clone());
    rt.counters
        .generation
        .store(entry.life.generation, Ordering::Relaxed);
    if replaced {
        inc(&rt.counters.rekeys);
        info!(site = %rt.site, peer = %rt.cfg.name, generation = entry.life.generation, group = %entry.group, "rekeyed: new flows go to the new data connection, old flows drain");
    }
    update_draining(rt);
    tokio::spawn(watch(rt.clone(), entry));
}

/// Drops `id` from the registry (called when a data connection has ended).
pub(super) fn forget(rt: &PeerRuntime, id: u64) {
    rt.conns.lock().remove(&id);
    if rt.data.borrow().is_none() {
        rt.counters.generation.store(0, Ordering::Relaxed);
    }
    update_draining(rt);
}

fn update_draining(rt: &PeerRuntime) {
    let current = rt.data.borrow().as_ref().map(|e| e.id);
    let n = rt
        .conns
        .lock()
        .keys()
        .filter(|id| Some(**id) != current)
        .count();
    rt.counters.draining.store(n as u64, Ordering::Relaxed);
}

/// Closes every data connection of the peer (the session ended).
pub(super) fn close_all(rt: &PeerRuntime, reason: &str) {
    for e in rt.conns.all() {
        e.conn.close(reason);
    }
}

/// Runs beside one data connection until it closes: key updates past the byte limit (QUIC; the TLS mux
/// does its own and is only counted here), the hard limit, and closing it once drained (dialer).
async fn watch(rt: Arc<PeerRuntime>, e: DataEntry) {
    let mut policy = rt.cfg.rekey;
    let dialer = rt.cfg.address.is_some();
    if !dialer {
        // The dialer closes at the hard limit first, so it knows the close was its own (fail closed,
        // control kept); the acceptor's limit is the backstop for a dialer that does not.
        policy.hard_limit += ACCEPTOR_SLACK;
    }
    let mut replaced_at: Option<Instant> = None;
    let mut next_update = policy.bytes;
    let mut tls_updates_seen = 0;
    let reason = loop {
        tokio::select! {
            r = e.conn.closed() => break r,
            _ = rt.cancel.cancelled() => {
                let r = "peer stopped".to_string();
                e.conn.close(&r);
                break r;
            }
            _ = e.life.idle.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        match &e.conn {
            DataConn::Quic(c) => {
                let (sent, _) = e.conn.bytes();
                if sent >= next_update {
                    c.force_key_update();
                    inc(&rt.counters.key_updates);
                    next_update = sent.saturating_add(policy.bytes);
                }
            }
            DataConn::Tls(m) => {
                let n = m.key_updates();
                rt.counters
                    .key_updates
                    .fetch_add(n - tls_updates_seen, Ordering::Relaxed);
                tls_updates_seen = n;
            }
        }
        let current = rt.data.borrow().as_ref().is_some_and(|c| c.id == e.id);
        if !current && replaced_at.is_none() {
            replaced_at = Some(Instant::now());
        }
        let standing = Standing {
            age: e.life.born.elapsed(),
            replaced_for: replaced_at.map(|t| t.elapsed()),
            flows: e.life.flows(),
            dialer,
        };
        if let Some(r) = judge(&policy, standing) {
            if standing.replaced_for.is_none() {
                e.life.failed_closed.store(true, Ordering::Relaxed);
            }
            if standing.replaced_for.is_none() || standing.flows > 0 {
                warn!(site = %rt.site, peer = %rt.cfg.name, generation = e.life.generation, reason = %r, "closing a data connection");
            }
            e.conn.close(&r);
            break r;
        }
    };
    rt.uninstall(e.id, &reason);
    forget(&rt, e.id);
    info!(site = %rt.site, peer = %rt.cfg.name, generation = e.life.generation, reason = %reason, "data connection closed");
}

/// Longest wait between attempts to open a replacement data connection.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

impl Daemon {
    /// The dialer's side of a session once `first` is up: replaces the current data connection when it is
    /// [`due`] (make-before-break), retrying with backoff when a replacement cannot be opened; after the
    /// hard limit closed it (fail closed) it goes on dialing while the control connection stays. Returns
    /// when the current connection was lost otherwise (the peer closed it, the network failed): the session
    /// ends and the dial loop starts a new one, as without rekey.
    pub(super) async fn keep_data(
        self: Arc<Self>,
        rt: Arc<PeerRuntime>,
        addr: SocketAddr,
        first: DataEntry,
    ) -> String {
        let policy = rt.cfg.rekey;
        let mut cur = first;
        adopt(&rt, cur.clone());
        let mut backoff = super::BACKOFF_MIN;
        let mut next_try = Instant::now();
        loop {
            if cur.conn.is_closed() {
                if !cur.life.failed_closed.load(Ordering::Relaxed) {
                    return format!("data connection: {}", cur.conn.closed().await);
                }
                tokio::time::sleep(next_try.saturating_duration_since(Instant::now())).await;
            } else {
                tokio::select! {
                    _ = cur.conn.closed() => continue,
                    _ = tokio::time::sleep(TICK) => {}
                }
                let age = cur.life.born.elapsed();
                if !due(&policy, age, cur.conn.bytes()) || Instant::now() < next_try {
                    continue;
                }
            }
            let replacing = !cur.conn.is_closed();
            match self.dial_data(&rt, addr).await {
                Ok(new) => {
                    backoff = super::BACKOFF_MIN;
                    cur = new;
                    adopt(&rt, cur.clone());
                    if !replacing {
                        info!(site = %rt.site, peer = %rt.cfg.name, generation = cur.life.generation, "data connection reopened");
                    }
                }
                Err(e) => {
                    inc(&rt.counters.rekey_failures);
                    self.metrics.failure(&rt.cfg.name, "rekey");
                    let left = policy.hard_limit.saturating_sub(cur.life.born.elapsed());
                    warn!(
                        site = %rt.site, peer = %rt.cfg.name, error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        hard_limit_in_s = if replacing { left.as_secs() } else { 0 },
                        "cannot open a new data connection; the current one (if any) serves until its hard limit"
                    );
                    rt.set_status(|s| s.last_error = Some(format!("rekey: {e}")));
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// `rekey` of `qsi tunnel peers --json`: policy, counters and each live data connection.
pub(super) fn status_json(rt: &PeerRuntime) -> serde_json::Value {
    let c = &rt.counters;
    let current = rt.data.borrow().as_ref().map(|e| e.id);
    let conns: Vec<serde_json::Value> = rt
        .conns
        .all()
        .iter()
        .map(|e| {
            let (sent, received) = e.conn.bytes();
            serde_json::json!({
                "generation": e.life.generation,
                "state": if Some(e.id) == current { "current" } else { "draining" },
                "group": e.group.name(),
                "qkd_key": e.qkd_key,
                "age_ms": e.life.born.elapsed().as_millis() as u64,
                "flows": e.life.flows(),
                "bytes_sent": sent,
                "bytes_received": received,
            })
        })
        .collect();
    serde_json::json!({
        "interval_s": rt.cfg.rekey.interval.as_secs_f64(),
        "bytes": rt.cfg.rekey.bytes,
        "hard_limit_s": rt.cfg.rekey.hard_limit.as_secs_f64(),
        "generation": c.generation.load(Ordering::Relaxed),
        "rekeys": c.rekeys.load(Ordering::Relaxed),
        "rekey_failures": c.rekey_failures.load(Ordering::Relaxed),
        "key_updates": c.key_updates.load(Ordering::Relaxed),
        "draining": c.draining.load(Ordering::Relaxed),
        "connections": conns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RekeyPolicy {
        RekeyPolicy {
            interval: Duration::from_secs(60),
            bytes: 1 << 20,
            hard_limit: Duration::from_secs(120),
        }
    }

    #[test]
    fn due_by_age_or_by_bytes_in_either_direction() {
        let p = policy();
        assert!(!due(&p, Duration::from_secs(59), (0, 0)));
        assert!(due(&p, Duration::from_secs(60), (0, 0)));
        assert!(!due(&p, Duration::ZERO, ((1 << 20) - 1, (1 << 20) - 1)));
        assert!(due(&p, Duration::ZERO, (1 << 20, 0)));
        assert!(due(&p, Duration::ZERO, (0, 1 << 20)));
    }

    #[test]
    fn drained_connections_close_on_the_dialer_after_the_grace() {
        let p = policy();
        let s = |replaced_ms: Option<u64>, flows, dialer| Standing {
            age: Duration::from_secs(70),
            replaced_for: replaced_ms.map(Duration::from_millis),
            flows,
            dialer,
        };
        // Current: kept, whatever its flows.
        assert_eq!(judge(&p, s(None, 0, true)), None);
        // Replaced, grace not over: kept (the peer may still be opening a flow on it).
        assert_eq!(judge(&p, s(Some(100), 0, true)), None);
        // Replaced, drained, grace over: the dialer closes it; the acceptor waits for the dialer.
        assert!(
            judge(&p, s(Some(600), 0, true))
                .unwrap()
                .contains("drained")
        );
        assert_eq!(judge(&p, s(Some(600), 0, false)), None);
        // Still carrying a flow: kept.
        assert_eq!(judge(&p, s(Some(60_000), 1, true)), None);
    }

    #[test]
    fn hard_limit_cuts_draining_and_closes_an_unreplaced_current() {
        let p = policy();
        let at = |replaced: Option<Duration>, flows| Standing {
            age: Duration::from_secs(120),
            replaced_for: replaced,
            flows,
            dialer: false,
        };
        let r = judge(&p, at(Some(Duration::from_secs(60)), 3)).unwrap();
        assert!(r.contains("drain deadline") && r.contains("3 flows"), "{r}");
        let r = judge(&p, at(None, 0)).unwrap();
        assert!(r.contains("fail closed"), "{r}");
        assert_eq!(
            judge(
                &p,
                Standing {
                    age: Duration::from_secs(119),
                    ..at(None, 5)
                }
            ),
            None
        );
    }
}
