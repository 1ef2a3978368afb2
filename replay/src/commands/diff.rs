//! `replay diff`: the per-tensor change between the states after two steps, largest first.

use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, environment_of, reconstruct};
use crate::engine::reexecute::EnvironmentCheck;
use crate::report::{Claim, CommandError, Header, Report};
use crate::state::{self, TensorDiff};
use serde::{Deserialize, Serialize};

/// The JSON document of `replay diff --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffReport {
    #[serde(flatten)]
    pub header: Header,
    pub from_step: u64,
    pub to_step: u64,
    pub environment: Option<EnvironmentCheck>,
    /// Per tensor: the change from `from_step` to `to_step`, largest L2 first.
    pub tensors: Vec<TensorDiff>,
}

impl Report for DiffReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}
/// Run `diff`: the per-tensor change between the states after two steps.
pub fn diff(
    location: &str,
    from: u64,
    to: u64,
    include_optimizer: bool,
    o: &ReconstructOptions,
    progress: &indicatif::ProgressBar,
) -> Result<DiffReport, CommandError> {
    let report = DiffReport {
        header: Header::pending("diff", location),
        from_step: from,
        to_step: to,
        environment: None,
        tensors: vec![],
    };
    super::on_run(location, &o.load, report, |ctx, report| {
        diff_on(ctx, from, to, include_optimizer, o, report, progress)
    })
}

/// [`diff`] on a loaded run, its report begun as `report`.
pub fn diff_on(
    ctx: &RunContext,
    from: u64,
    to: u64,
    include_optimizer: bool,
    o: &ReconstructOptions,
    mut report: DiffReport,
    progress: &indicatif::ProgressBar,
) -> Result<DiffReport, CommandError> {
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    if from > to || to > last {
        return Err(CommandError::Usage(format!(
            "--from {from} --to {to}: need from <= to <= {last} (the ledger's last step)"
        )));
    }
    let env = environment_of(ctx, o)?;
    let cross_class = env.cross_class();
    report.environment = Some(env);
    let mut assessment = ctx.assessment();
    let states = reconstruct(ctx, &[from, to], o, cross_class, progress)?;
    let rederived = states.iter().all(|r| r.rederived);
    let mut states = states.into_iter().map(|r| r.fold_into(&mut assessment));
    let (a, b) = (states.next().flatten(), states.next().flatten());
    report
        .header
        .assess(&assessment, Claim::State { rederived });
    let (Some(sa), Some(sb)) = (a, b) else {
        return Ok(report);
    };
    let mut tensors: Vec<TensorDiff> = sb
        .tensors
        .iter()
        .filter(|t| include_optimizer || !t.name.starts_with("optimizer."))
        .filter_map(|t| {
            sa.tensor(&t.name)
                .map(|old| state::diff_values(&t.name, old.bytes(), t.bytes()))
        })
        .collect();
    state::sort_largest_first(&mut tensors);
    report.tensors = tensors;
    Ok(report)
}
