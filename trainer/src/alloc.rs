//! Allocator settings of the `trainer` and `replay` binaries (and the benchmarks).
//!
//! Both use mimalloc, which keeps freed blocks for reuse. By default it still hands freed pages
//! back to the operating system after a short delay ("purging"), and a training step frees and
//! allocates the same large buffers every step (a language model's logits and their gradient
//! alone are 75 MB at batch 4 × 96 tokens × 49,152 tokens of vocabulary), so each step faulted
//! them in again and the kernel zeroed every page. Measured on SmolLM2-135M + LoRA (6 steps of
//! the backdoor demo's run, 2 cores): 0.16–0.18 steps/s and 13–25 s of system time with
//! purging, 0.24–0.25 steps/s and about 7 s with this setting, the same ledger head. Allocation
//! changes no bit; the cost is that resident memory stays at its peak until the process ends
//! (set `MIMALLOC_PURGE_DELAY`, in milliseconds, to purge again).

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h): libmimalloc-sys
/// 0.1.49 declares the options before and after it but not this one. The test below checks the
/// index by the option's documented default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay [`PurgeFreedPages`] sets, in milliseconds.
pub const PURGE_AFTER_MS: std::ffi::c_long = 1000;

/// Turn mimalloc's purging off for this process, unless `MIMALLOC_PURGE_DELAY` in the
/// environment already says what to do. Call it first thing in `main`.
#[allow(unsafe_code)]
pub fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores one option value; mimalloc allows it at any time, from any
    // thread, and reads the purge delay each time it considers purging.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// While it lives, mimalloc purges freed pages it has not reused within [`PURGE_AFTER_MS`] (its
/// own default); the setting before it is restored when it is dropped. For work whose buffers
/// are allocated on worker threads and freed across them, in sizes that change from one pass to
/// the next, where pages kept for reuse are not all reused and resident memory grows without a
/// peak: `replay attribute`'s ranking on SmolLM2-135M + LoRA grew by about 90 MB a step with
/// purging off (out of 24 GiB after 36 minutes). Measured on its first 4 steps (the backdoor
/// demo's run, 2 cores, `MIMALLOC_PURGE_DELAY`): purging at once 77.8 s and a 4.02 GB peak; after
/// 1 s 59.0 s and 4.07 GB (after 16 steps still 4.08 GB); never 50.2 s and 4.34 GB. The same
/// scores in all three. Nothing is changed when `MIMALLOC_PURGE_DELAY` is set in the environment.
#[derive(Debug)]
pub struct PurgeFreedPages {
    previous: Option<std::ffi::c_long>,
}

impl PurgeFreedPages {
    #[allow(unsafe_code)]
    pub fn new() -> Self {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return PurgeFreedPages { previous: None };
        }
        // SAFETY: reading and storing one option value, allowed at any time (see above).
        let previous = unsafe {
            let p = libmimalloc_sys::mi_option_get(PURGE_DELAY);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_AFTER_MS);
            p
        };
        PurgeFreedPages {
            previous: Some(previous),
        }
    }
}

impl Default for PurgeFreedPages {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PurgeFreedPages {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(p) = self.previous {
            // SAFETY: as in `new`.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, p) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 15 is the purge delay: it reads mimalloc 3's default for it (1000 ms), where its
    /// neighbours read 1 (eager commit delay) and 0 (NUMA nodes); and setting it is read back.
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading and storing option values, allowed at any time.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 1000);
            assert_eq!(libmimalloc_sys::mi_option_get(PURGE_DELAY - 1), 1);
            assert_eq!(libmimalloc_sys::mi_option_get(PURGE_DELAY + 1), 0);
        }
        keep_freed_pages();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, -1);
        // Purging for a while, then as before (in this test: one process-wide option).
        {
            let _purging = PurgeFreedPages::new();
            // SAFETY: as above.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) },
                PURGE_AFTER_MS
            );
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, -1);
    }
}
