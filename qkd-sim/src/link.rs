//! One simulated QKD link: the quantum layer plus the whole post-processing chain, block by block.
//!
//! [`Link::run_block`] sends `n_pulses` pulses and runs, in order: sifting; parameter estimation (gains per
//! intensity from the announced classes, the weak decoy's QBER from its revealed bits, the signal QBER
//! from a revealed random sample, then the vacuum + weak decoy bounds on Y1 and e1); Cascade on Bob's
//! actual bits; verification by a universal hash; Toeplitz privacy amplification to the length the bound
//! allows; and Wegman-Carter authentication of every classical message, whose key is paid back from the
//! output. A block ends either with equal keys for Alice and Bob or with the reason it was aborted.
//!
//! The link is pure: all randomness comes from one ChaCha20 stream seeded by the caller, and time is the
//! link's own clock (pulses sent / pulse rate), so a seed reproduces every bit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::analytic::{h2, vacuum_weak_bounds};
use crate::auth::{self, AuthError, Authenticator, TAG_KEY_BITS};
use crate::bits::BitVec;
use crate::cascade::{Cascade, CascadeError};
use crate::params::{LinkParams, ParamsError};
use crate::physics::{self, ChannelConditions};
use crate::toeplitz::{Toeplitz, ToeplitzError};

/// Below this many key bits a block is not worth reconciling.
pub const MIN_KEY_BITS: u64 = 256;

/// Errors of the caller's input (an aborted block is not an error: see [`BlockOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link parameters are invalid.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// The eavesdropping fraction is not a probability.
    #[error("eve fraction {0} is out of range: a probability in [0, 1]")]
    EveFraction(f64),
    /// A block needs at least one pulse.
    #[error("n_pulses = 0: a block needs at least one pulse")]
    NoPulses,
    /// Internal inconsistency in reconciliation (a bug, reported rather than hidden).
    #[error("reconciliation failed: {0}")]
    Cascade(#[from] CascadeError),
    /// Internal inconsistency in privacy amplification (a bug, reported rather than hidden).
    #[error("privacy amplification failed: {0}")]
    Toeplitz(#[from] ToeplitzError),
}

/// Why a block produced no key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AbortReason {
    /// Bob saw nothing at all (fibre cut with a dark-count-free receiver, or a tiny block).
    NoDetections,
    /// Too few sifted signal bits to run the protocol.
    TooFewBits {
        /// Sifted signal bits left for the key.
        key_bits: u64,
    },
    /// The sampled QBER is above the threshold.
    QberAboveThreshold {
        /// Estimated signal QBER.
        qber: f64,
        /// Threshold.
        threshold: f64,
    },
    /// The decoy analysis finds no single-photon contribution (no light reaches Bob: fibre cut, or loss
    /// beyond the range).
    NoSinglePhotonYield {
        /// Lower bound on Y1.
        y1_lower: f64,
    },
    /// The bound leaves no secret key once error correction and authentication are paid.
    NoSecretKey {
        /// Secret bits the bound allows (may be negative).
        secret_bits: f64,
        /// Authentication key bits the block consumed.
        auth_bits: u64,
    },
    /// Verification after Cascade found Alice's and Bob's keys different.
    ErrorCorrectionFailed,
    /// The authentication pool is empty: the link needs a new pre-shared key.
    AuthKeyExhausted,
    /// A tag did not verify.
    AuthenticationFailed,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoDetections => write!(f, "no detections (fibre cut?)"),
            Self::TooFewBits { key_bits } => {
                write!(f, "too few sifted bits ({key_bits} < {MIN_KEY_BITS})")
            }
            Self::QberAboveThreshold { qber, threshold } => {
                write!(
                    f,
                    "QBER {:.2}% above threshold {:.2}% (eavesdropper?)",
                    qber * 100.0,
                    threshold * 100.0
                )
            }
            Self::NoSinglePhotonYield { y1_lower } => {
                write!(
                    f,
                    "no single-photon yield (Y1 lower bound {y1_lower:.3e}): no light reaches Bob"
                )
            }
            Self::NoSecretKey {
                secret_bits,
                auth_bits,
            } => {
                write!(
                    f,
                    "no secret key: bound allows {secret_bits:.0} bits, authentication used {auth_bits}"
                )
            }
            Self::ErrorCorrectionFailed => write!(f, "error correction failed verification"),
            Self::AuthKeyExhausted => write!(f, "authentication key exhausted"),
            Self::AuthenticationFailed => write!(f, "authentication failed"),
        }
    }
}

/// A final key: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} bytes, [redacted])", self.0.len())
    }
}

impl SecretKey {
    /// The key bytes (bit i of the key is bit i % 8 of byte i / 8).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bits (always a multiple of 8).
    #[must_use]
    pub fn len_bits(&self) -> u64 {
        self.0.len() as u64 * 8
    }

    /// SHA-256 of the key, for comparing keys without showing them.
    #[must_use]
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_slice()).into()
    }
}

/// Values per intensity class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerClass<T> {
    /// Signal (mu).
    pub signal: T,
    /// Weak decoy (nu).
    pub decoy: T,
    /// Vacuum.
    pub vacuum: T,
}

impl<T: Copy> PerClass<T> {
    fn from_array(a: [T; 3]) -> Self {
        Self {
            signal: a[0],
            decoy: a[1],
            vacuum: a[2],
        }
    }
}

/// Statistics of one block (one JSON line in `--stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockStats {
    /// Block number on this link, from 0.
    pub block: u64,
    /// Link clock at the start of the block, seconds.
    pub link_time_s: f64,
    /// Duration of the block on the link clock (pulses / rate), seconds.
    pub duration_s: f64,
    /// Fibre length, km.
    pub distance_km: f64,
    /// Pulses sent.
    pub pulses: u64,
    /// Eavesdropping fraction in effect.
    pub eve_fraction: f64,
    /// Fibre cut in effect.
    pub fibre_cut: bool,
    /// Pulses sent per class.
    pub sent: PerClass<u64>,
    /// Clicks per class.
    pub detections: PerClass<u64>,
    /// Gain per class: clicks / pulses sent.
    pub gain: PerClass<f64>,
    /// Sifted (matching-basis) clicks per class.
    pub sifted: PerClass<u64>,
    /// Sifted bits that differ between Alice and Bob, per class (for the signal: what Cascade corrected
    /// plus the errors of the disclosed sample; for aborted blocks the simulator's ground truth).
    pub errors: PerClass<u64>,
    /// QBER per class over all sifted bits.
    pub qber: PerClass<f64>,
    /// Signal QBER in the Z basis.
    pub qber_signal_z: f64,
    /// Signal QBER in the X basis.
    pub qber_signal_x: f64,
    /// Double clicks.
    pub double_clicks: u64,
    /// Pulses lost to dead time.
    pub dead_pulses: u64,
    /// Signal bits disclosed for QBER estimation.
    pub pe_sample_bits: u64,
    /// QBER of that sample (the estimate parameter estimation acts on).
    pub pe_sample_qber: f64,
    /// Y0 estimate (vacuum gain, upper bound in finite mode).
    pub y0: f64,
    /// Lower bound on the single-photon yield.
    pub y1_lower: f64,
    /// Upper bound on the single-photon error rate.
    pub e1_upper: f64,
    /// Lower bound on the single-photon gain Q1.
    pub q1_lower: f64,
    /// Sifted signal bits that entered error correction.
    pub key_bits_in: u64,
    /// Parity bits Cascade disclosed.
    pub ec_leak_bits: u64,
    /// Bits Cascade corrected.
    pub ec_corrected: u64,
    /// Cascade efficiency f achieved (leak / n H2(e)).
    pub ec_efficiency: f64,
    /// Bits disclosed by the verification hash.
    pub verify_bits: u64,
    /// Secret length privacy amplification produced.
    pub pa_output_bits: u64,
    /// Authentication key consumed by this block.
    pub auth_bits: u64,
    /// Final key bits delivered (PA output minus authentication, whole bytes).
    pub final_key_bits: u64,
    /// Alice's and Bob's final keys have the same SHA-256 (checked by the simulator).
    pub keys_equal: bool,
    /// Detections Eve attacked (simulator ground truth, not known to the protocol).
    pub attacked_detections: u64,
    /// Why the block was aborted, if it was.
    pub abort: Option<AbortReason>,
}

/// The result of one block.
#[derive(Debug)]
pub enum BlockOutcome {
    /// Both parties hold the same new key.
    Key {
        /// Alice's final key.
        alice: SecretKey,
        /// Bob's final key (his corrected, amplified bits; equal to Alice's).
        bob: SecretKey,
        /// Statistics.
        stats: BlockStats,
    },
    /// No key from this block.
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Statistics up to the abort.
        stats: BlockStats,
    },
}

impl BlockOutcome {
    /// The block's statistics.
    #[must_use]
    pub fn stats(&self) -> &BlockStats {
        match self {
            Self::Key { stats, .. } | Self::Aborted { stats, .. } => stats,
        }
    }
}

/// A simulated link with its state across blocks (authentication pools, clock, engines).
pub struct Link {
    params: LinkParams,
    rng: ChaCha20Rng,
    alice_auth: Authenticator,
    bob_auth: Authenticator,
    cascade: Cascade,
    toeplitz: Toeplitz,
    block: u64,
    link_time_s: f64,
    fibre_cut: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("params", &self.params.name)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

enum Dir {
    AliceToBob,
    BobToAlice,
}

impl Link {
    /// A link with validated parameters; `seed` fixes every random choice (and the pre-shared secret).
    ///
    /// # Errors
    /// [`LinkError::Params`] when a parameter is out of range.
    pub fn new(params: LinkParams, seed: u64) -> Result<Self, LinkError> {
        params.validate()?;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let hash_key = [rng.random::<u64>(), rng.random::<u64>()];
        let pool: Vec<u64> = (0..params.post.preshared_auth_bits.div_ceil(61))
            .map(|_| rng.random())
            .collect();
        let cascade = Cascade::new(params.post.cascade_passes, rng.random());
        Ok(Self {
            alice_auth: Authenticator::new(hash_key, pool.clone()),
            bob_auth: Authenticator::new(hash_key, pool),
            cascade,
            toeplitz: Toeplitz::new(),
            params,
            rng,
            block: 0,
            link_time_s: 0.0,
            fibre_cut: false,
        })
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Cuts (or repairs) the fibre for the following blocks.
    pub fn set_fibre_cut(&mut self, cut: bool) {
        self.fibre_cut = cut;
    }

    /// The link clock: seconds of pulses sent so far.
    #[must_use]
    pub fn link_time_s(&self) -> f64 {
        self.link_time_s
    }

    /// Authentication key left in the pool, bits.
    #[must_use]
    pub fn auth_pool_bits(&self) -> u64 {
        self.alice_auth.available_bits()
    }

    /// Runs one block of `n_pulses` pulses with intercept-resend on a fraction `eve_fraction` of them.
    ///
    /// # Errors
    /// [`LinkError`] for invalid arguments (an aborted block is an `Ok(BlockOutcome::Aborted)`).
    pub fn run_block(
        &mut self,
        n_pulses: u64,
        eve_fraction: f64,
    ) -> Result<BlockOutcome, LinkError> {
        if !(0.0..=1.0).contains(&eve_fraction) {
            return Err(LinkError::EveFraction(eve_fraction));
        }
        if n_pulses == 0 {
            return Err(LinkError::NoPulses);
        }
        let p = self.params.clone();
        let duration = n_pulses as f64 / p.source.pulse_rate_hz;
        let mut st = BlockStats {
            block: self.block,
            link_time_s: self.link_time_s,
            duration_s: duration,
            distance_km: p.fibre.length_km,
            pulses: n_pulses,
            eve_fraction,
            fibre_cut: self.fibre_cut,
            ..BlockStats::default()
        };
        self.block += 1;
        self.link_time_s += duration;
        let cond = ChannelConditions {
            eve_fraction,
            fibre_cut: self.fibre_cut,
        };
        let rec = physics::transmit(&p, n_pulses, cond, &mut self.rng);
        let outcome = self.post_process(&p, &rec, &mut st);
        match outcome {
            Ok(Ok((alice, bob))) => Ok(BlockOutcome::Key {
                alice,
                bob,
                stats: st,
            }),
            Ok(Err(reason)) => {
                st.abort = Some(reason.clone());
                Ok(BlockOutcome::Aborted { reason, stats: st })
            }
            Err(e) => Err(e),
        }
    }

    /// Sender tags, receiver verifies.
    fn exchange(&mut self, dir: Dir, h: [u64; 2], what: &'static str) -> Result<(), AbortReason> {
        let (tx, rx) = match dir {
            Dir::AliceToBob => (&mut self.alice_auth, &mut self.bob_auth),
            Dir::BobToAlice => (&mut self.bob_auth, &mut self.alice_auth),
        };
        let r = tx.tag(h).and_then(|t| rx.verify(h, t, what));
        r.map_err(|e| match e {
            AuthError::Exhausted { .. } => AbortReason::AuthKeyExhausted,
            AuthError::Mismatch(_) => AbortReason::AuthenticationFailed,
        })
    }

    #[allow(clippy::too_many_lines)]
    fn post_process(
        &mut self,
        p: &LinkParams,
        rec: &physics::QuantumRecord,
        st: &mut BlockStats,
    ) -> Result<Result<(SecretKey, SecretKey), AbortReason>, LinkError> {
        let auth_before = self.alice_auth.consumed_bits();
        let dets = &rec.detections;
        st.sent = PerClass::from_array(rec.sent);
        st.double_clicks = rec.double_clicks;
        st.dead_pulses = rec.dead_pulses;
        let mut det_n = [0u64; 3];
        let mut sift_n = [0u64; 3];
        let mut err_n = [0u64; 3];
        let (mut z_n, mut z_e, mut x_n, mut x_e) = (0u64, 0u64, 0u64, 0u64);
        for d in dets {
            let c = usize::from(d.class);
            det_n[c] += 1;
            st.attacked_detections += u64::from(d.attacked);
            if d.alice_basis == d.bob_basis {
                sift_n[c] += 1;
                let e = u64::from(d.alice_bit != d.bob_bit);
                err_n[c] += e;
                if c == 0 {
                    if d.alice_basis == 0 {
                        z_n += 1;
                        z_e += e;
                    } else {
                        x_n += 1;
                        x_e += e;
                    }
                }
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        st.detections = PerClass::from_array(det_n);
        st.gain = PerClass::from_array(std::array::from_fn(|k| ratio(det_n[k], rec.sent[k])));
        st.sifted = PerClass::from_array(sift_n);
        st.errors = PerClass::from_array(err_n);
        st.qber = PerClass::from_array(std::array::from_fn(|k| ratio(err_n[k], sift_n[k])));
        st.qber_signal_z = ratio(z_e, z_n);
        st.qber_signal_x = ratio(x_e, x_n);
        if dets.is_empty() {
            return Ok(Err(AbortReason::NoDetections));
        }

        // Sifting: Bob announces clicked pulses and bases; Alice answers with her bases and classes.
        let bob_msg: Vec<u64> = dets
            .iter()
            .map(|d| d.pulse << 1 | u64::from(d.bob_basis))
            .collect();
        let hk = self.alice_auth.hash_key();
        if let Err(r) = self.exchange(
            Dir::BobToAlice,
            auth::hash_words(hk, &bob_msg),
            "detections",
        ) {
            return Ok(Err(r));
        }
        let alice_msg: Vec<u64> = dets
            .iter()
            .map(|d| u64::from(d.class) << 1 | u64::from(d.alice_basis))
            .collect();
        // Sample choice for QBER estimation (Alice's public random choice), and the key bits.
        let frac = p.post.pe_sample_fraction;
        let n_sig = sift_n[0] as usize;
        let mut alice_key = BitVec::with_capacity(n_sig);
        let mut bob_key = BitVec::with_capacity(n_sig);
        let (mut sample_n, mut sample_e) = (0u64, 0u64);
        let mut revealed = BitVec::with_capacity((sift_n[1] + sift_n[2]) as usize + n_sig / 10);
        for d in dets.iter().filter(|d| d.alice_basis == d.bob_basis) {
            if d.class != 0 {
                revealed.push(d.bob_bit);
            } else if frac > 0.0 && self.rng.random::<f64>() < frac {
                revealed.push(d.bob_bit);
                sample_n += 1;
                sample_e += u64::from(d.alice_bit != d.bob_bit);
            } else {
                alice_key.push(d.alice_bit);
                bob_key.push(d.bob_bit);
            }
        }
        let mut amsg = auth::hash_words(hk, &alice_msg);
        amsg[0] ^= sample_n & ((1 << 60) - 1);
        if let Err(r) = self.exchange(Dir::AliceToBob, amsg, "sifting") {
            return Ok(Err(r));
        }
        // Bob discloses his decoy and sample bits; Alice compares and announces the estimates.
        if let Err(r) = self.exchange(
            Dir::BobToAlice,
            auth::hash_bits(hk, &revealed),
            "disclosed bits",
        ) {
            return Ok(Err(r));
        }
        st.pe_sample_bits = sample_n;
        st.pe_sample_qber = if sample_n > 0 {
            ratio(sample_e, sample_n)
        } else {
            st.qber.decoy
        };
        st.key_bits_in = alice_key.len() as u64;

        // Decoy estimation from the observed statistics (Ma-Qi-Zhao-Lo vacuum + weak).
        let (mu, nu) = (p.source.mu, p.source.nu);
        let mut q_mu = st.gain.signal;
        let mut q_nu = st.gain.decoy;
        let mut y0 = st.gain.vacuum;
        let mut eq_nu = st.gain.decoy * st.qber.decoy;
        let mut y0_low = y0;
        if p.post.finite_key {
            let u = p.post.finite_key_sigmas;
            let dev = |q: f64, n: u64| {
                if n == 0 || q <= 0.0 {
                    0.0
                } else {
                    u * (q / n as f64).sqrt()
                }
            };
            q_mu += dev(q_mu, rec.sent[0]);
            q_nu -= dev(q_nu, rec.sent[1]);
            y0_low = (y0 - dev(y0, rec.sent[2])).max(0.0);
            y0 += dev(y0, rec.sent[2]);
            eq_nu += dev(eq_nu, rec.sent[1]);
        }
        let (y1l, _) = vacuum_weak_bounds(mu, nu, y0, q_mu, q_nu, 0.0);
        let e1u = if y1l > 0.0 {
            ((eq_nu * nu.exp() - 0.5 * y0_low) / (y1l * nu)).clamp(0.0, 0.5)
        } else {
            0.5
        };
        let q1l = y1l.max(0.0) * mu * (-mu).exp();
        st.y0 = y0;
        st.y1_lower = y1l;
        st.e1_upper = e1u;
        st.q1_lower = q1l;
        if let Err(r) = self.exchange(
            Dir::AliceToBob,
            [st.y1_lower.to_bits() & ((1 << 60) - 1), sample_e],
            "estimates",
        ) {
            return Ok(Err(r));
        }
        if st.key_bits_in < MIN_KEY_BITS {
            return Ok(Err(AbortReason::TooFewBits {
                key_bits: st.key_bits_in,
            }));
        }
        if st.pe_sample_qber > p.post.qber_threshold {
            return Ok(Err(AbortReason::QberAboveThreshold {
                qber: st.pe_sample_qber,
                threshold: p.post.qber_threshold,
            }));
        }
        if y1l <= 0.0 || q_mu <= 0.0 {
            return Ok(Err(AbortReason::NoSinglePhotonYield { y1_lower: y1l }));
        }
        let n_key = alice_key.len() as f64;
        let single_bits = n_key * (q1l / q_mu).min(1.0);
        let pa_penalty = if p.post.finite_key {
            2.0 * p.post.pa_security_bits
        } else {
            0.0
        };
        let verify_bits = 2 * 61u64;
        let auth_total = 7 * TAG_KEY_BITS;
        let predicted = single_bits * (1.0 - h2(e1u))
            - p.post.ec_efficiency * n_key * h2(st.pe_sample_qber)
            - verify_bits as f64
            - pa_penalty;
        if predicted <= auth_total as f64 {
            return Ok(Err(AbortReason::NoSecretKey {
                secret_bits: predicted,
                auth_bits: auth_total,
            }));
        }

        // Error correction on Bob's actual bits.
        let rep = self
            .cascade
            .reconcile(&alice_key, &mut bob_key, st.pe_sample_qber.max(1e-3))?;
        st.ec_leak_bits = rep.leak_bits;
        st.ec_corrected = rep.corrected;
        st.ec_efficiency = rep.efficiency();
        st.errors.signal = rep.corrected + sample_e;
        if let Err(r) = self.exchange(
            Dir::BobToAlice,
            auth::hash_bits(hk, &rep.bob_transcript),
            "cascade (Bob)",
        ) {
            return Ok(Err(r));
        }
        // Verification: Alice sends a universal hash of her key under a fresh public key.
        let vkey = [self.rng.random::<u64>(), self.rng.random::<u64>()];
        let ha = auth::hash_bits(vkey, &alice_key);
        let hb = auth::hash_bits(vkey, &bob_key);
        st.verify_bits = verify_bits;
        let secret =
            single_bits * (1.0 - h2(e1u)) - rep.leak_bits as f64 - verify_bits as f64 - pa_penalty;
        // The Toeplitz seed (public, Alice's choice) travels in the same authenticated message.
        let l = if secret > 0.0 {
            (secret.floor() as usize).min(alice_key.len())
        } else {
            0
        };
        let seed_len = (alice_key.len() + l).saturating_sub(1);
        let seed = BitVec::from_words(
            (0..seed_len.div_ceil(64))
                .map(|_| self.rng.random())
                .collect(),
            seed_len,
        );
        let hs = auth::hash_bits(hk, &seed);
        let mut a_msg = auth::hash_bits(hk, &rep.alice_transcript);
        for i in 0..2 {
            a_msg[i] = (a_msg[i] ^ ha[i] ^ hs[i]) & ((1 << 61) - 2);
        }
        if let Err(r) = self.exchange(
            Dir::AliceToBob,
            a_msg,
            "cascade, verification and PA seed (Alice)",
        ) {
            return Ok(Err(r));
        }
        let ok = ha == hb;
        if let Err(r) = self.exchange(Dir::BobToAlice, [u64::from(ok), 0], "verification result") {
            return Ok(Err(r));
        }
        st.auth_bits = self.alice_auth.consumed_bits() - auth_before;
        if !ok {
            return Ok(Err(AbortReason::ErrorCorrectionFailed));
        }
        if secret <= st.auth_bits as f64 {
            return Ok(Err(AbortReason::NoSecretKey {
                secret_bits: secret,
                auth_bits: st.auth_bits,
            }));
        }
        // Privacy amplification: both hash with the same public Toeplitz seed.
        let ka = self.toeplitz.hash(&alice_key, &seed, l)?;
        let kb = self.toeplitz.hash(&bob_key, &seed, l)?;
        st.pa_output_bits = l as u64;
        // Pay back the authentication key from the tail of the output, deliver the rest in whole bytes.
        let auth_bits = st.auth_bits as usize;
        let pay = BitVec::from_words(tail_bits(&ka, l - auth_bits), auth_bits);
        let pay_b = BitVec::from_words(tail_bits(&kb, l - auth_bits), auth_bits);
        self.alice_auth.replenish(&pay);
        self.bob_auth.replenish(&pay_b);
        let out_bits = (l - auth_bits) / 8 * 8;
        let alice = SecretKey(Zeroizing::new(ka.truncated(out_bits).to_bytes()));
        let bob = SecretKey(Zeroizing::new(kb.truncated(out_bits).to_bytes()));
        st.final_key_bits = out_bits as u64;
        st.keys_equal = alice.sha256() == bob.sha256();
        if !st.keys_equal {
            return Ok(Err(AbortReason::ErrorCorrectionFailed));
        }
        Ok(Ok((alice, bob)))
    }
}

/// Words holding bits `[from, len)` of `v`, shifted down to start at bit 0.
fn tail_bits(v: &BitVec, from: usize) -> Vec<u64> {
    let mut out = BitVec::with_capacity(v.len().saturating_sub(from));
    for i in from..v.len() {
        out.push(v.get(i));
    }
    out.words().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_at_25_km_yields_equal_keys() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 25.0;
        let mut link = Link::new(p, 1).unwrap();
        let out = link.run_block(20_000_000, 0.0).unwrap();
        let BlockOutcome::Key { alice, bob, stats } = out else {
            panic!("aborted: {:?}", out.stats().abort)
        };
        assert_eq!(alice.as_bytes(), bob.as_bytes());
        assert!(stats.final_key_bits > 1000, "{stats:?}");
        assert_eq!(stats.final_key_bits, alice.len_bits());
        assert!(format!("{alice:?}").contains("redacted"));
    }

    #[test]
    fn full_eavesdropping_aborts_on_qber() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 25.0;
        let mut link = Link::new(p, 2).unwrap();
        let out = link.run_block(20_000_000, 1.0).unwrap();
        let BlockOutcome::Aborted { reason, stats } = out else {
            panic!("key despite Eve")
        };
        assert!(
            matches!(reason, AbortReason::QberAboveThreshold { .. }),
            "{reason:?}"
        );
        assert!(
            (stats.qber.signal - 0.2665).abs() < 0.02,
            "{}",
            stats.qber.signal
        );
    }

    #[test]
    fn fibre_cut_aborts() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 25.0;
        let mut link = Link::new(p, 3).unwrap();
        link.set_fibre_cut(true);
        let out = link.run_block(20_000_000, 0.0).unwrap();
        assert!(matches!(out, BlockOutcome::Aborted { .. }));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut link = Link::new(LinkParams::gys(), 4).unwrap();
        assert!(matches!(
            link.run_block(10, 1.5),
            Err(LinkError::EveFraction(_))
        ));
        assert!(matches!(link.run_block(0, 0.0), Err(LinkError::NoPulses)));
    }
}
