//! The tunnels of one site: per peer a control connection and a data connection, on QUIC or TLS 1.3/TCP,
//! carrying forwarded TCP flows (and UDP datagrams on QUIC).
//!
//! Roles: a peer entry with an `address` is dialed by us (with backoff, forever); without one we wait for
//! the peer to dial. The dialer first opens the control connection (greeting, heartbeats; the QKD key-ID
//! announcements will ride here), then the data connection. The acceptor maps each connection to its peer
//! by the certificate's identity and checks the negotiated group against that peer's policy. A newer data
//! connection replaces the older one for new flows; the older one keeps its flows until it closes.

pub mod control;
pub mod flow;
pub mod frame;
pub mod mux;
pub mod qkd;
pub mod rekey;
pub mod udp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, Forward, KxGroup, PeerConfig, Protocol, Transport};
use crate::metrics::{Metrics, PeerCounters, inc};
use crate::qkd::QkdHandshake;
use crate::tls::{self, ALPN_CONTROL, ALPN_DATA};
use flow::{FlowBytes, FlowRx, FlowTx, code};

/// Time a TLS or QUIC handshake may take before the connection is dropped (slowloris, half-open).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; beyond this, new connections are dropped at once (flood).
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How long a new local connection waits for the tunnel to come up.
const WAIT_FOR_TUNNEL: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A data connection, either transport.
#[derive(Clone)]
pub enum DataConn {
    /// QUIC: one bidirectional stream per flow.
    Quic(quinn::Connection),
    /// TLS/TCP with our framing.
    Tls(mux::Mux),
}

/// The current data connection of a peer, with what was negotiated.
#[derive(Clone)]
pub struct DataEntry {
    id: u64,
    conn: DataConn,
    /// Negotiated group.
    pub group: KxGroup,
    /// The QKD key_ID in this connection's key schedule, if any.
    pub qkd_key: Option<String>,
    /// Generation, age and flows (see [`rekey`]).
    life: Arc<rekey::Life>,
}

impl DataConn {
    async fn open(&self, service: &str) -> Result<(FlowTx, FlowRx), String> {
        match self {
            DataConn::Quic(c) => {
                let (mut s, r) = c.open_bi().await.map_err(|e| e.to_string())?;
                let mut header = Vec::with_capacity(1 + service.len());
                header.push(service.len() as u8);
                header.extend_from_slice(service.as_bytes());
                s.write_all(&header).await.map_err(|e| e.to_string())?;
                Ok((FlowTx::Quic(s), FlowRx::Quic(r)))
            }
            DataConn::Tls(m) => {
                let (s, r) = m.open(service).map_err(|e| e.to_string())?;
                Ok((FlowTx::Mux(s), FlowRx::Mux(r)))
            }
        }
    }

    fn close(&self, reason: &str) {
        match self {
            DataConn::Quic(c) => c.close(quinn::VarInt::from_u32(code::CLOSING), reason.as_bytes()),
            DataConn::Tls(m) => m.close(reason),
        }
    }
}

/// What `qsi tunnel peers` shows for a peer.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PeerStatus {
    /// connected, connecting, backoff, waiting (for the peer to dial), stopped.
    pub state: String,
    /// Group of the current data connection.
    pub group: Option<String>,
    /// Unix time the current session came up.
    pub connected_since: Option<u64>,
    /// Sessions that came up since start.
    pub sessions: u64,
    /// Why the last session ended or the last attempt failed.
    pub last_error: Option<String>,
    /// True while a control connection is up.
    pub control_up: bool,
}

/// One open flow (for `qsi tunnel flows`).
#[derive(Debug, Clone)]
struct FlowInfo {
    service: String,
    outbound: bool,
    started: Instant,
    bytes: Arc<FlowBytes>,
}

/// Runtime of one peer.
pub struct PeerRuntime {
    /// The peer entry this runtime was started from.
    pub cfg: PeerConfig,
    site: String,
    data: watch::Sender<Option<DataEntry>>,
    status: Mutex<PeerStatus>,
    cancel: CancellationToken,
    counters: Arc<PeerCounters>,
    metrics: Arc<Metrics>,
    flows: Mutex<BTreeMap<u64, FlowInfo>>,
    next_flow: AtomicU64,
    udp: udp::UdpState,
    /// QKD state, when the peer's data connections take QKD keys.
    pub qkd: Option<Arc<qkd::PeerQkd>>,
    /// Live data connections (current and draining).
    conns: rekey::PeerConns,
}

impl PeerRuntime {
    fn set_status(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Current status.
    pub fn status(&self) -> PeerStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `entry` the connection for new flows.
    fn install(&self, entry: DataEntry) {
        let g = if entry.qkd_key.is_some() {
            crate::qkd::kx::qkd_group_name(entry.group)
        } else {
            entry.group.name().to_string()
        };
        self.metrics
            .set_group(&self.cfg.name, &self.cfg.transport.to_string(), Some(&g));
        // A rekey (replacing a live connection) continues the session.
        let rekey = self
            .data
            .borrow()
            .as_ref()
            .is_some_and(|e| !e.conn.is_closed());
        self.set_status(|s| {
            s.state = "connected".into();
            s.group = Some(g);
            if !rekey {
                s.connected_since = Some(now_unix());
                s.sessions += 1;
            }
        });
        self.data.send_replace(Some(entry));
    }

    /// Forgets `id` if it is still the current connection.
    fn uninstall(&self, id: u64, reason: &str) {
        let removed = self.data.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|e| e.id == id) {
                *cur = None;
                true
            } else {
                false
            }
        });
        if removed {
            self.metrics
                .set_group(&self.cfg.name, &self.cfg.transport.to_string(), None);
            let dialer = self.cfg.address.is_some();
            self.set_status(|s| {
                s.state = if dialer {
                    "connecting".into()
                } else {
                    "waiting".into()
                };
                s.group = None;
                s.connected_since = None;
                s.last_error = Some(reason.to_string());
            });
        }
    }

    /// The current data connection, waiting a little for one to come up.
    async fn current(&self) -> Option<DataEntry> {
        let mut rx = self.data.subscribe();
        let r = tokio::time::timeout(WAIT_FOR_TUNNEL, rx.wait_for(|d| d.is_some())).await;
        match r {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }

    fn register_flow(&self, service: &str, outbound: bool) -> (u64, Arc<FlowBytes>) {
        let id = self.next_flow.fetch_add(1, Ordering::Relaxed);
        let bytes = Arc::new(FlowBytes::default());
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            FlowInfo {
                service: service.into(),
                outbound,
                started: Instant::now(),
                bytes: bytes.clone(),
            },
        );
        inc(&self.counters.flows_total);
        self.counters.flows_active.fetch_add(1, Ordering::Relaxed);
        (id, bytes)
    }

    fn end_flow(&self, id: u64, result: &Result<(), String>, service: &str) {
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.counters.flows_active.fetch_sub(1, Ordering::Relaxed);
        if let Err(reason) = result {
            inc(&self.counters.flows_failed);
            info!(site = %self.site, peer = %self.cfg.name, service, reason = %reason, "flow closed with an error");
        }
    }
}

/// (service, peer, is UDP)
type ForwardKey = (String, String, bool);

/// Everything a running site holds.
pub struct Daemon {
    /// Config file, re-read on reload.
    pub config_path: Option<PathBuf>,
    cfg: RwLock<Arc<Config>>,
    /// The site's metrics.
    pub metrics: Arc<Metrics>,
    peers: Mutex<HashMap<String, Arc<PeerRuntime>>>,
    forwards: Mutex<HashMap<ForwardKey, (Forward, CancellationToken)>>,
    tls_server: RwLock<Arc<rustls::ServerConfig>>,
    endpoint: quinn::Endpoint,
    handshakes: Arc<Semaphore>,
    started: Instant,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// The in-process KMS and every peer's QKD reserve, if the site has a `[kms]`.
    pub qkd: Option<Arc<qkd::QkdSite>>,
}

/// What a reload changed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadSummary {
    /// Peers left running untouched.
    pub kept: Vec<String>,
    /// Peers restarted because their entry (or the site's credentials) changed.
    pub restarted: Vec<String>,
    /// New peers.
    pub added: Vec<String>,
    /// Peers removed.
    pub removed: Vec<String>,
    /// Settings that need a restart of qsid to apply.
    pub needs_restart: Vec<String>,
}

fn transport_config(datagrams: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(8192));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(2 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // Probe up to jumbo frames (loopback, data-centre links); discovery falls back to what the path carries.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(8952);
    t.mtu_discovery_config(Some(mtu));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(5)) {
        t.max_idle_timeout(Some(idle));
    }
    if !datagrams {
        t.datagram_receive_buffer_size(None);
    } else {
        t.datagram_receive_buffer_size(Some(4 * 1024 * 1024));
        t.datagram_send_buffer_size(4 * 1024 * 1024);
    }
    Arc::new(t)
}

fn quic_server(cfg: &Config) -> anyhow::Result<quinn::ServerConfig> {
    let tls = tls::server_config(&cfg.peers, &cfg.credentials, tls::verifier_for(&cfg.trust)?)?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(tls::quic_server_config(tls)?));
    s.transport_config(transport_config(true));
    Ok(s)
}

fn failure_reason(e: &str) -> &'static str {
    let l = e.to_ascii_lowercase();
    if l.contains("revoked") {
        "certificate_revoked"
    } else if l.contains("certificate") || l.contains("issuer") || l.contains("identity") {
        "certificate"
    } else if l.contains("group")
        || l.contains("key exchange")
        || l.contains("handshakefailure")
        || l.contains("no kx")
    {
        "kx_policy"
    } else if l.contains("timed out") || l.contains("timeout") || l.contains("silent") {
        "timeout"
    } else if l.contains("refused") || l.contains("unreachable") || l.contains("resolve") {
        "connect"
    } else if l.contains("alpn") || l.contains("protocol") {
        "protocol"
    } else {
        "handshake"
    }
}

impl Daemon {
    /// Binds every listener and starts every peer and forward. Errors say which address could not be bound.
    pub async fn start(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<Arc<Daemon>> {
        Self::start_with(cfg, config_path, None).await
    }

    /// Like [`Daemon::start`], with the site's running KMS (see `server::start_kms`) for QKD peers.
    pub async fn start_with(
        cfg: Config,
        config_path: Option<PathBuf>,
        qkd: Option<Arc<qkd::QkdSite>>,
    ) -> anyhow::Result<Arc<Daemon>> {
        use anyhow::Context as _;
        if qkd.is_none()
            && let Some(p) = cfg.peers.iter().find(|p| p.qkd.is_some())
        {
            anyhow::bail!(
                "peer {:?} takes QKD keys but no KMS is running; add a [kms] section",
                p.name
            );
        }
        let tls_server = Arc::new(tls::server_config(
            &cfg.peers,
            &cfg.credentials,
            tls::verifier_for(&cfg.trust)?,
        )?);
        cfg.trust.prefetch_crls(&cfg.credentials.chain);
        let endpoint = match cfg.listen_quic {
            Some(addr) => quinn::Endpoint::server(quic_server(&cfg)?, addr).with_context(|| {
                format!("cannot bind listen.quic {addr} (UDP); is another qsid running?")
            })?,
            None => quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
                .context("cannot bind a UDP socket for dialing QUIC peers")?,
        };
        let tls_listener = match cfg.listen_tls {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot bind listen.tls {addr} (TCP); is another qsid running?")
            })?),
            None => None,
        };
        let d = Arc::new(Daemon {
            config_path,
            cfg: RwLock::new(Arc::new(cfg.clone())),
            metrics: Arc::new(Metrics::default()),
            peers: Mutex::new(HashMap::new()),
            forwards: Mutex::new(HashMap::new()),
            tls_server: RwLock::new(tls_server),
            endpoint,
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            qkd,
        });
        if cfg.listen_quic.is_some() {
            tokio::spawn(d.clone().accept_quic());
        }
        if let Some(l) = tls_listener {
            tokio::spawn(d.clone().accept_tls(l));
        }
        for p in &cfg.peers {
            d.start_peer(p.clone());
        }
        for f in &cfg.forwards {
            d.start_forward(f.clone()).await?;
        }
        info!(site = %cfg.site, peers = cfg.peers.len(), forwards = cfg.forwards.len(), "qsid started");
        Ok(d)
    }

    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn site(&self) -> String {
        self.config().site.clone()
    }

    /// The runtime of a peer.
    pub fn peer(&self, name: &str) -> Option<Arc<PeerRuntime>> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn start_peer(self: &Arc<Self>, cfg: PeerConfig) {
        let site = self.site();
        let qkd = match (&self.qkd, &cfg.qkd) {
            (Some(q), Some(c)) => Some(q.peer(&cfg.name, c, cfg.address.is_some())),
            _ => None,
        };
        let rt = Arc::new(PeerRuntime {
            site: site.clone(),
            data: watch::channel(None).0,
            status: Mutex::new(PeerStatus {
                state: if cfg.address.is_some() {
                    "connecting".into()
                } else {
                    "waiting".into()
                },
                ..Default::default()
            }),
            cancel: self.shutdown.child_token(),
            counters: self.metrics.peer(&cfg.name),
            metrics: self.metrics.clone(),
            flows: Mutex::new(BTreeMap::new()),
            next_flow: AtomicU64::new(1),
            udp: udp::UdpState::default(),
            qkd,
            conns: rekey::PeerConns::default(),
            cfg,
        });
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rt.cfg.name.clone(), rt.clone());
        if rt.cfg.address.is_some() {
            let span = info_span!("peer", site = %site, peer = %rt.cfg.name, transport = %rt.cfg.transport);
            tokio::spawn(self.clone().dial_loop(rt).instrument(span));
        }
    }

    fn stop_peer(&self, name: &str, reason: &str) {
        if let Some(rt) = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        {
            rt.cancel.cancel();
            if let Some(e) = rt.data.borrow().as_ref() {
                e.conn.close(reason);
            }
            rekey::close_all(&rt, reason);
            self.metrics
                .set_group(name, &rt.cfg.transport.to_string(), None);
        }
    }

    async fn dial_loop(self: Arc<Self>, rt: Arc<PeerRuntime>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if rt.cancel.is_cancelled() {
                return;
            }
            let attempt = tokio::select! {
                _ = rt.cancel.cancelled() => return,
                r = self.dial_session(&rt) => r,
            };
            match attempt {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    let reason = failure_reason(&e);
                    self.metrics.failure(&rt.cfg.name, reason);
                    warn!(error = %e, reason, retry_in_ms = backoff.as_millis() as u64, "cannot reach peer");
                    rt.set_status(|s| {
                        s.state = "backoff".into();
                        s.last_error = Some(e.clone());
                    });
                    // Jitter from the clock's sub-second part keeps two dialers from moving in lockstep.
                    let jitter = Duration::from_millis(u64::from(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.subsec_millis())
                            .unwrap_or(0)
                            % 50,
                    ));
                    tokio::select! {
                        _ = rt.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff + jitter) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    rt.set_status(|s| s.state = "connecting".into());
                }
            }
        }
    }

    /// One session as the dialer: control connection, then data connection, then run until either ends.
    /// `Ok` when a session was up and then ended; `Err` when it could not be established.
    async fn dial_session(self: &Arc<Self>, rt: &Arc<PeerRuntime>) -> Result<(), String> {
        let cfg = self.config();
        let address = rt.cfg.address.clone().unwrap_or_default();
        let addr =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::lookup_host(address.as_str()))
                .await
                .map_err(|_| format!("resolving {address} timed out"))?
                .map_err(|e| format!("cannot resolve {address}: {e}"))?
                .next()
                .ok_or_else(|| format!("cannot resolve {address}: no address"))?;
        let verifier = tls::verifier_for(&cfg.trust).map_err(|e| e.to_string())?;
        let client = |alpn: &[u8]| {
            tls::client_config(&rt.cfg, &cfg.credentials, verifier.clone(), alpn)
                .map_err(|e| e.to_string())
        };
        let site = cfg.site.clone();
        match rt.cfg.transport {
            Transport::Quic => {
                let qcfg = |alpn: &[u8]| -> Result<quinn::ClientConfig, String> {
                    let mut c = quinn::ClientConfig::new(Arc::new(
                        tls::quic_client_config(client(alpn)?).map_err(|e| e.to_string())?,
                    ));
                    c.transport_config(transport_config(true));
                    Ok(c)
                };
                let sni = tls::server_name_for(&rt.cfg).to_str().into_owned();
                let ctl = quic_connect(&self.endpoint, qcfg(ALPN_CONTROL)?, addr, &sni).await?;
                quic_group(&rt.cfg, &ctl).inspect_err(|_| ctl.close(0u32.into(), b"kx policy"))?;
                inc(&rt.counters.handshakes);
                let (mut s, mut r) = ctl.open_bi().await.map_err(|e| e.to_string())?;
                let peer_site = control::greet(&mut r, &mut s, &site)
                    .await
                    .map_err(|e| e.to_string())?;
                check_site(&rt.cfg, &peer_site);
                let (ctl_run, _qkd_task) = control_session(rt, r, s);
                let mut ctl_run = std::pin::pin!(ctl_run);
                rt.set_status(|s| s.control_up = true);
                let entry = tokio::select! {
                    e = &mut ctl_run => {
                        rt.set_status(|s| s.control_up = false);
                        return Err(format!("control connection: {e}"));
                    }
                    d = self.dial_data(rt, addr) => d.inspect_err(|_| rt.set_status(|s| s.control_up = false))?,
                };
                info!(group = %entry.group, qkd_key = ?entry.qkd_key, "tunnel up");
                let reason = tokio::select! {
                    e = &mut ctl_run => format!("control connection: {e}"),
                    e = self.clone().keep_data(rt.clone(), addr, entry) => e,
                    _ = rt.cancel.cancelled() => "peer stopped by configuration".to_string(),
                };
                ctl.close(quinn::VarInt::from_u32(code::CLOSING), reason.as_bytes());
                rekey::close_all(rt, &reason);
                rt.set_status(|s| s.control_up = false);
                // Not `if let` on the borrow: its guard would still be held inside `uninstall`.
                let current = rt.data.borrow().as_ref().map(|e| e.id);
                if let Some(cur) = current {
                    rt.uninstall(cur, &reason);
                }
                warn!(reason = %reason, "tunnel down");
                self.metrics.failure(&rt.cfg.name, "session_lost");
                Ok(())
            }
            Transport::Tls => {
                let ctl = tls_connect(&rt.cfg, client(ALPN_CONTROL)?, addr).await?;
                tls_group(&rt.cfg, ctl.get_ref().1)?;
                inc(&rt.counters.handshakes);
                let (mut r, mut w) = tokio::io::split(ctl);
                let peer_site = control::greet(&mut r, &mut w, &site)
                    .await
                    .map_err(|e| e.to_string())?;
                check_site(&rt.cfg, &peer_site);
                let (ctl_run, _qkd_task) = control_session(rt, r, w);
                let mut ctl_run = std::pin::pin!(ctl_run);
                rt.set_status(|s| s.control_up = true);
                let entry = tokio::select! {
                    e = &mut ctl_run => {
                        rt.set_status(|s| s.control_up = false);
                        return Err(format!("control connection: {e}"));
                    }
                    d = self.dial_data(rt, addr) => d.inspect_err(|_| rt.set_status(|s| s.control_up = false))?,
                };
                info!(group = %entry.group, qkd_key = ?entry.qkd_key, "tunnel up");
                let reason = tokio::select! {
                    e = &mut ctl_run => format!("control connection: {e}"),
                    e = self.clone().keep_data(rt.clone(), addr, entry) => e,
                    _ = rt.cancel.cancelled() => "peer stopped by configuration".to_string(),
                };
                rekey::close_all(rt, &reason);
                rt.set_status(|s| s.control_up = false);
                // Not `if let` on the borrow: its guard would still be held inside `uninstall`.
                let current = rt.data.borrow().as_ref().map(|e| e.id);
                if let Some(cur) = current {
                    rt.uninstall(cur, &reason);
                }
                warn!(reason = %reason, "tunnel down");
                self.metrics.failure(&rt.cfg.name, "session_lost");
                Ok(())
            }
        }
    }

    /// Dials one data connection to the peer: waits for the QKD gate (a key ready, or the policy's
    /// answer), builds a client config for this dial alone (its own QKD key), checks the group and the
    /// QKD key against the peer's policy, and serves the connection's incoming flows. The caller makes it
    /// current with [`rekey::adopt`]. Every data connection, first or rekey, is dialed here.
    async fn dial_data(
        self: &Arc<Self>,
        rt: &Arc<PeerRuntime>,
        addr: SocketAddr,
    ) -> Result<DataEntry, String> {
        let cfg = self.config();
        let verifier = tls::verifier_for(&cfg.trust).map_err(|e| e.to_string())?;
        let gate = rt.qkd_gate().await;
        let (client, hs) = rt.data_client_config(&cfg, verifier, gate)?;
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        match rt.cfg.transport {
            Transport::Quic => {
                let mut c = quinn::ClientConfig::new(Arc::new(
                    tls::quic_client_config(client).map_err(|e| e.to_string())?,
                ));
                c.transport_config(transport_config(true));
                let sni = tls::server_name_for(&rt.cfg).to_str().into_owned();
                let data = quic_connect(&self.endpoint, c, addr, &sni)
                    .await
                    .map_err(|e| rt.data_dial_failed(e, hs.as_ref()))?;
                let (group, qkd_key) = rt
                    .check_data_kx(quic_named_group(&data), None, hs.as_ref(), true, id)
                    .inspect_err(|_| data.close(0u32.into(), b"kx policy"))?;
                inc(&rt.counters.handshakes);
                let entry = DataEntry::new(rt, id, DataConn::Quic(data.clone()), group, qkd_key);
                self.clone()
                    .serve_quic_data(rt.clone(), data, entry.life.clone());
                Ok(entry)
            }
            Transport::Tls => {
                let data = tls_connect(&rt.cfg, client, addr)
                    .await
                    .map_err(|e| rt.data_dial_failed(e, hs.as_ref()))?;
                let (group, qkd_key) = {
                    let c = data.get_ref().1;
                    rt.check_data_kx(
                        c.negotiated_key_exchange_group().map(|g| g.name()),
                        c.negotiated_cipher_suite().map(|s| s.suite()),
                        hs.as_ref(),
                        true,
                        id,
                    )?
                };
                inc(&rt.counters.handshakes);
                let (m, incoming) = mux::Mux::start_tls(data, true, rt.cfg.rekey.bytes);
                let entry = DataEntry::new(rt, id, DataConn::Tls(m), group, qkd_key);
                self.clone()
                    .serve_mux_incoming(rt.clone(), incoming, entry.life.clone());
                Ok(entry)
            }
        }
    }

    async fn accept_quic(self: Arc<Self>) {
        while let Some(incoming) = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            i = self.endpoint.accept() => i,
        } {
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                incoming.refuse();
                self.metrics.failure("-", "flood");
                continue;
            };
            let d = self.clone();
            tokio::spawn(async move {
                let (connecting, hs) = match d.qkd_server_config() {
                    None => (incoming.accept(), None),
                    Some(Ok((tls, hs))) => {
                        let cfg = quic_server(&d.config()).and_then(|base| {
                            tls::quic_server_config_for(&base, tls).map_err(Into::into)
                        });
                        match cfg {
                            Ok(c) => (incoming.accept_with(Arc::new(c)), hs),
                            Err(e) => {
                                warn!(error = %e, "cannot build the QKD server config; refusing");
                                incoming.refuse();
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "cannot build the QKD server config; refusing");
                        incoming.refuse();
                        return;
                    }
                };
                let connecting = match connecting {
                    Ok(c) => c,
                    Err(e) => {
                        d.metrics.failure("-", failure_reason(&e.to_string()));
                        return;
                    }
                };
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        d.metrics.failure("-", failure_reason(&e.to_string()));
                        return;
                    }
                    Err(_) => {
                        d.metrics.failure("-", "timeout");
                        return;
                    }
                };
                drop(permit);
                d.serve_quic_conn(conn, hs).await;
            });
        }
    }

    async fn serve_quic_conn(self: Arc<Self>, conn: quinn::Connection, hs: Option<QkdHandshake>) {
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        let certs = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        let Some(rt) = self.peer_for(&certs) else {
            conn.close(quinn::VarInt::from_u32(code::CLOSING), b"unknown peer");
            self.metrics.failure("-", "certificate");
            return;
        };
        if rt.cfg.transport != Transport::Quic {
            conn.close(
                quinn::VarInt::from_u32(code::CLOSING),
                b"peer is configured for tls",
            );
            self.metrics.failure(&rt.cfg.name, "protocol");
            return;
        }
        let group = match quic_group(&rt.cfg, &conn) {
            Ok(g) => g,
            Err(e) => {
                warn!(site = %rt.site, peer = %rt.cfg.name, error = %e, "refused");
                conn.close(quinn::VarInt::from_u32(code::CLOSING), b"kx policy");
                self.metrics.failure(&rt.cfg.name, "kx_policy");
                return;
            }
        };
        inc(&rt.counters.handshakes);
        let span = info_span!("peer", site = %rt.site, peer = %rt.cfg.name, transport = "quic", group = %group);
        match alpn.as_deref() {
            Some(ALPN_CONTROL) => {
                let site = self.site();
                async move {
                    let Ok(Ok((mut s, mut r))) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await
                    else {
                        return;
                    };
                    let reason = serve_control(&rt, &site, &mut r, &mut s).await;
                    conn.close(quinn::VarInt::from_u32(code::CLOSING), reason.as_bytes());
                }
                .instrument(span)
                .await
            }
            Some(ALPN_DATA) => {
                async move {
                    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                    let qkd_key = match rt.check_data_kx(
                        quic_named_group(&conn),
                        None,
                        hs.as_ref(),
                        false,
                        id,
                    ) {
                        Ok((_, k)) => k,
                        Err(e) => {
                            warn!(error = %e, "data connection refused");
                            conn.close(quinn::VarInt::from_u32(code::CLOSING), e.as_bytes());
                            return;
                        }
                    };
                    info!(qkd_key = ?qkd_key, "data connection accepted");
                    let entry =
                        DataEntry::new(&rt, id, DataConn::Quic(conn.clone()), group, qkd_key);
                    self.clone()
                        .serve_quic_data(rt.clone(), conn.clone(), entry.life.clone());
                    rekey::adopt(&rt, entry.clone());
                    let reason = tokio::select! {
                        e = conn.closed() => e.to_string(),
                        _ = rt.cancel.cancelled() => "peer stopped by configuration".into(),
                    };
                    conn.close(quinn::VarInt::from_u32(code::CLOSING), reason.as_bytes());
                    rt.uninstall(entry.id, &reason);
                    info!(reason = %reason, "data connection ended");
                }
                .instrument(span)
                .await
            }
            _ => conn.close(quinn::VarInt::from_u32(code::CLOSING), b"unknown ALPN"),
        }
    }

    /// Serves flows the peer opens on a QUIC data connection, and its datagrams.
    fn serve_quic_data(
        self: Arc<Self>,
        rt: Arc<PeerRuntime>,
        conn: quinn::Connection,
        life: Arc<rekey::Life>,
    ) {
        let d = self.clone();
        let rt2 = rt.clone();
        let conn2 = conn.clone();
        tokio::spawn(async move { udp::serve_datagrams(d, rt2, conn2).await });
        tokio::spawn(async move {
            while let Ok((s, mut r)) = conn.accept_bi().await {
                let d = self.clone();
                let rt = rt.clone();
                let on_conn = life.flow();
                tokio::spawn(async move {
                    let _on_conn = on_conn;
                    let mut len = [0u8; 1];
                    let header = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                        r.read_exact(&mut len).await?;
                        let mut name = vec![0u8; len[0] as usize];
                        r.read_exact(&mut name).await?;
                        Ok::<_, quinn::ReadExactError>(name)
                    })
                    .await;
                    let Ok(Ok(name)) = header else { return };
                    let service = String::from_utf8_lossy(&name).into_owned();
                    d.serve_incoming_flow(rt, service, FlowTx::Quic(s), FlowRx::Quic(r))
                        .await;
                });
            }
        });
    }

    fn serve_mux_incoming(
        self: Arc<Self>,
        rt: Arc<PeerRuntime>,
        mut incoming: tokio::sync::mpsc::Receiver<mux::IncomingFlow>,
        life: Arc<rekey::Life>,
    ) {
        tokio::spawn(async move {
            while let Some(f) = incoming.recv().await {
                let d = self.clone();
                let rt = rt.clone();
                let on_conn = life.flow();
                tokio::spawn(async move {
                    let _on_conn = on_conn;
                    d.serve_incoming_flow(rt, f.service, FlowTx::Mux(f.tx), FlowRx::Mux(f.rx))
                        .await
                });
            }
        });
    }

    /// A flow the peer opened: look up what we expose to it under that name and connect.
    async fn serve_incoming_flow(
        &self,
        rt: Arc<PeerRuntime>,
        service: String,
        mut tx: FlowTx,
        mut rx: FlowRx,
    ) {
        let cfg = self.config();
        let target = match cfg.expose(&rt.cfg.name, &service) {
            Some(e) if e.protocol == Protocol::Tcp => e.target.clone(),
            _ => {
                warn!(site = %rt.site, peer = %rt.cfg.name, service, "peer asked for a service we do not expose to it");
                self.metrics.failure(&rt.cfg.name, "no_such_service");
                tx.reset(code::NO_SERVICE, "no such service");
                rx.stop(code::NO_SERVICE);
                return;
            }
        };
        let tcp = match tokio::time::timeout(WAIT_FOR_TUNNEL, TcpStream::connect(target.as_str()))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(site = %rt.site, peer = %rt.cfg.name, service, target, error = %e, "target unreachable");
                self.metrics.failure(&rt.cfg.name, "target_unreachable");
                tx.reset(code::UNREACHABLE, &format!("target unreachable: {e}"));
                rx.stop(code::UNREACHABLE);
                return;
            }
            Err(_) => {
                self.metrics.failure(&rt.cfg.name, "target_unreachable");
                tx.reset(code::UNREACHABLE, "target connect timed out");
                rx.stop(code::UNREACHABLE);
                return;
            }
        };
        let (id, bytes) = rt.register_flow(&service, false);
        let result = flow::splice(tcp, tx, rx, &rt.counters, bytes).await;
        rt.end_flow(id, &result, &service);
    }

    async fn accept_tls(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                self.metrics.failure("-", "flood");
                drop(tcp);
                continue;
            };
            let d = self.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let (acceptor, hs) = match d.qkd_server_config() {
                    None => (
                        tokio_rustls::TlsAcceptor::from(
                            d.tls_server
                                .read()
                                .unwrap_or_else(|p| p.into_inner())
                                .clone(),
                        ),
                        None,
                    ),
                    Some(Ok((cfg, hs))) => (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), hs),
                    Some(Err(e)) => {
                        warn!(error = %e, "cannot build the QKD server config; refusing");
                        return;
                    }
                };
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        info!(%from, error = %e, "TLS handshake refused");
                        d.metrics.failure("-", failure_reason(&e.to_string()));
                        return;
                    }
                    Err(_) => {
                        d.metrics.failure("-", "timeout");
                        return;
                    }
                };
                drop(permit);
                d.serve_tls_conn(tls, hs).await;
            });
        }
    }

    async fn serve_tls_conn(
        self: Arc<Self>,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        hs: Option<QkdHandshake>,
    ) {
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let certs: Vec<CertificateDer<'static>> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let Some(rt) = self.peer_for(&certs) else {
            self.metrics.failure("-", "certificate");
            return;
        };
        if rt.cfg.transport != Transport::Tls {
            self.metrics.failure(&rt.cfg.name, "protocol");
            return;
        }
        let group = match tls_group(&rt.cfg, conn) {
            Ok(g) => g,
            Err(e) => {
                warn!(site = %rt.site, peer = %rt.cfg.name, error = %e, "refused");
                self.metrics.failure(&rt.cfg.name, "kx_policy");
                return;
            }
        };
        inc(&rt.counters.handshakes);
        let span = info_span!("peer", site = %rt.site, peer = %rt.cfg.name, transport = "tls", group = %group);
        match alpn.as_deref() {
            Some(ALPN_CONTROL) => {
                let site = self.site();
                async move {
                    let (mut r, mut w) = tokio::io::split(tls);
                    serve_control(&rt, &site, &mut r, &mut w).await;
                }
                .instrument(span)
                .await
            }
            Some(ALPN_DATA) => {
                async move {
                    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                    let checked = {
                        let c = tls.get_ref().1;
                        rt.check_data_kx(
                            c.negotiated_key_exchange_group().map(|g| g.name()),
                            c.negotiated_cipher_suite().map(|s| s.suite()),
                            hs.as_ref(),
                            false,
                            id,
                        )
                    };
                    let qkd_key = match checked {
                        Ok((_, k)) => k,
                        Err(e) => {
                            warn!(error = %e, "data connection refused");
                            return;
                        }
                    };
                    info!(qkd_key = ?qkd_key, "data connection accepted");
                    let (m, incoming) = mux::Mux::start_tls(tls, false, rt.cfg.rekey.bytes);
                    let entry = DataEntry::new(&rt, id, DataConn::Tls(m.clone()), group, qkd_key);
                    self.clone()
                        .serve_mux_incoming(rt.clone(), incoming, entry.life.clone());
                    rekey::adopt(&rt, entry.clone());
                    let reason = tokio::select! {
                        e = m.closed() => e,
                        _ = rt.cancel.cancelled() => "peer stopped by configuration".into(),
                    };
                    m.close(&reason);
                    rt.uninstall(entry.id, &reason);
                    info!(reason = %reason, "data connection ended");
                }
                .instrument(span)
                .await
            }
            _ => {}
        }
    }

    fn peer_for(&self, certs: &[CertificateDer<'static>]) -> Option<Arc<PeerRuntime>> {
        let ee = certs.first()?;
        let cfg = self.config();
        let p = tls::peer_for_cert(&cfg.peers, ee)?;
        self.peer(&p.name)
    }

    async fn start_forward(self: &Arc<Self>, f: Forward) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let token = self.shutdown.child_token();
        let key = (f.name.clone(), f.peer.clone(), f.protocol == Protocol::Udp);
        match f.protocol {
            Protocol::Tcp => {
                let l = TcpListener::bind(f.listen).await.with_context(|| {
                    format!("cannot bind forward {:?} listen {} (TCP)", f.name, f.listen)
                })?;
                tokio::spawn(self.clone().forward_tcp(f.clone(), l, token.clone()));
            }
            Protocol::Udp => {
                let s = tokio::net::UdpSocket::bind(f.listen)
                    .await
                    .with_context(|| {
                        format!("cannot bind forward {:?} listen {} (UDP)", f.name, f.listen)
                    })?;
                tokio::spawn(udp::forward_udp(
                    self.clone(),
                    f.clone(),
                    Arc::new(s),
                    token.clone(),
                ));
            }
        }
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (f, token));
        Ok(())
    }

    async fn forward_tcp(
        self: Arc<Self>,
        f: Forward,
        listener: TcpListener,
        token: CancellationToken,
    ) {
        loop {
            let (tcp, _) = tokio::select! {
                _ = token.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "forward accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let d = self.clone();
            let f = f.clone();
            tokio::spawn(async move {
                let Some(rt) = d.peer(&f.peer) else { return };
                let Some(entry) = rt.current().await else {
                    d.metrics.failure(&f.peer, "tunnel_down");
                    info!(site = %rt.site, peer = %f.peer, service = %f.name, "no tunnel to the peer; closing the local connection");
                    let _ = tcp.set_zero_linger();
                    return;
                };
                // A connection that closed under us (drained, hard limit) may already have a successor.
                let mut opened = entry
                    .conn
                    .open(&f.name)
                    .await
                    .map(|x| (x, entry.life.clone()));
                if opened.is_err()
                    && let Some(next) = rt.current().await
                    && next.id != entry.id
                {
                    opened = next
                        .conn
                        .open(&f.name)
                        .await
                        .map(|x| (x, next.life.clone()));
                }
                let ((tx, rx), life) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        d.metrics.failure(&f.peer, "flow_open");
                        info!(site = %rt.site, peer = %f.peer, service = %f.name, error = %e, "cannot open a flow");
                        let _ = tcp.set_zero_linger();
                        return;
                    }
                };
                let _on_conn = life.flow();
                let (id, bytes) = rt.register_flow(&f.name, true);
                let result = flow::splice(tcp, tx, rx, &rt.counters, bytes).await;
                rt.end_flow(id, &result, &f.name);
            });
        }
    }

    /// Re-reads the config file and applies it; tunnels whose settings did not change keep running.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<ReloadSummary> {
        let Some(path) = self.config_path.clone() else {
            anyhow::bail!("this qsid was started without a config file to re-read");
        };
        let new = Config::load(&path)?;
        self.apply(new).await
    }

    /// Applies a new config (see [`Daemon::reload`]).
    pub async fn apply(self: &Arc<Self>, new: Config) -> anyhow::Result<ReloadSummary> {
        let old = self.config();
        let mut sum = ReloadSummary::default();
        if new.site != old.site {
            sum.needs_restart.push("site".into());
        }
        if new.listen_quic != old.listen_quic {
            sum.needs_restart.push("listen.quic".into());
        }
        if new.listen_tls != old.listen_tls {
            sum.needs_restart.push("listen.tls".into());
        }
        if new.admin_socket != old.admin_socket {
            sum.needs_restart.push("admin.socket".into());
        }
        if new.portal != old.portal {
            sum.needs_restart.push("portal".into());
        }
        if new.metrics_listen != old.metrics_listen {
            sum.needs_restart.push("metrics.listen".into());
        }
        // New server configs first: accepted connections from now on use the new credentials and peers.
        let server = Arc::new(tls::server_config(
            &new.peers,
            &new.credentials,
            tls::verifier_for(&new.trust)?,
        )?);
        new.trust.prefetch_crls(&new.credentials.chain);
        if new.listen_quic.is_some() && old.listen_quic.is_some() {
            self.endpoint.set_server_config(Some(quic_server(&new)?));
        }
        *self.tls_server.write().unwrap_or_else(|p| p.into_inner()) = server;
        let creds_changed = new.credentials != old.credentials || new.trust != old.trust;
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new.clone());

        for p in &old.peers {
            match new.peer(&p.name) {
                None => {
                    self.stop_peer(&p.name, "peer removed from configuration");
                    sum.removed.push(p.name.clone());
                }
                Some(np) if np != p || creds_changed => {
                    self.stop_peer(&p.name, "peer configuration changed");
                    self.start_peer(np.clone());
                    sum.restarted.push(p.name.clone());
                }
                Some(_) => sum.kept.push(p.name.clone()),
            }
        }
        for p in &new.peers {
            if old.peer(&p.name).is_none() {
                self.start_peer(p.clone());
                sum.added.push(p.name.clone());
            }
        }
        // Forwards: stop those gone or changed, start those new or changed.
        let keep: Vec<Forward> = {
            let mut fw = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept = Vec::new();
            fw.retain(|_, (f, token)| {
                if new.forwards.contains(f) {
                    kept.push(f.clone());
                    true
                } else {
                    token.cancel();
                    false
                }
            });
            kept
        };
        for f in &new.forwards {
            if !keep.contains(f) {
                // The old listener closes asynchronously; retry the bind briefly.
                let mut last = None;
                for _ in 0..20 {
                    match self.start_forward(f.clone()).await {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) => {
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                if let Some(e) = last {
                    warn!(error = %e, "forward not started");
                }
            }
        }
        info!(site = %new.site, kept = ?sum.kept, restarted = ?sum.restarted, added = ?sum.added, removed = ?sum.removed, "configuration reloaded");
        Ok(sum)
    }

    /// `qsi tunnel status`.
    pub fn status_json(&self) -> serde_json::Value {
        let cfg = self.config();
        let peers = self.peers_json();
        let up = peers
            .as_array()
            .map(|a| a.iter().filter(|p| p["state"] == "connected").count())
            .unwrap_or(0);
        serde_json::json!({
            "site": cfg.site,
            "uptime_s": self.started.elapsed().as_secs(),
            "listen_quic": cfg.listen_quic.map(|a| a.to_string()),
            "listen_tls": cfg.listen_tls.map(|a| a.to_string()),
            "peers_total": cfg.peers.len(),
            "peers_connected": up,
            "forwards": cfg.forwards.len(),
            "exposes": cfg.exposes.len(),
            "peers": peers,
        })
    }

    /// `qsi tunnel peers`.
    pub fn peers_json(&self) -> serde_json::Value {
        let mut peers: Vec<Arc<PeerRuntime>> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        peers.sort_by(|a, b| a.cfg.name.cmp(&b.cfg.name));
        serde_json::Value::Array(
            peers
                .iter()
                .map(|rt| {
                    let s = rt.status();
                    let c = &rt.counters;
                    serde_json::json!({
                        "name": rt.cfg.name,
                        "identity": rt.cfg.identity.to_string(),
                        "transport": rt.cfg.transport,
                        "role": if rt.cfg.address.is_some() { "dialer" } else { "acceptor" },
                        "address": rt.cfg.address,
                        "state": s.state,
                        "control_up": s.control_up,
                        "group": s.group,
                        "policy": rt.cfg.key_exchange.iter().map(|g| g.name()).collect::<Vec<_>>(),
                        "connected_since": s.connected_since,
                        "sessions": s.sessions,
                        "last_error": s.last_error,
                        "flows_active": c.flows_active.load(Ordering::Relaxed),
                        "flows_total": c.flows_total.load(Ordering::Relaxed),
                        "bytes_sent": c.bytes_sent.load(Ordering::Relaxed),
                        "bytes_received": c.bytes_received.load(Ordering::Relaxed),
                        "handshakes": c.handshakes.load(Ordering::Relaxed),
                        "qkd": rt.qkd.as_ref().map(|q| q.status()),
                        "rekey": rekey::status_json(rt),
                    })
                })
                .collect(),
        )
    }

    /// `qsi tunnel flows`.
    pub fn flows_json(&self) -> serde_json::Value {
        let peers: Vec<Arc<PeerRuntime>> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for rt in peers {
            for (id, f) in rt.flows.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                out.push(serde_json::json!({
                    "peer": rt.cfg.name,
                    "id": id,
                    "service": f.service,
                    "direction": if f.outbound { "out" } else { "in" },
                    "transport": rt.cfg.transport,
                    "age_ms": f.started.elapsed().as_millis() as u64,
                    "bytes_sent": f.bytes.sent.load(Ordering::Relaxed),
                    "bytes_received": f.bytes.received.load(Ordering::Relaxed),
                }));
            }
        }
        serde_json::Value::Array(out)
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        let site = self.site();
        let mut t = self.metrics.render(&site);
        if let Some(q) = &self.qkd {
            t += &q.render_metrics(&site);
        }
        t
    }

    /// Stops everything (flows end with "qsid shutting down").
    pub fn stop(&self) {
        let names: Vec<String> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for n in names {
            self.stop_peer(&n, "qsid shutting down");
        }
        self.shutdown.cancel();
        self.endpoint.close(
            quinn::VarInt::from_u32(code::CLOSING),
            b"qsid shutting down",
        );
    }
}

/// The acceptor's side of a control connection: greeting, then heartbeats until it ends. Returns why.
/// (Issue 9 handles the key-ID announcements here.)
async fn serve_control<R, W>(rt: &PeerRuntime, site: &str, r: &mut R, w: &mut W) -> String
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    match control::greet(r, w, site).await {
        Ok(peer_site) => check_site(&rt.cfg, &peer_site),
        Err(e) => {
            warn!(error = %e, "control greeting failed");
            return format!("control greeting failed: {e}");
        }
    }
    rt.set_status(|st| st.control_up = true);
    let (ctl_run, _qkd_task) = control_session(rt, r, w);
    let reason = tokio::select! {
        e = ctl_run => e.to_string(),
        _ = rt.cancel.cancelled() => "peer stopped by configuration".into(),
    };
    rt.set_status(|st| st.control_up = false);
    info!(reason = %reason, "control connection ended");
    reason
}

/// Aborts a task when dropped (the QKD announcement task lives as long as its control session).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// The control connection's run loop for one session, with the peer's QKD announcement task (master or
/// slave side) attached to it when the peer takes QKD keys.
fn control_session<R, W>(
    rt: &PeerRuntime,
    r: R,
    w: W,
) -> (
    impl std::future::Future<Output = control::ControlError>,
    AbortOnDrop,
)
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(4);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(4);
    let task = rt.qkd.clone().map(|q| {
        // Before anything can dial: keys of an earlier session may not be held by the peer any more.
        q.reset();
        let span = tracing::Span::current();
        if q.master {
            tokio::spawn(q.run_master(out_tx, in_rx).instrument(span))
        } else {
            tokio::spawn(q.run_slave(out_tx, in_rx).instrument(span))
        }
    });
    (control::run_with(r, w, out_rx, in_tx), AbortOnDrop(task))
}

impl Daemon {
    /// A per-connection server config offering the QKD groups (`None` when this site takes no QKD keys):
    /// the connection's [`QkdHandshake`] later says which key, if any, entered its key schedule.
    fn qkd_server_config(
        &self,
    ) -> Option<anyhow::Result<(rustls::ServerConfig, Option<QkdHandshake>)>> {
        let q = self.qkd.as_ref()?;
        let cfg = self.config();
        if !cfg.peers.iter().any(|p| p.qkd.is_some()) {
            return None;
        }
        Some((|| {
            let verifier = tls::verifier_for(&cfg.trust)?;
            let lookup: Arc<dyn crate::qkd::QkdKeyLookup> =
                Arc::new(crate::qkd::kms::KmsKeyLookup(q.clone()));
            Ok(tls::server_config_qkd(
                &cfg.peers,
                &cfg.credentials,
                verifier,
                Some(lookup),
            )?)
        })())
    }
}

impl PeerRuntime {
    /// The client config of one data-connection dial: with the QKD key of `gate` (from
    /// [`PeerRuntime::qkd_gate`]) when there is one, else the hybrid groups alone.
    fn data_client_config(
        &self,
        cfg: &Config,
        verifier: Arc<dyn tls::PeerVerifier>,
        gate: Option<Arc<qkd::PeerQkd>>,
    ) -> Result<(rustls::ClientConfig, Option<QkdHandshake>), String> {
        let qkd = gate.map(|q| tls::ClientQkd {
            source: Arc::new(crate::qkd::kms::KmsKeySource(q.clone())),
            policy: q.cfg.policy,
        });
        let c = tls::client_config_qkd(
            &self.cfg,
            &cfg.credentials,
            verifier,
            ALPN_DATA,
            qkd.as_ref(),
        )
        .map_err(|e| {
            if let Some(q) = &self.qkd {
                q.refused.fetch_add(1, Ordering::Relaxed);
            }
            self.metrics.failure(&self.cfg.name, "qkd_no_key");
            e.to_string()
        })?;
        if let (Some(why), Some(q)) = (&c.fallback, &self.qkd) {
            q.fallbacks.fetch_add(1, Ordering::Relaxed);
            self.metrics.failure(&self.cfg.name, "qkd_fallback");
            warn!(peer = %self.cfg.name, reason = %why, "no QKD key: qkd = prefer, so this data connection uses the hybrid key exchange alone");
        }
        Ok((c.config, c.qkd))
    }

    /// A data dial failed: say whether a QKD key was refused by the peer, and count it.
    fn data_dial_failed(&self, e: String, hs: Option<&QkdHandshake>) -> String {
        match hs {
            Some(h) => {
                if let Some(q) = &self.qkd {
                    q.handshake_failures.fetch_add(1, Ordering::Relaxed);
                }
                self.metrics.failure(&self.cfg.name, "qkd_handshake");
                let why = h.failure().map(|f| format!(" ({f})")).unwrap_or_default();
                format!("data handshake with a QKD key failed{why}: {e}")
            }
            None => e,
        }
    }

    /// After a data handshake: the group must be in the peer's policy, and a QKD key must have entered
    /// the key schedule under `require` and belong to the peer's SAE. Returns the base group and the key_ID;
    /// records the key's use in the KMS audit log.
    fn check_data_kx(
        &self,
        named: Option<rustls::NamedGroup>,
        suite: Option<rustls::CipherSuite>,
        hs: Option<&QkdHandshake>,
        dialer: bool,
        conn_id: u64,
    ) -> Result<(KxGroup, Option<String>), String> {
        let n = tls::check_policy_kx(&self.cfg, named, suite).inspect_err(|_| {
            self.metrics.failure(&self.cfg.name, "kx_policy");
        })?;
        let Some(q) = &self.qkd else {
            if n.qkd {
                return Err("a QKD key was used on a tunnel not configured for QKD".into());
            }
            return Ok((n.group, None));
        };
        match hs.map(|h| h.check_peer_sae(&q.cfg.peer_sae_id)) {
            Some(Ok(r)) => {
                q.record_use(&r.key_id, &format!("data connection {conn_id}"));
                if dialer {
                    q.set_problem_cleared();
                }
                info!(peer = %self.cfg.name, key_id = %r.key_id, sae = %q.cfg.peer_sae_id, "data connection keyed with ECDH + ML-KEM + QKD");
                Ok((n.group, Some(r.key_id)))
            }
            Some(Err(crate::qkd::QkdKxError::NotUsed)) | None => {
                if let Some(w) = hs.and_then(|h| h.wasted()) {
                    warn!(peer = %self.cfg.name, key_id = %w.key_id, "the peer did not take the offered QKD key; it is written off");
                }
                match q.cfg.policy {
                    crate::qkd::QkdPolicy::Require => {
                        q.refused.fetch_add(1, Ordering::Relaxed);
                        self.metrics.failure(&self.cfg.name, "qkd_not_used");
                        Err(format!(
                            "qkd = require, but the data handshake with {} used no QKD key",
                            self.cfg.name
                        ))
                    }
                    crate::qkd::QkdPolicy::Prefer => {
                        if hs.is_some() || !dialer {
                            q.fallbacks.fetch_add(1, Ordering::Relaxed);
                            self.metrics.failure(&self.cfg.name, "qkd_fallback");
                            warn!(peer = %self.cfg.name, "data connection without a QKD key (qkd = prefer): the hybrid key exchange alone");
                        }
                        Ok((n.group, None))
                    }
                }
            }
            Some(Err(e)) => {
                self.metrics.failure(&self.cfg.name, e.label());
                Err(format!("QKD check of the data connection failed: {e}"))
            }
        }
    }
}

fn quic_named_group(conn: &quinn::Connection) -> Option<rustls::NamedGroup> {
    conn.handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .map(|h| h.negotiated_key_exchange_group)
}

/// How long the dialer waits for a QKD key before its policy decides.
const QKD_WAIT: Duration = Duration::from_secs(3);

impl PeerRuntime {
    /// Before dialing a data connection: `Some(peer QKD state)` when a QKD key is ready for it; `None`
    /// when the peer takes no QKD keys, or under `prefer` when none is ready (the hybrid alone, with a
    /// warning and the fallback counter). Under `require` it waits, as long as it takes, for a key:
    /// no data connection without one; the control connection stays, and status, metrics and the log
    /// say why.
    pub async fn qkd_gate(&self) -> Option<Arc<qkd::PeerQkd>> {
        let q = self.qkd.clone()?;
        let mut waiting = false;
        loop {
            if q.wait_for_key(QKD_WAIT).await {
                if waiting {
                    info!(peer = %self.cfg.name, "QKD key ready; opening the data connection");
                }
                return Some(q);
            }
            let why = q
                .problem()
                .unwrap_or_else(|| "no QKD key announced and acknowledged yet".into());
            match q.cfg.policy {
                crate::qkd::QkdPolicy::Prefer => {
                    q.fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.metrics.failure(&self.cfg.name, "qkd_fallback");
                    warn!(peer = %self.cfg.name, reason = %why, "no QKD key: qkd = prefer, so this data connection uses the hybrid key exchange alone");
                    return None;
                }
                crate::qkd::QkdPolicy::Require => {
                    if !waiting {
                        q.refused.fetch_add(1, Ordering::Relaxed);
                        self.metrics.failure(&self.cfg.name, "qkd_no_key");
                        warn!(peer = %self.cfg.name, reason = %why, "no QKD key: qkd = require, so no data connection until one arrives (the control connection stays up)");
                        waiting = true;
                    }
                    let msg = format!("qkd = require and no QKD key: {why}");
                    self.set_status(|s| {
                        s.state = "no-qkd-key".into();
                        s.last_error = Some(msg);
                    });
                }
            }
        }
    }
}

fn check_site(peer: &PeerConfig, said: &str) {
    if said != peer.name {
        warn!(peer = %peer.name, says = %said, "peer's site name differs from our peer entry (its certificate identity matched)");
    }
}

async fn quic_connect(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    sni: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(cfg, addr, sni)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("QUIC handshake with {addr}: {e}")),
        Err(_) => Err(format!("QUIC handshake with {addr} timed out")),
    }
}

fn quic_group(peer: &PeerConfig, conn: &quinn::Connection) -> Result<KxGroup, String> {
    let named = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .map(|h| h.negotiated_key_exchange_group);
    // QUIC does not expose the suite; under the CNSA profile the dialer offers only AES-256 anyway.
    tls::check_policy(peer, named, None)
}

fn tls_group<D>(peer: &PeerConfig, conn: &rustls::ConnectionCommon<D>) -> Result<KxGroup, String> {
    tls::check_policy(
        peer,
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        conn.negotiated_cipher_suite().map(|s| s.suite()),
    )
}

async fn tls_connect(
    peer: &PeerConfig,
    cfg: rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(tls::server_name_for(peer), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
}
