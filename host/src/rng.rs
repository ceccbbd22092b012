//! A small deterministic random number generator (SplitMix64).
//!
//! Used where results must not depend on libtorch's generator or on a crate's version: the
//! synthetic dataset and the order in which each epoch visits the training set. The same seed
//! gives the same stream on every platform, forever.

/// SplitMix64's output function on `x` plus its increment: a bijection of 64-bit words
/// whose outputs for nearby inputs look unrelated.
fn mix(x: u64) -> u64 {
    SplitMix64::new(x).next_u64()
}

/// SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, passes BigCrush.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for a named sub-stream, so that unrelated uses of one seed do not correlate.
    pub fn derived(seed: u64, stream: &str) -> Self {
        // FNV-1a of the stream name, mixed into the seed.
        let tag = stream
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        let mut mixer = SplitMix64::new(seed ^ tag);
        SplitMix64::new(mixer.next_u64())
    }

    /// A generator for sub-stream `stream` of item `index` (an epoch, a step) under `seed`.
    /// The key is a hash of all three, so that no two (seed, index) pairs share a stream:
    /// seed 1's first epoch is not seed 0's second, as it would be with `seed + epoch`.
    pub fn keyed(seed: u64, index: u64, stream: &str) -> Self {
        SplitMix64::derived(mix(mix(seed) ^ index), stream)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform integer in [0, n) without modulo bias (Lemire's method). `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0) has no valid result");
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            let low = product as u64;
            if low >= n.wrapping_neg() % n {
                return (product >> 64) as u64;
            }
        }
    }

    /// Standard normal deviate (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut order: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_stream() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut order = SplitMix64::new(7).permutation(1000);
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<i64>>());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&count| (800..1200).contains(&count)),
            "{seen:?}"
        );
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = SplitMix64::new(11);
        let samples: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn derived_streams_differ() {
        let a = SplitMix64::derived(5, "shuffle").next_u64();
        let b = SplitMix64::derived(5, "synthetic").next_u64();
        assert_ne!(a, b);
    }
}
