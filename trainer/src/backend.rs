//! Backend and device selection: always named explicitly (`--device cpu` or `--device cuda:N`),
//! never by burn's default device; and dispatch of a job to the backend of a device.

use std::fmt;
use std::str::FromStr;

use snapshot_format::manifest::{EnvironmentFingerprint, GpuFingerprint};

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::model::registry::{Job, with_model};

/// The CPU backend: burn-flex with autodiff.
pub type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

/// Where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-cuda on GPU `N` (requires the `cuda` feature).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |detail: &str| Error::Device {
            device: s.to_string(),
            detail: detail.to_string(),
        };
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| bad("expected cuda:N with N a GPU index")),
                None => Err(bad("expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Backend name as recorded in fingerprints.
    pub fn backend_name(&self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "flex",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }

    /// The fingerprint of this process on this device.
    pub fn fingerprint(&self) -> Result<EnvironmentFingerprint> {
        let gpu: Option<GpuFingerprint> = match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(n) => Some(crate::gpu::fingerprint(*n)?),
        };
        Ok(crate::fingerprint::current(
            self.backend_name(),
            &self.to_string(),
            gpu,
        ))
    }
}

/// Run `job` with the backend of `device` and the built-in model of `model`.
pub fn dispatch<J: Job>(device: DeviceSpec, model: &ModelSpec, job: J) -> Result<J::Output> {
    match device {
        DeviceSpec::Cpu => with_model::<Cpu, J>(model, burn::backend::flex::FlexDevice, job),
        DeviceSpec::Cuda(n) => crate::gpu::dispatch_cuda(n, model, job),
    }
}
