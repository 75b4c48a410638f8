//! Wegman-Carter authentication of the classical channel.
//!
//! Each message is hashed with a polynomial universal hash over GF(p), p = 2^61 - 1, in two independent
//! lanes (the message is split into 32-bit chunks, prefixed with its bit length; a lane's collision
//! probability is at most (chunks + 1) / p, both lanes together its square: below 2^-80 for a megabyte).
//! The hash keys are long-term (part of the pre-shared secret); each tag is one-time-padded with 2 x 61
//! fresh key bits, `tag = (h + r) mod p`, which is what makes reusing the hash key safe. Those 122 bits per
//! tag are the key the protocol consumes, and the link pays them back from its output.
//!
//! Both parties hold identical pools; the sender tags, the receiver recomputes and compares in constant
//! time. A run of the protocol tags each direction's messages once per protocol stage, before the other
//! side acts on them.

use std::collections::VecDeque;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::bits::BitVec;

const P: u64 = (1 << 61) - 1;

/// Key bits one tag consumes.
pub const TAG_KEY_BITS: u64 = 122;

/// Why authentication failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The pool does not hold the bits for another tag.
    #[error("authentication key exhausted: {available} bits left, a tag needs {TAG_KEY_BITS}")]
    Exhausted {
        /// Bits left.
        available: u64,
    },
    /// A received tag did not match: the message was altered.
    #[error("authentication tag mismatch on {0}: the classical channel was tampered with")]
    Mismatch(&'static str),
}

fn mulmod(a: u64, b: u64) -> u64 {
    let z = u128::from(a) * u128::from(b);
    let lo = (z as u64) & P;
    let hi = (z >> 61) as u64;
    let s = lo + hi;
    if s >= P { s - P } else { s }
}

fn addmod(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

/// Streaming two-lane polynomial hash.
#[derive(Clone)]
pub struct PolyHash {
    k: [u64; 2],
    acc: [u64; 2],
}

impl PolyHash {
    /// Starts a hash of a message of `bit_len` bits under keys `k` (reduced mod p).
    #[must_use]
    pub fn new(k: [u64; 2], bit_len: u64) -> Self {
        let mut h = Self {
            k: [k[0] % P, k[1] % P],
            acc: [0, 0],
        };
        h.chunk(bit_len & 0xffff_ffff);
        h.chunk(bit_len >> 32);
        h
    }

    #[inline]
    fn chunk(&mut self, c: u64) {
        for i in 0..2 {
            self.acc[i] = addmod(mulmod(self.acc[i], self.k[i]), c);
        }
    }

    /// Absorbs 64 bits (two 32-bit chunks).
    #[inline]
    pub fn word(&mut self, w: u64) {
        self.chunk(w & 0xffff_ffff);
        self.chunk(w >> 32);
    }

    /// The two lane values.
    #[must_use]
    pub fn finish(&self) -> [u64; 2] {
        self.acc
    }
}

/// Hash of a packed bit string (length-prefixed).
#[must_use]
pub fn hash_bits(k: [u64; 2], bits: &BitVec) -> [u64; 2] {
    let mut h = PolyHash::new(k, bits.len() as u64);
    for &w in bits.words() {
        h.word(w);
    }
    h.finish()
}

/// Hash of a sequence of u64 values (length-prefixed).
#[must_use]
pub fn hash_words(k: [u64; 2], words: &[u64]) -> [u64; 2] {
    let mut h = PolyHash::new(k, words.len() as u64 * 64);
    for &w in words {
        h.word(w);
    }
    h.finish()
}

/// One party's authentication state: long-term hash keys and the one-time-pad pool.
pub struct Authenticator {
    hash_key: [u64; 2],
    pool: VecDeque<u64>,
    consumed_bits: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Authenticator {{ pool: {} bits, consumed: {}, keys: [redacted] }}",
            self.available_bits(),
            self.consumed_bits
        )
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        self.hash_key.zeroize();
        for w in &mut self.pool {
            w.zeroize();
        }
    }
}

impl Authenticator {
    /// From the pre-shared secret: two hash keys and the initial pad pool (61 bits used per pool word).
    #[must_use]
    pub fn new(hash_key: [u64; 2], pool: Vec<u64>) -> Self {
        Self {
            hash_key,
            pool: pool.into_iter().map(|w| w & P).collect(),
            consumed_bits: 0,
        }
    }

    /// Bits left for tags.
    #[must_use]
    pub fn available_bits(&self) -> u64 {
        self.pool.len() as u64 * 61
    }

    /// Pad bits used so far.
    #[must_use]
    pub fn consumed_bits(&self) -> u64 {
        self.consumed_bits
    }

    /// Adds fresh secret key bits (from the link's output) to the pool, 61 bits per word.
    pub fn replenish(&mut self, key: &BitVec) {
        let mut acc = 0u64;
        let mut have = 0;
        for i in 0..key.len() {
            acc |= u64::from(key.get(i)) << have;
            have += 1;
            if have == 61 {
                self.pool.push_back(acc);
                acc = 0;
                have = 0;
            }
        }
    }

    fn pad(&mut self) -> Result<[u64; 2], AuthError> {
        if self.pool.len() < 2 {
            return Err(AuthError::Exhausted {
                available: self.available_bits(),
            });
        }
        let a = self.pool.pop_front().unwrap_or_default() % P;
        let b = self.pool.pop_front().unwrap_or_default() % P;
        self.consumed_bits += TAG_KEY_BITS;
        Ok([a, b])
    }

    /// Tags a message given its hash lanes (from [`hash_bits`] etc. under [`Authenticator::hash_key`]).
    ///
    /// # Errors
    /// [`AuthError::Exhausted`] when the pool is empty.
    pub fn tag(&mut self, h: [u64; 2]) -> Result<[u64; 2], AuthError> {
        let r = self.pad()?;
        Ok([addmod(h[0], r[0]), addmod(h[1], r[1])])
    }

    /// Checks a received tag against the message hash, consuming the same pad bits as the sender.
    ///
    /// # Errors
    /// [`AuthError::Mismatch`] naming `what` when the tag is wrong; [`AuthError::Exhausted`].
    pub fn verify(
        &mut self,
        h: [u64; 2],
        tag: [u64; 2],
        what: &'static str,
    ) -> Result<(), AuthError> {
        let expect = self.tag(h)?;
        let a: Vec<u8> = expect.iter().flat_map(|w| w.to_le_bytes()).collect();
        let b: Vec<u8> = tag.iter().flat_map(|w| w.to_le_bytes()).collect();
        if bool::from(a.ct_eq(&b)) {
            Ok(())
        } else {
            Err(AuthError::Mismatch(what))
        }
    }

    /// The long-term hash key (shared by both parties).
    #[must_use]
    pub fn hash_key(&self) -> [u64; 2] {
        self.hash_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Authenticator, Authenticator) {
        let pool: Vec<u64> = (1..=8u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        (
            Authenticator::new([12345, 67890], pool.clone()),
            Authenticator::new([12345, 67890], pool),
        )
    }

    #[test]
    fn tags_verify_and_tampering_is_caught() {
        let (mut alice, mut bob) = pair();
        let mut msg = BitVec::zeros(1000);
        msg.set(17, true);
        let t = alice.tag(hash_bits(alice.hash_key(), &msg)).unwrap();
        bob.verify(hash_bits(bob.hash_key(), &msg), t, "test")
            .unwrap();
        let t = alice.tag(hash_bits(alice.hash_key(), &msg)).unwrap();
        msg.flip(999);
        assert_eq!(
            bob.verify(hash_bits(bob.hash_key(), &msg), t, "test"),
            Err(AuthError::Mismatch("test"))
        );
        assert_eq!(alice.consumed_bits(), 2 * TAG_KEY_BITS);
    }

    #[test]
    fn pool_runs_out() {
        let (mut alice, _) = pair();
        for _ in 0..4 {
            alice.tag([1, 2]).unwrap();
        }
        assert!(matches!(
            alice.tag([1, 2]),
            Err(AuthError::Exhausted { .. })
        ));
    }

    #[test]
    fn length_prefix_separates_messages() {
        let k = [987_654_321, 123_456_789];
        assert_ne!(
            hash_bits(k, &BitVec::zeros(64)),
            hash_bits(k, &BitVec::zeros(63))
        );
    }
}
