//! A small deterministic PRNG (SplitMix64 seeding, xorshift64* stream), written inline so
//! every allocator sees exactly the same sequence of sizes and slots.

/// One SplitMix64 step: used to turn a seed (and a thread index) into a well-mixed state.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*: fast, good enough for picking slots and sizes.
pub struct Rng(u64);

impl Rng {
    /// A stream for `seed`; different `stream` values (e.g. thread indices) give
    /// independent-looking sequences.
    pub fn new(seed: u64, stream: u64) -> Self {
        let s = splitmix64(seed ^ splitmix64(stream.wrapping_add(1)));
        Rng(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the tiny bias does not matter here).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Log-uniform in `lo..=hi`: each power of two is about equally likely, the usual
    /// shape of object sizes in real programs.
    #[inline]
    pub fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        let v = (l + self.unit() * (h - l)).exp() as usize;
        v.clamp(lo, hi)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Rng::new(7, 0);
        let mut b = Rng::new(7, 0);
        for _ in 0..10_000 {
            let x = a.range(16, 1024);
            assert_eq!(x, b.range(16, 1024));
            assert!((16..=1024).contains(&x));
            let y = a.log_range(64, 4 << 20);
            b.log_range(64, 4 << 20);
            assert!((64..=4 << 20).contains(&y));
        }
        assert_ne!(Rng::new(7, 1).next_u64(), Rng::new(7, 0).next_u64());
    }
}
