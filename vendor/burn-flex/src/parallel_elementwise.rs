//! Element-wise work split across threads (training-replay-verifier patch).
//!
//! Upstream burn-flex runs element-wise operations on one thread, which left half of a training
//! step serial on a 2-core machine. Each element's result depends on that element alone, so
//! splitting a slice into chunks processed in parallel changes no bit, whatever the number of
//! threads.

/// Below this many elements the work stays on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Apply `f` to consecutive chunks of `data` (in parallel when it is large).
pub(crate) fn chunks_mut<E: Send, F>(data: &mut [E], f: F)
where
    F: Fn(&mut [E]) + Send + Sync,
{
    #[cfg(feature = "rayon")]
    if data.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        let chunk = data.len().div_ceil(rayon::current_num_threads() * 4).max(4096);
        data.par_chunks_mut(chunk).for_each(|c| f(c));
        return;
    }
    f(data)
}

/// Apply `f` to consecutive chunks of `data` and the chunks of `other` at the same positions
/// (in parallel when they are large). `other` is at least as long as `data`.
pub(crate) fn zip_chunks_mut<E: Send, R: Sync, F>(data: &mut [E], other: &[R], f: F)
where
    F: Fn(&mut [E], &[R]) + Send + Sync,
{
    let other = &other[..data.len()];
    #[cfg(feature = "rayon")]
    if data.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        let chunk = data.len().div_ceil(rayon::current_num_threads() * 4).max(4096);
        data.par_chunks_mut(chunk)
            .zip(other.par_chunks(chunk))
            .for_each(|(d, o)| f(d, o));
        return;
    }
    f(data, other)
}
