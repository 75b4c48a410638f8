//! QKD keys for one site's tunnels: the per-peer reserve of announced keys and the announcement protocol
//! over the control connection, on top of the KMS that qsid runs in-process.
//!
//! The side that dials (has `address`) is the QKD master. Its task takes key IDs from its KMS
//! ([`Kms::offer_for_announcement`]), claims those keys for the tunnel at once ([`Kms::claim_ids`]: one
//! durable "delivered to tunnel:<peer>" record), and announces the IDs in a bounded batch
//! ([`ControlMessage::KeyIds`], one batch outstanding). The slave's task has its KMS fetch them by ID
//! (`dec_keys`), claims the ones it got the same way, and acknowledges exactly those
//! ([`ControlMessage::KeyAck`]). The master keeps only acknowledged keys in its reserve; the rest are
//! dropped. A handshake then only removes a key from memory ([`PeerQkd::take_next`] on the master,
//! [`PeerQkd::take_id`] on the slave) and records its use in the KMS audit log afterwards, asynchronously.
//!
//! At most once, without a disk write inside a handshake: a key in a reserve is already recorded as
//! delivered to the tunnel, so after a crash (or a new control session, which empties both reserves)
//! it can never be handed out again; it is written off, never reused.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use qsi_kms::KeyMaterial;
use qsi_kms::audit::AuditEvent;
use qsi_kms::service::Kms;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::control::{ControlMessage, MAX_KEY_IDS, check_key_ids};
use crate::config::{QkdPeer, QkdPolicy};

/// How long the master waits for the slave's acknowledgement of a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the slave waits for its KMS to fetch an announced batch before it acknowledges what it has.
const FETCH_WAIT: Duration = Duration::from_secs(3);
/// Pause before asking an empty KMS again.
const RETRY: Duration = Duration::from_millis(200);
/// Used key IDs remembered per peer (to tell "already used" from "never announced").
const USED_MEMORY: usize = 4096;
/// Key IDs shown in status.
const LAST_SHOWN: usize = 8;

/// Why a peer's reserve could not give a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    /// The reserve is empty (with the reason the operator should see).
    #[error("no QKD key in the reserve for {peer}: {why}")]
    Empty {
        /// The peer.
        peer: String,
        /// Why it is empty.
        why: String,
    },
    /// The ID was never announced (or its batch was not acknowledged, or the reserve was reset).
    #[error("QKD key ID {0} was not announced on this tunnel")]
    Unannounced(String),
    /// The ID was used before.
    #[error("QKD key ID {0} was already used")]
    AlreadyUsed(String),
}

#[derive(Default)]
struct Reserve {
    /// Master: acknowledged keys in announcement order. Slave: claimed keys (order unused).
    keys: VecDeque<(String, KeyMaterial)>,
    used: VecDeque<String>,
    used_set: HashSet<String>,
    last: VecDeque<String>,
}

impl Reserve {
    fn mark_used(&mut self, id: &str) {
        self.used.push_back(id.to_string());
        self.used_set.insert(id.to_string());
        while self.used.len() > USED_MEMORY {
            if let Some(old) = self.used.pop_front() {
                self.used_set.remove(&old);
            }
        }
        self.last.push_back(id.to_string());
        while self.last.len() > LAST_SHOWN {
            self.last.pop_front();
        }
    }
}

/// QKD state of one peer.
pub struct PeerQkd {
    /// Peer name.
    pub peer: String,
    /// The peer's settings.
    pub cfg: QkdPeer,
    /// True on the dialing side (QKD master).
    pub master: bool,
    /// This site's SAE ID.
    pub local_sae_id: String,
    kms: Arc<Kms>,
    reserve: Mutex<Reserve>,
    changed: Notify,
    problem: Mutex<Option<String>>,
    /// Handshakes keyed with a QKD key.
    pub used: AtomicU64,
    /// Data connections opened with the hybrid alone under `prefer`.
    pub fallbacks: AtomicU64,
    /// Data connections not opened (or refused) under `require` for want of a key.
    pub refused: AtomicU64,
    /// Keys acknowledged into the reserve since start.
    pub reserved_total: AtomicU64,
    /// Claimed keys dropped (not acknowledged, or the reserve reset with a new control session).
    pub discarded: AtomicU64,
    /// Data handshakes with a QKD key that failed (the peer refused the key, or the keys differed).
    pub handshake_failures: AtomicU64,
}

impl std::fmt::Debug for PeerQkd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerQkd")
            .field("peer", &self.peer)
            .field("link", &self.cfg.link)
            .field("master", &self.master)
            .field("reserve", &self.reserve_len())
            .finish_non_exhaustive()
    }
}

/// What `qsi tunnel status` shows of a peer's QKD.
#[derive(Debug, Clone, Serialize)]
pub struct QkdStatus {
    /// require or prefer.
    pub policy: QkdPolicy,
    /// KMS link.
    pub link: String,
    /// master (we dial) or slave.
    pub role: &'static str,
    /// The peer's SAE ID.
    pub peer_sae_id: String,
    /// Keys ready now.
    pub reserve: usize,
    /// Keys the reserve aims at.
    pub reserve_target: usize,
    /// Handshakes keyed with QKD.
    pub keys_used: u64,
    /// Hybrid-only data connections under `prefer`.
    pub fallbacks: u64,
    /// Data connections refused for want of a key under `require`.
    pub refused: u64,
    /// Keys dropped unused.
    pub discarded: u64,
    /// Data handshakes with a QKD key that failed.
    pub handshake_failures: u64,
    /// Last key IDs used, oldest first.
    pub last_key_ids: Vec<String>,
    /// Why keys are not arriving, if they are not.
    pub problem: Option<String>,
    /// The KMS link's state: alarms, key rate, last KME error.
    pub link_state: Option<serde_json::Value>,
}

impl PeerQkd {
    /// A peer's QKD state over `kms`.
    pub fn new(peer: &str, cfg: QkdPeer, master: bool, local_sae_id: &str, kms: Arc<Kms>) -> Self {
        Self {
            peer: peer.to_string(),
            cfg,
            master,
            local_sae_id: local_sae_id.to_string(),
            kms,
            reserve: Mutex::new(Reserve::default()),
            changed: Notify::new(),
            problem: Mutex::new(None),
            used: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reserved_total: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        }
    }

    fn reserve(&self) -> std::sync::MutexGuard<'_, Reserve> {
        self.reserve.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn consumer(&self) -> String {
        format!("tunnel:{}", self.peer)
    }

    /// The master SAE ID of this peer's link (ours if we dial, the peer's otherwise).
    pub fn master_sae_id(&self) -> &str {
        if self.master {
            &self.local_sae_id
        } else {
            &self.cfg.peer_sae_id
        }
    }

    /// Keys ready now.
    pub fn reserve_len(&self) -> usize {
        self.reserve().keys.len()
    }

    fn set_problem(&self, p: Option<String>) {
        let mut cur = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != p {
            match &p {
                Some(why) => {
                    warn!(peer = %self.peer, link = %self.cfg.link, problem = %why, "QKD keys are not arriving")
                }
                None => info!(peer = %self.peer, link = %self.cfg.link, "QKD keys arriving"),
            }
            *cur = p;
        }
    }

    /// A data connection was keyed with QKD: whatever kept keys away is over.
    pub fn set_problem_cleared(&self) {
        if self.reserve_len() > 0 {
            self.set_problem(None);
        }
    }

    /// Why keys are not arriving, if they are not.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn empty_reason(&self) -> String {
        self.problem().unwrap_or_else(|| {
            if self.master {
                "no acknowledged key yet".into()
            } else {
                "no announced key".into()
            }
        })
    }

    /// Drops the reserve (a new control session starts from nothing: keys claimed in the old one
    /// may not be held by the peer any more). They stay recorded as delivered: written off.
    pub fn reset(&self) {
        let n = {
            let mut r = self.reserve();
            let n = r.keys.len();
            r.keys.clear();
            n
        };
        if n > 0 {
            self.discarded.fetch_add(n as u64, Ordering::Relaxed);
            info!(peer = %self.peer, keys = n, "QKD reserve reset with the control session; its keys are written off");
        }
        self.changed.notify_waiters();
    }

    /// Master: the next acknowledged key, removed from memory (no I/O: called inside the handshake).
    pub fn take_next(&self) -> Result<(String, KeyMaterial), TakeError> {
        let taken = {
            let mut r = self.reserve();
            let k = r.keys.pop_front();
            if let Some((id, _)) = &k {
                r.mark_used(id);
            }
            k
        };
        self.changed.notify_waiters();
        match taken {
            Some((id, key)) => {
                self.used.fetch_add(1, Ordering::Relaxed);
                Ok((id, key))
            }
            None => Err(TakeError::Empty {
                peer: self.peer.clone(),
                why: self.empty_reason(),
            }),
        }
    }

    /// Slave: the key with this ID, removed from memory; an unknown or used ID takes nothing (no I/O:
    /// called inside the handshake).
    pub fn take_id(&self, key_id: &str) -> Result<KeyMaterial, TakeError> {
        let taken = {
            let mut r = self.reserve();
            match r.keys.iter().position(|(i, _)| i == key_id) {
                Some(p) => {
                    let k = r.keys.remove(p);
                    r.mark_used(key_id);
                    k
                }
                None if r.used_set.contains(key_id) => {
                    return Err(TakeError::AlreadyUsed(key_id.to_string()));
                }
                None => return Err(TakeError::Unannounced(key_id.to_string())),
            }
        };
        self.changed.notify_waiters();
        match taken {
            Some((_, key)) => {
                self.used.fetch_add(1, Ordering::Relaxed);
                Ok(key)
            }
            None => Err(TakeError::Unannounced(key_id.to_string())),
        }
    }

    /// Master: puts back a key whose ID never left this process (the dial was abandoned first).
    pub fn give_back(&self, key_id: String, key: KeyMaterial) {
        {
            let mut r = self.reserve();
            r.used_set.remove(&key_id);
            r.used.retain(|i| i != &key_id);
            r.last.retain(|i| i != &key_id);
            r.keys.push_front((key_id, key));
        }
        self.used.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// After a handshake keyed with `key_id` completed: records the use in the KMS audit log,
    /// asynchronously (the key was recorded as delivered to the tunnel when it was claimed).
    pub fn record_use(&self, key_id: &str, connection: &str) {
        let event = AuditEvent::UsedInHandshake {
            link: self.cfg.link.clone(),
            key_id: key_id.to_string(),
            by: format!("{} {connection}", self.consumer()),
        };
        debug!(peer = %self.peer, key_id, connection, "QKD key used in a handshake");
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let kms = self.kms.clone();
            h.spawn(async move {
                if let Err(e) = kms.audit(event).await {
                    warn!(error = %e, "cannot record a QKD key's use in the audit log");
                }
            });
        }
    }

    /// Waits until the reserve holds a key or `wait` passes; true if it does.
    pub async fn wait_for_key(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if self.reserve_len() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.reserve_len() > 0;
            }
        }
    }

    /// Status for `qsi tunnel status`.
    pub fn status(&self) -> QkdStatus {
        let (reserve, last) = {
            let r = self.reserve();
            (r.keys.len(), r.last.iter().cloned().collect())
        };
        let link_state = self
            .kms
            .status()
            .into_iter()
            .find(|l| l.name == self.cfg.link)
            .and_then(|l| serde_json::to_value(l.metrics).ok());
        QkdStatus {
            policy: self.cfg.policy,
            link: self.cfg.link.clone(),
            role: if self.master { "master" } else { "slave" },
            peer_sae_id: self.cfg.peer_sae_id.clone(),
            reserve,
            reserve_target: self.cfg.reserve,
            keys_used: self.used.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            last_key_ids: last,
            problem: self.problem(),
            link_state,
        }
    }

    /// Why the KMS link gives no keys, from its metrics (alarms, last KME error).
    fn link_trouble(&self) -> String {
        match self
            .kms
            .status()
            .into_iter()
            .find(|l| l.name == self.cfg.link)
        {
            Some(l) => {
                let mut s = format!(
                    "the KMS link {} has no fresh key (stored {}, announced {})",
                    l.name, l.metrics.stored, l.metrics.announced
                );
                if !l.metrics.alarms.is_empty() {
                    s += &format!(", alarms {:?}", l.metrics.alarms);
                }
                if let Some(e) = &l.metrics.last_error {
                    s += &format!(", last KME error: {e}");
                }
                s
            }
            None => format!("the KMS has no link {}", self.cfg.link),
        }
    }

    /// Master side of one control session (the reserve was reset when it began): keeps the reserve at its target by announcing batches and
    /// taking in what the slave acknowledges. Runs until the session's channels close.
    pub async fn run_master(
        self: Arc<Self>,
        outbox: mpsc::Sender<ControlMessage>,
        mut inbox: mpsc::Receiver<ControlMessage>,
    ) {
        let mut batch = 0u64;
        loop {
            let need = self.cfg.reserve.saturating_sub(self.reserve_len());
            if need == 0 {
                let notified = self.changed.notified();
                if self.cfg.reserve.saturating_sub(self.reserve_len()) == 0 {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = outbox.closed() => return,
                    }
                }
                continue;
            }
            let ids = match self
                .kms
                .offer_for_announcement(&self.cfg.link, need.min(MAX_KEY_IDS))
                .await
            {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) => {
                    self.set_problem(Some(self.link_trouble()));
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = outbox.closed() => return,
                    }
                }
                Err(e) => {
                    self.set_problem(Some(format!("KMS: {e}")));
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = outbox.closed() => return,
                    }
                }
            };
            // Claimed before the IDs leave: from here on a crash writes these keys off.
            let claimed = match self
                .kms
                .claim_ids(&self.cfg.link, &ids, &self.consumer())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.set_problem(Some(format!("KMS could not record the claim: {e}")));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let ids: Vec<String> = claimed.iter().map(|(id, _)| id.clone()).collect();
            if ids.is_empty() {
                continue;
            }
            batch += 1;
            if outbox
                .send(ControlMessage::KeyIds {
                    batch,
                    ids: ids.clone(),
                })
                .await
                .is_err()
            {
                self.discarded
                    .fetch_add(claimed.len() as u64, Ordering::Relaxed);
                return;
            }
            let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
            let held: HashSet<String> = loop {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(ControlMessage::KeyAck { batch: b, held })) if b == batch => {
                        break held.into_iter().collect();
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        self.discarded
                            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        warn!(peer = %self.peer, batch, "no acknowledgement of announced QKD key IDs; dropping them");
                        break HashSet::new();
                    }
                }
            };
            let mut kept = 0usize;
            {
                let mut r = self.reserve();
                for (id, key) in claimed {
                    if held.contains(&id) {
                        r.keys.push_back((id, key));
                        kept += 1;
                    }
                }
            }
            let dropped = ids.len() - kept;
            self.discarded.fetch_add(dropped as u64, Ordering::Relaxed);
            self.reserved_total
                .fetch_add(kept as u64, Ordering::Relaxed);
            debug!(peer = %self.peer, batch, kept, dropped, "QKD key IDs acknowledged");
            if kept > 0 {
                self.set_problem(None);
            } else {
                self.set_problem(Some(format!(
                    "the peer acknowledged none of {} announced key IDs (its KMS could not fetch them)",
                    ids.len()
                )));
                tokio::time::sleep(RETRY).await;
            }
            self.changed.notify_waiters();
        }
    }

    /// Slave side of one control session: fetches each announced batch by ID, claims what arrived and
    /// acknowledges exactly that.
    pub async fn run_slave(
        self: Arc<Self>,
        outbox: mpsc::Sender<ControlMessage>,
        mut inbox: mpsc::Receiver<ControlMessage>,
    ) {
        while let Some(m) = inbox.recv().await {
            let ControlMessage::KeyIds { batch, ids } = m else {
                continue;
            };
            let held = self.take_in(&ids).await;
            if outbox
                .send(ControlMessage::KeyAck { batch, held })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn take_in(&self, ids: &[String]) -> Vec<String> {
        if let Err(e) = check_key_ids(ids) {
            warn!(peer = %self.peer, error = %e, "refused a QKD key announcement");
            return Vec::new();
        }
        if self.reserve_len() + ids.len() > 4 * self.cfg.reserve.max(MAX_KEY_IDS) {
            warn!(peer = %self.peer, "QKD key announcement beyond the reserve's bound; refused");
            return Vec::new();
        }
        let fresh: Vec<String> = {
            let r = self.reserve();
            ids.iter()
                .filter(|id| !r.used_set.contains(*id) && !r.keys.iter().any(|(k, _)| k == *id))
                .cloned()
                .collect()
        };
        if let Err(e) = self.kms.announce(&self.cfg.link, fresh.clone()).await {
            self.set_problem(Some(format!("KMS refused the announcement: {e}")));
            return Vec::new();
        }
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let have = self.kms.held(&self.cfg.link, &fresh).unwrap_or_default();
            if have.len() == fresh.len() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let have = self.kms.held(&self.cfg.link, &fresh).unwrap_or_default();
        let claimed = match self
            .kms
            .claim_ids(&self.cfg.link, &have, &self.consumer())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.set_problem(Some(format!("KMS could not record the claim: {e}")));
                return Vec::new();
            }
        };
        let held: Vec<String> = claimed.iter().map(|(id, _)| id.clone()).collect();
        if held.len() < ids.len() {
            self.set_problem(Some(format!(
                "fetched {} of {} announced key IDs from the KME ({})",
                held.len(),
                ids.len(),
                self.link_trouble()
            )));
        } else {
            self.set_problem(None);
        }
        {
            let mut r = self.reserve();
            r.keys.extend(claimed);
        }
        self.reserved_total
            .fetch_add(held.len() as u64, Ordering::Relaxed);
        self.changed.notify_waiters();
        held
    }
}

/// `require` or `prefer`.
pub fn policy_name(p: QkdPolicy) -> &'static str {
    match p {
        QkdPolicy::Require => "require",
        QkdPolicy::Prefer => "prefer",
    }
}

/// One metric: name, kind, help, reader.
type MetricRow = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerQkd) -> u64,
);

/// The QKD state of every peer of a site, and the KMS.
pub struct QkdSite {
    /// The in-process KMS.
    pub kms: Arc<Kms>,
    /// This site's SAE ID.
    pub sae_id: String,
    peers: RwLock<HashMap<String, Arc<PeerQkd>>>,
}

impl std::fmt::Debug for QkdSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QkdSite")
            .field("sae_id", &self.sae_id)
            .finish_non_exhaustive()
    }
}

impl QkdSite {
    /// Over a running KMS.
    pub fn new(kms: Arc<Kms>, sae_id: &str) -> Self {
        Self {
            kms,
            sae_id: sae_id.to_string(),
            peers: RwLock::new(HashMap::new()),
        }
    }

    /// The state of `peer` (made for `cfg` if new or changed).
    pub fn peer(&self, peer: &str, cfg: &QkdPeer, master: bool) -> Arc<PeerQkd> {
        let mut m = self.peers.write().unwrap_or_else(|p| p.into_inner());
        match m.get(peer) {
            Some(p) if &p.cfg == cfg && p.master == master => p.clone(),
            _ => {
                let p = Arc::new(PeerQkd::new(
                    peer,
                    cfg.clone(),
                    master,
                    &self.sae_id,
                    self.kms.clone(),
                ));
                m.insert(peer.to_string(), p.clone());
                p
            }
        }
    }

    /// Forgets a removed peer.
    pub fn remove(&self, peer: &str) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    /// The peer whose link's master SAE is `master_sae_id`, where we are the slave (server side lookup).
    pub fn by_master_sae(&self, master_sae_id: &str) -> Option<Arc<PeerQkd>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|p| !p.master && p.cfg.peer_sae_id == master_sae_id)
            .cloned()
    }

    /// The state of a peer by name.
    pub fn get(&self, peer: &str) -> Option<Arc<PeerQkd>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    /// Prometheus lines for every peer.
    pub fn render_metrics(&self, site: &str) -> String {
        use std::fmt::Write as _;
        let peers: Vec<Arc<PeerQkd>> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = String::new();
        let rows: [MetricRow; 7] = [
            (
                "qsi_qkd_reserve_keys",
                "gauge",
                "QKD keys ready for handshakes",
                |p| p.reserve_len() as u64,
            ),
            (
                "qsi_qkd_keys_used_total",
                "counter",
                "Handshakes keyed with a QKD key",
                |p| p.used.load(Ordering::Relaxed),
            ),
            (
                "qsi_qkd_fallbacks_total",
                "counter",
                "Data connections opened with the hybrid alone (qkd = prefer)",
                |p| p.fallbacks.load(Ordering::Relaxed),
            ),
            (
                "qsi_qkd_refused_total",
                "counter",
                "Data connections not opened for want of a QKD key (qkd = require)",
                |p| p.refused.load(Ordering::Relaxed),
            ),
            (
                "qsi_qkd_keys_discarded_total",
                "counter",
                "Claimed QKD keys dropped unused",
                |p| p.discarded.load(Ordering::Relaxed),
            ),
            (
                "qsi_qkd_handshake_failures_total",
                "counter",
                "Data handshakes with a QKD key that failed",
                |p| p.handshake_failures.load(Ordering::Relaxed),
            ),
            (
                "qsi_qkd_link_problem",
                "gauge",
                "1 while QKD keys are not arriving",
                |p| u64::from(p.problem().is_some()),
            ),
        ];
        for (name, kind, help, get) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in &peers {
                let _ = writeln!(
                    out,
                    "{name}{{site=\"{site}\",peer=\"{}\",link=\"{}\",policy=\"{}\"}} {}",
                    p.peer,
                    p.cfg.link,
                    policy_name(p.cfg.policy),
                    get(p)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsi_kms::kek::{SoftKek, SoftSigner, random_key};
    use qsi_kms::store::{StoreOptions, SystemClock};

    fn kms(dir: &std::path::Path) -> Arc<Kms> {
        let kek = SoftKek::new(&random_key(32).unwrap(), "test-kek").unwrap();
        let signer = SoftSigner::new(&random_key(32).unwrap(), "test-signer");
        Kms::open(
            &dir.join("kms.redb"),
            Arc::new(kek),
            Arc::new(signer),
            Arc::new(SystemClock),
            StoreOptions::default(),
            vec![],
        )
        .unwrap()
    }

    fn cfg(policy: QkdPolicy) -> QkdPeer {
        QkdPeer {
            policy,
            link: "ab".into(),
            peer_sae_id: "sae-a".into(),
            reserve: 2,
        }
    }

    fn key(b: u8) -> KeyMaterial {
        KeyMaterial::new(vec![b; 32])
    }

    impl PeerQkd {
        fn put(&self, id: &str, k: KeyMaterial) {
            self.reserve().keys.push_back((id.to_string(), k));
        }
    }

    #[test]
    fn slave_lookups_take_once_and_failures_consume_nothing() {
        let d = tempfile::tempdir().unwrap();
        let site = QkdSite::new(kms(d.path()), "sae-b");
        let p = site.peer("site-a", &cfg(QkdPolicy::Require), false);
        p.put("k1", key(1));
        p.put("k2", key(2));
        assert!(Arc::ptr_eq(&site.by_master_sae("sae-a").unwrap(), &p));
        assert!(site.by_master_sae("sae-x").is_none());
        assert_eq!(
            p.take_id("nope"),
            Err(TakeError::Unannounced("nope".into()))
        );
        assert_eq!(p.reserve_len(), 2, "a failed lookup consumes nothing");
        assert_eq!(p.take_id("k2").unwrap().expose(), key(2).expose());
        assert_eq!(p.take_id("k2"), Err(TakeError::AlreadyUsed("k2".into())));
        assert_eq!(p.reserve_len(), 1);
        assert_eq!(p.status().last_key_ids, vec!["k2".to_string()]);
        // a new control session writes the rest off: it can never be used after
        p.reset();
        assert_eq!(p.reserve_len(), 0);
        assert_eq!(p.status().discarded, 1);
        assert_eq!(p.take_id("k1"), Err(TakeError::Unannounced("k1".into())));
    }

    #[test]
    fn master_takes_in_announcement_order_and_gets_unsent_keys_back() {
        let d = tempfile::tempdir().unwrap();
        let site = QkdSite::new(kms(d.path()), "sae-a");
        let p = site.peer("site-b", &cfg(QkdPolicy::Prefer), true);
        assert!(
            site.by_master_sae("sae-a").is_none(),
            "the lookup serves slave links only"
        );
        assert!(matches!(p.take_next(), Err(TakeError::Empty { .. })));
        p.put("k1", key(1));
        p.put("k2", key(2));
        let (id, k) = p.take_next().unwrap();
        assert_eq!(id, "k1");
        p.give_back(id, k);
        assert_eq!(p.reserve_len(), 2);
        assert_eq!(p.used.load(Ordering::Relaxed), 0);
        assert_eq!(p.take_next().unwrap().0, "k1");
        assert_eq!(p.take_next().unwrap().0, "k2");
        let text = site.render_metrics("site-a");
        assert!(
            text.contains(
                "qsi_qkd_keys_used_total{site=\"site-a\",peer=\"site-b\",link=\"ab\",policy=\"prefer\"} 2"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wait_for_key_wakes_when_a_key_arrives() {
        let d = tempfile::tempdir().unwrap();
        let site = QkdSite::new(kms(d.path()), "sae-a");
        let p = site.peer("site-b", &cfg(QkdPolicy::Require), true);
        assert!(!p.wait_for_key(Duration::from_millis(50)).await);
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.wait_for_key(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.put("k1", key(1));
        p.changed.notify_waiters();
        assert!(waiter.await.unwrap());
    }
}
