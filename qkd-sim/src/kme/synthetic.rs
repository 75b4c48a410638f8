//! A stand-in key supply for benchmarking the KMEs alone: identical random bytes on both sides,
//! no link model. `qkd-sim bench --kme` uses it so that the figures measure the KME (TLS, HTTP,
//! pool), not the post-processing, which `qkd-sim bench` measures on its own. Never used by
//! `qkd-sim serve`.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use super::supply::{BlockOutcome, KeySupply};

/// Key rate the stand-in claims (100 Mbit/s, about 390,000 keys of 256 bits a second: above
/// what the benchmark draws, yet a block takes link time, so a full pool does not make the
/// producer spin a core).
pub const SYNTHETIC_BITS_PER_S: f64 = 1e8;

/// Blocks of `block_bytes` random bytes, the same for Alice and Bob, at [`SYNTHETIC_BITS_PER_S`].
pub struct SyntheticSupply {
    rng: ChaCha20Rng,
    block_bytes: usize,
}

impl SyntheticSupply {
    /// A supply of blocks of `block_bytes`.
    pub fn new(seed: u64, block_bytes: usize) -> Self {
        SyntheticSupply {
            rng: ChaCha20Rng::seed_from_u64(seed),
            block_bytes,
        }
    }
}

impl KeySupply for SyntheticSupply {
    fn next_block(&mut self) -> anyhow::Result<BlockOutcome> {
        let mut a = Zeroizing::new(vec![0u8; self.block_bytes]);
        self.rng.fill_bytes(&mut a);
        let b = a.clone();
        Ok(BlockOutcome::Key {
            alice: a,
            bob: b,
            qber: 0.0,
            link_seconds: 8.0 * self.block_bytes as f64 / SYNTHETIC_BITS_PER_S,
        })
    }

    fn set_eve_fraction(&mut self, _fraction: f64) {}
}
