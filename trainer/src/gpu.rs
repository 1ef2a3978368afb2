//! The CUDA device: present only when built with the `cuda` feature.

use snapshot_format::manifest::GpuFingerprint;

use crate::backend::Job;
use crate::config::ModelSpec;
use crate::error::{Error, Result};

#[cfg(not(feature = "cuda"))]
fn not_built(n: usize) -> Error {
    Error::Device {
        device: format!("cuda:{n}"),
        detail: "this build has no CUDA support; rebuild with `--features cuda`".into(),
    }
}

/// Identity of GPU `n`.
#[cfg(not(feature = "cuda"))]
pub fn fingerprint(n: usize) -> Result<GpuFingerprint> {
    Err(not_built(n))
}

/// Run `job` on GPU `n`.
#[cfg(not(feature = "cuda"))]
pub fn dispatch_cuda<J: Job>(n: usize, _model: &ModelSpec, _job: J) -> Result<J::Output> {
    Err(not_built(n))
}
