//! Bit strings packed in u64 words (bit i lives in word i / 64 at position i % 64).

use zeroize::Zeroize;

/// A packed bit string. Key material: it zeroizes on drop and prints only its length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BitVec {
    words: Vec<u64>,
    len: usize,
}

impl std::fmt::Debug for BitVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BitVec({} bits, [redacted])", self.len)
    }
}

impl Drop for BitVec {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl BitVec {
    /// `len` zero bits.
    #[must_use]
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// An empty string with room for `cap` bits.
    #[must_use]
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            words: Vec::with_capacity(cap.div_ceil(64)),
            len: 0,
        }
    }

    /// From words; bits beyond `len` are cleared.
    #[must_use]
    pub fn from_words(mut words: Vec<u64>, len: usize) -> Self {
        words.resize(len.div_ceil(64), 0);
        let mut v = Self { words, len };
        v.clear_tail();
        v
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0
            && let Some(w) = self.words.last_mut()
        {
            *w &= (1u64 << r) - 1;
        }
    }

    /// Number of bits.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed words (bits past `len` are zero).
    #[must_use]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bit `i` (false beyond the end).
    #[inline]
    #[must_use]
    pub fn get(&self, i: usize) -> bool {
        self.words
            .get(i >> 6)
            .is_some_and(|w| (w >> (i & 63)) & 1 == 1)
    }

    /// Sets bit `i` (ignored beyond the end).
    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        if i < self.len
            && let Some(w) = self.words.get_mut(i >> 6)
        {
            let m = 1u64 << (i & 63);
            if v { *w |= m } else { *w &= !m }
        }
    }

    /// Flips bit `i` (ignored beyond the end).
    #[inline]
    pub fn flip(&mut self, i: usize) {
        if i < self.len
            && let Some(w) = self.words.get_mut(i >> 6)
        {
            *w ^= 1u64 << (i & 63);
        }
    }

    /// Appends one bit.
    #[inline]
    pub fn push(&mut self, v: bool) {
        if self.len % 64 == 0 {
            self.words.push(0);
        }
        let i = self.len;
        self.len += 1;
        if v && let Some(w) = self.words.last_mut() {
            *w |= 1u64 << (i & 63);
        }
    }

    /// Parity of the bits in `[lo, hi)`.
    #[inline]
    #[must_use]
    pub fn range_parity(&self, lo: usize, hi: usize) -> bool {
        range_parity(&self.words, lo, hi.min(self.len))
    }

    /// Number of positions where `self` and `other` differ (over the shorter length).
    #[must_use]
    pub fn hamming(&self, other: &Self) -> usize {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| (a ^ b).count_ones() as usize)
            .sum()
    }

    /// Bytes, little-endian bit order within each byte, `len.div_ceil(8)` of them.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8));
        out
    }

    /// The first `len` bits.
    #[must_use]
    pub fn truncated(&self, len: usize) -> Self {
        let len = len.min(self.len);
        Self::from_words(self.words[..len.div_ceil(64)].to_vec(), len)
    }
}

/// Parity of bits `[lo, hi)` of a packed word slice.
#[inline]
#[must_use]
pub fn range_parity(words: &[u64], lo: usize, hi: usize) -> bool {
    if lo >= hi {
        return false;
    }
    let (wl, wh) = (lo >> 6, (hi - 1) >> 6);
    let lo_mask = !0u64 << (lo & 63);
    let hi_mask = !0u64 >> (63 - ((hi - 1) & 63));
    let Some(slice) = words.get(wl..=wh) else {
        return false;
    };
    if wl == wh {
        return (slice[0] & lo_mask & hi_mask).count_ones() & 1 == 1;
    }
    let mut acc = slice[0] & lo_mask;
    for w in &slice[1..slice.len() - 1] {
        acc ^= w;
    }
    acc ^= slice[slice.len() - 1] & hi_mask;
    acc.count_ones() & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parity_matches_naive() {
        let mut v = BitVec::zeros(300);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.set(i, x & 1 == 1);
        }
        for lo in (0..300).step_by(7) {
            for hi in (lo..=300).step_by(11) {
                let naive = (lo..hi).filter(|&i| v.get(i)).count() % 2 == 1;
                assert_eq!(v.range_parity(lo, hi), naive, "{lo}..{hi}");
            }
        }
    }

    #[test]
    fn push_get_bytes() {
        let mut v = BitVec::default();
        for i in 0..20 {
            v.push(i % 3 == 0);
        }
        assert_eq!(v.len(), 20);
        assert!(v.get(3) && !v.get(4));
        assert_eq!(v.to_bytes().len(), 3);
        assert_eq!(format!("{v:?}"), "BitVec(20 bits, [redacted])");
    }
}
