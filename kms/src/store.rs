//! The durable edge: redb tables, the write-ahead fetch records, crypto-shredding and the audit chain,
//! behind one writer thread that batches concurrent requests into one commit (group commit).
//!
//! Every mutation goes through [`Store::submit`]: the writer drains all queued operations, applies them in
//! one write transaction, appends their audit records, signs a checkpoint when due, commits with
//! `Durability::Immediate`, and only then answers each caller. So a key is recorded as delivered on disk
//! before any caller sees it, and a fetch is recorded before the request leaves for the KME.
//!
//! At rest, each batch of QKD keys is sealed under its own random data key (AES-256-GCM, the key's index
//! in the batch as nonce, its ID as associated data); the data key is stored only wrapped by the KEK,
//! which stays in the HSM. When the last key of a batch is delivered, the wrapped data key is deleted, so
//! stale copy-on-write pages that still hold ciphertext hold nothing decryptable without it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::audit::{self, AuditEvent, AuditRecord, Checkpoint, GENESIS, VerifyReport};
use crate::error::KmsError;
use crate::kek::{CheckpointSigner, Kek, open_with, random_key, seal_with};
use crate::lifecycle::{Lifecycle, Operation, RevocationReason, Usage};
use crate::secret::KeyMaterial;
use crate::source::DeliveredKey;
use rows::{LiveRow, SpentRow, legacy_spent_slot, slot, unslot};

#[path = "store_rows.rs"]
mod rows;

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// Every key_ID ever received, with its slot (see [`store_rows`]): duplicate IDs are refused against it.
const KEY_INDEX: TableDefinition<&str, u128> = TableDefinition::new("key_index");
/// Keys stored and not yet delivered, by slot.
const LIVE: TableDefinition<u128, &[u8]> = TableDefinition::new("live_by_slot");
/// Deliveries, in the order they were recorded.
const SPENT: TableDefinition<u64, &[u8]> = TableDefinition::new("spent_log");
/// The per-key tables of the first version (keyed by key_ID, JSON rows): migrated at open.
const OLD_LIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("live_keys");
const OLD_SPENT: TableDefinition<&str, &[u8]> = TableDefinition::new("spent_keys");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const MANAGED: TableDefinition<&str, &[u8]> = TableDefinition::new("managed_keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most operations folded into one commit.
const MAX_GROUP: usize = 4096;

/// The time source, injected so tests control it.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Which ETSI 014 role this site's SAE plays on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Calls `enc_keys`, announces key IDs to the peer.
    Master,
    /// Calls `dec_keys` with the IDs the peer announced.
    Slave,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Slave => "slave",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum BatchState {
    /// Write-ahead: the request may be on its way to the KME.
    Requested,
    /// The answer is recorded; `live` keys remain.
    Received,
    /// The KME answered with an error: nothing was delivered.
    Failed,
    /// The answer may have left the KME but was never recorded: its keys are never used.
    WrittenOff,
    /// Every key was delivered or refused; the data key is destroyed.
    Erased,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BatchRecord {
    id: u64,
    link: String,
    role: Role,
    state: BatchState,
    number: u32,
    size: u32,
    #[serde(default)]
    ids: Vec<String>,
    kek: String,
    wrapped_dk: Option<String>,
    live: u32,
    created_ms: u64,
}

/// A live key as the first version stored it (JSON, keyed by key_ID); read only to migrate.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LiveRecord {
    link: String,
    batch: u64,
    index: u64,
    ct: String,
    announced: bool,
}

/// A delivered key as the first version stored it; read only to migrate.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SpentRecord {
    link: String,
    batch: u64,
    consumer: String,
    at_ms: u64,
}

/// A managed (non-QKD) key as stored: lifecycle metadata and the material wrapped by the KEK.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManagedRecord {
    id: String,
    name: String,
    lifecycle: Lifecycle,
    kek: String,
    wrapped: Option<String>,
    replaces: Option<String>,
    replaced_by: Option<String>,
}

/// A managed key's metadata, for listings (never the material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagedInfo {
    /// Key ID (UUID).
    pub id: String,
    /// Operator's name for it.
    pub name: String,
    /// Lifecycle state and dates.
    pub lifecycle: Lifecycle,
    /// The key it replaced.
    pub replaces: Option<String>,
    /// The key that replaced it.
    pub replaced_by: Option<String>,
}

/// A QKD key loaded at start-up.
#[derive(Debug)]
pub struct StoredKey {
    /// Link name.
    pub link: String,
    /// ETSI key_ID.
    pub id: String,
    /// The key.
    pub key: KeyMaterial,
    /// Offered to the peer already (master).
    pub announced: bool,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Keys still available, in fetch order.
    pub keys: Vec<StoredKey>,
    /// Batches recovery wrote off: (batch, link, keys that may have left the KME).
    pub written_off: Vec<(u64, String, u32)>,
}

/// Result of recording a KME answer.
#[derive(Debug, Default)]
pub struct Completed {
    /// Keys stored, in answer order.
    pub accepted: Vec<DeliveredKey>,
    /// Keys refused: (key_ID, reason). Recorded in the audit log; never used.
    pub refused: Vec<(String, String)>,
}

/// Counts for status displays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    /// Keys stored and not yet delivered.
    pub live_keys: u64,
    /// Keys delivered (tombstones kept to refuse duplicate IDs).
    pub spent_keys: u64,
    /// Audit records.
    pub audit_records: u64,
    /// Signed checkpoints.
    pub checkpoints: u64,
    /// Batches written off (at any time).
    pub written_off_batches: u64,
    /// Keys those batches may have carried.
    pub written_off_keys: u64,
}

/// A live key's metadata, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveKeyInfo {
    /// ETSI key_ID.
    pub key_id: String,
    /// Link name.
    pub link: String,
    /// Batch it came in.
    pub batch: u64,
    /// Offered to the peer (master).
    pub announced: bool,
}

pub(crate) enum Op {
    BeginFetch {
        link: String,
        role: Role,
        number: u32,
        size: u32,
        ids: Vec<String>,
    },
    CompleteFetch {
        batch: u64,
        keys: Vec<DeliveredKey>,
        sealed: Option<Sealed>,
    },
    FailFetch {
        batch: u64,
        write_off: bool,
        reason: String,
    },
    Announce {
        link: String,
        ids: Vec<String>,
        mark: bool,
    },
    Deliver {
        key_ids: Vec<String>,
        consumer: String,
    },
    Event(AuditEvent),
    CreateManaged {
        name: String,
        activation_ms: Option<u64>,
        cryptoperiod_ms: u64,
    },
    Lifecycle {
        id: String,
        op: Operation,
    },
    ManagedUse {
        id: String,
        usage: Usage,
    },
    Rotate {
        id: String,
    },
    Checkpoint,
}

pub(crate) enum Out {
    Batch(u64),
    Completed(Completed),
    Done,
    Key(KeyMaterial),
    Managed(ManagedInfo),
}

/// Where the writer sends one answer: a blocking caller or an async one.
pub(crate) enum Replier {
    Sync(mpsc::SyncSender<Result<Out, KmsError>>),
    Async(tokio::sync::oneshot::Sender<Result<Out, KmsError>>),
}

impl Replier {
    fn send(self, r: Result<Out, KmsError>) {
        // A caller that gave up (dropped its receiver) gets nothing; the commit stands.
        match self {
            Self::Sync(tx) => {
                let _ = tx.send(r);
            }
            Self::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

struct Job {
    op: Op,
    reply: Replier,
}

/// A KME answer sealed for storage: a fresh data key wrapped by the KEK, and each key (by its position
/// in the answer, which is also its nonce) sealed under the data key with its ID as associated data.
pub struct Sealed {
    wrapped_dk: Vec<u8>,
    cts: Vec<Vec<u8>>,
}

/// Seals an answer for `batch`: one HSM call (the wrap) and one AES-GCM per key. Done outside the
/// writer thread so that group commits of deliveries never wait for it.
pub fn seal_batch(kek: &dyn Kek, batch: u64, keys: &[DeliveredKey]) -> Result<Sealed, KmsError> {
    let dk = random_key(32)?;
    let wrapped_dk = kek.wrap(&dk, &batch_context(batch))?;
    let cts = keys
        .iter()
        .enumerate()
        .map(|(i, (id, k))| seal_with(&dk, i as u64, id.as_bytes(), k.expose()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sealed { wrapped_dk, cts })
}

/// Options of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sign a checkpoint after this many audit records (and on every explicit checkpoint).
    pub checkpoint_every: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 4096,
        }
    }
}

/// The key store: a redb file and its writer thread.
pub struct Store {
    stats: Arc<CommitStats>,
    db: Arc<Database>,
    kek: Arc<dyn Kek>,
    tx: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    signer: Arc<dyn CheckpointSigner>,
}

#[derive(Clone, Copy)]
struct Head {
    seq: u64,
    hash: [u8; 32],
    last_checkpoint: u64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> KmsError {
    KmsError::Corrupt(format!("{what}: {e}"))
}

fn dec<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(v).map_err(|e| corrupt("encode", e))
}

fn db_err(e: impl Into<redb::Error>) -> KmsError {
    KmsError::Db(e.into())
}

fn batch_context(id: u64) -> Vec<u8> {
    let mut c = b"qsi-kms-batch".to_vec();
    c.extend_from_slice(&id.to_be_bytes());
    c
}

fn managed_context(id: &str) -> Vec<u8> {
    let mut c = b"qsi-kms-managed:".to_vec();
    c.extend_from_slice(id.as_bytes());
    c
}

struct Tables<'t> {
    batches: redb::Table<'t, u64, &'static [u8]>,
    index: redb::Table<'t, &'static str, u128>,
    live: redb::Table<'t, u128, &'static [u8]>,
    spent: redb::Table<'t, u64, &'static [u8]>,
    audit: redb::Table<'t, u64, &'static [u8]>,
    checkpoints: redb::Table<'t, u64, &'static [u8]>,
    managed: redb::Table<'t, &'static str, &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
    /// Batch records read or changed in this transaction; changed ones are written once, by
    /// [`Tables::finish`], however many deliveries of the group touched them.
    batch_cache: BTreeMap<u64, (BatchRecord, bool)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, KmsError> {
        Ok(Self {
            batches: txn.open_table(BATCHES).map_err(db_err)?,
            index: txn.open_table(KEY_INDEX).map_err(db_err)?,
            live: txn.open_table(LIVE).map_err(db_err)?,
            spent: txn.open_table(SPENT).map_err(db_err)?,
            audit: txn.open_table(AUDIT).map_err(db_err)?,
            checkpoints: txn.open_table(CHECKPOINTS).map_err(db_err)?,
            managed: txn.open_table(MANAGED).map_err(db_err)?,
            meta: txn.open_table(META).map_err(db_err)?,
            batch_cache: BTreeMap::new(),
        })
    }

    /// Writes the changed batch records. Call before the transaction commits.
    fn finish(&mut self) -> Result<(), KmsError> {
        for (id, (b, dirty)) in std::mem::take(&mut self.batch_cache) {
            if dirty {
                self.batches
                    .insert(id, enc(&b)?.as_slice())
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Adds `n` to a counter in the meta table.
    fn bump(&mut self, name: &str, n: u64) -> Result<(), KmsError> {
        let v = self
            .meta
            .get(name)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        self.meta.insert(name, v + n).map_err(db_err)?;
        Ok(())
    }

    fn append(&mut self, head: &mut Head, now: u64, ev: &AuditEvent) -> Result<(), KmsError> {
        let (rec, hash) = audit::next_record(head.seq, &head.hash, now, ev);
        self.audit
            .insert(rec.seq, enc(&rec)?.as_slice())
            .map_err(db_err)?;
        head.seq = rec.seq;
        head.hash = hash;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        head: &mut Head,
        signer: &dyn CheckpointSigner,
    ) -> Result<(), KmsError> {
        if head.seq == 0 || head.last_checkpoint == head.seq {
            return Ok(());
        }
        let cp = audit::sign_checkpoint(head.seq, &hex::encode(head.hash), signer)?;
        self.checkpoints
            .insert(cp.seq, enc(&cp)?.as_slice())
            .map_err(db_err)?;
        head.last_checkpoint = head.seq;
        Ok(())
    }

    fn batch(&mut self, id: u64) -> Result<BatchRecord, KmsError> {
        if let Some((b, _)) = self.batch_cache.get(&id) {
            return Ok(b.clone());
        }
        let b: BatchRecord = match self.batches.get(id).map_err(db_err)? {
            Some(v) => dec("batch", v.value())?,
            None => return Err(KmsError::UnknownBatch(id)),
        };
        self.batch_cache.insert(id, (b.clone(), false));
        Ok(b)
    }

    fn put_batch(&mut self, b: &BatchRecord) -> Result<(), KmsError> {
        self.batch_cache.insert(b.id, (b.clone(), true));
        Ok(())
    }

    fn managed(&self, id: &str) -> Result<ManagedRecord, KmsError> {
        match self.managed.get(id).map_err(db_err)? {
            Some(v) => dec("managed key", v.value()),
            None => Err(KmsError::UnknownManagedKey(id.to_string())),
        }
    }

    fn put_managed(&mut self, m: &ManagedRecord) -> Result<(), KmsError> {
        self.managed
            .insert(m.id.as_str(), enc(m)?.as_slice())
            .map_err(db_err)?;
        Ok(())
    }
}

/// The slot of every live key, by key_ID, read from the live table.
fn live_slots(db: &Database) -> Result<HashMap<String, u128>, KmsError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut out = HashMap::new();
    if let Ok(t) = txn.open_table(LIVE) {
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.insert(LiveRow::decode(v.value())?.id.to_string(), k.value());
        }
    }
    Ok(out)
}

/// Moves the rows of the first version's per-key tables (keyed by key_ID, JSON) into the slot-keyed
/// tables and drops the old ones. Returns the rows moved (0 for a file written by this version).
fn migrate_v1_rows(txn: &redb::WriteTransaction) -> Result<u64, KmsError> {
    use redb::TableHandle;
    let names: Vec<String> = txn
        .list_tables()
        .map_err(db_err)?
        .map(|h| h.name().to_string())
        .collect();
    let mut moved = 0;
    if names.iter().any(|n| n == OLD_LIVE.name()) {
        {
            let old = txn.open_table(OLD_LIVE).map_err(db_err)?;
            let mut live = txn.open_table(LIVE).map_err(db_err)?;
            let mut index = txn.open_table(KEY_INDEX).map_err(db_err)?;
            for row in old.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let r: LiveRecord = dec("live key", v.value())?;
                let ct = hex::decode(&r.ct).map_err(|e| corrupt("sealed key", e))?;
                let slot = slot(r.batch, r.index);
                let row = LiveRow {
                    announced: r.announced,
                    id: k.value(),
                    ct: &ct,
                }
                .encode()?;
                live.insert(slot, row.as_slice()).map_err(db_err)?;
                index.insert(k.value(), slot).map_err(db_err)?;
                moved += 1;
            }
        }
        txn.delete_table(OLD_LIVE).map_err(db_err)?;
    }
    if names.iter().any(|n| n == OLD_SPENT.name()) {
        {
            let old = txn.open_table(OLD_SPENT).map_err(db_err)?;
            let mut spent = txn.open_table(SPENT).map_err(db_err)?;
            let mut index = txn.open_table(KEY_INDEX).map_err(db_err)?;
            let mut rows = Vec::new();
            for row in old.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let r: SpentRecord = dec("spent key", v.value())?;
                rows.push((r.at_ms, k.value().to_string(), r));
            }
            // the old rows were keyed by ID: their time is the best delivery order there is
            rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let first = spent
                .last()
                .map_err(db_err)?
                .map_or(0, |(k, _)| k.value() + 1);
            for (seq, (at_ms, id, r)) in (first..).zip(rows) {
                let row = SpentRow {
                    batch: r.batch,
                    at_ms,
                    id: &id,
                    consumer: &r.consumer,
                }
                .encode()?;
                spent.insert(seq, row.as_slice()).map_err(db_err)?;
                index
                    .insert(id.as_str(), legacy_spent_slot(r.batch))
                    .map_err(db_err)?;
                moved += 1;
            }
        }
        txn.delete_table(OLD_SPENT).map_err(db_err)?;
    }
    Ok(moved)
}

fn info_of(m: &ManagedRecord) -> ManagedInfo {
    ManagedInfo {
        id: m.id.clone(),
        name: m.name.clone(),
        lifecycle: m.lifecycle.clone(),
        replaces: m.replaces.clone(),
        replaced_by: m.replaced_by.clone(),
    }
}

/// Group-commit counters (for `qsi bench kms` and status).
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commits.
    pub commits: std::sync::atomic::AtomicU64,
    /// Operations committed.
    pub ops: std::sync::atomic::AtomicU64,
    /// Time spent committing (apply + fsync), microseconds.
    pub commit_us: std::sync::atomic::AtomicU64,
    /// Longest commit, microseconds.
    pub max_commit_us: std::sync::atomic::AtomicU64,
    /// Of `commit_us`, the time redb spent making the transaction durable (page writes and fsync).
    pub sync_us: std::sync::atomic::AtomicU64,
    /// Commits by duration: under 1 ms, 2, 4, 8, 16, 32, 64 ms, and longer.
    pub histogram_ms: [std::sync::atomic::AtomicU64; 8],
}

impl CommitStats {
    fn record(&self, ops: usize, us: u64, sync_us: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.ops.fetch_add(ops as u64, Relaxed);
        self.commit_us.fetch_add(us, Relaxed);
        self.sync_us.fetch_add(sync_us, Relaxed);
        self.max_commit_us.fetch_max(us, Relaxed);
        let bucket = (64 - (us / 1000).leading_zeros() as usize).min(7);
        self.histogram_ms[bucket].fetch_add(1, Relaxed);
    }
}

struct Writer {
    stats: Arc<CommitStats>,
    db: Arc<Database>,
    kek: Arc<dyn Kek>,
    signer: Arc<dyn CheckpointSigner>,
    clock: Arc<dyn Clock>,
    opts: StoreOptions,
    head: Head,
    /// Sequence number of the next delivery row.
    next_spent: u64,
    /// The slot of every live key, by key_ID: the live table's keys, mirrored in memory so that a
    /// delivery finds its rows without a B-tree lookup. Only the writer changes either.
    live: HashMap<String, u128>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let saved = (self.head, self.next_spent);
            let group = jobs.len();
            let t0 = std::time::Instant::now();
            let (ops, replies): (Vec<Op>, Vec<Replier>) =
                jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
            let (result, sync_us) = self.commit_group(ops);
            let us = t0.elapsed().as_micros() as u64;
            self.stats.record(group, us, sync_us);
            tracing::trace!(group, commit_us = us, sync_us, "group commit");
            match result {
                Ok(outs) => {
                    for (r, o) in replies.into_iter().zip(outs) {
                        r.send(o);
                    }
                }
                Err(e) => {
                    (self.head, self.next_spent) = saved;
                    // the transaction was rolled back: so must the mirror of the live table be
                    match live_slots(&self.db) {
                        Ok(m) => self.live = m,
                        Err(e) => {
                            warn!(error = %e, "cannot reload the live keys after a failed commit")
                        }
                    }
                    warn!(error = %e, "key store commit failed; every caller in the group gets an error");
                    let msg = e.to_string();
                    for r in replies {
                        r.send(Err(KmsError::Corrupt(format!("commit failed: {msg}"))));
                    }
                }
            }
        }
        // Channel closed: sign the tail so a clean stop leaves the whole log signed.
        if let (Err(e), _) = self.commit_group(vec![Op::Checkpoint]) {
            warn!(error = %e, "final audit checkpoint failed");
        }
    }

    /// Applies and commits one group; also returns the microseconds spent in the durable commit.
    fn commit_group(
        &mut self,
        ops: Vec<Op>,
    ) -> (Result<Vec<Result<Out, KmsError>>, KmsError>, u64) {
        let mut outs = Vec::with_capacity(ops.len());
        let txn = match self.apply_group(ops, &mut outs) {
            Ok(txn) => txn,
            Err(e) => return (Err(e), 0),
        };
        let t0 = std::time::Instant::now();
        let r = txn.commit().map_err(db_err);
        (r.map(|()| outs), t0.elapsed().as_micros() as u64)
    }

    fn apply_group(
        &mut self,
        ops: Vec<Op>,
        outs: &mut Vec<Result<Out, KmsError>>,
    ) -> Result<redb::WriteTransaction, KmsError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = Tables::open(&txn)?;
            let mut force_cp = false;
            for op in ops {
                if matches!(op, Op::Checkpoint) {
                    force_cp = true;
                }
                let r = self.apply(&mut t, op);
                if let Err(e) = &r
                    && matches!(
                        e,
                        KmsError::Db(_) | KmsError::Corrupt(_) | KmsError::Seal(_)
                    )
                {
                    // A storage or HSM failure may leave this op half-applied: abort the whole group.
                    return Err(KmsError::Corrupt(e.to_string()));
                }
                outs.push(r);
            }
            if force_cp || self.head.seq - self.head.last_checkpoint >= self.opts.checkpoint_every {
                t.checkpoint(&mut self.head, self.signer.as_ref())?;
            }
            t.finish()?;
        }
        Ok(txn)
    }

    fn apply(&mut self, t: &mut Tables<'_>, op: Op) -> Result<Out, KmsError> {
        let now = self.clock.now_ms();
        match op {
            Op::BeginFetch {
                link,
                role,
                number,
                size,
                ids,
            } => {
                let id = t
                    .meta
                    .get("next_batch")
                    .map_err(db_err)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                t.meta.insert("next_batch", id + 1).map_err(db_err)?;
                let b = BatchRecord {
                    id,
                    link: link.clone(),
                    role,
                    state: BatchState::Requested,
                    number,
                    size,
                    ids: ids.clone(),
                    kek: self.kek.label(),
                    wrapped_dk: None,
                    live: 0,
                    created_ms: now,
                };
                t.put_batch(&b)?;
                t.append(
                    &mut self.head,
                    now,
                    &AuditEvent::FetchRequested {
                        link,
                        batch: id,
                        call: match role {
                            Role::Master => "enc_keys".into(),
                            Role::Slave => "dec_keys".into(),
                        },
                        number,
                        size,
                        ids,
                    },
                )?;
                Ok(Out::Batch(id))
            }
            Op::CompleteFetch {
                batch,
                keys,
                sealed,
            } => self.complete(t, batch, keys, sealed, now),
            Op::FailFetch {
                batch,
                write_off,
                reason,
            } => {
                let mut b = t.batch(batch)?;
                if b.state != BatchState::Requested {
                    return Err(KmsError::UnknownBatch(batch));
                }
                let ev = if write_off {
                    b.state = BatchState::WrittenOff;
                    t.bump("written_off_keys", u64::from(b.number))?;
                    t.bump("written_off_batches", 1)?;
                    AuditEvent::WrittenOff {
                        link: b.link.clone(),
                        batch,
                        number: b.number,
                        ids: b.ids.clone(),
                        reason,
                    }
                } else {
                    b.state = BatchState::Failed;
                    AuditEvent::FetchFailed {
                        link: b.link.clone(),
                        batch,
                        reason,
                    }
                };
                t.put_batch(&b)?;
                t.append(&mut self.head, now, &ev)?;
                Ok(Out::Done)
            }
            Op::Announce { link, ids, mark } => {
                if mark {
                    for id in &ids {
                        let Some(&slot) = self.live.get(id.as_str()) else {
                            continue;
                        };
                        let row = t
                            .live
                            .get(slot)
                            .map_err(db_err)?
                            .map(|v| v.value().to_vec());
                        if let Some(bytes) = row {
                            let r = LiveRow::decode(&bytes)?;
                            let marked = LiveRow {
                                announced: true,
                                ..r
                            }
                            .encode()?;
                            t.live.insert(slot, marked.as_slice()).map_err(db_err)?;
                        }
                    }
                }
                t.append(&mut self.head, now, &AuditEvent::Announced { link, ids })?;
                Ok(Out::Done)
            }
            Op::Deliver { key_ids, consumer } => {
                // All or nothing: find every key (and its batch) before changing anything.
                let mut slots = Vec::with_capacity(key_ids.len());
                let mut per_batch: BTreeMap<u64, (String, u32)> = BTreeMap::new();
                for id in &key_ids {
                    let Some(&slot) = self.live.get(id.as_str()) else {
                        return Err(KmsError::NotAvailable(id.clone()));
                    };
                    let (batch, _) = unslot(slot);
                    match per_batch.get_mut(&batch) {
                        Some((_, n)) => *n += 1,
                        None => {
                            let link = t.batch(batch)?.link;
                            per_batch.insert(batch, (link, 1));
                        }
                    }
                    slots.push(slot);
                }
                let mut distinct = slots.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if distinct.len() != slots.len() {
                    return Err(KmsError::NotAvailable(
                        "the same key_ID twice in one request".into(),
                    ));
                }
                // One audit record per link and request, however many keys it took.
                let mut per_link: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for (key_id, slot) in key_ids.into_iter().zip(slots) {
                    let (batch, _) = unslot(slot);
                    if t.live.remove(slot).map_err(db_err)?.is_none() {
                        return Err(corrupt("live key", format!("{key_id}: no row in its slot")));
                    }
                    self.live.remove(&key_id);
                    let row = SpentRow {
                        batch,
                        at_ms: now,
                        id: &key_id,
                        consumer: &consumer,
                    }
                    .encode()?;
                    t.spent
                        .insert(self.next_spent, row.as_slice())
                        .map_err(db_err)?;
                    self.next_spent += 1;
                    let link = per_batch.get(&batch).map(|(l, _)| l.as_str()).unwrap_or("");
                    per_link.entry(link).or_default().push(key_id);
                }
                for (link, key_ids) in per_link {
                    t.append(
                        &mut self.head,
                        now,
                        &AuditEvent::DeliveredKeys {
                            link: link.to_string(),
                            key_ids,
                            consumer: consumer.clone(),
                        },
                    )?;
                }
                for (batch, (link, n)) in per_batch {
                    let mut b = t.batch(batch)?;
                    b.live = b.live.saturating_sub(n);
                    if b.live == 0 {
                        b.state = BatchState::Erased;
                        b.wrapped_dk = None;
                        t.append(&mut self.head, now, &AuditEvent::Erased { link, batch })?;
                    }
                    t.put_batch(&b)?;
                }
                Ok(Out::Done)
            }
            Op::Event(ev) => {
                t.append(&mut self.head, now, &ev)?;
                Ok(Out::Done)
            }
            Op::CreateManaged {
                name,
                activation_ms,
                cryptoperiod_ms,
            } => {
                let info =
                    self.create_managed(t, name, activation_ms, cryptoperiod_ms, None, now)?;
                Ok(Out::Managed(info))
            }
            Op::Lifecycle { id, op } => {
                let mut m = t.managed(&id)?;
                let before = m.lifecycle.state;
                m.lifecycle.apply(op, now)?;
                if m.lifecycle.state == crate::lifecycle::KeyState::Destroyed {
                    // crypto-shredding: the wrapped material goes; only metadata remains
                    m.wrapped = None;
                }
                t.put_managed(&m)?;
                t.append(
                    &mut self.head,
                    now,
                    &AuditEvent::StateChanged {
                        key: id,
                        cause: format!("{op:?} (was {})", before.as_str()),
                        state: m.lifecycle.state.as_str().into(),
                    },
                )?;
                Ok(Out::Managed(info_of(&m)))
            }
            Op::ManagedUse { id, usage } => {
                let mut m = t.managed(&id)?;
                let passed = m.lifecycle.tick(now);
                if !passed.is_empty() {
                    t.put_managed(&m)?;
                    for s in passed {
                        t.append(
                            &mut self.head,
                            now,
                            &AuditEvent::StateChanged {
                                key: id.clone(),
                                cause: "schedule".into(),
                                state: s.as_str().into(),
                            },
                        )?;
                    }
                }
                if let Err(e) = m.lifecycle.check_use(usage, now) {
                    t.append(
                        &mut self.head,
                        now,
                        &AuditEvent::AccessRefused {
                            who: "managed-key user".into(),
                            what: format!("{id}: {e}"),
                        },
                    )?;
                    return Err(e.into());
                }
                let Some(w) = &m.wrapped else {
                    return Err(KmsError::UnknownManagedKey(id));
                };
                let blob = hex::decode(w).map_err(|e| corrupt("managed key", e))?;
                Ok(Out::Key(self.kek.unwrap(&blob, &managed_context(&id))?))
            }
            Op::Rotate { id } => {
                let mut old = t.managed(&id)?;
                old.lifecycle
                    .apply(Operation::Revoke(RevocationReason::Superseded), now)?;
                let new = self.create_managed(
                    t,
                    old.name.clone(),
                    Some(now),
                    old.lifecycle.cryptoperiod_ms,
                    Some(id.clone()),
                    now,
                )?;
                old.replaced_by = Some(new.id.clone());
                t.put_managed(&old)?;
                t.append(
                    &mut self.head,
                    now,
                    &AuditEvent::StateChanged {
                        key: id,
                        cause: format!("rotated: superseded by {}", new.id),
                        state: old.lifecycle.state.as_str().into(),
                    },
                )?;
                Ok(Out::Managed(new))
            }
            Op::Checkpoint => Ok(Out::Done),
        }
    }

    fn create_managed(
        &mut self,
        t: &mut Tables<'_>,
        name: String,
        activation_ms: Option<u64>,
        cryptoperiod_ms: u64,
        replaces: Option<String>,
        now: u64,
    ) -> Result<ManagedInfo, KmsError> {
        let lifecycle = Lifecycle::new(now, activation_ms, cryptoperiod_ms)?;
        let id = uuid::Uuid::new_v4().to_string();
        let material = random_key(32)?;
        let wrapped = self.kek.wrap(&material, &managed_context(&id))?;
        let m = ManagedRecord {
            id: id.clone(),
            name,
            lifecycle,
            kek: self.kek.label(),
            wrapped: Some(hex::encode(wrapped)),
            replaces,
            replaced_by: None,
        };
        t.put_managed(&m)?;
        t.append(
            &mut self.head,
            now,
            &AuditEvent::StateChanged {
                key: id,
                cause: "created".into(),
                state: m.lifecycle.state.as_str().into(),
            },
        )?;
        Ok(info_of(&m))
    }

    fn complete(
        &mut self,
        t: &mut Tables<'_>,
        batch: u64,
        keys: Vec<DeliveredKey>,
        sealed: Option<Sealed>,
        now: u64,
    ) -> Result<Out, KmsError> {
        let mut b = t.batch(batch)?;
        if b.state != BatchState::Requested {
            return Err(KmsError::UnknownBatch(batch));
        }
        // Sealed outside the writer (by the fetch task) in production; here for direct callers.
        let sealed = match sealed {
            Some(s) => Some(s),
            None if keys.is_empty() => None,
            None => Some(seal_batch(self.kek.as_ref(), batch, &keys)?),
        };
        let asked: HashSet<&str> = b.ids.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let mut out = Completed::default();
        let mut positions = Vec::new();
        for (position, (id, key)) in keys.into_iter().enumerate() {
            let reason = if key.bits() != b.size as usize {
                Some(format!(
                    "key is {} bits, {} were asked for",
                    key.bits(),
                    b.size
                ))
            } else if id.is_empty() || id.len() > 256 {
                Some("key_ID is empty or longer than 256 characters".to_string())
            } else if !seen.insert(id.clone()) {
                Some("duplicate key_ID within the answer".to_string())
            } else if t.index.get(id.as_str()).map_err(db_err)?.is_some() {
                Some("duplicate key_ID: already received earlier".to_string())
            } else if b.role == Role::Slave && !asked.contains(id.as_str()) {
                Some("key_ID was not asked for".to_string())
            } else if out.accepted.len() >= b.number as usize {
                Some("more keys than asked for".to_string())
            } else {
                None
            };
            match reason {
                Some(r) => out.refused.push((id, r)),
                None => {
                    positions.push(position);
                    out.accepted.push((id, key));
                }
            }
        }
        if b.role == Role::Slave {
            for want in &b.ids {
                if !out.accepted.iter().any(|(id, _)| id == want) {
                    out.refused
                        .push((want.clone(), "asked for but missing from the answer".into()));
                }
            }
        }
        if !out.accepted.is_empty() {
            let Some(sealed) = sealed else {
                return Err(corrupt("answer", "not sealed"));
            };
            let wrapped = sealed.wrapped_dk;
            for ((id, _), position) in out.accepted.iter().zip(positions.iter()) {
                let ct = sealed
                    .cts
                    .get(*position)
                    .ok_or_else(|| corrupt("sealed batch", "fewer ciphertexts than keys"))?;
                let slot = slot(batch, *position as u64);
                let row = LiveRow {
                    announced: false,
                    id,
                    ct,
                }
                .encode()?;
                t.live.insert(slot, row.as_slice()).map_err(db_err)?;
                t.index.insert(id.as_str(), slot).map_err(db_err)?;
                self.live.insert(id.clone(), slot);
            }
            b.wrapped_dk = Some(hex::encode(wrapped));
            b.live = out.accepted.len() as u32;
            b.state = BatchState::Received;
        } else {
            b.state = BatchState::Erased;
        }
        // The IDs asked for matter only while the answer is awaited (a write-off names them); the
        // audit log keeps them, and the record stays small for the deliveries that update it.
        b.ids = Vec::new();
        t.put_batch(&b)?;
        t.append(
            &mut self.head,
            now,
            &AuditEvent::Fetched {
                link: b.link.clone(),
                batch,
                ids: out.accepted.iter().map(|(id, _)| id.clone()).collect(),
            },
        )?;
        for (id, reason) in &out.refused {
            warn!(link = %b.link, batch, key_id = %id, %reason, "refused a key from the KME");
            t.append(
                &mut self.head,
                now,
                &AuditEvent::Refused {
                    link: b.link.clone(),
                    batch,
                    key_id: id.clone(),
                    reason: reason.clone(),
                },
            )?;
        }
        Ok(Out::Completed(out))
    }
}

impl Store {
    /// Opens (or creates) the store, recovers from a crash, and starts the writer.
    ///
    /// Recovery writes off every batch whose fetch was recorded but whose answer was not: the KME may
    /// have handed those keys over, and no one can know which, so they are never used.
    pub fn open(
        path: &Path,
        kek: Arc<dyn Kek>,
        signer: Arc<dyn CheckpointSigner>,
        clock: Arc<dyn Clock>,
        opts: StoreOptions,
    ) -> Result<(Self, Loaded), KmsError> {
        let db = Arc::new(Database::create(path).map_err(db_err)?);
        let now = clock.now_ms();
        let mut loaded = Loaded::default();
        // Load live keys first (unwrapping each batch's data key once): a wrong KEK fails here, before
        // anything is written.
        {
            let txn = db.begin_read().map_err(db_err)?;
            // (index in the batch, key_ID, ciphertext, announced), by batch: both row formats
            type SealedRow = (u64, String, Vec<u8>, bool);
            let mut by_batch: BTreeMap<u64, Vec<SealedRow>> = BTreeMap::new();
            if let Ok(live) = txn.open_table(LIVE) {
                for row in live.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let (batch, index) = unslot(k.value());
                    let r = LiveRow::decode(v.value())?;
                    by_batch.entry(batch).or_default().push((
                        index,
                        r.id.to_string(),
                        r.ct.to_vec(),
                        r.announced,
                    ));
                }
            }
            if let Ok(live) = txn.open_table(OLD_LIVE) {
                for row in live.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let r: LiveRecord = dec("live key", v.value())?;
                    let ct = hex::decode(&r.ct).map_err(|e| corrupt("sealed key", e))?;
                    by_batch.entry(r.batch).or_default().push((
                        r.index,
                        k.value().to_string(),
                        ct,
                        r.announced,
                    ));
                }
            }
            if !by_batch.is_empty() {
                let batches = txn.open_table(BATCHES).map_err(db_err)?;
                for (batch, mut recs) in by_batch {
                    recs.sort_by_key(|r| r.0);
                    let b: BatchRecord = match batches.get(batch).map_err(db_err)? {
                        Some(v) => dec("batch", v.value())?,
                        None => return Err(corrupt("live key", format!("batch {batch} missing"))),
                    };
                    let Some(w) = &b.wrapped_dk else {
                        return Err(corrupt(
                            "batch",
                            format!("batch {batch} has live keys but no data key"),
                        ));
                    };
                    let blob = hex::decode(w).map_err(|e| corrupt("wrapped data key", e))?;
                    let dk = kek.unwrap(&blob, &batch_context(batch))?;
                    for (index, id, ct, announced) in recs {
                        let key = open_with(&dk, index, id.as_bytes(), &ct)?;
                        loaded.keys.push(StoredKey {
                            link: b.link.clone(),
                            id,
                            key,
                            announced,
                        });
                    }
                }
            }
        }
        // The signer must be the one that signed this log (a wrong token or label would sign
        // checkpoints nobody can verify later): check the last checkpoint before writing anything.
        {
            let txn = db.begin_read().map_err(db_err)?;
            if let Ok(t) = txn.open_table(CHECKPOINTS)
                && let Some((k, v)) = t.last().map_err(db_err)?
            {
                let cp: Checkpoint = dec("checkpoint", v.value())?;
                let sig = hex::decode(&cp.sig).map_err(|e| corrupt("checkpoint", e))?;
                if !signer.verify(&audit::checkpoint_message(cp.seq, &cp.hash), &sig)? {
                    return Err(audit::AuditError::BadSignature(k.value()).into());
                }
            }
        }
        // Recovery: one transaction, audited, checkpointed.
        let mut head = Head {
            seq: 0,
            hash: GENESIS,
            last_checkpoint: 0,
        };
        let next_spent;
        {
            let txn = db.begin_write().map_err(db_err)?;
            let migrated = migrate_v1_rows(&txn)?;
            {
                let mut t = Tables::open(&txn)?;
                next_spent = t
                    .spent
                    .last()
                    .map_err(db_err)?
                    .map_or(0, |(k, _)| k.value() + 1);
                if let Some((k, v)) = t.audit.last().map_err(db_err)? {
                    let rec: AuditRecord = dec("audit record", v.value())?;
                    let bytes = hex::decode(&rec.hash).map_err(|e| corrupt("audit hash", e))?;
                    head.seq = k.value();
                    head.hash = bytes
                        .try_into()
                        .map_err(|_| corrupt("audit hash", "length"))?;
                }
                if let Some((k, _)) = t.checkpoints.last().map_err(db_err)? {
                    head.last_checkpoint = k.value();
                }
                let mut pending = Vec::new();
                for row in t.batches.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    let b: BatchRecord = dec("batch", v.value())?;
                    if b.state == BatchState::Requested {
                        pending.push(b);
                    }
                }
                if migrated > 0 {
                    info!(rows = migrated, "key rows moved to the slot-keyed tables");
                }
                for mut b in pending {
                    warn!(link = %b.link, batch = b.id, number = b.number, "writing off a fetch whose answer was never recorded");
                    b.state = BatchState::WrittenOff;
                    t.put_batch(&b)?;
                    t.bump("written_off_keys", u64::from(b.number))?;
                    t.bump("written_off_batches", 1)?;
                    t.append(
                        &mut head,
                        now,
                        &AuditEvent::WrittenOff {
                            link: b.link.clone(),
                            batch: b.id,
                            number: b.number,
                            ids: b.ids.clone(),
                            reason: "crash: the request was recorded, its answer never was".into(),
                        },
                    )?;
                    loaded.written_off.push((b.id, b.link, b.number));
                }
                t.append(
                    &mut head,
                    now,
                    &AuditEvent::Started {
                        written_off_batches: loaded.written_off.len() as u64,
                    },
                )?;
                t.checkpoint(&mut head, signer.as_ref())?;
                t.finish()?;
            }
            txn.commit().map_err(db_err)?;
        }
        info!(path = %path.display(), live = loaded.keys.len(), written_off = loaded.written_off.len(), "key store open");
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let w = Writer {
            stats: stats.clone(),
            db: db.clone(),
            kek: kek.clone(),
            signer: signer.clone(),
            clock,
            opts,
            head,
            next_spent,
            live: live_slots(&db)?,
        };
        let writer = std::thread::Builder::new()
            .name("kms-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| KmsError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Self {
                stats,
                db,
                kek,
                tx: Some(tx),
                writer: Some(writer),
                signer,
            },
            loaded,
        ))
    }

    fn send(&self, op: Op, reply: Replier) -> Result<(), KmsError> {
        self.tx
            .as_ref()
            .ok_or(KmsError::Closed)?
            .send(Job { op, reply })
            .map_err(|_| KmsError::Closed)
    }

    /// Submits an operation and blocks until it is durable (not from inside an async task).
    pub(crate) fn submit_blocking(&self, op: Op) -> Result<Out, KmsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(op, Replier::Sync(tx))?;
        rx.recv().map_err(|_| KmsError::Closed)?
    }

    /// Submits an operation and waits until it is durable.
    pub(crate) async fn submit(&self, op: Op) -> Result<Out, KmsError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(op, Replier::Async(tx))?;
        rx.await.map_err(|_| KmsError::Closed)?
    }

    /// Group-commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// The KEK (to seal answers before they are submitted).
    pub fn kek(&self) -> Arc<dyn Kek> {
        self.kek.clone()
    }

    /// Every audit record from `from` (1-based), at most `limit`.
    pub fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.range(from..).map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(dec("audit record", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Verifies the whole audit log (chain and checkpoint signatures).
    pub fn verify_audit(&self) -> Result<VerifyReport, KmsError> {
        verify_db(&self.db, self.signer.as_ref())
    }

    /// Counts for status displays.
    pub fn counts(&self) -> Result<StoreCounts, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let get = |k: &str| -> Result<u64, KmsError> {
            Ok(meta.get(k).map_err(db_err)?.map(|v| v.value()).unwrap_or(0))
        };
        Ok(StoreCounts {
            live_keys: txn
                .open_table(LIVE)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            spent_keys: txn
                .open_table(SPENT)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            audit_records: txn
                .open_table(AUDIT)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            checkpoints: txn
                .open_table(CHECKPOINTS)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?,
            written_off_batches: get("written_off_batches")?,
            written_off_keys: get("written_off_keys")?,
        })
    }

    /// Live QKD keys (metadata only).
    pub fn live_keys(&self) -> Result<Vec<LiveKeyInfo>, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let Ok(t) = txn.open_table(LIVE) else {
            return Ok(Vec::new());
        };
        let batches = txn.open_table(BATCHES).map_err(db_err)?;
        let mut links: BTreeMap<u64, String> = BTreeMap::new();
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (batch, _) = unslot(k.value());
            let r = LiveRow::decode(v.value())?;
            if let std::collections::btree_map::Entry::Vacant(e) = links.entry(batch) {
                let b: BatchRecord = match batches.get(batch).map_err(db_err)? {
                    Some(v) => dec("batch", v.value())?,
                    None => return Err(corrupt("live key", format!("batch {batch} missing"))),
                };
                e.insert(b.link);
            }
            out.push(LiveKeyInfo {
                key_id: r.id.to_string(),
                link: links.get(&batch).cloned().unwrap_or_default(),
                batch,
                announced: r.announced,
            });
        }
        Ok(out)
    }

    /// Every delivered key ID with its consumer, in delivery order.
    pub fn spent_keys(&self) -> Result<Vec<(String, String)>, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let Ok(t) = txn.open_table(SPENT) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            let r = SpentRow::decode(v.value())?;
            out.push((r.id.to_string(), r.consumer.to_string()));
        }
        Ok(out)
    }

    /// Whether a key ID was delivered already (received once and no longer stored).
    pub fn is_spent(&self, key_id: &str) -> Result<bool, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let Ok(index) = txn.open_table(KEY_INDEX) else {
            return Ok(false);
        };
        let Some(slot) = index.get(key_id).map_err(db_err)?.map(|v| v.value()) else {
            return Ok(false);
        };
        let live = txn.open_table(LIVE).map_err(db_err)?;
        Ok(live.get(slot).map_err(db_err)?.is_none())
    }

    /// Managed keys (metadata only).
    pub fn managed_keys(&self) -> Result<Vec<ManagedInfo>, KmsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(MANAGED).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            let m: ManagedRecord = dec("managed key", v.value())?;
            out.push(info_of(&m));
        }
        Ok(out)
    }

    /// Stops the writer after it has committed everything queued, and signs a final checkpoint.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Verifies the audit log of a database opened by someone else (the CLI when the service is stopped).
pub fn verify_db(db: &Database, signer: &dyn CheckpointSigner) -> Result<VerifyReport, KmsError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut records = Vec::new();
    let mut cps = Vec::new();
    // A database that never had a write has no tables yet: an empty log.
    if let Ok(t) = txn.open_table(AUDIT) {
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let r: AuditRecord = serde_json::from_slice(v.value())
                .map_err(|e| audit::AuditError::Malformed(k.value(), e.to_string()))?;
            records.push(r);
        }
    }
    if let Ok(t) = txn.open_table(CHECKPOINTS) {
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            let c: Checkpoint = dec("checkpoint", v.value())?;
            cps.push(c);
        }
    }
    Ok(audit::verify(&records, &cps, signer)?)
}

/// Opens a stopped service's database for `qsi kms audit verify`.
pub fn open_db(path: &Path) -> Result<Database, KmsError> {
    Database::open(path).map_err(db_err)
}

/// Test hooks that reach under the API, to simulate an attacker editing the file.
#[doc(hidden)]
pub mod tamper {
    use super::*;

    /// Rewrites the event text of audit record `seq` (without fixing hashes).
    pub fn edit_audit(db: &Database, seq: u64, from: &str, to: &str) -> Result<(), KmsError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(AUDIT).map_err(db_err)?;
            let bytes = t.get(seq).map_err(db_err)?.map(|v| v.value().to_vec());
            if let Some(bytes) = bytes {
                let mut r: AuditRecord = dec("audit", &bytes)?;
                r.event = r.event.replace(from, to);
                t.insert(seq, enc(&r)?.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Deletes audit records from `seq` on.
    pub fn truncate_audit(db: &Database, seq: u64) -> Result<(), KmsError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(AUDIT).map_err(db_err)?;
            t.retain(|k, _| k < seq).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Deletes one audit record.
    pub fn delete_audit(db: &Database, seq: u64) -> Result<(), KmsError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(AUDIT).map_err(db_err)?;
            t.remove(seq).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
