//! Decoy-state BB84 QKD link simulator with real post-processing.
//!
//! A pure core (no I/O, no wall clock: all randomness from a caller's seed, time from the link's own
//! pulse clock) for studying a QKD link without hardware:
//!
//! - [`analytic`]: the asymptotic decoy-state / GLLP key rate (Lo-Ma-Chen 2005; Ma-Qi-Zhao-Lo 2005), with
//!   infinite decoys or vacuum + weak decoy, mu optimised, maximum distance;
//! - [`physics`]: the Monte Carlo of pulses through source, fibre, an intercept-resend eavesdropper and
//!   Bob's detectors (dark counts, misalignment, dead time);
//! - [`link`]: sifting, decoy parameter estimation from the observed statistics, [`cascade`] on Bob's actual
//!   bits, verification, [`toeplitz`] privacy amplification (FFT, exact) and Wegman-Carter [`auth`]entication
//!   whose key is paid from the output;
//! - [`params`]: named parameter sets (GYS, the decoy papers' protocol, a modern link) and TOML files.
//!
//! The key managers (`kme`) build on [`Link`]: one call per block, keys out.
//!
//! ```
//! use qsi_qkd_sim::{BlockOutcome, Link, LinkParams};
//!
//! let mut params = LinkParams::modern();
//! params.fibre.length_km = 20.0;
//! let mut link = Link::new(params, 42)?;
//! match link.run_block(2_000_000, 0.0)? {
//!     BlockOutcome::Key { alice, bob, stats } => {
//!         assert_eq!(alice.as_bytes(), bob.as_bytes());
//!         assert_eq!(alice.len_bits(), stats.final_key_bits);
//!     }
//!     BlockOutcome::Aborted { reason, .. } => panic!("aborted: {reason}"),
//! }
//! // An eavesdropper on every pulse pushes the QBER to about 25%: parameter estimation aborts.
//! let out = link.run_block(2_000_000, 1.0)?;
//! assert!(matches!(out, BlockOutcome::Aborted { .. }));
//! # Ok::<(), qsi_qkd_sim::LinkError>(())
//! ```

#![forbid(unsafe_code)]

pub mod analytic;
pub mod auth;
pub mod bits;
pub mod cascade;
pub mod kme;
pub mod link;
pub mod params;
pub mod physics;
pub mod toeplitz;

pub use link::{AbortReason, BlockOutcome, BlockStats, Link, LinkError, PerClass, SecretKey};
pub use params::{LinkParams, ParamsError};
