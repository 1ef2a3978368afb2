//! `replay rollback`, `replay diff`: exact states at chosen steps, reconstructed from the
//! nearest earlier checkpoint by verified replay.

use serde::{Deserialize, Serialize};
use snapshot_format::snapshot::{Provenance, SnapshotKind};
use snapshot_format::{Hash32, Store};
use trainer::backend::DeviceSpec;
use trainer::session::TrainingState;

use crate::context::{LoadOptions, RunContext, load_or_report};
use crate::report::{CommandError, Problem, Verdict};
use crate::state::{self, TensorDiff};
use crate::verify::{self, EnvironmentCheck, Range, RangeResult};

/// Options shared by commands that reconstruct states.
#[derive(Debug, Clone)]
pub struct ReconstructOptions {
    pub device: DeviceSpec,
    pub allow_environment_mismatch: bool,
    pub load: LoadOptions,
}

/// A state reconstructed at one step, with how it was confirmed.
#[derive(Debug)]
pub struct Reconstructed {
    pub step: u64,
    pub state: Option<TrainingState>,
    pub root: Option<Hash32>,
    pub committed_root: Option<Hash32>,
    pub replay: Option<RangeResult>,
    pub verdict: Verdict,
}

impl Reconstructed {
    /// Fold this reconstruction into a report: its verdict, and the problems of its replay when
    /// it is not verified. Returns the state it reached, if any.
    pub(crate) fn fold_into(
        self,
        verdict: &mut Verdict,
        problems: &mut Vec<Problem>,
    ) -> Option<TrainingState> {
        *verdict = verdict.worst(self.verdict);
        if self.verdict != Verdict::Verified
            && let Some(rr) = &self.replay
        {
            problems.extend(rr.problems.iter().cloned());
        }
        self.state
    }
}

/// Reconstruct the state after `step`: from the checkpoint if there is one, otherwise by replay
/// from the nearest earlier checkpoint, verified step by step; when the record of `step` has no
/// state root, replay continues to the next step that has one, to confirm the path.
pub fn reconstruct(
    ctx: &RunContext,
    step: u64,
    o: &ReconstructOptions,
    tolerant: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Reconstructed, CommandError> {
    let committed_root = ctx.committed_root(step);
    if ctx.checkpoints.contains(&step) {
        return Ok(match state::read_checked(ctx, step)? {
            Ok(snap) => Reconstructed {
                step,
                root: Some(snap.header.state_root),
                state: Some(verify::state_of(&snap)),
                committed_root,
                replay: None,
                verdict: Verdict::Verified,
            },
            Err(problems) => Reconstructed {
                step,
                state: None,
                root: None,
                committed_root,
                verdict: problems.iter().fold(Verdict::Ok, |v, p| v.worst(p.kind)),
                replay: Some(verify::unverifiable(
                    &Range {
                        segment: step.div_ceil(ctx.interval()),
                        from: step,
                        to: step,
                        capture_at: None,
                    },
                    problems,
                    Verdict::Ok,
                )),
            },
        });
    }
    let confirm_to = ctx
        .records
        .range(step..)
        .find(|(s, r)| r.state_root.is_some() || ctx.checkpoints.contains(s))
        .map(|(s, _)| *s)
        .unwrap_or(step);
    // Every replayed step is checked, from the one after the starting checkpoint.
    let from = ctx
        .checkpoint_at_or_before(step)
        .map(|c| c + 1)
        .unwrap_or(1);
    let range = Range {
        segment: 0,
        from,
        to: confirm_to,
        capture_at: Some(step),
    };
    progress.set_length(confirm_to + 1 - from);
    let mut out = verify::replay_ranges(ctx, &[range], o.device, tolerant, progress)?;
    let (result, captured) = out
        .pop()
        .ok_or_else(|| CommandError::Usage("nothing replayed".into()))?;
    let root = match &captured {
        Some(s) => Some(s.root(&s.tensor_hashes())?),
        None => None,
    };
    Ok(Reconstructed {
        step,
        state: captured,
        root,
        committed_root,
        verdict: result.verdict,
        replay: Some(result),
    })
}

/// Check the environment: `Ok(tolerant)`, or the report's verdict when replay must not run.
pub(crate) fn environment_gate(
    ctx: &RunContext,
    o: &ReconstructOptions,
) -> Result<(EnvironmentCheck, Option<Verdict>), CommandError> {
    let mut env = verify::environment(&ctx.manifest.environment, o.device)?;
    let mismatch = !env.differences.is_empty();
    env.replayed_anyway = mismatch && o.allow_environment_mismatch;
    let stop = (mismatch && !o.allow_environment_mismatch).then_some(Verdict::EnvironmentMismatch);
    Ok((env, stop))
}

/// The JSON document of `replay rollback --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    pub step: u64,
    pub state_root: Option<Hash32>,
    /// The root the ledger commits to for this step (none when the state-root interval skipped it).
    pub committed_root: Option<Hash32>,
    pub environment: Option<EnvironmentCheck>,
    pub replay: Option<RangeResult>,
    pub problems: Vec<Problem>,
    /// Where the files were written, and their keys.
    pub out: Option<String>,
    pub files: Vec<String>,
}

/// Run `rollback`: reconstruct the state after `step` and write `model.safetensors` (the
/// parameters, Hugging Face names), `state.snap` (the full state as an export snapshot) and
/// `rollback.json` to `out`. Nothing is written unless the state is verified.
pub fn rollback(
    location: &str,
    step: u64,
    out: &str,
    o: &ReconstructOptions,
    progress: &indicatif::ProgressBar,
) -> Result<RollbackReport, CommandError> {
    let mut report = RollbackReport {
        command: "rollback".into(),
        run: location.into(),
        verdict: Verdict::Verified,
        step,
        state_root: None,
        committed_root: None,
        environment: None,
        replay: None,
        problems: vec![],
        out: None,
        files: vec![],
    };
    let ctx = load_or_report!(location, &o.load, report);
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    if step > last {
        return Err(CommandError::Usage(format!(
            "--step {step}: the run's ledger ends at step {last}"
        )));
    }
    let (env, stop) = environment_gate(&ctx, o)?;
    let tolerant = env.replayed_anyway;
    report.environment = Some(env);
    if let Some(v) = stop {
        report.verdict = v;
        return Ok(report);
    }
    let r = reconstruct(&ctx, step, o, tolerant, progress)?;
    report.verdict = r.verdict;
    report.state_root = r.root;
    report.committed_root = r.committed_root;
    report.replay = r.replay;
    let Some(state) = r.state.filter(|_| r.verdict == Verdict::Verified) else {
        return Ok(report);
    };
    let store = Store::create(out)?;
    let parent = ctx.checkpoint_at_or_before(step);
    report.files = export_state(&store, &ctx, &state, parent, "rollback.json")?;
    report.out = Some(out.to_string());
    // The stored record leaves out timing, so that the same rollback writes the same bytes.
    let mut stored = report.clone();
    if let Some(r) = stored.replay.as_mut() {
        r.seconds = 0.0;
    }
    put_json(&store, "rollback.json", &stored)?;
    Ok(report)
}

/// Write `state` to `store` as `model.safetensors` (the parameters, Hugging Face names) and
/// `state.snap` (the full state, an export snapshot whose parent is the committed root of step
/// `parent`). Returns the names of those files and of the `report` the caller writes next.
pub(crate) fn export_state(
    store: &Store,
    ctx: &RunContext,
    state: &TrainingState,
    parent: Option<u64>,
    report: &str,
) -> Result<Vec<String>, CommandError> {
    let params: Vec<(String, Vec<usize>, Vec<u8>)> = state
        .tensors
        .iter()
        .filter(|t| !t.name.starts_with("optimizer."))
        .map(|t| {
            (
                t.name.clone(),
                t.shape.iter().map(|&d| d as usize).collect(),
                t.bytes().to_vec(),
            )
        })
        .collect();
    let safetensors = trainer::base::to_safetensors(&params)?;
    store.put_once("model.safetensors", safetensors)?;
    let hashes = state.tensor_hashes();
    let provenance = Provenance {
        run_id: ctx.manifest.run_id.clone(),
        kind: SnapshotKind::Export,
        parent: parent.and_then(|c| ctx.committed_root(c)),
        producer: format!("replay {}", env!("CARGO_PKG_VERSION")),
    };
    store.put_once_parts(
        "state.snap",
        state
            .encode(
                &hashes,
                &provenance,
                snapshot_format::snapshot::WriteOptions::default(),
            )?
            .into_parts(),
    )?;
    Ok(vec![
        "model.safetensors".into(),
        "state.snap".into(),
        report.into(),
    ])
}

/// Write `value` as pretty JSON to `key`, once.
pub(crate) fn put_json<T: Serialize>(
    store: &Store,
    key: &str,
    value: &T,
) -> Result<(), CommandError> {
    let mut json =
        serde_json::to_vec_pretty(value).map_err(|e| CommandError::Usage(e.to_string()))?;
    json.push(b'\n');
    store.put_once(key, json)?;
    Ok(())
}

/// The JSON document of `replay diff --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    pub from_step: u64,
    pub to_step: u64,
    pub environment: Option<EnvironmentCheck>,
    pub problems: Vec<Problem>,
    /// Per tensor: the change from `from_step` to `to_step`, largest L2 first.
    pub tensors: Vec<TensorDiff>,
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
    let mut report = DiffReport {
        command: "diff".into(),
        run: location.into(),
        verdict: Verdict::Ok,
        from_step: from,
        to_step: to,
        environment: None,
        problems: vec![],
        tensors: vec![],
    };
    let ctx = load_or_report!(location, &o.load, report);
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    if from > to || to > last {
        return Err(CommandError::Usage(format!(
            "--from {from} --to {to}: need from <= to <= {last} (the ledger's last step)"
        )));
    }
    let (env, stop) = environment_gate(&ctx, o)?;
    let tolerant = env.replayed_anyway;
    report.environment = Some(env);
    if let Some(v) = stop {
        report.verdict = v;
        return Ok(report);
    }
    let a = reconstruct(&ctx, from, o, tolerant, progress)?
        .fold_into(&mut report.verdict, &mut report.problems);
    let b = reconstruct(&ctx, to, o, tolerant, progress)?
        .fold_into(&mut report.verdict, &mut report.problems);
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
