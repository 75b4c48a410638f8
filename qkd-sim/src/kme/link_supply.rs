//! The link model as the KMEs' key supply: one [`Link::run_block`] per block, Alice's and Bob's
//! final keys (Bob's are his own corrected, amplified bits) into the pool, the QBER parameter
//! estimation measured into the link's status, and aborted blocks as aborted.

use anyhow::Context;

use super::config::LinkConfig;
use super::supply::{BlockOutcome, KeySupply};
use crate::{Link, LinkParams};

/// Sifted signal bits a block aims at when `block_pulses` is not given: small enough that key
/// arrives every few link seconds, large enough for stable estimates.
pub const DEFAULT_SIFTED_BITS: f64 = 65_536.0;

/// The Monte Carlo pipeline of [`Link`], block after block.
pub struct PipelineSupply {
    link: Link,
    pulses: u64,
    eve: f64,
}

impl PipelineSupply {
    /// A pipeline over `params` seeded with `seed`, `pulses` per block.
    pub fn new(params: LinkParams, seed: u64, pulses: u64) -> anyhow::Result<Self> {
        Ok(PipelineSupply {
            link: Link::new(params, seed)?,
            pulses,
            eve: 0.0,
        })
    }
}

/// Pulses for about `sifted` sifted signal bits at the link's expected gain.
pub fn pulses_for(p: &LinkParams, sifted: f64) -> u64 {
    let q = crate::analytic::gain(p.detector.dark_count, p.eta(), p.source.mu);
    let per_pulse = q * p.source.p_signal * crate::analytic::sifting_factor(p);
    ((sifted / per_pulse.max(1e-12)).ceil() as u64).clamp(1000, 100_000_000_000)
}

/// The link parameters `link` names, at its distance.
pub fn params_of(link: &LinkConfig) -> anyhow::Result<LinkParams> {
    let mut p = if link.params.ends_with(".toml") {
        let text = std::fs::read_to_string(&link.params)
            .with_context(|| format!("[link] params = {:?}: cannot read the file", link.params))?;
        LinkParams::from_toml(&text, &link.params)?
    } else {
        LinkParams::named(&link.params).context("[link] params")?
    };
    p.fibre.length_km = link.distance_km;
    p.validate().context("[link]")?;
    Ok(p)
}

/// The supply `qkd-sim serve` runs for `link`.
pub fn from_config(link: &LinkConfig) -> anyhow::Result<Box<dyn KeySupply>> {
    let p = params_of(link)?;
    let pulses = link
        .block_pulses
        .unwrap_or_else(|| pulses_for(&p, DEFAULT_SIFTED_BITS));
    let mut s = PipelineSupply::new(p, link.seed, pulses)?;
    s.set_eve_fraction(link.eve_fraction);
    Ok(Box::new(s))
}

impl KeySupply for PipelineSupply {
    fn next_block(&mut self) -> anyhow::Result<BlockOutcome> {
        let out = self.link.run_block(self.pulses, self.eve)?;
        Ok(match out {
            crate::BlockOutcome::Key { alice, bob, stats } => BlockOutcome::Key {
                alice: zeroize::Zeroizing::new(alice.as_bytes().to_vec()),
                bob: zeroize::Zeroizing::new(bob.as_bytes().to_vec()),
                qber: stats.pe_sample_qber,
                link_seconds: stats.duration_s,
            },
            crate::BlockOutcome::Aborted { reason, stats } => BlockOutcome::Aborted {
                qber: (stats.pe_sample_bits > 0).then_some(stats.pe_sample_qber),
                reason: reason.to_string(),
                link_seconds: stats.duration_s,
            },
        })
    }

    fn set_eve_fraction(&mut self, fraction: f64) {
        self.eve = fraction.clamp(0.0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_carry_both_sides_keys_and_eve_aborts_through_the_qber() {
        let mut p = LinkParams::gys();
        p.fibre.length_km = 5.0;
        let pulses = pulses_for(&p, 20_000.0);
        let mut s = PipelineSupply::new(p, 5, pulses).unwrap();
        match s.next_block().unwrap() {
            BlockOutcome::Key {
                alice,
                bob,
                qber,
                link_seconds,
            } => {
                assert!(!bob.is_empty());
                assert_eq!(
                    alice, bob,
                    "Cascade and verification make Bob's bits Alice's"
                );
                assert!(qber < 0.11 && link_seconds > 0.0, "{qber} {link_seconds}");
            }
            BlockOutcome::Aborted { reason, .. } => {
                panic!("no eavesdropper, yet aborted: {reason}")
            }
        }
        s.set_eve_fraction(1.0);
        match s.next_block().unwrap() {
            BlockOutcome::Aborted { qber, reason, .. } => {
                let q = qber.unwrap();
                assert!(
                    q > 0.2,
                    "intercept-resend on every pulse gives about 25%: {q}"
                );
                assert!(reason.contains("QBER"), "{reason}");
            }
            BlockOutcome::Key { .. } => panic!("eve on every pulse, yet key"),
        }
    }
}
