//! Seeded randomness: a small generator and a memory-free shuffle.
//!
//! fedcore keeps no hidden RNG: every random choice (initialisation, sample
//! order, stochastic rounding) comes from a [`Rng`] built from a seed the caller
//! passes, so runs are reproducible. The generator is xoshiro128++ (32-bit
//! arithmetic, cheap on a Cortex-M0).
//!
//! [`Permutation`] shuffles a dataset without an index array: a device with
//! 10,000 samples would otherwise spend 20-40 KB of its RAM on the order alone.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;

/// A seeded pseudo-random generator.
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro128PlusPlus);

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(Xoshiro128PlusPlus::seed_from_u64(seed))
    }

    /// 32 uniformly random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// A uniform float in `[0, 1)` with 24 bits of resolution.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }
}

/// A pseudo-random permutation of `0..n` computed on the fly, in O(1) memory.
///
/// A four-round Feistel network permutes the smallest even-bit-width domain
/// holding `n` values; indices that land outside `0..n` are walked through the
/// network again ("cycle walking"), which keeps the map a bijection on `0..n`.
/// The domain is below `4n`, so a lookup takes under four passes on average.
/// Hand-written because no no_std crate offers a memory-free permutation.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u32,
    half_bits: u32,
    keys: [u32; 4],
}

impl Permutation {
    /// A permutation of `0..n` drawn from `rng`.
    pub fn new(n: u32, rng: &mut Rng) -> Self {
        let mut half_bits = 1;
        while u64::from(n) > 1u64 << (2 * half_bits) {
            half_bits += 1;
        }
        let keys = [
            rng.next_u32(),
            rng.next_u32(),
            rng.next_u32(),
            rng.next_u32(),
        ];
        Permutation { n, half_bits, keys }
    }

    /// The image of `i` (for `i < n`; larger inputs are returned unchanged).
    pub fn get(&self, i: u32) -> u32 {
        if i >= self.n {
            return i;
        }
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }

    fn feistel(&self, x: u32) -> u32 {
        let mask = (1u32 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            let mixed = mix(right ^ key) & mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }
}

/// A 32-bit avalanche mix (the finaliser of MurmurHash3).
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection() {
        let mut rng = Rng::new(7);
        for n in [1u32, 2, 3, 10, 255, 256, 1000, 9999] {
            let p = Permutation::new(n, &mut rng);
            let mut seen = std::vec![false; n as usize];
            for i in 0..n {
                let j = p.get(i);
                assert!(j < n && !seen[j as usize], "n={n}: {i} -> {j}");
                seen[j as usize] = true;
            }
        }
    }

    #[test]
    fn permutation_actually_shuffles() {
        let p = Permutation::new(1000, &mut Rng::new(1));
        let fixed_points = (0..1000).filter(|&i| p.get(i) == i).count();
        let ascending = (1..1000).filter(|&i| p.get(i) > p.get(i - 1)).count();
        assert!(fixed_points < 10, "{fixed_points} fixed points");
        assert!((400..600).contains(&ascending), "{ascending} ascents");
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..10 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
        let u = Rng::new(3).uniform();
        assert!((0.0..1.0).contains(&u));
    }
}
