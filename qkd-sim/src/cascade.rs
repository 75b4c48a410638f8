//! Cascade error correction (Brassard-Salvail 1993) on packed bit strings.
//!
//! Pass 1 splits the key into blocks of `k1 = ceil(0.73 / e)` bits; each later pass doubles the block size
//! on a fresh public pseudo-random permutation. Alice discloses every block parity; Bob binary-searches
//! each block whose parity differs from his, Alice disclosing one parity per step, and flips the bit found.
//! The flip changes the parity of the blocks holding that bit in every earlier pass, which are searched in
//! turn (the cascade), smallest blocks first. The leakage is the number of parity bits Alice disclosed.
//!
//! Speed: each party keeps one permuted copy of its key per pass, so every parity, block or half block,
//! is a popcount over whole words; a flip updates one bit per pass. The permutations are public and
//! depend only on the block length and the engine's seed, so the engine computes them once per length and
//! reuses them (as hardware engines do); they need not be secret, only independent of the errors.

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::bits::{BitVec, range_parity};

/// Why reconciliation could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CascadeError {
    /// Alice's and Bob's strings differ in length.
    #[error("Alice has {alice} bits and Bob {bob}: reconciliation needs equal lengths")]
    LengthMismatch {
        /// Alice's length.
        alice: usize,
        /// Bob's length.
        bob: usize,
    },
    /// The key is longer than the engine can index.
    #[error("a key of {0} bits is too long for Cascade (at most 2^31 bits)")]
    TooLong(usize),
}

/// What one reconciliation did.
#[derive(Debug, Clone, Default)]
pub struct CascadeReport {
    /// Bits reconciled.
    pub n: usize,
    /// Parity bits Alice disclosed (the leakage).
    pub leak_bits: u64,
    /// Bits Bob flipped.
    pub corrected: u64,
    /// Passes run.
    pub passes: u32,
    /// First-pass block size.
    pub k1: usize,
    /// Alice's messages: every parity she disclosed, in order (authenticated afterwards).
    pub alice_transcript: BitVec,
    /// Bob's messages: one bit per binary-search step (which half he continues with).
    pub bob_transcript: BitVec,
}

impl CascadeReport {
    /// Efficiency f = leakage / (n H2(e)) for the true error rate e = corrected / n (1.0 when e = 0).
    #[must_use]
    pub fn efficiency(&self) -> f64 {
        if self.n == 0 || self.corrected == 0 {
            return 1.0;
        }
        let e = self.corrected as f64 / self.n as f64;
        self.leak_bits as f64 / (self.n as f64 * crate::analytic::h2(e))
    }
}

/// One permutation table, shared.
type Table = Arc<Vec<u32>>;

/// Permutation tables for one key length.
struct Perms {
    n: usize,
    /// `fwd[p][pos]` = original index at position `pos` of pass `p + 1`.
    fwd: Vec<Table>,
    /// `inv[p][orig]` = position of `orig` in pass `p + 1`.
    inv: Vec<Table>,
}

/// A Cascade engine: holds the public permutations for the last key length it saw.
pub struct Cascade {
    passes: u32,
    seed: u64,
    perms: Option<Perms>,
}

struct Pass {
    k: usize,
    a: Vec<u64>,
    b: Vec<u64>,
    /// Alice's block parity differs from Bob's current one.
    odd: Vec<bool>,
    pending: Vec<u32>,
}

/// First-pass block size for an expected error rate (Brassard-Salvail: 0.73 / e).
#[must_use]
pub fn first_block_size(qber: f64, n: usize) -> usize {
    let k = if qber > 0.0 {
        (0.73 / qber).ceil()
    } else {
        n as f64
    };
    (k as usize).clamp(4, n.max(4))
}

impl Cascade {
    /// An engine running `passes` passes with permutations derived from the public `seed`.
    #[must_use]
    pub fn new(passes: u32, seed: u64) -> Self {
        Self {
            passes: passes.max(1),
            seed,
            perms: None,
        }
    }

    /// The (forward, inverse) permutations of passes 2.. for key length `n`, computed once per length.
    fn perms_for(&mut self, n: usize) -> (Vec<Table>, Vec<Table>) {
        let stale = self
            .perms
            .as_ref()
            .is_none_or(|p| p.n != n || p.fwd.len() + 1 < self.passes as usize);
        if stale {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (n as u64).rotate_left(32));
            let mut fwd = Vec::new();
            let mut inv = Vec::new();
            for _ in 1..self.passes {
                let mut f: Vec<u32> = (0..n as u32).collect();
                f.shuffle(&mut rng);
                let mut v = vec![0u32; n];
                for (pos, &o) in f.iter().enumerate() {
                    v[o as usize] = pos as u32;
                }
                fwd.push(Arc::new(f));
                inv.push(Arc::new(v));
            }
            self.perms = Some(Perms { n, fwd, inv });
        }
        self.perms
            .as_ref()
            .map(|p| (p.fwd.clone(), p.inv.clone()))
            .unwrap_or_default()
    }

    /// Reconciles `bob` to `alice`, `qber` being the error rate estimated beforehand. Bob's string is
    /// corrected in place; Alice's is only read to answer parity queries.
    ///
    /// # Errors
    /// [`CascadeError`] for strings of unequal or excessive length.
    pub fn reconcile(
        &mut self,
        alice: &BitVec,
        bob: &mut BitVec,
        qber: f64,
    ) -> Result<CascadeReport, CascadeError> {
        let n = alice.len();
        if bob.len() != n {
            return Err(CascadeError::LengthMismatch {
                alice: n,
                bob: bob.len(),
            });
        }
        if n > (1usize << 31) {
            return Err(CascadeError::TooLong(n));
        }
        let k1 = first_block_size(qber, n);
        let mut rep = CascadeReport {
            n,
            k1,
            ..CascadeReport::default()
        };
        if n == 0 {
            return Ok(rep);
        }
        let passes = self.passes as usize;
        let (fwd, inv) = self.perms_for(n);
        let mut bob_words = bob.words().to_vec();
        let mut state: Vec<Pass> = Vec::with_capacity(passes);
        let mut alice_t = BitVec::with_capacity(n / 2);
        let mut bob_t = BitVec::with_capacity(n / 4);
        for p in 0..passes {
            let k = k1.saturating_mul(1usize << p.min(40)).min(n);
            let (a, b) = if p == 0 {
                (alice.words().to_vec(), bob_words.clone())
            } else {
                (
                    gather(alice.words(), &fwd[p - 1]),
                    gather(&bob_words, &fwd[p - 1]),
                )
            };
            let nb = n.div_ceil(k);
            let mut odd = vec![false; nb];
            let mut pending = Vec::new();
            for (blk, o) in odd.iter_mut().enumerate() {
                let (lo, hi) = (blk * k, ((blk + 1) * k).min(n));
                let pa = range_parity(&a, lo, hi);
                alice_t.push(pa);
                if pa != range_parity(&b, lo, hi) {
                    *o = true;
                    pending.push(blk as u32);
                }
            }
            pending.reverse();
            rep.leak_bits += nb as u64;
            state.push(Pass {
                k,
                a,
                b,
                odd,
                pending,
            });
            rep.passes = p as u32 + 1;
            // Correct until no pass has an odd block left, smallest blocks (earliest passes) first.
            while let Some((q, blk)) = next_odd(&mut state) {
                let pos = {
                    let s = &state[q];
                    let (mut lo, mut hi) = (blk * s.k, ((blk + 1) * s.k).min(n));
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        let pa = range_parity(&s.a, lo, mid);
                        let pb = range_parity(&s.b, lo, mid);
                        alice_t.push(pa);
                        bob_t.push(pa != pb);
                        rep.leak_bits += 1;
                        if pa != pb {
                            hi = mid;
                        } else {
                            lo = mid;
                        }
                    }
                    lo
                };
                let orig = if q == 0 {
                    pos
                } else {
                    fwd[q - 1][pos] as usize
                };
                bob_words[orig >> 6] ^= 1u64 << (orig & 63);
                rep.corrected += 1;
                for (r, s) in state.iter_mut().enumerate() {
                    let pr = if r == 0 {
                        orig
                    } else {
                        inv[r - 1][orig] as usize
                    };
                    s.b[pr >> 6] ^= 1u64 << (pr & 63);
                    let br = pr / s.k;
                    s.odd[br] = !s.odd[br];
                    if s.odd[br] {
                        s.pending.push(br as u32);
                    }
                }
            }
        }
        *bob = BitVec::from_words(bob_words, n);
        rep.alice_transcript = alice_t;
        rep.bob_transcript = bob_t;
        Ok(rep)
    }
}

fn next_odd(state: &mut [Pass]) -> Option<(usize, usize)> {
    for (q, s) in state.iter_mut().enumerate() {
        while let Some(b) = s.pending.pop() {
            if s.odd[b as usize] {
                return Some((q, b as usize));
            }
        }
    }
    None
}

/// `out[pos] = src[perm[pos]]` for packed bits.
fn gather(src: &[u64], perm: &[u32]) -> Vec<u64> {
    let mut out = vec![0u64; perm.len().div_ceil(64)];
    for (w, chunk) in out.iter_mut().zip(perm.chunks(64)) {
        let mut acc = 0u64;
        for (i, &o) in chunk.iter().enumerate() {
            let o = o as usize;
            acc |= ((src[o >> 6] >> (o & 63)) & 1) << i;
        }
        *w = acc;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_bits(n: usize, rng: &mut ChaCha8Rng) -> BitVec {
        let words = (0..n.div_ceil(64)).map(|_| rng.random::<u64>()).collect();
        BitVec::from_words(words, n)
    }

    #[test]
    fn corrects_injected_patterns() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let alice = random_bits(n, &mut rng);
        let mut engine = Cascade::new(6, 99);
        // Burst at the start, a single error at the very end, every 10th bit, and random 3%.
        let patterns: Vec<Vec<usize>> = vec![
            (0..40).collect(),
            vec![n - 1],
            (0..n).step_by(10).collect(),
            (0..n).filter(|_| rng.random::<f64>() < 0.03).collect(),
            vec![],
        ];
        for errs in patterns {
            let mut bob = alice.clone();
            for &i in &errs {
                bob.flip(i);
            }
            let e = (errs.len() as f64 / n as f64).max(1e-3);
            let rep = engine.reconcile(&alice, &mut bob, e).unwrap();
            assert_eq!(bob, alice, "{} errors left", bob.hamming(&alice));
            assert_eq!(rep.corrected as usize, errs.len());
            assert_eq!(rep.leak_bits as usize, rep.alice_transcript.len());
        }
    }

    #[test]
    fn leakage_is_near_shannon_limit_at_3_percent() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let n = 1 << 16;
        let alice = random_bits(n, &mut rng);
        let mut bob = alice.clone();
        for i in 0..n {
            if rng.random::<f64>() < 0.03 {
                bob.flip(i);
            }
        }
        let rep = Cascade::new(6, 1)
            .reconcile(&alice, &mut bob, 0.03)
            .unwrap();
        assert_eq!(bob, alice);
        let f = rep.efficiency();
        assert!((1.0..1.35).contains(&f), "f = {f}");
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let a = BitVec::zeros(10);
        let mut b = BitVec::zeros(11);
        assert!(matches!(
            Cascade::new(4, 0).reconcile(&a, &mut b, 0.01),
            Err(CascadeError::LengthMismatch { .. })
        ));
    }
}
