//! `replay rollback`, `replay diff`: exact states at chosen steps, reconstructed from the
//! nearest earlier checkpoint by verified replay.

use run_store::Store;
use serde::Serialize;
use snapshot_format::Hash32;
use snapshot_format::snapshot::{Provenance, SnapshotKind};
use trainer::backend::DeviceSpec;
use trainer::session::TrainingState;

use crate::context::{LoadOptions, RunContext};
use crate::engine::reexecute::{self, EnvironmentCheck, Range, RangeResult};
use crate::report::{Assessment, Claim, CommandError, Problem, Verdict};
use crate::state::{self};
use snapshot_format::layout::segment_ending_at;

/// Options shared by commands that reconstruct states.
#[derive(Debug, Clone)]
pub struct ReconstructOptions {
    pub device: DeviceSpec,
    /// Re-derive every state from step 0 (the pinned base weights and the seed) by replay,
    /// instead of from the nearest stored checkpoint: the states are then `verified`, not
    /// `recorded`.
    pub from_genesis: bool,
    pub load: LoadOptions,
}

/// A state reconstructed at one step, with how it was obtained.
#[derive(Debug)]
pub struct Reconstructed {
    pub step: u64,
    pub state: Option<TrainingState>,
    pub root: Option<Hash32>,
    pub committed_root: Option<Hash32>,
    /// The replay that produced or confirmed it (none when read from a checkpoint).
    pub replay: Option<RangeResult>,
    /// `verified` when every bit matched the record, else what went wrong.
    pub outcome: Verdict,
    /// Re-derived by replay from the re-derived step 0 (otherwise it rests on a stored
    /// checkpoint: `recorded`).
    pub rederived: bool,
}

impl Reconstructed {
    /// Add this reconstruction's outcome to `assessment`, and the problems of its replay when
    /// it failed. Returns the state it reached, if any.
    pub(crate) fn fold_into(self, assessment: &mut Assessment) -> Option<TrainingState> {
        assessment.outcome(self.outcome);
        if !self.outcome.passed()
            && let Some(rr) = &self.replay
        {
            for p in &rr.problems {
                assessment.problem(p.clone());
            }
        }
        self.state
    }
}

/// The first step at or after `step` whose state the run commits to (a state root in its
/// record, or a checkpoint): replay continues to it, to confirm the path to `step`.
fn confirming_step(ctx: &RunContext, step: u64) -> u64 {
    ctx.records
        .range(step..)
        .find(|(s, r)| r.state_root.is_some() || ctx.checkpoints.contains(s))
        .map(|(s, _)| *s)
        .unwrap_or(step)
}

/// Reconstruct the states after each of `steps` (ascending). By default each comes from its
/// checkpoint if there is one (`recorded`), otherwise by replay from the nearest earlier
/// checkpoint, verified step by step (re-derived when that checkpoint is step 0); with
/// `from_genesis`, all of them come from one replay from the re-derived step 0. When a step's
/// record carries no state root, replay continues to the next step that has one, to confirm
/// the path.
pub fn reconstruct(
    ctx: &RunContext,
    steps: &[u64],
    o: &ReconstructOptions,
    cross_class: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Reconstructed>, CommandError> {
    if o.from_genesis {
        let last = steps.iter().copied().max().unwrap_or(0);
        let to = if last == 0 {
            0
        } else {
            confirming_step(ctx, last)
        };
        let mut capture = steps.to_vec();
        capture.sort_unstable();
        capture.dedup();
        let range = Range {
            segment: 0,
            from: to.min(1),
            to,
            capture,
        };
        progress.set_length(to);
        return replayed(ctx, steps, range, o, cross_class, progress);
    }
    let mut out = Vec::with_capacity(steps.len());
    for &step in steps {
        if step > 0 && ctx.checkpoints.contains(&step) {
            out.push(match state::read_checked(ctx, step)? {
                Ok(snap) => Reconstructed {
                    step,
                    root: Some(snap.header.state_root),
                    state: Some(reexecute::state_of(&snap)),
                    committed_root: ctx.committed_root(step),
                    replay: None,
                    outcome: Verdict::Verified,
                    rederived: false,
                },
                Err(problems) => Reconstructed {
                    step,
                    state: None,
                    root: None,
                    committed_root: ctx.committed_root(step),
                    outcome: problems.iter().fold(Verdict::Ok, |v, p| v.worst(p.kind)),
                    replay: Some(reexecute::unverifiable(
                        &Range::new(segment_ending_at(step, ctx.interval()), step, step),
                        problems,
                        Verdict::Ok,
                    )),
                    rederived: false,
                },
            });
            continue;
        }
        let to = if step == 0 {
            0
        } else {
            confirming_step(ctx, step)
        };
        // Every replayed step is checked, from the one after the starting checkpoint.
        let from = match step {
            0 => 0,
            s => ctx.checkpoint_at_or_before(s).map(|c| c + 1).unwrap_or(1),
        };
        progress.set_length(to + 1 - from.max(1));
        let range = Range {
            segment: 0,
            from,
            to,
            capture: vec![step],
        };
        out.extend(replayed(ctx, &[step], range, o, cross_class, progress)?);
    }
    Ok(out)
}

/// Replay `range`, capturing the states after `steps`.
fn replayed(
    ctx: &RunContext,
    steps: &[u64],
    range: Range,
    o: &ReconstructOptions,
    cross_class: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Reconstructed>, CommandError> {
    let mut out = reexecute::replay_ranges(ctx, &[range], o.device, cross_class, progress)?;
    let (result, captured) = out
        .pop()
        .ok_or_else(|| CommandError::Usage("nothing replayed".into()))?;
    // States come back in the order of the distinct steps captured, as far as replay got.
    let mut distinct = steps.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut states = Vec::with_capacity(steps.len());
    for &step in steps {
        let state = distinct
            .iter()
            .position(|&s| s == step)
            .and_then(|i| captured.get(i))
            .cloned();
        let root = match &state {
            Some(s) => Some(s.root(&s.tensor_hashes())?),
            None => None,
        };
        states.push(Reconstructed {
            step,
            state,
            root,
            committed_root: ctx.committed_root(step),
            outcome: result.verdict,
            rederived: result.rederived(),
            replay: Some(result.clone()),
        });
    }
    Ok(states)
}

/// Trust options and environment: this machine's class against the run's.
pub(crate) fn environment_of(
    ctx: &RunContext,
    o: &ReconstructOptions,
) -> Result<EnvironmentCheck, CommandError> {
    reexecute::environment(&ctx.manifest.environment, o.device)
}

/// The state after one step, reconstructed and judged (what `rollback` and `evaluate` share).
#[derive(Debug)]
pub(crate) struct StateAt {
    pub state_root: Option<Hash32>,
    pub committed_root: Option<Hash32>,
    pub environment: EnvironmentCheck,
    pub replay: Option<RangeResult>,
    /// Every problem of the run and of the reconstruction counts.
    pub verdict: Verdict,
    pub problems: Vec<Problem>,
    /// The state, only when the verdict passes.
    pub state: Option<TrainingState>,
}

/// Reconstruct and judge the state after `step` of the run in `ctx`.
pub(crate) fn state_at(
    ctx: &RunContext,
    step: u64,
    o: &ReconstructOptions,
    progress: &indicatif::ProgressBar,
) -> Result<StateAt, CommandError> {
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    if step > last {
        return Err(CommandError::Usage(format!(
            "--step {step}: the run's ledger ends at step {last}"
        )));
    }
    let environment = environment_of(ctx, o)?;
    let mut assessment = ctx.assessment();
    let r = reconstruct(ctx, &[step], o, environment.cross_class(), progress)?
        .pop()
        .ok_or_else(|| CommandError::Usage("nothing reconstructed".into()))?;
    let claim = Claim::State {
        rederived: r.rederived,
    };
    let (state_root, committed_root, replay) = (r.root, r.committed_root, r.replay.clone());
    let state = r.fold_into(&mut assessment);
    let verdict = assessment.verdict(claim);
    Ok(StateAt {
        state_root,
        committed_root,
        environment,
        replay,
        verdict,
        problems: assessment.problems().to_vec(),
        state: state.filter(|_| verdict.passed()),
    })
}

/// Write `state` to `store` as `model.safetensors` (the parameters, Hugging Face names; for a
/// LoRA run the base with the adapter merged, and the adapter as PEFT writes it in
/// `adapter_model.safetensors` and `adapter_config.json`) and `state.snap` (the full state, an
/// export snapshot whose parent is the committed root of step `parent`). Returns the names of
/// those files and of the `report` the caller writes next.
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
    let base = ctx.required_base()?;
    let pin = ctx.spec.base.as_ref().map(|b| b.blake3);
    let mut files = Vec::new();
    for (name, bytes) in trainer::peft::export_files(&ctx.spec.model, base, pin, params)? {
        store.put_once(&name, bytes)?;
        files.push(name);
    }
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
                None,
            )?
            .into_parts(),
    )?;
    files.extend(["state.snap".into(), report.into()]);
    Ok(files)
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
