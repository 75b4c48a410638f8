//! The in-memory key pool of one QKD link, with its metrics and alarms. Pure: no I/O, time passed in.
//!
//! Master side: keys fetched with `enc_keys` wait in `fresh`; [`Pool::offer`] moves some to `announced`
//! (their IDs go to the peer); a handshake takes the oldest announced key. Slave side: the peer's
//! announced IDs wait in `wanted` until fetched with `dec_keys`; fetched keys sit in `ready` by ID, so a
//! handshake only ever looks a key up in memory. Both sides are bounded by `capacity`.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::secret::KeyMaterial;
use crate::store::Role;

/// Sizing and alarm thresholds of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Most keys held in memory (fetched, not yet delivered).
    pub capacity: usize,
    /// Below this many keys the low-reserve alarm is raised and the fetcher refills.
    pub low_water: usize,
    /// Keys per `enc_keys` / `dec_keys` request.
    pub batch: usize,
    /// Without a successful fetch for this long while the pool is not full, the link counts as stalled.
    pub stall_after_ms: u64,
}

/// Alarms a pool can raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alarm {
    /// Fewer keys than `low_water`.
    LowReserve,
    /// No key arrived for `stall_after_ms` while the pool needed keys.
    LinkStalled,
}

/// Counters and gauges of one pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Keys in memory now.
    pub stored: usize,
    /// Of which announced to the peer (master) or fetched on the peer's announcement (slave).
    pub announced: usize,
    /// Slave: announced IDs not fetched yet.
    pub wanted: usize,
    /// Keys fetched since start.
    pub fetched_total: u64,
    /// Keys delivered to consumers since start.
    pub consumed_total: u64,
    /// Fetches that failed since start.
    pub fetch_errors: u64,
    /// Keys written off since start (fetches whose answer was lost).
    pub written_off_total: u64,
    /// Latency of the last successful fetch.
    pub last_fetch_ms: Option<u64>,
    /// Exponentially weighted mean fetch latency.
    pub mean_fetch_ms: Option<f64>,
    /// Keys per second arriving from the KME, averaged over the recent fetches.
    pub key_rate_per_s: f64,
    /// When the last fetch succeeded.
    pub last_success_ms: Option<u64>,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
    /// Alarms raised now.
    pub alarms: Vec<Alarm>,
}

/// One link's pool.
#[derive(Debug)]
pub struct Pool {
    role: Role,
    policy: PoolPolicy,
    fresh: VecDeque<(String, KeyMaterial)>,
    announced: VecDeque<(String, KeyMaterial)>,
    ready: HashMap<String, KeyMaterial>,
    wanted: VecDeque<String>,
    wanted_set: HashSet<String>,
    in_flight: usize,
    started_ms: u64,
    rate_window: VecDeque<(u64, usize)>,
    m: Metrics,
}

impl Pool {
    /// An empty pool.
    pub fn new(role: Role, policy: PoolPolicy, now_ms: u64) -> Self {
        Self {
            role,
            policy,
            fresh: VecDeque::new(),
            announced: VecDeque::new(),
            ready: HashMap::new(),
            wanted: VecDeque::new(),
            wanted_set: HashSet::new(),
            in_flight: 0,
            started_ms: now_ms,
            rate_window: VecDeque::new(),
            m: Metrics::default(),
        }
    }

    /// The link's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The pool's policy.
    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    /// Keys held in memory.
    pub fn stored(&self) -> usize {
        self.fresh.len() + self.announced.len() + self.ready.len()
    }

    /// Restores a key loaded from the store at start-up.
    pub fn restore(&mut self, id: String, key: KeyMaterial, announced: bool) {
        match self.role {
            Role::Master if announced => self.announced.push_back((id, key)),
            Role::Master => self.fresh.push_back((id, key)),
            Role::Slave => {
                self.ready.insert(id, key);
            }
        }
    }

    /// How many keys the fetcher should ask for now (0: nothing to do), and reserves them as in flight.
    /// Master: refill to capacity once below capacity minus one batch (or below low water). Slave: the
    /// announced IDs not yet fetched, up to one batch and the free room.
    pub fn plan_fetch(&mut self) -> Vec<String> {
        let room = self
            .policy
            .capacity
            .saturating_sub(self.stored() + self.in_flight);
        match self.role {
            Role::Master => {
                let below = self.stored() + self.in_flight < self.policy.low_water
                    || room >= self.policy.batch;
                let n = room.min(self.policy.batch);
                if below && n > 0 {
                    self.in_flight += n;
                    // master fetches carry no IDs: the count is the length of the returned vector
                    vec![String::new(); n]
                } else {
                    Vec::new()
                }
            }
            Role::Slave => {
                let n = room.min(self.policy.batch).min(self.wanted.len());
                let ids: Vec<String> = self.wanted.drain(..n).collect();
                for id in &ids {
                    self.wanted_set.remove(id);
                }
                self.in_flight += ids.len();
                ids
            }
        }
    }

    /// Records a fetch that ended: `planned` keys were in flight, `keys` arrived (already durable).
    pub fn fetched(
        &mut self,
        planned: usize,
        keys: Vec<(String, KeyMaterial)>,
        latency_ms: u64,
        now_ms: u64,
    ) {
        self.in_flight = self.in_flight.saturating_sub(planned);
        let n = keys.len();
        for (id, key) in keys {
            match self.role {
                Role::Master => self.fresh.push_back((id, key)),
                Role::Slave => {
                    self.ready.insert(id, key);
                }
            }
        }
        self.m.fetched_total += n as u64;
        self.m.last_fetch_ms = Some(latency_ms);
        self.m.mean_fetch_ms = Some(match self.m.mean_fetch_ms {
            None => latency_ms as f64,
            Some(m) => 0.8 * m + 0.2 * latency_ms as f64,
        });
        self.m.last_success_ms = Some(now_ms);
        self.m.last_error = None;
        self.rate_window.push_back((now_ms, n));
        while self.rate_window.len() > 32 {
            self.rate_window.pop_front();
        }
    }

    /// Records a failed fetch. `written_off` keys may have left the KME.
    pub fn fetch_failed(&mut self, planned: usize, written_off: usize, error: String) {
        self.in_flight = self.in_flight.saturating_sub(planned);
        self.m.fetch_errors += 1;
        self.m.written_off_total += written_off as u64;
        self.m.last_error = Some(error);
    }

    /// Slave: the peer announced these IDs. Returns how many were queued (IDs already held or queued
    /// are ignored). Refuses (returns None) if the wanted queue would exceed four times the capacity.
    pub fn want(&mut self, ids: &[String]) -> Option<usize> {
        let new: Vec<&String> = ids
            .iter()
            .filter(|id| !self.ready.contains_key(*id) && !self.wanted_set.contains(*id))
            .collect();
        if self.wanted.len() + new.len() > 4 * self.policy.capacity {
            return None;
        }
        for id in &new {
            self.wanted.push_back((*id).clone());
            self.wanted_set.insert((*id).clone());
        }
        Some(new.len())
    }

    /// Master: moves up to `n` fresh keys to announced and returns their IDs.
    pub fn offer(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let Some((id, key)) = self.fresh.pop_front() else {
                break;
            };
            ids.push(id.clone());
            self.announced.push_back((id, key));
        }
        ids
    }

    /// Master: takes the oldest announced key, or with `any` also a fresh one (local SAEs need no
    /// announcement: their peer fetches by ID from its own KME).
    pub fn take(&mut self, any: bool) -> Option<(String, KeyMaterial)> {
        let k = self
            .announced
            .pop_front()
            .or_else(|| if any { self.fresh.pop_front() } else { None })?;
        self.m.consumed_total += 1;
        Some(k)
    }

    /// Master: `n` keys at once (announced first, then fresh), or none if fewer are held.
    pub fn take_n(&mut self, n: usize) -> Option<Vec<(String, KeyMaterial)>> {
        if self.announced.len() + self.fresh.len() < n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self
                .announced
                .pop_front()
                .or_else(|| self.fresh.pop_front())
            {
                Some(k) => out.push(k),
                None => break,
            }
        }
        self.m.consumed_total += out.len() as u64;
        Some(out)
    }

    /// Slave: the keys with these IDs, all or none; on failure, the IDs that are not held.
    pub fn take_ids(&mut self, ids: &[String]) -> Result<Vec<KeyMaterial>, Vec<String>> {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.ready.contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        let out: Vec<KeyMaterial> = ids.iter().filter_map(|id| self.ready.remove(id)).collect();
        self.m.consumed_total += out.len() as u64;
        Ok(out)
    }

    /// Slave: removes the key with this ID.
    pub fn take_id(&mut self, id: &str) -> Option<KeyMaterial> {
        let k = self.ready.remove(id)?;
        self.m.consumed_total += 1;
        Some(k)
    }

    /// Either role: removes whichever of `ids` are in memory (master: announced or fresh; slave:
    /// fetched), in the order asked, and leaves the others alone (the tunnels' claim of announced keys).
    pub fn take_present(&mut self, ids: &[String]) -> Vec<(String, KeyMaterial)> {
        let mut out = Vec::new();
        for id in ids {
            let found = match self.role {
                Role::Slave => self.ready.remove(id),
                Role::Master => {
                    let from = |q: &mut VecDeque<(String, KeyMaterial)>| {
                        q.iter()
                            .position(|(i, _)| i == id)
                            .and_then(|p| q.remove(p))
                    };
                    from(&mut self.announced)
                        .or_else(|| from(&mut self.fresh))
                        .map(|(_, k)| k)
                }
            };
            if let Some(k) = found {
                out.push((id.clone(), k));
            }
        }
        self.m.consumed_total += out.len() as u64;
        out
    }

    /// Whether the slave pool holds this ID in memory now.
    pub fn holds(&self, id: &str) -> bool {
        self.ready.contains_key(id)
    }

    /// Whether the slave pool holds this ID or waits for it.
    pub fn knows(&self, id: &str) -> bool {
        self.ready.contains_key(id) || self.wanted_set.contains(id)
    }

    /// Metrics and alarms at `now_ms`.
    pub fn metrics(&self, now_ms: u64) -> Metrics {
        let mut m = self.m.clone();
        m.stored = self.stored();
        m.announced = match self.role {
            Role::Master => self.announced.len(),
            Role::Slave => self.ready.len(),
        };
        m.wanted = self.wanted.len();
        if let (Some((t0, _)), Some((t1, _))) = (self.rate_window.front(), self.rate_window.back())
            && t1 > t0
        {
            let keys: usize = self.rate_window.iter().skip(1).map(|(_, n)| n).sum();
            m.key_rate_per_s = keys as f64 * 1000.0 / (t1 - t0) as f64;
        }
        m.alarms.clear();
        if self.stored() < self.policy.low_water {
            m.alarms.push(Alarm::LowReserve);
        }
        let needs = match self.role {
            Role::Master => self.stored() < self.policy.capacity,
            Role::Slave => !self.wanted.is_empty() || self.in_flight > 0,
        };
        let since = self.m.last_success_ms.unwrap_or(self.started_ms);
        if needs && now_ms.saturating_sub(since) > self.policy.stall_after_ms {
            m.alarms.push(Alarm::LinkStalled);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PoolPolicy {
        PoolPolicy {
            capacity: 10,
            low_water: 4,
            batch: 4,
            stall_after_ms: 1000,
        }
    }

    fn keys(prefix: &str, n: usize) -> Vec<(String, KeyMaterial)> {
        (0..n)
            .map(|i| (format!("{prefix}{i}"), KeyMaterial::new(vec![i as u8; 32])))
            .collect()
    }

    #[test]
    fn master_refills_to_capacity_and_never_beyond() {
        let mut p = Pool::new(Role::Master, policy(), 0);
        let mut total = 0;
        loop {
            let plan = p.plan_fetch();
            if plan.is_empty() {
                break;
            }
            total += plan.len();
            p.fetched(plan.len(), keys(&format!("b{total}-"), plan.len()), 5, 10);
        }
        // whole batches only, never above capacity: 4 + 4, then 2 free < one batch
        assert_eq!(p.stored(), 8);
        assert_eq!(total, 8);
        assert!(p.plan_fetch().is_empty(), "full pool fetches nothing");
        // consume below capacity minus a batch: refill planned
        for _ in 0..2 {
            p.take(true).unwrap();
        }
        assert_eq!(p.plan_fetch().len(), 4);
        assert_eq!(p.stored() + 4, 10);
    }

    #[test]
    fn handshake_takes_announced_keys_in_order_only() {
        let mut p = Pool::new(Role::Master, policy(), 0);
        p.fetched(0, keys("k", 5), 1, 1);
        assert!(p.take(false).is_none(), "nothing announced yet");
        let ids = p.offer(2);
        assert_eq!(ids, vec!["k0", "k1"]);
        assert_eq!(p.take(false).unwrap().0, "k0");
        assert_eq!(p.take(false).unwrap().0, "k1");
        assert!(p.take(false).is_none());
        assert_eq!(p.take(true).unwrap().0, "k2");
        assert_eq!(p.metrics(2).consumed_total, 3);
    }

    #[test]
    fn slave_fetches_announced_ids_and_hands_each_out_once() {
        let mut p = Pool::new(Role::Slave, policy(), 0);
        let ids: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        assert_eq!(p.want(&ids), Some(6));
        assert_eq!(p.want(&ids), Some(0), "re-announcing is idempotent");
        let plan = p.plan_fetch();
        assert_eq!(plan, vec!["k0", "k1", "k2", "k3"]);
        p.fetched(4, keys("k", 4), 3, 5);
        assert!(p.take_id("k2").is_some());
        assert!(p.take_id("k2").is_none(), "second use refused");
        assert!(p.knows("k5"));
        assert!(!p.knows("k2"));
        assert!(
            p.want(&(0..100).map(|i| format!("x{i}")).collect::<Vec<_>>())
                .is_none(),
            "bounded"
        );
    }

    #[test]
    fn alarms_follow_reserve_and_stall() {
        let mut p = Pool::new(Role::Master, policy(), 0);
        let m = p.metrics(10);
        assert!(m.alarms.contains(&Alarm::LowReserve));
        assert!(!m.alarms.contains(&Alarm::LinkStalled));
        assert!(p.metrics(2000).alarms.contains(&Alarm::LinkStalled));
        p.fetched(0, keys("a", 5), 2, 2000);
        p.fetched(0, keys("b", 5), 2, 3000);
        let m = p.metrics(3100);
        assert!(m.alarms.is_empty(), "{m:?}");
        assert!(
            (m.key_rate_per_s - 5.0).abs() < 1e-9,
            "{}",
            m.key_rate_per_s
        );
        p.fetch_failed(4, 4, "timeout".into());
        assert_eq!(p.metrics(3100).written_off_total, 4);
    }
}
