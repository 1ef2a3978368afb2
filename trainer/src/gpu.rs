//! The CUDA device: burn-cuda (cubecl, kernels compiled at run time with NVRTC; the CUDA
//! libraries are loaded at run time), present only when built with the `cuda` feature.
//!
//! burn is built without its default features, so `autotune` (kernel choice by timing) is
//! compiled out: each operation's kernel depends on the GPU and the shapes alone. The engine
//! avoids the few CUDA kernels that accumulate with atomics (`specs/determinism.md` §6).

use snapshot_format::manifest::GpuFingerprint;

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::model::registry::Job;

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

/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

#[cfg(feature = "cuda")]
fn device_error(n: usize, detail: impl std::fmt::Display) -> Error {
    Error::Device {
        device: format!("cuda:{n}"),
        detail: detail.to_string(),
    }
}

/// Open GPU `n` through the driver: a clear error when there is no driver or no such GPU
/// (burn would panic).
#[cfg(feature = "cuda")]
fn context(n: usize) -> Result<std::sync::Arc<cudarc::driver::CudaContext>> {
    if !driver_present() {
        return Err(device_error(
            n,
            "no CUDA driver library (libcuda.so) on this machine; is an NVIDIA driver installed?",
        ));
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| device_error(n, format!("no usable CUDA driver ({e})")))?;
    if n >= count.max(0) as usize {
        return Err(device_error(
            n,
            format!("this machine has {count} CUDA device(s)"),
        ));
    }
    cudarc::driver::CudaContext::new(n).map_err(|e| device_error(n, e))
}

/// Whether the CUDA driver library can be loaded (cudarc panics on first use otherwise).
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
fn driver_present() -> bool {
    // SAFETY: loads the CUDA driver library by its usual names to see whether it exists; its
    // initialisers are the driver's own, run by any CUDA program.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The CUDA driver API version (e.g. 12080 for 12.8), as `major.minor`.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
fn driver_api_version() -> Option<String> {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which is valid for the
    // duration of the call; the driver library was loaded and initialised by `context`.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// The kernel driver's version, from `/proc/driver/nvidia/version`.
#[cfg(feature = "cuda")]
fn kernel_driver_version() -> String {
    std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .find(|w| {
                        w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.')
                    })
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Identity of GPU `n`: name, compute capability, SM count, memory, driver and CUDA versions.
#[cfg(feature = "cuda")]
pub fn fingerprint(n: usize) -> Result<GpuFingerprint> {
    use cudarc::driver::sys::CUdevice_attribute;
    let ctx = context(n)?;
    let name = ctx.name().map_err(|e| device_error(n, e))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| device_error(n, e))?;
    let sm_count = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| device_error(n, e))?;
    let memory = ctx.total_mem().map_err(|e| device_error(n, e))?;
    Ok(GpuFingerprint {
        name,
        compute_capability: format!("{major}.{minor}"),
        sm_count: sm_count.max(0) as u64,
        memory_bytes: memory as u64,
        driver_version: kernel_driver_version(),
        cuda_version: format!(
            "driver API {}; bound at build {}",
            driver_api_version().unwrap_or_else(|| "unknown".into()),
            env!("TRAINER_CUDARC_CUDA_VERSION")
        ),
    })
}

/// Run `job` on GPU `n`.
#[cfg(feature = "cuda")]
pub fn dispatch_cuda<J: Job>(n: usize, model: &ModelSpec, job: J) -> Result<J::Output> {
    context(n)?;
    crate::model::registry::with_model::<CudaBackend, J>(
        model,
        burn::backend::cuda::CudaDevice::new(n),
        job,
    )
}
