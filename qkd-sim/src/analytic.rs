//! The asymptotic decoy-state key rate (GLLP with decoy states).
//!
//! Formulas (notation of Lo-Ma-Chen, PRL 94, 230504 (2005), and Ma-Qi-Zhao-Lo, PRA 72, 012326 (2005)):
//!
//! - transmittance `eta = eta_Bob * 10^(-alpha L / 10)`; n-photon yield `Y_n = Y0 + 1 - (1 - eta)^n`;
//! - gain `Q_mu = Y0 + 1 - exp(-eta mu)`; QBER `E_mu Q_mu = e0 Y0 + e_det (1 - exp(-eta mu))`, `e0 = 1/2`;
//! - single photons: `Q1 = Y1 mu exp(-mu)`, `e1 = (e0 Y0 + e_det eta) / Y1`;
//! - key rate per pulse `R = q { -Q_mu f(E_mu) H2(E_mu) + Q1 [1 - H2(e1)] }`, with `q = 1/2` for
//!   symmetric BB84 (in general the probability that the bases agree).
//!
//! With infinitely many decoys Y1 and e1 are known exactly. With a vacuum and one weak decoy nu
//! (Ma-Qi-Zhao-Lo Eqs. (34) and (37)):
//!
//! - `Y1 >= Y1L = mu / (mu nu - nu^2) * (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 * Y0)`;
//! - `e1 <= e1U = (E_nu Q_nu e^nu - e0 Y0) / (Y1L nu)`.
//!
//! The same bound functions ([`vacuum_weak_bounds`]) serve the Monte Carlo, fed with observed gains.

use serde::Serialize;

use crate::params::LinkParams;

/// Binary entropy in bits; 0 at 0 and 1, and clamped to 1 above 1/2 (an error rate above 1/2 gives no key).
#[must_use]
pub fn h2(x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if x >= 0.5 {
        1.0
    } else {
        -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
    }
}

/// Which decoy analysis bounds the single-photon part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoyMethod {
    /// Infinitely many decoys: Y1 and e1 exact (Lo-Ma-Chen 2005).
    Infinite,
    /// Vacuum + one weak decoy (Ma-Qi-Zhao-Lo 2005).
    VacuumWeak,
}

/// Expected gain of intensity `mu` at transmittance `eta` (Lo-Ma-Chen Eq. (3) form).
#[must_use]
pub fn gain(y0: f64, eta: f64, mu: f64) -> f64 {
    y0 + 1.0 - (-eta * mu).exp()
}

/// Expected QBER of intensity `mu`.
#[must_use]
pub fn qber(y0: f64, eta: f64, e_det: f64, mu: f64) -> f64 {
    let q = gain(y0, eta, mu);
    if q <= 0.0 {
        0.5
    } else {
        (0.5 * y0 + e_det * (1.0 - (-eta * mu).exp())) / q
    }
}

/// Lower bound on Y1 and upper bound on e1 from vacuum + weak decoy statistics (Ma-Qi-Zhao-Lo Eqs. (34),
/// (37)). `y0` is the vacuum gain, `q_nu`/`e_nu` the weak decoy's gain and QBER, `q_mu` the signal gain.
/// Returns `(y1_lower, e1_upper)`; `e1_upper` is clamped to [0, 1/2].
#[must_use]
pub fn vacuum_weak_bounds(
    mu: f64,
    nu: f64,
    y0: f64,
    q_mu: f64,
    q_nu: f64,
    e_nu: f64,
) -> (f64, f64) {
    let y1l = mu / (mu * nu - nu * nu)
        * (q_nu * nu.exp()
            - q_mu * mu.exp() * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0);
    let e1u = if y1l > 0.0 {
        ((e_nu * q_nu * nu.exp() - 0.5 * y0) / (y1l * nu)).clamp(0.0, 0.5)
    } else {
        0.5
    };
    (y1l, e1u)
}

/// Everything the analytic model says about one link at one intensity.
#[derive(Debug, Clone, Serialize)]
pub struct RatePoint {
    /// Fibre length in km.
    pub distance_km: f64,
    /// Decoy analysis used.
    pub method: DecoyMethod,
    /// Signal intensity.
    pub mu: f64,
    /// Weak decoy intensity (vacuum + weak only).
    pub nu: f64,
    /// Overall transmittance eta.
    pub eta: f64,
    /// Signal gain Q_mu.
    pub gain: f64,
    /// Signal QBER E_mu.
    pub qber: f64,
    /// Single-photon gain (exact or lower bound) Q1.
    pub q1: f64,
    /// Single-photon error rate (exact or upper bound) e1.
    pub e1: f64,
    /// Secret key rate per pulse R (0 when negative).
    pub secret_key_rate_per_pulse: f64,
    /// Secret key rate in bit/s: R times the pulse rate times the signal share of pulses.
    pub secret_key_rate_bps: f64,
}

/// Sifting factor q: probability that Alice's and Bob's bases agree.
#[must_use]
pub fn sifting_factor(p: &LinkParams) -> f64 {
    let z = p.source.p_z;
    z * z + (1.0 - z) * (1.0 - z)
}

/// The key rate at the link's distance with signal intensity `mu` (the weak decoy is `p.source.nu`).
#[must_use]
pub fn rate_at(p: &LinkParams, method: DecoyMethod, mu: f64) -> RatePoint {
    let eta = p.eta();
    let y0 = p.detector.dark_count;
    let ed = p.detector.misalignment;
    let nu = p.source.nu;
    let q_mu = gain(y0, eta, mu);
    let e_mu = qber(y0, eta, ed, mu);
    let (y1, e1) = match method {
        DecoyMethod::Infinite => {
            let y1 = y0 + eta;
            (y1, ((0.5 * y0 + ed * eta) / y1).min(0.5))
        }
        DecoyMethod::VacuumWeak => {
            vacuum_weak_bounds(mu, nu, y0, q_mu, gain(y0, eta, nu), qber(y0, eta, ed, nu))
        }
    };
    let q1 = (y1 * mu * (-mu).exp()).max(0.0);
    let r = sifting_factor(p) * (-q_mu * p.post.ec_efficiency * h2(e_mu) + q1 * (1.0 - h2(e1)));
    let r = r.max(0.0);
    RatePoint {
        distance_km: p.fibre.length_km,
        method,
        mu,
        nu,
        eta,
        gain: q_mu,
        qber: e_mu,
        q1,
        e1,
        secret_key_rate_per_pulse: r,
        secret_key_rate_bps: r * p.source.pulse_rate_hz * p.source.p_signal,
    }
}

/// The key rate with mu optimised (grid search, then golden-section refinement).
#[must_use]
pub fn optimal_rate(p: &LinkParams, method: DecoyMethod) -> RatePoint {
    let lo_mu = match method {
        DecoyMethod::Infinite => 1e-3,
        DecoyMethod::VacuumWeak => p.source.nu * 1.05,
    };
    let hi_mu = 1.5f64.max(lo_mu * 2.0);
    let f = |mu: f64| rate_at(p, method, mu).secret_key_rate_per_pulse;
    let steps = 80;
    let ratio = (hi_mu / lo_mu).powf(1.0 / f64::from(steps));
    let mut best = (lo_mu, f(lo_mu));
    let mut mu = lo_mu;
    for _ in 0..steps {
        mu *= ratio;
        let r = f(mu);
        if r > best.1 {
            best = (mu, r);
        }
    }
    // Golden section on the bracket around the best grid point.
    let (mut a, mut b) = (best.0 / ratio, (best.0 * ratio).min(hi_mu));
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if f(c) >= f(d) {
            b = d;
        } else {
            a = c;
        }
    }
    let mid = 0.5 * (a + b);
    if f(mid) >= best.1 {
        rate_at(p, method, mid)
    } else {
        rate_at(p, method, best.0)
    }
}

/// The largest distance in km with a positive optimal key rate (bisection to 0.01 km).
#[must_use]
pub fn max_distance_km(p: &LinkParams, method: DecoyMethod) -> f64 {
    let at = |l: f64| {
        let mut q = p.clone();
        q.fibre.length_km = l;
        optimal_rate(&q, method).secret_key_rate_per_pulse > 0.0
    };
    if !at(0.0) {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0, 50.0);
    while at(hi) {
        lo = hi;
        hi *= 2.0;
        if hi > 1.0e5 {
            return hi;
        }
    }
    while hi - lo > 0.01 {
        let m = 0.5 * (lo + hi);
        if at(m) {
            lo = m;
        } else {
            hi = m;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_known_values() {
        assert!((h2(0.11) - 0.4999).abs() < 1e-3);
        assert_eq!(h2(0.0), 0.0);
        assert_eq!(h2(0.5), 1.0);
    }

    /// Lo-Ma-Chen 2005 and Ma-Qi-Zhao-Lo 2005 give about 142 km (infinite decoys) and about 140 km
    /// (vacuum + weak) for GYS.
    #[test]
    fn gys_maximum_distances_match_the_papers() {
        let inf = max_distance_km(&LinkParams::gys(), DecoyMethod::Infinite);
        assert!((inf - 142.0).abs() < 2.0, "infinite decoys: {inf} km");
        let vw = max_distance_km(&LinkParams::lmc05(), DecoyMethod::VacuumWeak);
        assert!((vw - 140.0).abs() < 2.0, "vacuum + weak: {vw} km");
        assert!(vw < inf);
    }

    #[test]
    fn optimal_mu_is_near_the_papers_value() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 50.0;
        let r = optimal_rate(&p, DecoyMethod::Infinite);
        assert!((0.4..0.6).contains(&r.mu), "mu_opt {}", r.mu);
    }

    #[test]
    fn vacuum_weak_bound_is_below_truth_and_tight_for_small_nu() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 60.0;
        let inf = rate_at(&p, DecoyMethod::Infinite, 0.48);
        let vw = rate_at(&p, DecoyMethod::VacuumWeak, 0.48);
        assert!(vw.q1 <= inf.q1 && vw.e1 >= inf.e1);
        assert!(vw.q1 > 0.9 * inf.q1, "{} vs {}", vw.q1, inf.q1);
    }
}
