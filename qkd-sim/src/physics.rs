//! The quantum layer: pulses through source, fibre, an optional eavesdropper and Bob's detectors.
//!
//! Every pulse is independent: Alice picks an intensity class (signal mu, weak decoy nu, vacuum), a basis
//! and a bit; the phase-randomised coherent state carries a Poisson number of photons; each photon survives
//! fibre and detector with probability eta; photons reach the detector of the sent bit with probability
//! `1 - e_det` when Bob's basis matches and 1/2 when it does not; each detector also fires with the dark
//! count probability. For a Poisson photon number, the photon counts reaching the two detectors are
//! independent Poisson variables, so detector `j` clicks with probability `1 - (1 - pd) exp(-lambda_j)`.
//!
//! Pulses at which no detector fires are the vast majority (gain ~ 1e-5 at 140 km) and leave no trace:
//! Alice's choices for them are discarded at sifting. So the simulation draws the number of silent pulses
//! before the next click from the exact geometric distribution (the click probability of a pulse,
//! `1 - (1 - pd)^2 exp(-eta mu)`, does not depend on bases, bits or Eve) and simulates the clicking pulse in
//! full, conditioned on a click. This is exact in distribution and costs time per detection, not per pulse,
//! so 10^10-pulse blocks at long distance run in well under a second. The number of pulses sent per class
//! is drawn from the matching multinomial.
//!
//! Dead time is symmetric: after any click both detectors are blind for `ceil(dead_time * rate)` pulses
//! (the usual countermeasure against dead-time attacks). A double click gives Bob a random bit (squashing).
//!
//! Intercept-resend: Eve, at Alice's output with ideal detectors, attacks each pulse with probability p;
//! she measures in a random basis and re-prepares the same photons in her basis and result, so gains are
//! unchanged and the error rate of the attacked detections is `1/4 + e_det/2`.

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Binomial, Distribution, Geometric};

use crate::params::LinkParams;

/// Intensity classes, in this order everywhere: signal, weak decoy, vacuum.
pub const CLASSES: [&str; 3] = ["signal", "decoy", "vacuum"];

/// One click at Bob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    /// Index of the pulse in the block.
    pub pulse: u64,
    /// Intensity class (0 signal, 1 weak decoy, 2 vacuum).
    pub class: u8,
    /// Alice's basis (0 = Z, 1 = X).
    pub alice_basis: u8,
    /// Alice's bit.
    pub alice_bit: bool,
    /// Bob's basis.
    pub bob_basis: u8,
    /// Bob's bit.
    pub bob_bit: bool,
    /// Ground truth for diagnostics: Eve attacked this pulse (never read by the protocol).
    pub attacked: bool,
}

/// What the quantum layer produced for one block.
#[derive(Debug, Clone, Default)]
pub struct QuantumRecord {
    /// Clicks, in pulse order.
    pub detections: Vec<Detection>,
    /// Pulses sent per class.
    pub sent: [u64; 3],
    /// Pulses lost to dead time.
    pub dead_pulses: u64,
    /// Double clicks (both detectors).
    pub double_clicks: u64,
}

/// Conditions on the quantum channel for one block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChannelConditions {
    /// Fraction of pulses Eve intercepts and resends.
    pub eve_fraction: f64,
    /// The fibre is cut: no photon reaches Bob (dark counts remain).
    pub fibre_cut: bool,
}

/// Simulates `n_pulses` pulses. `eve_fraction` must be in [0, 1] (the caller validates).
#[must_use]
pub fn transmit(
    p: &LinkParams,
    n_pulses: u64,
    cond: ChannelConditions,
    rng: &mut ChaCha20Rng,
) -> QuantumRecord {
    let eta = if cond.fibre_cut { 0.0 } else { p.eta() };
    let mu = [p.source.mu, p.source.nu, 0.0];
    let pk = [p.source.p_signal, p.source.p_decoy, p.p_vacuum()];
    let pd = 1.0 - (1.0 - p.detector.dark_count).sqrt();
    let click = mu.map(|m| 1.0 - (1.0 - pd) * (1.0 - pd) * (-eta * m).exp());
    let w: [f64; 3] = std::array::from_fn(|k| pk[k] * click[k]);
    let p_event: f64 = w.iter().sum();
    let dead = (p.detector.dead_time_s * p.source.pulse_rate_hz).ceil() as u64;
    let mut rec = QuantumRecord::default();
    let mut silent = 0u64;
    let mut i = 0u64;
    let geo = Geometric::new(p_event.clamp(f64::MIN_POSITIVE, 1.0)).ok();
    if let Some(geo) = geo.filter(|_| p_event > 0.0) {
        let expected = (p_event * n_pulses as f64 * 1.1) as usize + 16;
        rec.detections.reserve(expected.min(1 << 26));
        loop {
            let gap = geo.sample(rng);
            if gap >= n_pulses - i {
                silent += n_pulses - i;
                break;
            }
            silent += gap;
            i += gap;
            let u = rng.random::<f64>() * p_event;
            let class = if u < w[0] {
                0
            } else if u < w[0] + w[1] {
                1
            } else {
                2
            };
            let (det, double) = detect(p, eta, pd, mu[class], cond.eve_fraction, rng);
            rec.double_clicks += u64::from(double);
            rec.detections.push(Detection {
                pulse: i,
                class: class as u8,
                ..det
            });
            i += 1;
            let blind = dead.min(n_pulses - i);
            rec.dead_pulses += blind;
            i += blind;
            if i >= n_pulses {
                break;
            }
        }
    } else {
        silent = n_pulses;
    }
    // Classes of the pulses that left no click: silent ones follow p_k (1 - click_k), dead ones follow p_k.
    let silent_w: [f64; 3] = std::array::from_fn(|k| pk[k] * (1.0 - click[k]));
    let a = multinomial3(silent, silent_w, rng);
    let b = multinomial3(rec.dead_pulses, pk, rng);
    for k in 0..3 {
        rec.sent[k] = a[k] + b[k];
    }
    for d in &rec.detections {
        rec.sent[usize::from(d.class)] += 1;
    }
    rec
}

fn multinomial3(n: u64, w: [f64; 3], rng: &mut ChaCha20Rng) -> [u64; 3] {
    let total: f64 = w.iter().sum();
    if n == 0 || total <= 0.0 {
        return [n, 0, 0];
    }
    let n0 = binomial(n, w[0] / total, rng);
    let rest = w[1] + w[2];
    let n1 = if rest > 0.0 {
        binomial(n - n0, w[1] / rest, rng)
    } else {
        0
    };
    [n0, n1, n - n0 - n1]
}

fn binomial(n: u64, p: f64, rng: &mut ChaCha20Rng) -> u64 {
    Binomial::new(n, p.clamp(0.0, 1.0)).map_or(0, |b| b.sample(rng))
}

/// Simulates one pulse that is known to make at least one detector click.
fn detect(
    p: &LinkParams,
    eta: f64,
    pd: f64,
    mu: f64,
    eve: f64,
    rng: &mut ChaCha20Rng,
) -> (Detection, bool) {
    let pz = p.source.p_z;
    let alice_basis = u8::from(rng.random::<f64>() >= pz);
    let alice_bit: bool = rng.random();
    let bob_basis = u8::from(rng.random::<f64>() >= pz);
    let attacked = eve > 0.0 && rng.random::<f64>() < eve;
    // The state that travels on: Alice's, or Eve's re-preparation.
    let (s_basis, s_bit) = if attacked {
        let eb = u8::from(rng.random::<bool>());
        let ebit = if eb == alice_basis {
            alice_bit
        } else {
            rng.random()
        };
        (eb, ebit)
    } else {
        (alice_basis, alice_bit)
    };
    let lam = eta * mu;
    let e = p.detector.misalignment;
    let (l_right, l_wrong) = if bob_basis == s_basis {
        (lam * (1.0 - e), lam * e)
    } else {
        (lam / 2.0, lam / 2.0)
    };
    let q_r = (1.0 - pd) * (-l_right).exp();
    let q_w = (1.0 - pd) * (-l_wrong).exp();
    let any = 1.0 - q_r * q_w;
    let c_r = any > 0.0 && rng.random::<f64>() * any < 1.0 - q_r;
    let c_w = if c_r {
        rng.random::<f64>() < 1.0 - q_w
    } else {
        true
    };
    let double = c_r && c_w;
    let bob_bit = if double {
        rng.random()
    } else if c_r {
        s_bit
    } else {
        !s_bit
    };
    (
        Detection {
            pulse: 0,
            class: 0,
            alice_basis,
            alice_bit,
            bob_basis,
            bob_bit,
            attacked,
        },
        double,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fibre_cut_leaves_only_dark_counts() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 10.0;
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let n = 10_000_000;
        let rec = transmit(
            &p,
            n,
            ChannelConditions {
                eve_fraction: 0.0,
                fibre_cut: true,
            },
            &mut rng,
        );
        let expected = n as f64 * p.detector.dark_count;
        let got = rec.detections.len() as f64;
        assert!(
            (got - expected).abs() < 5.0 * expected.sqrt() + 1.0,
            "{got} vs {expected}"
        );
        assert_eq!(rec.sent.iter().sum::<u64>(), n);
    }

    #[test]
    fn dead_time_blinds_following_pulses() {
        let mut p = LinkParams::modern();
        p.detector.dead_time_s = 1e-6; // 1000 pulses at 1 GHz
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let rec = transmit(&p, 1_000_000, ChannelConditions::default(), &mut rng);
        for w in rec.detections.windows(2) {
            assert!(w[1].pulse - w[0].pulse > 1000);
        }
        assert!(rec.dead_pulses > 0);
        assert_eq!(rec.sent.iter().sum::<u64>(), 1_000_000);
    }
}
