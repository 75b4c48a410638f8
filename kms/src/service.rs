//! The KMS as a library: pools per link over the durable store, fed by key sources. `qsid` embeds this
//! in-process (tunnels call [`Kms::take_key_for_handshake`], [`Kms::offer_for_announcement`],
//! [`Kms::announce`] and [`Kms::lookup_and_consume`]); `qsi kms serve` wraps it with the ETSI 014 server
//! and the admin socket.
//!
//! The order of events is what makes delivery at-most-once and every key accounted for:
//! 1. the fetch is recorded (write-ahead) before the request leaves for the KME;
//! 2. the answer's keys are sealed and recorded before they enter a pool;
//! 3. a key leaves its pool under a lock (no second taker can see it), is recorded as delivered on disk,
//!    and only then is returned; if that record fails, the key is dropped, not returned.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, warn};

use crate::audit::AuditEvent;
use crate::error::KmsError;
use crate::kek::{CheckpointSigner, Kek};
use crate::lifecycle::{Operation, Usage};
use crate::pool::{Metrics, Pool, PoolPolicy};
use crate::secret::KeyMaterial;
use crate::source::KeySource;
use crate::store::{Clock, Loaded, ManagedInfo, Op, Out, Role, Store, StoreOptions};

/// One QKD link as the KMS runs it.
pub struct LinkSpec {
    /// Name, unique on this site (e.g. `site-a--site-b`).
    pub name: String,
    /// This site's SAE role on the link.
    pub role: Role,
    /// Key size in bits.
    pub key_bits: u32,
    /// Pool sizing and alarms.
    pub policy: PoolPolicy,
    /// Where keys come from.
    pub source: Arc<dyn KeySource>,
}

struct Link {
    name: String,
    role: Role,
    key_bits: u32,
    pool: Mutex<Pool>,
    source: Arc<dyn KeySource>,
    wake: tokio::sync::Notify,
}

impl Link {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding the lock cannot leave a key half-moved (each method is one step),
        // so a poisoned lock is still consistent.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A link's state for `qsi kms status`.
#[derive(Clone, Debug, Serialize)]
pub struct LinkView {
    /// Link name.
    pub name: String,
    /// Role of this site's SAE.
    pub role: &'static str,
    /// Key size in bits.
    pub key_bits: u32,
    /// Pool capacity.
    pub capacity: usize,
    /// Metrics and alarms.
    pub metrics: Metrics,
}

/// The key management service.
pub struct Kms {
    store: Store,
    links: HashMap<String, Arc<Link>>,
    clock: Arc<dyn Clock>,
    recovered: Vec<(u64, String, u32)>,
}

fn unexpected() -> KmsError {
    KmsError::Corrupt("the store answered an unexpected kind of result".into())
}

impl Kms {
    /// Opens the store at `path`, recovers, and fills the pools with the keys still stored.
    pub fn open(
        path: &Path,
        kek: Arc<dyn Kek>,
        signer: Arc<dyn CheckpointSigner>,
        clock: Arc<dyn Clock>,
        opts: StoreOptions,
        links: Vec<LinkSpec>,
    ) -> Result<Arc<Self>, KmsError> {
        let (store, Loaded { keys, written_off }) =
            Store::open(path, kek, signer, clock.clone(), opts)?;
        let now = clock.now_ms();
        let mut map = HashMap::new();
        for l in links {
            let pool = Pool::new(l.role, l.policy, now);
            map.insert(
                l.name.clone(),
                Arc::new(Link {
                    name: l.name,
                    role: l.role,
                    key_bits: l.key_bits,
                    pool: Mutex::new(pool),
                    source: l.source,
                    wake: tokio::sync::Notify::new(),
                }),
            );
        }
        for k in keys {
            match map.get(&k.link) {
                Some(l) => l.pool().restore(k.id, k.key, k.announced),
                None => {
                    warn!(link = %k.link, key_id = %k.id, "stored key for a link no longer configured; kept on disk")
                }
            }
        }
        for (batch, link, n) in &written_off {
            if let Some(l) = map.get(link) {
                l.pool().fetch_failed(
                    0,
                    *n as usize,
                    format!("batch {batch} written off at start-up"),
                );
            }
        }
        Ok(Arc::new(Self {
            store,
            links: map,
            clock,
            recovered: written_off,
        }))
    }

    /// The durable store (read-only queries: audit, counts, listings).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Batches written off when the store was opened: (batch, link, keys).
    pub fn recovered_write_offs(&self) -> &[(u64, String, u32)] {
        &self.recovered
    }

    fn link(&self, name: &str) -> Result<&Arc<Link>, KmsError> {
        self.links
            .get(name)
            .ok_or_else(|| KmsError::UnknownLink(name.to_string()))
    }

    fn expect_role(l: &Link, role: Role, what: &'static str) -> Result<(), KmsError> {
        if l.role == role {
            Ok(())
        } else {
            Err(KmsError::WrongRole {
                link: l.name.clone(),
                role: l.role.as_str(),
                what,
            })
        }
    }

    /// Link names.
    pub fn link_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.links.keys().cloned().collect();
        v.sort();
        v
    }

    /// Role and key size of a link.
    pub fn link_info(&self, name: &str) -> Result<(Role, u32), KmsError> {
        let l = self.link(name)?;
        Ok((l.role, l.key_bits))
    }

    /// Master: an announced key for a handshake, recorded as delivered before it is returned. Blocks the
    /// calling thread for the durable commit (group-committed with concurrent callers); call it from a
    /// plain thread or `spawn_blocking`, not from inside an async task.
    pub fn take_key_for_handshake(
        &self,
        link: &str,
        consumer: &str,
    ) -> Result<(String, KeyMaterial), KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Master, "take_key_for_handshake")?;
        let (id, key) = l.pool().take(false).ok_or_else(|| KmsError::Exhausted {
            link: link.to_string(),
            hint: ": no announced key (announce IDs to the peer first; check `qsi kms status` for alarms)",
        })?;
        l.wake.notify_one();
        self.store.submit_blocking(Op::Deliver {
            key_ids: vec![id.clone()],
            consumer: consumer.to_string(),
        })?;
        Ok((id, key))
    }

    /// Master, async: a key (announced first, or with `any` also a fresh one), durable before return.
    pub async fn take_key(
        &self,
        link: &str,
        consumer: &str,
        any: bool,
    ) -> Result<(String, KeyMaterial), KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Master, "taking a new key")?;
        let taken = l.pool().take(any);
        let (id, key) = taken.ok_or_else(|| KmsError::Exhausted {
            link: link.to_string(),
            hint: ": the reserve is empty (check `qsi kms status` for low-reserve or link-stalled alarms)",
        })?;
        l.wake.notify_one();
        self.store
            .submit(Op::Deliver {
                key_ids: vec![id.clone()],
                consumer: consumer.to_string(),
            })
            .await?;
        Ok((id, key))
    }

    /// Master: offers up to `n` fresh key IDs for announcement to the peer (recorded, then returned).
    pub async fn offer_for_announcement(
        &self,
        link: &str,
        n: usize,
    ) -> Result<Vec<String>, KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Master, "offer_for_announcement")?;
        let ids = l.pool().offer(n);
        if !ids.is_empty() {
            self.store
                .submit(Op::Announce {
                    link: link.to_string(),
                    ids: ids.clone(),
                    mark: true,
                })
                .await?;
        }
        Ok(ids)
    }

    /// Slave: the peer announced these key IDs; they are fetched ahead of need. Returns how many are new.
    pub async fn announce(&self, link: &str, ids: Vec<String>) -> Result<usize, KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Slave, "announce")?;
        let n = l
            .pool()
            .want(&ids)
            .ok_or_else(|| KmsError::Full(link.to_string()))?;
        self.store
            .submit(Op::Announce {
                link: link.to_string(),
                ids,
                mark: false,
            })
            .await?;
        l.wake.notify_one();
        Ok(n)
    }

    /// Slave: the key with this ID, from memory only, recorded as delivered before it is returned.
    /// Blocks for the durable commit, like [`Kms::take_key_for_handshake`]. Returns the link too.
    pub fn lookup_and_consume(
        &self,
        key_id: &str,
        consumer: &str,
    ) -> Result<(String, KeyMaterial), KmsError> {
        for l in self.links.values().filter(|l| l.role == Role::Slave) {
            let found = l.pool().take_id(key_id);
            if let Some(key) = found {
                l.wake.notify_one();
                self.store.submit_blocking(Op::Deliver {
                    key_ids: vec![key_id.to_string()],
                    consumer: consumer.to_string(),
                })?;
                return Ok((l.name.clone(), key));
            }
        }
        Err(KmsError::NotAvailable(key_id.to_string()))
    }

    /// Either role, async: takes whichever of `ids` are in memory on `link` (never from the KME), records
    /// them as delivered to `consumer` in one durable record, and returns them; the others stay where
    /// they are. The tunnels claim announced keys with this ahead of any handshake, so a handshake only
    /// removes a key from memory (a crash writes the claimed keys off: they are recorded as delivered).
    pub async fn claim_ids(
        &self,
        link: &str,
        ids: &[String],
        consumer: &str,
    ) -> Result<Vec<(String, KeyMaterial)>, KmsError> {
        let l = self.link(link)?;
        let keys = l.pool().take_present(ids);
        if keys.is_empty() {
            return Ok(keys);
        }
        l.wake.notify_one();
        self.store
            .submit(Op::Deliver {
                key_ids: keys.iter().map(|(id, _)| id.clone()).collect(),
                consumer: consumer.to_string(),
            })
            .await?;
        Ok(keys)
    }

    /// Slave: which of `ids` the link holds in memory now (fetched, not yet delivered).
    pub fn held(&self, link: &str, ids: &[String]) -> Result<Vec<String>, KmsError> {
        let l = self.link(link)?;
        let p = l.pool();
        Ok(ids.iter().filter(|id| p.holds(id)).cloned().collect())
    }

    /// Slave, async: the key with this ID on `link`; if it is neither in memory nor awaited, and `fetch`
    /// is set, it is fetched from the KME by ID first (the path for local SAEs calling `dec_keys`).
    pub async fn consume_by_id(
        &self,
        link: &str,
        key_id: &str,
        consumer: &str,
        fetch: bool,
    ) -> Result<KeyMaterial, KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Slave, "dec_keys")?;
        let mut taken = l.pool().take_id(key_id);
        if taken.is_none() && fetch {
            if self.store.is_spent(key_id)? {
                return Err(KmsError::NotAvailable(key_id.to_string()));
            }
            self.fetch_ids(l, vec![key_id.to_string()]).await?;
            taken = l.pool().take_id(key_id);
        }
        let key = taken.ok_or_else(|| KmsError::NotAvailable(key_id.to_string()))?;
        self.store
            .submit(Op::Deliver {
                key_ids: vec![key_id.to_string()],
                consumer: consumer.to_string(),
            })
            .await?;
        Ok(key)
    }

    /// Master, async: `n` keys at once for a local SAE's `enc_keys` (all or none), durable before return.
    pub async fn take_keys(
        &self,
        link: &str,
        consumer: &str,
        n: usize,
    ) -> Result<Vec<(String, KeyMaterial)>, KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Master, "enc_keys")?;
        let taken = l.pool().take_n(n);
        let keys = taken.ok_or_else(|| KmsError::Exhausted {
            link: link.to_string(),
            hint: ": fewer keys in the reserve than asked for",
        })?;
        l.wake.notify_one();
        self.store
            .submit(Op::Deliver {
                key_ids: keys.iter().map(|(id, _)| id.clone()).collect(),
                consumer: consumer.to_string(),
            })
            .await?;
        Ok(keys)
    }

    /// Slave, async: the keys with these IDs for a local SAE's `dec_keys` (all or none). IDs not in
    /// memory are fetched from the KME first, in one request.
    pub async fn take_ids(
        &self,
        link: &str,
        ids: &[String],
        consumer: &str,
    ) -> Result<Vec<KeyMaterial>, KmsError> {
        let l = self.link(link)?;
        Self::expect_role(l, Role::Slave, "dec_keys")?;
        let missing: Vec<String> = {
            let p = l.pool();
            ids.iter().filter(|id| !p.holds(id)).cloned().collect()
        };
        if !missing.is_empty() {
            for id in &missing {
                if self.store.is_spent(id)? {
                    return Err(KmsError::NotAvailable(id.clone()));
                }
            }
            self.fetch_ids(l, missing).await?;
        }
        let taken = l.pool().take_ids(ids);
        let keys = taken.map_err(|missing| KmsError::NotAvailable(missing.join(", ")))?;
        l.wake.notify_one();
        self.store
            .submit(Op::Deliver {
                key_ids: ids.to_vec(),
                consumer: consumer.to_string(),
            })
            .await?;
        Ok(keys)
    }

    /// Records an audit event that is not a key movement (a refused request, for instance).
    pub async fn audit(&self, event: AuditEvent) -> Result<(), KmsError> {
        self.store.submit(Op::Event(event)).await.map(|_| ())
    }

    /// Signs a checkpoint over the audit log now.
    pub async fn checkpoint(&self) -> Result<(), KmsError> {
        self.store.submit(Op::Checkpoint).await.map(|_| ())
    }

    /// Runs one planned fetch for `link` if the pool wants keys. Returns the number of keys stored.
    pub async fn fetch_once(&self, link: &str) -> Result<usize, KmsError> {
        let l = self.link(link)?.clone();
        let plan = l.pool().plan_fetch();
        if plan.is_empty() {
            return Ok(0);
        }
        match l.role {
            Role::Master => self.fetch_batch(&l, plan.len(), Vec::new()).await,
            Role::Slave => self.fetch_batch(&l, plan.len(), plan).await,
        }
    }

    async fn fetch_ids(&self, l: &Link, ids: Vec<String>) -> Result<usize, KmsError> {
        self.fetch_batch(l, 0, ids).await
    }

    /// One write-ahead fetch: `planned` keys were reserved in the pool's in-flight count.
    async fn fetch_batch(
        &self,
        l: &Link,
        planned: usize,
        ids: Vec<String>,
    ) -> Result<usize, KmsError> {
        let number = if l.role == Role::Master {
            planned
        } else {
            ids.len()
        } as u32;
        let begin = self
            .store
            .submit(Op::BeginFetch {
                link: l.name.clone(),
                role: l.role,
                number,
                size: l.key_bits,
                ids: ids.clone(),
            })
            .await;
        let batch = match begin {
            Ok(Out::Batch(b)) => b,
            Ok(_) => return Err(unexpected()),
            Err(e) => {
                l.pool().fetch_failed(planned, 0, e.to_string());
                return Err(e);
            }
        };
        let t0 = Instant::now();
        let answer = match l.role {
            Role::Master => l.source.enc_keys(number, l.key_bits).await,
            Role::Slave => l.source.dec_keys(&ids).await,
        };
        let latency = t0.elapsed().as_millis() as u64;
        match answer {
            Ok(keys) => {
                let kek = self.store.kek();
                let sealing = tokio::task::spawn_blocking(move || {
                    let s = crate::store::seal_batch(kek.as_ref(), batch, &keys);
                    (s, keys)
                })
                .await;
                let done = match sealing {
                    Ok((Ok(sealed), keys)) => {
                        self.store
                            .submit(Op::CompleteFetch {
                                batch,
                                keys,
                                sealed: Some(sealed),
                            })
                            .await
                    }
                    Ok((Err(e), _)) => Err(e),
                    Err(e) => Err(KmsError::Corrupt(format!("sealing task failed: {e}"))),
                };
                match done {
                    Ok(Out::Completed(c)) => {
                        let n = c.accepted.len();
                        debug!(link = %l.name, batch, stored = n, refused = c.refused.len(), latency_ms = latency, "fetched");
                        l.pool()
                            .fetched(planned, c.accepted, latency, self.clock.now_ms());
                        if !c.refused.is_empty() && n == 0 {
                            let why = c
                                .refused
                                .iter()
                                .map(|(id, r)| format!("{id}: {r}"))
                                .collect::<Vec<_>>()
                                .join("; ");
                            return Err(KmsError::Fetch(crate::source::FetchError::Malformed(
                                format!("every key in the answer was refused ({why})"),
                            )));
                        }
                        Ok(n)
                    }
                    Ok(_) => Err(unexpected()),
                    Err(e) => {
                        // Not recorded: the batch stays write-ahead and is written off at the next start.
                        l.pool()
                            .fetch_failed(planned, number as usize, e.to_string());
                        Err(e)
                    }
                }
            }
            Err(fe) => {
                let write_off = !fe.nothing_delivered();
                warn!(link = %l.name, batch, error = %fe, write_off, "fetch from the KME failed");
                l.pool().fetch_failed(
                    planned,
                    if write_off { number as usize } else { 0 },
                    fe.to_string(),
                );
                if l.role == Role::Slave
                    && matches!(fe, crate::source::FetchError::Connect { .. })
                    && planned > 0
                {
                    // nothing left the KME: ask again later
                    let _ = l.pool().want(&ids);
                }
                self.store
                    .submit(Op::FailFetch {
                        batch,
                        write_off,
                        reason: fe.to_string(),
                    })
                    .await?;
                Err(fe.into())
            }
        }
    }

    /// Starts one background fetcher per link on the current tokio runtime. Each keeps its pool filled
    /// (master) or fetches announced IDs (slave), backing off after failures. They stop when the
    /// returned handles are aborted or the runtime ends.
    pub fn spawn_fetchers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.links
            .keys()
            .map(|name| {
                let me = self.clone();
                let name = name.clone();
                tokio::spawn(async move { me.fetch_loop(name).await })
            })
            .collect()
    }

    async fn fetch_loop(self: Arc<Self>, name: String) {
        let Some(l) = self.links.get(&name).cloned() else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.fetch_once(&name).await {
                Ok(0) => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), l.wake.notified()).await;
                }
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    debug!(link = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "fetch failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Every link's metrics and alarms.
    pub fn status(&self) -> Vec<LinkView> {
        let now = self.clock.now_ms();
        let mut v: Vec<LinkView> = self
            .links
            .values()
            .map(|l| {
                let p = l.pool();
                LinkView {
                    name: l.name.clone(),
                    role: l.role.as_str(),
                    key_bits: l.key_bits,
                    capacity: p.policy().capacity,
                    metrics: p.metrics(now),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates a managed key (pre-active, or active at `activation_ms`).
    pub async fn create_managed(
        &self,
        name: &str,
        activation_ms: Option<u64>,
        cryptoperiod_ms: u64,
    ) -> Result<ManagedInfo, KmsError> {
        match self
            .store
            .submit(Op::CreateManaged {
                name: name.to_string(),
                activation_ms,
                cryptoperiod_ms,
            })
            .await?
        {
            Out::Managed(m) => Ok(m),
            _ => Err(unexpected()),
        }
    }

    /// Applies a lifecycle operation to a managed key.
    pub async fn managed_op(&self, id: &str, op: Operation) -> Result<ManagedInfo, KmsError> {
        match self
            .store
            .submit(Op::Lifecycle {
                id: id.to_string(),
                op,
            })
            .await?
        {
            Out::Managed(m) => Ok(m),
            _ => Err(unexpected()),
        }
    }

    /// Replaces an active managed key by a new active one; the old one is deactivated (superseded).
    pub async fn rotate(&self, id: &str) -> Result<ManagedInfo, KmsError> {
        match self.store.submit(Op::Rotate { id: id.to_string() }).await? {
            Out::Managed(m) => Ok(m),
            _ => Err(unexpected()),
        }
    }

    /// A managed key's material, if its state allows `usage` now.
    pub async fn use_managed(&self, id: &str, usage: Usage) -> Result<KeyMaterial, KmsError> {
        match self
            .store
            .submit(Op::ManagedUse {
                id: id.to_string(),
                usage,
            })
            .await?
        {
            Out::Key(k) => Ok(k),
            _ => Err(unexpected()),
        }
    }
}
