//! `replay rollback`: the exact state after a step, reconstructed and exported.

use crate::attestations::attest_export;
use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, export_state, put_json, state_at};
use crate::engine::reexecute::{EnvironmentCheck, RangeResult};
use crate::report::{CommandError, Header, Report};
use run_store::Store;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;

/// The JSON document of `replay rollback --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReport {
    #[serde(flatten)]
    pub header: Header,
    pub step: u64,
    pub state_root: Option<Hash32>,
    /// The root the ledger commits to for this step (none when the state-root interval skipped it).
    pub committed_root: Option<Hash32>,
    pub environment: Option<EnvironmentCheck>,
    pub replay: Option<RangeResult>,
    /// Where the files were written, and their keys.
    pub out: Option<String>,
    pub files: Vec<String>,
}

impl Report for RollbackReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}
/// Run `rollback`: reconstruct the state after `step` and write `model.safetensors` (the
/// parameters, Hugging Face names), `state.snap` (the full state as an export snapshot) and
/// `rollback.json` to `out`. Nothing is written unless the verdict passes (`verified` or
/// `recorded`).
pub fn rollback(
    location: &str,
    step: u64,
    out: &str,
    o: &ReconstructOptions,
    keys: &run_trust::attest::ExportKeys,
    progress: &indicatif::ProgressBar,
) -> Result<RollbackReport, CommandError> {
    let report = RollbackReport {
        header: Header::pending("rollback", location),
        step,
        state_root: None,
        committed_root: None,
        environment: None,
        replay: None,
        out: None,
        files: vec![],
    };
    super::on_run(location, &o.load, report, |ctx, report| {
        rollback_on(ctx, step, out, o, keys, report, progress)
    })
}

/// [`rollback`] on a loaded run, its report begun as `report`.
pub fn rollback_on(
    ctx: &RunContext,
    step: u64,
    out: &str,
    o: &ReconstructOptions,
    keys: &run_trust::attest::ExportKeys,
    mut report: RollbackReport,
    progress: &indicatif::ProgressBar,
) -> Result<RollbackReport, CommandError> {
    let at = state_at(ctx, step, o, progress)?;
    report.state_root = at.state_root;
    report.committed_root = at.committed_root;
    report.environment = Some(at.environment);
    report.replay = at.replay;
    report.header.verdict = at.verdict;
    report.header.problems = at.problems;
    let Some(state) = at.state else {
        return Ok(report);
    };
    let store = Store::create(out)?;
    let parent = ctx.checkpoint_at_or_before(step);
    report.files = export_state(&store, ctx, &state, parent, "rollback.json")?;
    report.out = Some(out.to_string());
    // The stored record leaves out timing, so that the same rollback writes the same bytes.
    let mut stored = report.clone();
    if let Some(r) = stored.replay.as_mut() {
        r.clear_timings();
    }
    put_json(&store, "rollback.json", &stored)?;
    let state = serde_json::json!({
        "step": step,
        "stateRoot": report.state_root,
        "verdict": report.header.verdict,
        "derivation": {"kind": "rollback"},
    });
    let signed = attest_export(&store, ctx, out, &report.files, state, keys)?;
    report.files.extend(signed);
    Ok(report)
}
