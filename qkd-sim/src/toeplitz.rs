//! Privacy amplification by Toeplitz hashing, computed with a real FFT and exact integer rounding.
//!
//! The l x n Toeplitz matrix `T[i][j] = t[i - j + n - 1]` is fixed by `n + l - 1` public random bits `t`
//! (a 2-universal family, so the leftover hash lemma applies). Output bit `i` is the parity of the integer
//! convolution `c[i + n - 1] = sum_j x[j] t[i + n - 1 - j]`, so one cyclic convolution of length
//! `M >= n + l - 1` (no wrap-around reaches those entries) gives all l bits in O(M log M).
//!
//! Exactness: every `c` is an integer in [0, n]. The f64 FFT convolution's error is far below 1/2 for these
//! sizes (for 0/1 inputs of length 2^21 it is around 1e-9); every output is rounded and the distance to
//! the nearest integer is checked, and any output farther than 1/4 is an error, never a silently wrong bit.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::bits::BitVec;

/// Why a hash could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToeplitzError {
    /// The seed does not have `n + l - 1` bits.
    #[error("Toeplitz seed has {got} bits, needs n + l - 1 = {needed}")]
    SeedLength {
        /// Bits given.
        got: usize,
        /// Bits needed.
        needed: usize,
    },
    /// Output longer than input.
    #[error("cannot hash {n} bits to {l} bits: the output must not be longer than the input")]
    OutputTooLong {
        /// Input bits.
        n: usize,
        /// Output bits asked for.
        l: usize,
    },
    /// Input beyond the size for which the floating-point convolution is proven exact here.
    #[error("input of {0} bits is above the 2^28-bit limit of the exact FFT convolution")]
    TooLong(usize),
    /// A convolution value was not within 1/4 of an integer (never seen; reported, not rounded blindly).
    #[error("FFT convolution lost exactness (distance {0} from an integer)")]
    Precision(f64),
    /// The FFT library refused the buffers.
    #[error("FFT failed: {0}")]
    Fft(String),
}

/// Forward and inverse real FFT plans for one length.
type Plans = (
    usize,
    Arc<dyn RealToComplex<f64>>,
    Arc<dyn ComplexToReal<f64>>,
);

/// Hashes with cached FFT plans and buffers (a fresh 16 MB buffer per call costs as much as a transform).
pub struct Toeplitz {
    planner: RealFftPlanner<f64>,
    plans: Option<Plans>,
    buf: Vec<f64>,
    xs: Vec<Complex<f64>>,
    ts: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl Default for Toeplitz {
    fn default() -> Self {
        Self::new()
    }
}

/// The smallest even length of the form 2^a, 3 * 2^a, 5 * 2^a or 7 * 2^a (fast FFT sizes) that is at
/// least `m`.
fn fft_len(m: usize) -> usize {
    let p = m.next_power_of_two().max(4);
    [p, p / 8 * 5, p / 4 * 3, p / 8 * 7]
        .into_iter()
        .filter(|&c| c >= m && c % 2 == 0)
        .min()
        .unwrap_or(p)
}

impl Toeplitz {
    /// A hasher with no plans yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            planner: RealFftPlanner::new(),
            plans: None,
            buf: Vec::new(),
            xs: Vec::new(),
            ts: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// `T x` for the Toeplitz matrix of `seed` (`x.len() + l - 1` bits), `l` output bits.
    ///
    /// # Errors
    /// [`ToeplitzError`] for inconsistent lengths or (never observed) loss of exactness.
    pub fn hash(&mut self, x: &BitVec, seed: &BitVec, l: usize) -> Result<BitVec, ToeplitzError> {
        let n = x.len();
        if l > n {
            return Err(ToeplitzError::OutputTooLong { n, l });
        }
        if l == 0 {
            return Ok(BitVec::zeros(0));
        }
        let needed = n + l - 1;
        if seed.len() != needed {
            return Err(ToeplitzError::SeedLength {
                got: seed.len(),
                needed,
            });
        }
        if n > (1 << 28) {
            return Err(ToeplitzError::TooLong(n));
        }
        let m = fft_len(needed);
        let (fwd, inv) = match &self.plans {
            Some((len, f, i)) if *len == m => (f.clone(), i.clone()),
            _ => {
                let f = self.planner.plan_fft_forward(m);
                let i = self.planner.plan_fft_inverse(m);
                self.plans = Some((m, f.clone(), i.clone()));
                (f, i)
            }
        };
        let spectrum = m / 2 + 1;
        let scratch_len = fwd.get_scratch_len().max(inv.get_scratch_len());
        self.buf.clear();
        self.buf.resize(m, 0.0);
        self.xs.resize(spectrum, Complex::default());
        self.ts.resize(spectrum, Complex::default());
        self.scratch.resize(scratch_len, Complex::default());
        let fft_err = |e: realfft::FftError| ToeplitzError::Fft(e.to_string());
        spread(x, &mut self.buf);
        fwd.process_with_scratch(&mut self.buf, &mut self.xs, &mut self.scratch)
            .map_err(fft_err)?;
        self.buf.fill(0.0);
        spread(seed, &mut self.buf);
        fwd.process_with_scratch(&mut self.buf, &mut self.ts, &mut self.scratch)
            .map_err(fft_err)?;
        for (a, b) in self.xs.iter_mut().zip(&self.ts) {
            *a *= *b;
        }
        // The DC and Nyquist bins of a real signal's spectrum are real; clear rounding noise in them.
        if let Some(c) = self.xs.first_mut() {
            *c = Complex::new(c.re, 0.0);
        }
        if m % 2 == 0
            && let Some(c) = self.xs.last_mut()
        {
            *c = Complex::new(c.re, 0.0);
        }
        inv.process_with_scratch(&mut self.xs, &mut self.buf, &mut self.scratch)
            .map_err(fft_err)?;
        let buf = &self.buf;
        let scale = 1.0 / m as f64;
        let mut out = vec![0u64; l.div_ceil(64)];
        let mut worst = 0f64;
        for (w, chunk) in out.iter_mut().zip(buf[n - 1..n - 1 + l].chunks(64)) {
            let mut acc = 0u64;
            for (i, &v) in chunk.iter().enumerate() {
                let v = v * scale;
                let r = v.round();
                worst = worst.max((v - r).abs());
                acc |= ((r as i64 & 1) as u64) << i;
            }
            *w = acc;
        }
        if worst > 0.25 {
            return Err(ToeplitzError::Precision(worst));
        }
        Ok(BitVec::from_words(out, l))
    }
}

fn spread(bits: &BitVec, out: &mut [f64]) {
    for (chunk, &w) in out.chunks_mut(64).zip(bits.words()) {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = ((w >> i) & 1) as f64;
        }
    }
    let n = bits.len();
    for o in out.iter_mut().skip(n).take(64) {
        *o = 0.0;
    }
}

/// The quadratic definition, for tests and small inputs.
#[must_use]
pub fn hash_naive(x: &BitVec, seed: &BitVec, l: usize) -> BitVec {
    let n = x.len();
    let mut out = BitVec::zeros(l);
    for i in 0..l {
        let mut p = false;
        for j in 0..n {
            p ^= x.get(j) & seed.get(i + n - 1 - j);
        }
        out.set(i, p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_bits(n: usize, rng: &mut ChaCha8Rng) -> BitVec {
        BitVec::from_words((0..n.div_ceil(64)).map(|_| rng.random()).collect(), n)
    }

    #[test]
    fn fft_matches_quadratic_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut t = Toeplitz::new();
        for (n, l) in [
            (1, 1),
            (64, 10),
            (100, 37),
            (1000, 999),
            (1537, 700),
            (4096, 1),
        ] {
            let x = random_bits(n, &mut rng);
            let s = random_bits(n + l - 1, &mut rng);
            assert_eq!(
                t.hash(&x, &s, l).unwrap(),
                hash_naive(&x, &s, l),
                "n={n} l={l}"
            );
        }
    }

    #[test]
    fn all_ones_input_stays_exact_at_large_size() {
        // Worst case for magnitude: every convolution term is 1, so c reaches n.
        let n = 1 << 20;
        let l = n / 2;
        let x = BitVec::from_words(vec![!0; n / 64], n);
        let s = BitVec::from_words(vec![!0; (n + l - 1).div_ceil(64)], n + l - 1);
        let y = Toeplitz::new().hash(&x, &s, l).unwrap();
        // Every output is the parity of n ones: 0.
        assert!(y.words().iter().all(|&w| w == 0));
    }

    #[test]
    fn bad_lengths_are_errors() {
        let x = BitVec::zeros(10);
        let mut t = Toeplitz::new();
        assert!(matches!(
            t.hash(&x, &BitVec::zeros(12), 4),
            Err(ToeplitzError::SeedLength { .. })
        ));
        assert!(matches!(
            t.hash(&x, &BitVec::zeros(30), 11),
            Err(ToeplitzError::OutputTooLong { .. })
        ));
    }
}
