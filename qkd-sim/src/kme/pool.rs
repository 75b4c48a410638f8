//! The key pool of one simulated link: the pure core both KMEs share (no I/O, RNG passed in).
//!
//! Each side of the link appends its own final key (Alice's and Bob's corrected, amplified bits)
//! as blocks come out of the pipeline. When a master SAE asks its KME for keys, the KME takes the
//! next `number x size` bytes from its own side's stream and hands them out under fresh key IDs;
//! the same byte range of the other side's stream is set aside under those IDs for the other KME,
//! which hands it to the named slave SAE once, on dec_keys. Both streams advance in lock step,
//! which is what the KME-to-KME synchronisation of a real device pair achieves; here it is one
//! short critical section in memory, never held across I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use qsi_etsi014::messages::DecodedKey;
use qsi_etsi014::{Etsi014Error, KeyId, Limits, ValidKeyRequest};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// One side of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The transmitter's KME.
    Alice,
    /// The receiver's KME.
    Bob,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Alice => Side::Bob,
            Side::Bob => Side::Alice,
        }
    }

    fn idx(self) -> usize {
        match self {
            Side::Alice => 0,
            Side::Bob => 1,
        }
    }
}

/// Whether the link produces key, as the last block's parameter estimation decided.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// No block has finished yet.
    Starting,
    /// The last block passed parameter estimation and added key.
    Producing,
    /// The last block was aborted (QBER above threshold or another check failed).
    Aborted {
        /// Why, in words.
        reason: String,
    },
}

/// What the pipeline reports after a block; the pool keeps the latest for status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinkReport {
    /// Producing or aborted.
    #[serde(flatten)]
    pub state: LinkState,
    /// QBER the last block measured (sifted key, before error correction).
    pub qber: Option<f64>,
    /// Blocks run so far.
    pub blocks: u64,
    /// Blocks aborted so far.
    pub aborted_blocks: u64,
    /// Secret bits added to the pool so far (per side).
    pub produced_bits: u64,
    /// Bits dropped because the pool was full.
    pub dropped_bits: u64,
    /// Fraction of pulses the eavesdropper attacks (0 when off).
    pub eve_fraction: f64,
    /// Link time simulated so far, in seconds (blocks aborted or not).
    pub link_seconds: f64,
    /// Final (secret) key bits the link distilled so far, per side, kept or dropped.
    pub secret_bits: u64,
    /// The link's secret key rate: `secret_bits / link_seconds` (bit/s of link time; 0 before the
    /// first block). Wall-clock rate is this times the configured speed-up.
    pub secret_key_rate_bps: f64,
}

/// Who may fetch the keys of one request (shared by its keys).
struct Share {
    master: String,
    /// The slave SAE and the additional slaves (at most 64).
    slaves: Vec<String>,
}

struct Pending {
    share: Arc<Share>,
    /// Bit i set: `share.slaves[i]` has fetched the key.
    fetched: u64,
    key: Zeroizing<Vec<u8>>,
}

/// Keys issued to a master SAE: their IDs and their bytes back to back, `size` bytes each.
pub struct Issued {
    /// The key IDs, in order.
    pub ids: Vec<KeyId>,
    /// The keys, concatenated.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Bytes per key.
    pub size: usize,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("ids", &self.ids)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// The keys with their IDs.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (KeyId, &[u8])> {
        self.ids
            .iter()
            .copied()
            .zip(self.bytes.chunks(self.size.max(1)))
    }
}

/// Largest number of slave SAEs (the slave and the additional ones) one key can have.
pub const MAX_SLAVES: usize = 64;

/// A byte stream of one side's final key, erased as it is consumed.
#[derive(Default)]
struct Stream {
    chunks: VecDeque<Zeroizing<Vec<u8>>>,
    /// Offset into the front chunk.
    head: usize,
    len: usize,
}

impl Stream {
    fn push(&mut self, bytes: Zeroizing<Vec<u8>>) {
        self.len += bytes.len();
        if !bytes.is_empty() {
            self.chunks.push_back(bytes);
        }
    }

    /// Takes `n` bytes (the caller checked `n <= len`), zeroizing consumed chunks.
    fn take(&mut self, n: usize) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let want = n - out.len();
            let avail = front.len() - self.head;
            let k = want.min(avail);
            out.extend_from_slice(&front[self.head..self.head + k]);
            front[self.head..self.head + k].zeroize();
            self.head += k;
            if self.head == front.len() {
                self.chunks.pop_front();
                self.head = 0;
            }
        }
        self.len -= out.len();
        out
    }
}

/// The pool of one link: both sides' key streams and the keys set aside for dec_keys.
pub struct LinkPool {
    limits: Limits,
    streams: [Stream; 2],
    /// Keys issued by the other side's KME, waiting for their slave SAEs at this side.
    pending: [HashMap<KeyId, Pending>; 2],
    report: LinkReport,
}

impl LinkPool {
    /// An empty pool enforcing `limits` (capacity: `max_key_count` keys of `key_size` bits).
    pub fn new(limits: Limits) -> Self {
        LinkPool {
            limits,
            streams: Default::default(),
            pending: Default::default(),
            report: LinkReport {
                state: LinkState::Starting,
                qber: None,
                blocks: 0,
                aborted_blocks: 0,
                produced_bits: 0,
                dropped_bits: 0,
                eve_fraction: 0.0,
                link_seconds: 0.0,
                secret_bits: 0,
                secret_key_rate_bps: 0.0,
            },
        }
    }

    /// The limits this pool enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn capacity_bytes(&self) -> usize {
        usize::try_from(
            self.limits
                .max_key_count
                .saturating_mul(u64::from(self.limits.key_size / 8)),
        )
        .unwrap_or(usize::MAX)
    }

    /// Adds one block's final key: `alice` and `bob` are each side's own bits (equal when error
    /// correction and verification worked). What does not fit under the capacity is dropped, as
    /// a device with a full key store does.
    pub fn add_block(&mut self, alice: Zeroizing<Vec<u8>>, bob: Zeroizing<Vec<u8>>, qber: f64) {
        self.report.blocks += 1;
        self.report.qber = Some(qber);
        self.report.state = LinkState::Producing;
        let n = alice.len().min(bob.len());
        self.report.secret_bits += 8 * n as u64;
        self.update_rate();
        let room = self.capacity_bytes().saturating_sub(self.streams[0].len);
        let keep = n.min(room);
        self.report.dropped_bits += 8 * (n - keep) as u64;
        if keep == 0 {
            return;
        }
        let (mut alice, mut bob) = (alice, bob);
        alice.truncate(keep);
        bob.truncate(keep);
        self.streams[0].push(alice);
        self.streams[1].push(bob);
        self.report.produced_bits += 8 * keep as u64;
    }

    /// Records an aborted block (no key added).
    pub fn abort_block(&mut self, qber: Option<f64>, reason: String) {
        self.report.blocks += 1;
        self.report.aborted_blocks += 1;
        self.report.qber = qber.or(self.report.qber);
        self.report.state = LinkState::Aborted { reason };
    }

    /// Adds the link time one block took (called for every block, keyed or aborted).
    pub fn add_link_time(&mut self, seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            self.report.link_seconds += seconds;
        }
        self.update_rate();
    }

    fn update_rate(&mut self) {
        let t = self.report.link_seconds;
        self.report.secret_key_rate_bps = if t > 0.0 {
            self.report.secret_bits as f64 / t
        } else {
            0.0
        };
    }

    /// Notes the eavesdropper's current fraction for status.
    pub fn set_eve_fraction(&mut self, f: f64) {
        self.report.eve_fraction = f;
    }

    /// The latest link report.
    pub fn report(&self) -> &LinkReport {
        &self.report
    }

    /// Bits available to hand out (same on both sides).
    pub fn available_bits(&self) -> u64 {
        8 * self.streams[0].len as u64
    }

    /// Keys of the default size available, as `stored_key_count` reports.
    pub fn stored_key_count(&self) -> u64 {
        self.available_bits() / u64::from(self.limits.key_size)
    }

    /// Keys waiting at `side` for their slave SAEs.
    pub fn pending_count(&self, side: Side) -> usize {
        self.pending[side.idx()].len()
    }

    /// Drops every key waiting for a slave SAE at `side` (the benchmark empties it between runs).
    pub fn clear_pending(&mut self, side: Side) {
        self.pending[side.idx()].clear();
    }

    /// Get key: the KME at `side` issues `req` to master SAE `master` for slave `slave`.
    /// All or nothing: on error the pool is unchanged.
    pub fn issue(
        &mut self,
        side: Side,
        master: &str,
        slave: &str,
        req: &ValidKeyRequest,
        rng: &mut dyn RngCore,
    ) -> Result<Issued, Etsi014Error> {
        let size = req.size_bytes();
        let n = req.number as usize;
        let need = size * n;
        if need > self.streams[side.idx()].len {
            if let LinkState::Aborted { reason } = &self.report.state {
                return Err(Etsi014Error::LinkDown {
                    reason: reason.clone(),
                });
            }
            return Err(Etsi014Error::NotEnoughKey {
                requested_bits: 8 * need as u64,
                available_bits: self.available_bits(),
            });
        }
        let peer = side.peer().idx();
        if (self.pending[peer].len() + n) as u64 > self.limits.max_key_count {
            return Err(Etsi014Error::NotEnoughKey {
                requested_bits: 8 * need as u64,
                available_bits: 0,
            });
        }
        let mut slaves = Vec::with_capacity(1 + req.additional_slave_sae_ids.len());
        slaves.push(slave.to_owned());
        slaves.extend(req.additional_slave_sae_ids.iter().cloned());
        if slaves.len() > MAX_SLAVES {
            return Err(Etsi014Error::Internal {
                detail: format!("at most {MAX_SLAVES} slave SAEs per key"),
            });
        }
        let share = Arc::new(Share {
            master: master.to_owned(),
            slaves,
        });
        let mine = self.streams[side.idx()].take(need);
        let theirs = self.streams[peer].take(need);
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let mut id = KeyId::from_random_bytes(random16(rng));
            while self.pending[peer].contains_key(&id) {
                id = KeyId::from_random_bytes(random16(rng));
            }
            self.pending[peer].insert(
                id,
                Pending {
                    share: share.clone(),
                    fetched: 0,
                    key: Zeroizing::new(theirs[i * size..(i + 1) * size].to_vec()),
                },
            );
            ids.push(id);
        }
        Ok(Issued {
            ids,
            bytes: mine,
            size,
        })
    }

    /// Get key with key IDs: slave SAE `caller` at `side` fetches keys that master SAE `master`
    /// obtained from the other KME. An ID never issued, already delivered to this caller, or
    /// issued to another master is "not found" (400); a key issued for other slaves is refused
    /// (401). All or nothing: on error no key leaves the pool.
    pub fn redeem(
        &mut self,
        side: Side,
        caller: &str,
        master: &str,
        ids: &[KeyId],
    ) -> Result<Vec<DecodedKey>, Etsi014Error> {
        let map = &mut self.pending[side.idx()];
        let mut missing = Vec::new();
        let mut slots = Vec::with_capacity(ids.len());
        for id in ids {
            match map.get(id) {
                Some(p) if p.share.master == master => {
                    let Some(i) = p.share.slaves.iter().position(|s| s == caller) else {
                        return Err(Etsi014Error::Forbidden {
                            caller: caller.to_owned(),
                            action: format!(
                                "fetch key {id}, which {master} shared with other SAEs"
                            ),
                        });
                    };
                    if p.fetched & (1 << i) != 0 {
                        missing.push(id.to_string());
                    }
                    slots.push(i);
                }
                _ => missing.push(id.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(Etsi014Error::KeysNotFound { key_ids: missing });
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, i) in ids.iter().zip(slots) {
            let Some(p) = map.get_mut(id) else { continue };
            p.fetched |= 1 << i;
            let all = if p.share.slaves.len() >= 64 {
                u64::MAX
            } else {
                (1u64 << p.share.slaves.len()) - 1
            };
            if p.fetched == all {
                if let Some(p) = map.remove(id) {
                    out.push((*id, p.key));
                }
            } else {
                out.push((*id, p.key.clone()));
            }
        }
        Ok(out)
    }
}

fn random16(rng: &mut dyn RngCore) -> [u8; 16] {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn limits() -> Limits {
        Limits {
            key_size: 256,
            max_key_count: 16,
            max_key_per_request: 8,
            max_key_size: 1024,
            min_key_size: 64,
            max_sae_id_count: 1,
        }
    }

    fn req(number: u32, size: u32) -> ValidKeyRequest {
        ValidKeyRequest {
            number,
            size,
            additional_slave_sae_ids: vec![],
        }
    }

    fn filled() -> LinkPool {
        let mut p = LinkPool::new(limits());
        let a: Vec<u8> = (0..=255u8).collect();
        let mut b = a.clone();
        b[0] ^= 0xff; // Bob's bits differ in the first byte, to see whose bits each side serves
        p.add_block(Zeroizing::new(a), Zeroizing::new(b), 0.02);
        p
    }

    #[test]
    fn each_side_serves_its_own_bits_under_the_same_id() {
        let mut p = filled();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert_eq!(p.stored_key_count(), 8);
        let issued: Vec<(KeyId, Vec<u8>)> = p
            .issue(Side::Alice, "sae-a", "sae-b", &req(2, 256), &mut rng)
            .unwrap()
            .iter()
            .map(|(id, k)| (id, k.to_vec()))
            .collect();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0].1[0], 0);
        assert_eq!(&issued[1].1[..], &(32..64u8).collect::<Vec<_>>()[..]);
        assert_eq!(p.stored_key_count(), 6);
        assert_eq!(p.pending_count(Side::Bob), 2);
        let ids: Vec<_> = issued.iter().map(|k| k.0).collect();
        let got = p.redeem(Side::Bob, "sae-b", "sae-a", &ids).unwrap();
        assert_eq!(got[0].1[0], 0xff, "Bob's KME serves Bob's bits");
        assert_eq!(got[0].1[1..], issued[0].1[1..]);
        assert_eq!(got[1].1.to_vec(), issued[1].1);
        // Delivered keys have left the pool.
        assert!(matches!(
            p.redeem(Side::Bob, "sae-b", "sae-a", &ids[..1]),
            Err(Etsi014Error::KeysNotFound { .. })
        ));
    }

    #[test]
    fn only_the_named_slave_redeems_and_errors_leave_the_pool_alone() {
        let mut p = filled();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let issued = p
            .issue(Side::Alice, "sae-a", "sae-b", &req(1, 64), &mut rng)
            .unwrap();
        let id = issued.ids[0];
        assert!(matches!(
            p.redeem(Side::Bob, "sae-c", "sae-a", &[id]),
            Err(Etsi014Error::Forbidden { .. })
        ));
        assert!(matches!(
            p.redeem(Side::Bob, "sae-b", "sae-x", &[id]),
            Err(Etsi014Error::KeysNotFound { .. })
        ));
        assert!(matches!(
            p.redeem(Side::Alice, "sae-b", "sae-a", &[id]),
            Err(Etsi014Error::KeysNotFound { .. })
        ));
        let unknown = KeyId::from_random_bytes([9; 16]);
        assert!(matches!(
            p.redeem(Side::Bob, "sae-b", "sae-a", &[id, unknown]),
            Err(Etsi014Error::KeysNotFound { key_ids }) if key_ids == [unknown.to_string()]
        ));
        assert_eq!(
            p.pending_count(Side::Bob),
            1,
            "a failed request takes nothing"
        );
        assert_eq!(
            p.redeem(Side::Bob, "sae-b", "sae-a", &[id]).unwrap().len(),
            1
        );
    }

    #[test]
    fn additional_slaves_each_fetch_once() {
        let mut p = filled();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let r = ValidKeyRequest {
            number: 1,
            size: 128,
            additional_slave_sae_ids: vec!["sae-c".into()],
        };
        let id = p
            .issue(Side::Alice, "sae-a", "sae-b", &r, &mut rng)
            .unwrap()
            .ids[0];
        let b = p.redeem(Side::Bob, "sae-b", "sae-a", &[id]).unwrap();
        assert!(p.redeem(Side::Bob, "sae-b", "sae-a", &[id]).is_err());
        let c = p.redeem(Side::Bob, "sae-c", "sae-a", &[id]).unwrap();
        assert_eq!(b[0].1, c[0].1);
        assert_eq!(p.pending_count(Side::Bob), 0);
    }

    #[test]
    fn shortage_and_abort_are_503_and_take_nothing() {
        let mut p = filled();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let e = p
            .issue(Side::Bob, "sae-b", "sae-a", &req(8, 512), &mut rng)
            .unwrap_err();
        assert!(matches!(e, Etsi014Error::NotEnoughKey { .. }));
        assert_eq!(e.status(), 503);
        assert_eq!(p.available_bits(), 2048);
        p.abort_block(Some(0.25), "QBER 25.0% above 11.0%".into());
        // Stored keys stay usable after an abort; only a shortage reports the link state.
        assert!(
            p.issue(Side::Bob, "sae-b", "sae-a", &req(1, 256), &mut rng)
                .is_ok()
        );
        let e = p
            .issue(Side::Bob, "sae-b", "sae-a", &req(8, 1024), &mut rng)
            .unwrap_err();
        assert!(matches!(e, Etsi014Error::LinkDown { .. }), "{e:?}");
        assert_eq!(p.report().aborted_blocks, 1);
        assert_eq!(p.report().qber, Some(0.25));
    }

    #[test]
    fn a_full_pool_drops_new_blocks() {
        let mut p = LinkPool::new(limits()); // 16 keys x 32 bytes = 512 bytes
        for _ in 0..3 {
            p.add_block(
                Zeroizing::new(vec![1; 200]),
                Zeroizing::new(vec![1; 200]),
                0.01,
            );
        }
        assert_eq!(p.available_bits(), 512 * 8, "filled to the byte");
        assert_eq!(p.report().dropped_bits, 88 * 8);
        assert_eq!(p.report().produced_bits, 512 * 8);
    }

    #[test]
    fn the_secret_key_rate_counts_dropped_bits_and_aborted_link_time() {
        let mut p = LinkPool::new(limits());
        assert_eq!(p.report().secret_key_rate_bps, 0.0, "no block yet");
        p.add_link_time(2.0);
        p.add_block(
            Zeroizing::new(vec![1; 600]),
            Zeroizing::new(vec![1; 600]),
            0.03,
        );
        // 600 bytes distilled in 2 s, although only 512 fit in the pool
        assert_eq!(p.report().secret_key_rate_bps, 2400.0);
        p.add_link_time(2.0);
        p.abort_block(Some(0.2), "QBER".into());
        assert_eq!(p.report().secret_key_rate_bps, 1200.0);
        assert_eq!(p.report().link_seconds, 4.0);
    }
}
