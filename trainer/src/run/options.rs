//! What a run is started or resumed with, and what it reports.

use crate::backend::DeviceSpec;
use crate::session::InitReport;
use snapshot_format::Hash32;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: DeviceSpec,
    /// Run id for a new run (default: `<config name>-<unix seconds>`).
    pub run_id: Option<String>,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Stop after this many steps in this invocation without completing the run (a controlled
    /// interruption; `trainer resume` continues).
    pub max_steps: Option<u64>,
    /// Resume even if this machine is in another environment class (the result will not be
    /// bit-identical to an uninterrupted run).
    pub allow_environment_mismatch: bool,
    /// Sign the run's artefacts with this key (`specs/signatures.md`); for `start`, a key named
    /// in the configuration's `[signing]` section is used when this is `None`.
    pub signing_key: Option<ed25519_dalek::SigningKey>,
    /// The workers of a data-parallel run ([`crate::dist`]): every worker trains the same steps,
    /// each computing its share of the micro-batches.
    pub collective: Option<std::sync::Arc<dyn crate::dist::Collective>>,
}
impl RunOptions {
    /// Refuse a number of workers that does not divide the run's micro-batches (each worker
    /// takes an equal block of every step's parts).
    pub(super) fn check_workers(&self, spec: &crate::config::RunSpec) -> crate::error::Result<()> {
        let Some(c) = &self.collective else {
            return Ok(());
        };
        let (workers, parts) = (c.size() as u64, spec.run.micro_batches);
        if parts.is_multiple_of(workers) {
            return Ok(());
        }
        Err(crate::error::Error::config(
            "run.micro_batches",
            format!(
                "{parts} micro-batches cannot be divided among {workers} workers: use a multiple \
                 of {workers}"
            ),
        ))
    }
}
impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: DeviceSpec::Cpu,
            run_id: None,
            progress: false,
            max_steps: None,
            allow_environment_mismatch: false,
            signing_key: None,
            collective: None,
        }
    }
}
/// What a run invocation did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub location: String,
    pub run_id: String,
    pub steps_done: u64,
    pub final_step: u64,
    pub total_steps: u64,
    pub completed: bool,
    pub ledger_head: Hash32,
    pub state_root: Hash32,
    pub parameters: u64,
    /// Parameters the run trains (fewer than `parameters` when a base is frozen).
    pub trained_parameters: u64,
    pub steps_per_second: f64,
    /// Seconds this invocation spent exchanging the parts' sums with the other workers of a
    /// data-parallel run (waiting for the slowest included) and completing the reduction (0 in
    /// one process).
    pub exchange_seconds: f64,
    pub last_loss: f32,
    pub init: InitReport,
    pub bytes_written: u64,
    /// Fingerprint of the key that signed this invocation's artefacts, if any.
    pub signed_by: Option<String>,
}
