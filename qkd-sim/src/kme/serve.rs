//! `qkd-sim serve`: the simulated device pair. A producer thread runs the link model block after
//! block, paced to the link time each block takes (divided by the speed-up), and feeds both
//! sides' final keys into the pool; two KMEs serve ETSI GS QKD 014 over HTTPS; an admin socket
//! lets `qkd-sim eve` switch the eavesdropper on and off at run time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

use super::api::Kme;
use super::config::{KmeConfig, ServeConfig};
use super::pool::{LinkPool, Side};
use super::supply::{BlockOutcome, KeySupply};
use super::{http, tls};

/// A running device pair.
pub struct Running {
    /// Where Alice's KME listens.
    pub alice: SocketAddr,
    /// Where Bob's KME listens.
    pub bob: SocketAddr,
    /// The admin socket (None when started without one).
    pub admin_socket: Option<PathBuf>,
    /// The shared pool (for in-process benchmarks and tests).
    pub pool: Arc<Mutex<LinkPool>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    producer: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the producer and the servers.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
        if let Some(s) = &self.admin_socket {
            let _ = std::fs::remove_file(s);
        }
    }
}

fn kme(
    side: Side,
    me: &KmeConfig,
    peer: &KmeConfig,
    pool: &Arc<Mutex<LinkPool>>,
    cfg: &ServeConfig,
) -> Kme {
    let ids = |k: &KmeConfig| k.saes.iter().map(|s| s.id.clone()).collect::<HashSet<_>>();
    Kme {
        side,
        kme_id: me.kme_id.clone(),
        peer_kme_id: peer.kme_id.clone(),
        local_saes: ids(me),
        remote_saes: ids(peer),
        pool: pool.clone(),
        limits: cfg.limits,
        fault: if side == Side::Bob { cfg.fault } else { None },
    }
}

/// Starts both KMEs, the producer (fed by `supply`) and, if `with_admin`, the admin socket.
pub async fn start(
    cfg: &ServeConfig,
    supply: Box<dyn KeySupply>,
    with_admin: bool,
) -> anyhow::Result<Running> {
    let pool = Arc::new(Mutex::new(LinkPool::new(cfg.limits)));
    let stop = Arc::new(AtomicBool::new(false));
    let eve = Arc::new(AtomicU64::new(cfg.link.eve_fraction.to_bits()));
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for (side, me, peer) in [
        (Side::Alice, &cfg.alice, &cfg.bob),
        (Side::Bob, &cfg.bob, &cfg.alice),
    ] {
        let tls = tls::server_config(&me.cert, &me.key, &cfg.ca)
            .with_context(|| format!("TLS of {}", me.kme_id))?;
        let saes = Arc::new(tls::sae_map(&me.saes)?);
        let listener = TcpListener::bind(me.listen).await.with_context(|| {
            format!(
                "{} cannot listen on {}: is another qkd-sim running? Change `listen`",
                me.kme_id, me.listen
            )
        })?;
        addrs.push(listener.local_addr()?);
        let k = Arc::new(kme(side, me, peer, &pool, cfg));
        tasks.push(tokio::spawn(http::serve(listener, k, tls, saes)));
    }
    let admin_socket = if with_admin {
        let path = cfg.admin_socket.clone();
        let listener = bind_admin(&path)?;
        tasks.push(tokio::spawn(admin(listener, eve.clone(), pool.clone())));
        Some(path)
    } else {
        None
    };
    let producer = {
        let (pool, stop, eve) = (pool.clone(), stop.clone(), eve.clone());
        let speedup = cfg.link.speedup;
        std::thread::Builder::new()
            .name("qkd-link".into())
            .spawn(move || produce(supply, &pool, speedup, &eve, &stop))
            .context("cannot start the link thread")?
    };
    Ok(Running {
        alice: addrs[0],
        bob: addrs[1],
        admin_socket,
        pool,
        stop,
        tasks,
        producer: Some(producer),
    })
}

fn lock(pool: &Mutex<LinkPool>) -> std::sync::MutexGuard<'_, LinkPool> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

fn produce(
    mut supply: Box<dyn KeySupply>,
    pool: &Mutex<LinkPool>,
    speedup: f64,
    eve: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut current = f64::NAN;
    while !stop.load(Ordering::Relaxed) {
        let f = f64::from_bits(eve.load(Ordering::Relaxed));
        if f != current {
            supply.set_eve_fraction(f);
            lock(pool).set_eve_fraction(f);
            tracing::info!(eve_fraction = f, "eavesdropper set");
            current = f;
        }
        let t0 = Instant::now();
        let outcome = supply.next_block();
        let link_seconds = match &outcome {
            Ok(
                BlockOutcome::Key { link_seconds, .. } | BlockOutcome::Aborted { link_seconds, .. },
            ) => *link_seconds,
            Err(_) => 1.0,
        };
        // The block's key exists once its link time has passed (scaled by the speed-up).
        let due = t0 + Duration::from_secs_f64((link_seconds / speedup).clamp(0.0, 3600.0));
        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
        }
        if outcome.is_ok() {
            lock(pool).add_link_time(link_seconds);
        }
        match outcome {
            Ok(BlockOutcome::Key {
                alice, bob, qber, ..
            }) => {
                tracing::debug!(qber, bits = 8 * alice.len(), "block done");
                lock(pool).add_block(alice, bob, qber);
            }
            Ok(BlockOutcome::Aborted { qber, reason, .. }) => {
                tracing::info!(?qber, %reason, "block aborted");
                lock(pool).abort_block(qber, reason);
            }
            Err(e) => {
                tracing::error!(error = %e, "link simulation failed");
                lock(pool).abort_block(None, format!("link simulation failed: {e}"));
            }
        }
    }
}

fn bind_admin(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // A socket nobody answers on is stale; a live one means another server runs.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "admin socket {} is in use: another qkd-sim serve runs with this config",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot bind admin socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Admin protocol, one line each way: `eve FRACTION` -> `ok eve_fraction=F`; `status` -> JSON.
async fn admin(listener: UnixListener, eve: Arc<AtomicU64>, pool: Arc<Mutex<LinkPool>>) {
    let my_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        if peer_uid.is_none() || (peer_uid != my_uid && peer_uid != Some(0)) {
            tracing::warn!(?peer_uid, "admin connection from another user refused");
            continue;
        }
        let (eve, pool) = (eve.clone(), pool.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = admin_command(line.trim(), &eve, &pool);
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn admin_command(line: &str, eve: &AtomicU64, pool: &Mutex<LinkPool>) -> String {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("eve"), Some(f)) => match f.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => {
                eve.store(f.to_bits(), Ordering::Relaxed);
                format!("ok eve_fraction={f}")
            }
            _ => format!("error: eve fraction {f:?} must be a number in 0..1"),
        },
        (Some("status"), None) => {
            let p = lock(pool);
            let mut v = serde_json::to_value(p.report()).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("stored_key_count".into(), p.stored_key_count().into());
                o.insert("available_bits".into(), p.available_bits().into());
                o.insert("pending_alice".into(), p.pending_count(Side::Alice).into());
                o.insert("pending_bob".into(), p.pending_count(Side::Bob).into());
            }
            v.to_string()
        }
        _ => "error: commands are `eve FRACTION` and `status`".into(),
    }
}

/// Sends one admin command to a running server and returns its reply line.
pub fn admin_request(socket: &Path, command: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the admin socket {}: is `qkd-sim serve` running with this config?",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    let line = line.trim().to_owned();
    if let Some(e) = line.strip_prefix("error: ") {
        anyhow::bail!("{e}");
    }
    Ok(line)
}
