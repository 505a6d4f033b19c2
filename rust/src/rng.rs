//! The pinned random stream behind candidate sampling.
//!
//! Each user gets its own stream, so a user's candidates never depend on which other users share
//! its shard, batch or thread: the stream is xoshiro256++ (Blackman & Vigna) whose 256-bit state
//! is filled by SplitMix64 from one 64-bit seed, and that seed is XXH3-64 of the user id's bytes
//! with the run seed as XXH3's seed (see `ids`). Bounded integers use Lemire's multiply-and-reject
//! method, unit floats the top 53 bits. All of it is written here, not taken from a crate whose
//! output could change between versions; golden tests pin the streams.

/// One step of SplitMix64: advances `state` and returns the mixed output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A stream whose state is four SplitMix64 outputs from `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut state = seed;
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut product = u128::from(self.next_u64()) * u128::from(n);
        if (product as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (product >> 64) as u64
    }

    /// Uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{Rng as _, SeedableRng};
    use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};

    #[test]
    fn splitmix64_matches_the_rand_xoshiro_crate() {
        for seed in [0, 1_234_567, u64::MAX] {
            let mut state = seed;
            let mut theirs = SplitMix64::seed_from_u64(seed);
            for _ in 0..100 {
                assert_eq!(splitmix64(&mut state), theirs.next_u64());
            }
        }
    }

    #[test]
    fn matches_the_rand_xoshiro_crate() {
        // rand_xoshiro also seeds xoshiro256++ from a u64 through SplitMix64.
        for seed in [0, 1, 42, u64::MAX] {
            let mut ours = Rng::from_seed(seed);
            let mut theirs = Xoshiro256PlusPlus::seed_from_u64(seed);
            for _ in 0..1000 {
                assert_eq!(ours.next_u64(), theirs.next_u64());
            }
        }
    }

    #[test]
    fn golden_stream() {
        let mut rng = Rng::from_seed(7);
        let drawn: Vec<u64> = (0..6).map(|_| rng.below(10)).collect();
        assert_eq!(drawn, GOLDEN_BELOW_10);
    }

    const GOLDEN_BELOW_10: [u64; 6] = [0, 1, 7, 4, 9, 4];

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::from_seed(3);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
    }

    #[test]
    fn unit_is_in_the_unit_interval() {
        let mut rng = Rng::from_seed(9);
        assert!((0..10_000)
            .map(|_| rng.unit())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
