//! `replay evaluate`: run a probe set through the model at a reconstructed step (the classifier's
//! predictions, or a language model's greedy generations checked against target patterns), the
//! probe file pinned by hash in the report.

use crate::context::RunContext;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::probe::ProbeResult;

use crate::commands::counterfactual::ProbeInput;
use crate::engine::reconstruct::{ReconstructOptions, state_at};
use crate::engine::reexecute::{EnvironmentCheck, RangeResult};
use crate::report::{CommandError, Header, Report};

/// `--max-new-tokens`' default: the most tokens a language model generates per probe prompt.
pub const MAX_NEW_TOKENS: usize = 24;

/// The JSON document of `replay evaluate --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluateReport {
    #[serde(flatten)]
    pub header: Header,
    pub step: u64,
    pub state_root: Option<Hash32>,
    pub committed_root: Option<Hash32>,
    pub environment: Option<EnvironmentCheck>,
    pub replay: Option<RangeResult>,
    /// The probe file and its `file_hash`.
    pub probe: String,
    pub probe_blake3: Hash32,
    pub result: Option<ProbeResult>,
}

impl Report for EvaluateReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

/// Run `evaluate`: the probe rows of `probe` through the model after `step`.
pub fn evaluate(
    location: &str,
    step: u64,
    probe: &std::path::Path,
    max_new_tokens: usize,
    o: &ReconstructOptions,
    progress: &indicatif::ProgressBar,
) -> Result<EvaluateReport, CommandError> {
    let input = ProbeInput::read(probe)?;
    let report = EvaluateReport {
        header: Header::pending("evaluate", location),
        step,
        state_root: None,
        committed_root: None,
        environment: None,
        replay: None,
        probe_blake3: snapshot_format::hash::file_hash(&input.bytes),
        probe: input.name.clone(),
        result: None,
    };
    super::on_run(location, &o.load, report, |ctx, report| {
        evaluate_on(ctx, step, &input, max_new_tokens, o, report, progress)
    })
}

/// [`evaluate`] on a loaded run, its report begun as `report`.
pub fn evaluate_on(
    ctx: &RunContext,
    step: u64,
    probe: &ProbeInput,
    max_new_tokens: usize,
    o: &ReconstructOptions,
    mut report: EvaluateReport,
    progress: &indicatif::ProgressBar,
) -> Result<EvaluateReport, CommandError> {
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
    let base = ctx.required_base()?;
    report.result = Some(trainer::probe::run(
        &ctx.spec,
        base,
        &state,
        &probe.bytes,
        &probe.name,
        max_new_tokens,
    )?);
    Ok(report)
}
