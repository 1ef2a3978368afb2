//! Host-side randomness: every random number of a run comes from a ChaCha8 stream derived from
//! (master seed, purpose, index). No state is carried from one step to the next, so the random
//! state at any step is a function of the manifest alone and resume is exact by construction.
//!
//! Conversions to floats use integer arithmetic and exact scalings only (no `ln`, `cos`, …), so
//! the values do not depend on the C library.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use snapshot_format::hash::DomainHasher;

/// BLAKE3 context for stream keys.
pub const STREAM_CONTEXT: &str = "training-replay-verifier v1 rng stream";

/// Purposes of the run's streams.
pub mod purpose {
    /// Order of examples in an epoch (index: epoch).
    pub const DATA_ORDER: &str = "data-order";
    /// Dropout masks of a step (index: step), drawn in forward order.
    pub const DROPOUT: &str = "dropout";
    /// Dropout masks of part `j` of a step cut into micro-batches (purpose `dropout/<j>`,
    /// index: step).
    pub const DROPOUT_PART_PREFIX: &str = "dropout/";
    /// Initial value of one new parameter (purpose `init/<name>`, index 0).
    pub const INIT_PREFIX: &str = "init/";
}

/// The stream for `(master_seed, purpose, index)`: a ChaCha8 generator keyed with
/// `BLAKE3-derive(STREAM_CONTEXT, u64 master_seed ‖ u64 len(purpose) ‖ purpose ‖ u64 index)`.
pub fn stream(master_seed: u64, purpose: &str, index: u64) -> ChaCha8Rng {
    let mut h = DomainHasher::new(STREAM_CONTEXT);
    h.u64(master_seed).prefixed(purpose.as_bytes()).u64(index);
    ChaCha8Rng::from_seed(h.finish().0)
}

/// Uniform `f32` in [0, 1): the top 24 bits of one `u32`, times 2^-24 (exact).
pub fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Approximately standard normal: the Irwin–Hall sum of 12 uniforms minus 6 (mean 0, variance
/// 1, support [-6, 6]). Computed by additions in a fixed order.
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let mut s = 0.0f32;
    for _ in 0..12 {
        s += uniform(rng);
    }
    s - 6.0
}

/// Uniform integer in `0..n` (n > 0) by rejection: unbiased, and defined by the stream alone.
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    // Largest multiple of n representable; values at or above it are rejected.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
}

/// A permutation of `0..n`: Fisher–Yates from the last position down, `j = below(i + 1)`.
pub fn permutation(rng: &mut ChaCha8Rng, n: u64) -> Vec<u64> {
    let mut p: Vec<u64> = (0..n).collect();
    for i in (1..n as usize).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_separated_by_every_input() {
        let a = stream(1, "dropout", 5).next_u64();
        assert_eq!(a, stream(1, "dropout", 5).next_u64());
        assert_ne!(a, stream(2, "dropout", 5).next_u64());
        assert_ne!(a, stream(1, "dropouT", 5).next_u64());
        assert_ne!(a, stream(1, "dropout", 6).next_u64());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let p = permutation(&mut stream(3, purpose::DATA_ORDER, 0), 1000);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn normal_has_unit_scale() {
        let mut r = stream(4, "t", 0);
        let xs: Vec<f64> = (0..20_000)
            .map(|_| standard_normal(&mut r) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn uniform_is_in_range_and_below_is_unbiased_in_range() {
        let mut r = stream(5, "t", 0);
        for _ in 0..10_000 {
            let u = uniform(&mut r);
            assert!((0.0..1.0).contains(&u));
            assert!(below(&mut r, 7) < 7);
        }
    }
}
