//! Link parameters: source, fibre, detectors and post-processing, with the named published sets.
//!
//! Parameters come in two stages (STYLE.md): [`RawParams`] is what a TOML file holds (every field optional,
//! unknown fields refused); [`LinkParams::from_toml`] lays it over a named base set and [`LinkParams::validate`]
//! checks every value, naming the field and the bad value in the error.

use serde::{Deserialize, Serialize};

/// Why a parameter set was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    /// The named parameter set does not exist.
    #[error("unknown parameter set `{0}`: use one of gys, lmc05, modern, or a path to a TOML file")]
    UnknownSet(String),
    /// A value is outside its allowed range.
    #[error("{field} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The field name as written in TOML or on the command line.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// What would be accepted.
        expected: &'static str,
    },
    /// The TOML text could not be parsed into parameters.
    #[error("malformed parameter TOML: {0}")]
    Toml(String),
}

/// The transmitter: a phase-randomised weak coherent source with decoy intensities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Pulse (clock) rate in Hz.
    pub pulse_rate_hz: f64,
    /// Signal intensity mu (mean photon number per pulse).
    pub mu: f64,
    /// Weak decoy intensity nu (0 < nu < mu).
    pub nu: f64,
    /// Probability that a pulse is a signal pulse.
    pub p_signal: f64,
    /// Probability that a pulse is a weak decoy; the rest are vacuum decoys.
    pub p_decoy: f64,
    /// Probability that Alice (and Bob) choose the Z basis; 0.5 is the symmetric BB84 of the papers (q = 1/2).
    pub p_z: f64,
}

/// The quantum channel: standard single-mode fibre.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fibre {
    /// Length in km.
    pub length_km: f64,
    /// Attenuation in dB/km.
    pub attenuation_db_per_km: f64,
}

/// Bob's receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    /// Overall detection efficiency of Bob (eta_Bob: internal transmittance times detector efficiency).
    pub efficiency: f64,
    /// Dark-count (background) probability per pulse slot of the whole receiver (Y0).
    pub dark_count: f64,
    /// Optical misalignment: probability that a photon hits the wrong detector (e_detector).
    pub misalignment: f64,
    /// Dead time in seconds after any click, applied to both detectors (symmetric dead time).
    pub dead_time_s: f64,
}

/// Post-processing choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostProcessing {
    /// Error-correction inefficiency f(e) used by the analytic rate (the Monte Carlo measures its own).
    pub ec_efficiency: f64,
    /// QBER above which parameter estimation aborts the block.
    pub qber_threshold: f64,
    /// Fraction of sifted signal bits disclosed to estimate the QBER before error correction.
    pub pe_sample_fraction: f64,
    /// Apply the finite-size correction (statistical fluctuation of gains and error rates).
    pub finite_key: bool,
    /// Number of standard deviations for the finite-size fluctuation bounds (Ma-Qi-Zhao-Lo 2005, Sec. VI).
    pub finite_key_sigmas: f64,
    /// Security parameter of privacy amplification: log2(1/eps_pa) (finite-key only).
    pub pa_security_bits: f64,
    /// Number of Cascade passes.
    pub cascade_passes: u32,
    /// Pre-shared authentication key in bits (the Wegman-Carter pool before the first block).
    pub preshared_auth_bits: u64,
}

/// A complete link description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// Name of the set (or the file it came from).
    pub name: String,
    /// Transmitter.
    pub source: Source,
    /// Fibre.
    pub fibre: Fibre,
    /// Receiver.
    pub detector: Detector,
    /// Post-processing.
    pub post: PostProcessing,
}

/// Names of the built-in sets.
pub const NAMED_SETS: [&str; 3] = ["gys", "lmc05", "modern"];

fn default_post() -> PostProcessing {
    PostProcessing {
        ec_efficiency: 1.22,
        qber_threshold: 0.11,
        pe_sample_fraction: 0.05,
        finite_key: false,
        finite_key_sigmas: 5.0,
        pa_security_bits: 64.0,
        cascade_passes: 4,
        preshared_auth_bits: 8192,
    }
}

impl LinkParams {
    /// Gobby, Yuan and Shields, Appl. Phys. Lett. 84, 3762 (2004), as tabulated by Lo-Ma-Chen 2005 and
    /// Ma-Qi-Zhao-Lo 2005: 1550 nm, 0.21 dB/km, eta_Bob 4.5%, Y0 1.7e-6, e_detector 3.3%, f(e) 1.22. The
    /// 2 MHz clock is GYS's; mu = 0.48 is the optimum the decoy papers find for this set, nu = 0.05.
    #[must_use]
    pub fn gys() -> Self {
        Self {
            name: "gys".to_owned(),
            source: Source {
                pulse_rate_hz: 2.0e6,
                mu: 0.48,
                nu: 0.05,
                p_signal: 0.8,
                p_decoy: 0.1,
                p_z: 0.5,
            },
            fibre: Fibre {
                length_km: 0.0,
                attenuation_db_per_km: 0.21,
            },
            detector: Detector {
                efficiency: 0.045,
                dark_count: 1.7e-6,
                misalignment: 0.033,
                dead_time_s: 0.0,
            },
            post: default_post(),
        }
    }

    /// The decoy-state papers' protocol on the GYS channel (Lo-Ma-Chen 2005; Ma-Qi-Zhao-Lo 2005): symmetric
    /// BB84 (q = 1/2), vacuum + weak decoy with a weak decoy of nu = 0.1 and a larger decoy share, as their
    /// vacuum + weak protocol is usually run in experiments (Zhao et al. 2006).
    #[must_use]
    pub fn lmc05() -> Self {
        let mut p = Self::gys();
        p.name = "lmc05".to_owned();
        p.source.nu = 0.1;
        p.source.p_signal = 0.6;
        p.source.p_decoy = 0.2;
        p
    }

    /// A present-day GHz link (illustrative, not one paper): 1 GHz clock, 0.2 dB/km, superconducting
    /// detectors (eta_Bob 60%, Y0 1e-7, 50 ns dead time), 1% misalignment, f = 1.16, biased bases.
    #[must_use]
    pub fn modern() -> Self {
        Self {
            name: "modern".to_owned(),
            source: Source {
                pulse_rate_hz: 1.0e9,
                mu: 0.5,
                nu: 0.1,
                p_signal: 0.8,
                p_decoy: 0.1,
                p_z: 0.5,
            },
            fibre: Fibre {
                length_km: 0.0,
                attenuation_db_per_km: 0.2,
            },
            detector: Detector {
                efficiency: 0.6,
                dark_count: 1.0e-7,
                misalignment: 0.01,
                dead_time_s: 50e-9,
            },
            post: PostProcessing {
                ec_efficiency: 1.16,
                ..default_post()
            },
        }
    }

    /// A built-in set by name.
    ///
    /// # Errors
    /// [`ParamsError::UnknownSet`] for any other name.
    pub fn named(name: &str) -> Result<Self, ParamsError> {
        match name {
            "gys" => Ok(Self::gys()),
            "lmc05" => Ok(Self::lmc05()),
            "modern" => Ok(Self::modern()),
            other => Err(ParamsError::UnknownSet(other.to_owned())),
        }
    }

    /// Parses a TOML parameter file: an optional `base = "<named set>"` (default gys) and any fields of the
    /// sections `[source]`, `[fibre]`, `[detector]`, `[post]` to override. Unknown fields are refused.
    ///
    /// # Errors
    /// [`ParamsError::Toml`] for malformed TOML or unknown fields, [`ParamsError::UnknownSet`] for a bad base,
    /// and any error of [`LinkParams::validate`].
    pub fn from_toml(text: &str, name: &str) -> Result<Self, ParamsError> {
        let raw: RawParams = toml::from_str(text).map_err(|e| ParamsError::Toml(e.to_string()))?;
        let mut p = Self::named(raw.base.as_deref().unwrap_or("gys"))?;
        p.name = name.to_owned();
        raw.apply(&mut p);
        p.validate()?;
        Ok(p)
    }

    /// Overall transmittance eta = eta_Bob * 10^(-alpha L / 10).
    #[must_use]
    pub fn eta(&self) -> f64 {
        self.detector.efficiency
            * 10f64.powf(-self.fibre.attenuation_db_per_km * self.fibre.length_km / 10.0)
    }

    /// Probability of the vacuum decoy class.
    #[must_use]
    pub fn p_vacuum(&self) -> f64 {
        (1.0 - self.source.p_signal - self.source.p_decoy).max(0.0)
    }

    /// Checks every value; the error names the field and the value.
    ///
    /// # Errors
    /// [`ParamsError::OutOfRange`] for the first value that is out of range.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let s = &self.source;
        let d = &self.detector;
        let f = &self.fibre;
        let p = &self.post;
        positive("source.pulse_rate_hz", s.pulse_rate_hz)?;
        positive("source.mu", s.mu)?;
        if !(s.nu.is_finite() && s.nu > 0.0 && s.nu < s.mu) {
            return Err(oor("source.nu", s.nu, "0 < nu < mu"));
        }
        probability("source.p_signal", s.p_signal)?;
        probability("source.p_decoy", s.p_decoy)?;
        if s.p_signal + s.p_decoy > 1.0 + 1e-12 {
            return Err(oor("source.p_decoy", s.p_decoy, "p_signal + p_decoy <= 1"));
        }
        if s.p_signal <= 0.0 {
            return Err(oor(
                "source.p_signal",
                s.p_signal,
                "a probability in (0, 1]",
            ));
        }
        range("source.p_z", s.p_z, 0.0, 1.0, "a probability in (0, 1)")?;
        if s.p_z <= 0.0 || s.p_z >= 1.0 {
            return Err(oor("source.p_z", s.p_z, "a probability in (0, 1)"));
        }
        range(
            "fibre.length_km",
            f.length_km,
            0.0,
            1.0e5,
            "a length in km, 0 or more",
        )?;
        range(
            "fibre.attenuation_db_per_km",
            f.attenuation_db_per_km,
            0.0,
            100.0,
            "dB/km, 0 or more",
        )?;
        probability("detector.efficiency", d.efficiency)?;
        probability("detector.dark_count", d.dark_count)?;
        range(
            "detector.misalignment",
            d.misalignment,
            0.0,
            0.5,
            "a probability in [0, 0.5]",
        )?;
        range(
            "detector.dead_time_s",
            d.dead_time_s,
            0.0,
            1.0,
            "seconds in [0, 1]",
        )?;
        range("post.ec_efficiency", p.ec_efficiency, 1.0, 10.0, "f >= 1")?;
        range(
            "post.qber_threshold",
            p.qber_threshold,
            0.0,
            0.5,
            "a QBER in [0, 0.5]",
        )?;
        range(
            "post.pe_sample_fraction",
            p.pe_sample_fraction,
            0.0,
            0.9,
            "a fraction in [0, 0.9]",
        )?;
        range(
            "post.finite_key_sigmas",
            p.finite_key_sigmas,
            0.0,
            50.0,
            "standard deviations in [0, 50]",
        )?;
        range(
            "post.pa_security_bits",
            p.pa_security_bits,
            0.0,
            1024.0,
            "bits in [0, 1024]",
        )?;
        if !(1..=32).contains(&p.cascade_passes) {
            return Err(oor(
                "post.cascade_passes",
                f64::from(p.cascade_passes),
                "1 to 32 passes",
            ));
        }
        Ok(())
    }
}

fn oor(field: &'static str, value: f64, expected: &'static str) -> ParamsError {
    ParamsError::OutOfRange {
        field,
        value,
        expected,
    }
}

fn range(
    field: &'static str,
    v: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<(), ParamsError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(oor(field, v, expected))
    }
}

fn probability(field: &'static str, v: f64) -> Result<(), ParamsError> {
    range(field, v, 0.0, 1.0, "a probability in [0, 1]")
}

fn positive(field: &'static str, v: f64) -> Result<(), ParamsError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(oor(field, v, "a positive number"))
    }
}

/// The TOML form: every field optional, laid over the base set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    /// Named set to start from (default gys).
    pub base: Option<String>,
    /// Source overrides.
    pub source: Option<RawSource>,
    /// Fibre overrides.
    pub fibre: Option<RawFibre>,
    /// Detector overrides.
    pub detector: Option<RawDetector>,
    /// Post-processing overrides.
    pub post: Option<RawPost>,
}

/// TOML `[source]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawSource {
    pub pulse_rate_hz: Option<f64>,
    pub mu: Option<f64>,
    pub nu: Option<f64>,
    pub p_signal: Option<f64>,
    pub p_decoy: Option<f64>,
    pub p_z: Option<f64>,
}

/// TOML `[fibre]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawFibre {
    pub length_km: Option<f64>,
    pub attenuation_db_per_km: Option<f64>,
}

/// TOML `[detector]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawDetector {
    pub efficiency: Option<f64>,
    pub dark_count: Option<f64>,
    pub misalignment: Option<f64>,
    pub dead_time_s: Option<f64>,
}

/// TOML `[post]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawPost {
    pub ec_efficiency: Option<f64>,
    pub qber_threshold: Option<f64>,
    pub pe_sample_fraction: Option<f64>,
    pub finite_key: Option<bool>,
    pub finite_key_sigmas: Option<f64>,
    pub pa_security_bits: Option<f64>,
    pub cascade_passes: Option<u32>,
    pub preshared_auth_bits: Option<u64>,
}

fn set<T>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

impl RawParams {
    fn apply(self, p: &mut LinkParams) {
        if let Some(s) = self.source {
            set(&mut p.source.pulse_rate_hz, s.pulse_rate_hz);
            set(&mut p.source.mu, s.mu);
            set(&mut p.source.nu, s.nu);
            set(&mut p.source.p_signal, s.p_signal);
            set(&mut p.source.p_decoy, s.p_decoy);
            set(&mut p.source.p_z, s.p_z);
        }
        if let Some(f) = self.fibre {
            set(&mut p.fibre.length_km, f.length_km);
            set(&mut p.fibre.attenuation_db_per_km, f.attenuation_db_per_km);
        }
        if let Some(d) = self.detector {
            set(&mut p.detector.efficiency, d.efficiency);
            set(&mut p.detector.dark_count, d.dark_count);
            set(&mut p.detector.misalignment, d.misalignment);
            set(&mut p.detector.dead_time_s, d.dead_time_s);
        }
        if let Some(q) = self.post {
            set(&mut p.post.ec_efficiency, q.ec_efficiency);
            set(&mut p.post.qber_threshold, q.qber_threshold);
            set(&mut p.post.pe_sample_fraction, q.pe_sample_fraction);
            set(&mut p.post.finite_key, q.finite_key);
            set(&mut p.post.finite_key_sigmas, q.finite_key_sigmas);
            set(&mut p.post.pa_security_bits, q.pa_security_bits);
            set(&mut p.post.cascade_passes, q.cascade_passes);
            set(&mut p.post.preshared_auth_bits, q.preshared_auth_bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sets_validate() {
        for n in NAMED_SETS {
            LinkParams::named(n).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_set_is_named() {
        let e = LinkParams::named("gyss").unwrap_err();
        assert!(e.to_string().contains("gyss"), "{e}");
    }

    #[test]
    fn toml_overrides_and_refuses_unknown_fields() {
        let p =
            LinkParams::from_toml("base = \"modern\"\n[fibre]\nlength_km = 12.5\n", "x").unwrap();
        assert_eq!(p.fibre.length_km, 12.5);
        assert_eq!(p.detector.efficiency, 0.6);
        let e = LinkParams::from_toml("[fibre]\nlenght_km = 3\n", "x").unwrap_err();
        assert!(
            matches!(e, ParamsError::Toml(ref m) if m.contains("lenght_km")),
            "{e}"
        );
        let e = LinkParams::from_toml("[fibre\n", "x").unwrap_err();
        assert!(matches!(e, ParamsError::Toml(_)), "{e}");
    }

    #[test]
    fn bad_values_name_field_and_value() {
        let e = LinkParams::from_toml("[detector]\ndark_count = 1.5\n", "x").unwrap_err();
        assert!(e.to_string().contains("detector.dark_count = 1.5"), "{e}");
        let e = LinkParams::from_toml("[fibre]\nlength_km = -3\n", "x").unwrap_err();
        assert!(e.to_string().contains("fibre.length_km = -3"), "{e}");
        let e = LinkParams::from_toml("[source]\nnu = 0.9\n", "x").unwrap_err();
        assert!(e.to_string().contains("source.nu = 0.9"), "{e}");
    }
}
