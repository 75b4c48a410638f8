//! Where a simulated device pair's key comes from: the seam between the KMEs and the link model.

use zeroize::Zeroizing;

/// The result of one post-processing block on the simulated link.
pub enum BlockOutcome {
    /// Parameter estimation passed: each side's final key (Alice's and Bob's corrected,
    /// privacy-amplified bits, equal when error correction and verification worked).
    Key {
        /// Alice's final key.
        alice: Zeroizing<Vec<u8>>,
        /// Bob's final key.
        bob: Zeroizing<Vec<u8>>,
        /// QBER measured on the sifted key.
        qber: f64,
        /// Link time the block took at the simulated pulse rate, in seconds.
        link_seconds: f64,
    },
    /// The block was aborted and yielded no key.
    Aborted {
        /// QBER measured, if the block got that far.
        qber: Option<f64>,
        /// Why, in words.
        reason: String,
        /// Link time the block took, in seconds.
        link_seconds: f64,
    },
}

/// A source of blocks of final key for both sides of a link.
pub trait KeySupply: Send {
    /// Runs one block.
    fn next_block(&mut self) -> anyhow::Result<BlockOutcome>;
    /// Sets the fraction of pulses an intercept-resend eavesdropper attacks from the next block on.
    fn set_eve_fraction(&mut self, fraction: f64);
}
