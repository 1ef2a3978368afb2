//! `replay verify`: re-execute recorded steps and compare every recorded bit.
//!
//! For each range of steps: load the checkpoint at or before its start and check it against the
//! ledger; then, step by step, re-derive the batch from the data cursor, check each example's
//! content hash against the dataset manifest, re-execute the step with the trainer's own
//! session, and compare the learning rate, loss, gradient norm and state root with the record.
//! At the end of a range that ends at a checkpoint, the whole replayed state is compared with the
//! stored one, tensor by tensor.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use snapshot_format::manifest::EnvironmentFingerprint;
use trainer::backend::{DeviceSpec, Job, dispatch};
use trainer::model::TrainableModel;
use trainer::session::{PreparedData, Session, TrainingState};

use crate::context::RunContext;
use crate::report::{CommandError, Problem, Verdict};
use crate::state::{self, TensorDiff};

/// The first recorded value replay did not reproduce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub step: u64,
    /// `lr`, `example_ids`, `loss`, `grad_norm`, `state_root` or `final_state`.
    pub field: String,
    pub recorded: String,
    pub replayed: String,
    /// Step of the stored state the tensors were compared with (the end of the range), if any.
    pub tensors_at_step: Option<u64>,
    /// Tensors that differ there, largest difference first.
    pub tensors: Vec<TensorDiff>,
}

/// An example whose content no longer matches its committed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMismatch {
    pub step: u64,
    pub example_id: u64,
    pub committed: Hash32,
    pub found: Hash32,
    pub dataset: String,
}

/// Recorded against replayed values of one step, when replaying across environment classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDelta {
    pub step: u64,
    pub loss_recorded: f32,
    pub loss_replayed: f32,
    pub loss_abs_diff: f64,
    pub grad_norm_recorded: f32,
    pub grad_norm_replayed: f32,
    pub grad_norm_abs_diff: f64,
    pub state_root_equal: Option<bool>,
}

/// The verdict of one range of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeResult {
    /// Segment index, or 0 for a `--from/--to` range.
    pub segment: u64,
    pub from_step: u64,
    pub to_step: u64,
    pub start_checkpoint: Option<u64>,
    pub verdict: Verdict,
    pub steps_replayed: u64,
    pub divergence: Option<Divergence>,
    pub input_mismatch: Option<InputMismatch>,
    pub problems: Vec<Problem>,
    /// Per-step differences (only when replaying in another environment class).
    pub deltas: Vec<StepDelta>,
    /// Tensor differences at the end of the range (only in another environment class).
    pub final_tensors: Vec<TensorDiff>,
    pub seconds: f64,
}

/// A range of steps to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub segment: u64,
    pub from: u64,
    pub to: u64,
    /// Keep the replayed state after this step (for rollback, compare, diff).
    pub capture_at: Option<u64>,
}

impl Range {
    /// Steps `from..=to` of segment `segment` (0 for none).
    pub fn new(segment: u64, from: u64, to: u64) -> Self {
        Range {
            segment,
            from,
            to,
            capture_at: None,
        }
    }
}

/// A range's result, and the state captured after `capture_at` if it was reached.
pub type Replayed = (RangeResult, Option<TrainingState>);

/// How the environment of this machine relates to the run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCheck {
    pub run_class: Hash32,
    pub here_class: Hash32,
    /// `(field, run's value, this machine's value)` for every class field that differs.
    pub differences: Vec<(String, String, String)>,
    /// Replay ran despite a different class (`--allow-environment-mismatch`).
    pub replayed_anyway: bool,
}

/// Compare this machine's class with the run's.
pub fn environment(
    run: &EnvironmentFingerprint,
    device: DeviceSpec,
) -> Result<EnvironmentCheck, CommandError> {
    let here = device.fingerprint()?;
    Ok(EnvironmentCheck {
        run_class: run.class(),
        here_class: here.class(),
        differences: run
            .class_differences(&here)
            .into_iter()
            .map(|(f, a, b)| (f.to_string(), a, b))
            .collect(),
        replayed_anyway: false,
    })
}

/// Replays `ranges` of the run on `device`. `tolerant` is true when the environment class
/// differs and replay runs anyway: every step is compared and reported, none stops it.
pub fn replay_ranges(
    ctx: &RunContext,
    ranges: &[Range],
    device: DeviceSpec,
    tolerant: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Replayed>, CommandError> {
    let job = VerifyJob {
        ctx,
        ranges,
        tolerant,
        progress,
    };
    dispatch(device, &ctx.spec.model, job)?
}

struct VerifyJob<'a> {
    ctx: &'a RunContext,
    ranges: &'a [Range],
    tolerant: bool,
    progress: &'a indicatif::ProgressBar,
}

impl Job for VerifyJob<'_> {
    type Output = Result<Vec<Replayed>, CommandError>;

    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output {
        let Some(dataset) = &self.ctx.dataset else {
            return Ok(self
                .ranges
                .iter()
                .map(|r| {
                    (
                        unverifiable(r, self.ctx.problems.clone(), Verdict::Corrupt),
                        None,
                    )
                })
                .collect());
        };
        let prepared = PreparedData::new(dataset, &self.ctx.spec);
        self.ranges
            .iter()
            .map(|r| {
                replay_range::<B, M>(
                    self.ctx,
                    r,
                    config.clone(),
                    device.clone(),
                    &prepared,
                    self.tolerant,
                    self.progress,
                )
            })
            .collect()
    }
}

/// The result of a range that was not replayed: the worst of `problems`, or `default` when they
/// all pass.
pub(crate) fn unverifiable(r: &Range, problems: Vec<Problem>, default: Verdict) -> RangeResult {
    let verdict = problems.iter().fold(Verdict::Ok, |v, p| v.worst(p.kind));
    RangeResult {
        segment: r.segment,
        from_step: r.from,
        to_step: r.to,
        start_checkpoint: None,
        verdict: if verdict.passed() { default } else { verdict },
        steps_replayed: 0,
        divergence: None,
        input_mismatch: None,
        problems,
        deltas: vec![],
        final_tensors: vec![],
        seconds: 0.0,
    }
}

fn bits32(b: u32) -> String {
    format!("{} (0x{b:08x})", f32::from_bits(b))
}

fn bits64(b: u64) -> String {
    format!("{} (0x{b:016x})", f64::from_bits(b))
}

fn root_text(r: Option<Hash32>) -> String {
    r.map(|h| h.to_hex()).unwrap_or_else(|| "none".into())
}

/// The first of `ids`, drawn for `step`, whose content differs from what the run committed to.
pub(crate) fn input_mismatch(ctx: &RunContext, step: u64, ids: &[u64]) -> Option<InputMismatch> {
    let (committed, dataset) = (ctx.dataset_manifest.as_ref()?, ctx.dataset.as_ref()?);
    let hash = |hashes: &[Hash32], id: u64| hashes.get(id as usize).copied();
    let &id = ids.iter().find(|&&id| {
        hash(&dataset.manifest.example_hashes, id) != hash(&committed.example_hashes, id)
    })?;
    Some(InputMismatch {
        step,
        example_id: id,
        committed: hash(&committed.example_hashes, id).unwrap_or(Hash32::ZERO),
        found: hash(&dataset.manifest.example_hashes, id).unwrap_or(Hash32::ZERO),
        dataset: dataset.source.clone(),
    })
}

fn replay_range<B: AutodiffBackend, M: TrainableModel<B>>(
    ctx: &RunContext,
    range: &Range,
    config: M::Config,
    device: B::Device,
    prepared: &PreparedData,
    tolerant: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Replayed, CommandError> {
    let started = std::time::Instant::now();
    // The ledger must hold up to the end of the range (the chain into it included).
    let problems = ctx.problems_before(range.to);
    if !problems.is_empty() {
        return Ok((unverifiable(range, problems, Verdict::Tampered), None));
    }
    let Some(start) = ctx.checkpoint_at_or_before(range.from.saturating_sub(1)) else {
        return Ok((
            unverifiable(
                range,
                vec![Problem::new(
                    Verdict::Missing,
                    snapshot_format::layout::checkpoint(0),
                    format!("no checkpoint at or before step {}", range.from - 1),
                )],
                Verdict::Missing,
            ),
            None,
        ));
    };
    let snap = match state::read_checked(ctx, start)? {
        Ok(s) => s,
        Err(problems) => return Ok((unverifiable(range, problems, Verdict::Corrupt), None)),
    };
    let key = snapshot_format::layout::checkpoint(start);
    let mut captured: Option<TrainingState> = if range.capture_at == Some(start) {
        Some(state_of(&snap))
    } else {
        None
    };
    let mut session = Session::<B, M>::restore(ctx.spec.clone(), config, &snap, device, &key)?;
    drop(snap);

    let mut result = RangeResult {
        segment: range.segment,
        from_step: range.from,
        to_step: range.to,
        start_checkpoint: Some(start),
        verdict: Verdict::Verified,
        steps_replayed: 0,
        divergence: None,
        input_mismatch: None,
        problems: vec![],
        deltas: vec![],
        final_tensors: vec![],
        seconds: 0.0,
    };
    let mut last_state: Option<TrainingState> = None;
    for step in start + 1..=range.to {
        let Some(rec) = ctx.records.get(&step) else {
            result.problems.push(Problem::new(
                Verdict::Missing,
                ctx.segment_key(step),
                format!("no ledger record for step {step}"),
            ));
            break;
        };
        let (epoch, ids) = session.next_batch();
        let checking = step >= range.from && result.divergence.is_none();
        if (ids != rec.example_ids || epoch != rec.epoch) && checking {
            result.divergence = Some(Divergence {
                step,
                field: "example_ids".into(),
                recorded: format!("epoch {} {:?}", rec.epoch, rec.example_ids),
                replayed: format!("epoch {epoch} {ids:?}"),
                tensors_at_step: None,
                tensors: vec![],
            });
            if !tolerant {
                break;
            }
        }
        if let Some(m) = input_mismatch(ctx, step, &ids) {
            result.input_mismatch = Some(m);
            break;
        }
        let batch = prepared.batch::<B>(&ids, session.device());
        let out = session.train_step(&batch);
        result.steps_replayed += 1;
        progress.inc(1);
        let needs_root = rec.state_root.is_some() || step == range.to;
        let replayed_root = if needs_root || range.capture_at == Some(step) {
            let st = session.capture();
            let hashes = st.tensor_hashes();
            let root = st.root(&hashes)?;
            if range.capture_at == Some(step) {
                captured = Some(st.clone());
            }
            if step == range.to {
                last_state = Some(st);
            }
            Some(root)
        } else {
            None
        };
        if !checking {
            continue;
        }
        let mut mismatch: Option<(&str, String, String)> = None;
        if out.lr_bits != rec.lr_bits {
            mismatch = Some(("lr", bits64(rec.lr_bits), bits64(out.lr_bits)));
        } else if out.loss_bits != rec.loss_bits {
            mismatch = Some(("loss", bits32(rec.loss_bits), bits32(out.loss_bits)));
        } else if out.grad_norm_bits != rec.grad_norm_bits {
            mismatch = Some((
                "grad_norm",
                bits32(rec.grad_norm_bits),
                bits32(out.grad_norm_bits),
            ));
        } else if rec.state_root.is_some() && rec.state_root != replayed_root {
            mismatch = Some((
                "state_root",
                root_text(rec.state_root),
                root_text(replayed_root),
            ));
        }
        if tolerant {
            let (lr, lp) = (f32::from_bits(rec.loss_bits), f32::from_bits(out.loss_bits));
            let (gr, gp) = (
                f32::from_bits(rec.grad_norm_bits),
                f32::from_bits(out.grad_norm_bits),
            );
            result.deltas.push(StepDelta {
                step,
                loss_recorded: lr,
                loss_replayed: lp,
                loss_abs_diff: (f64::from(lr) - f64::from(lp)).abs(),
                grad_norm_recorded: gr,
                grad_norm_replayed: gp,
                grad_norm_abs_diff: (f64::from(gr) - f64::from(gp)).abs(),
                state_root_equal: rec.state_root.map(|r| Some(r) == replayed_root),
            });
        }
        if let Some((field, recorded, replayed)) = mismatch
            && result.divergence.is_none()
        {
            result.divergence = Some(Divergence {
                step,
                field: field.into(),
                recorded,
                replayed,
                tensors_at_step: None,
                tensors: vec![],
            });
        }
    }

    // Compare the whole state with the stored checkpoint at the end of the range.
    if result.problems.is_empty()
        && result.input_mismatch.is_none()
        && ctx.checkpoints.contains(&range.to)
        && let Some(replayed) = &last_state
    {
        match state::read_checked(ctx, range.to)? {
            Err(problems) => result.problems.extend(problems),
            Ok(stored) => {
                let diffs = state::diff_states(replayed, &stored);
                if tolerant {
                    result.final_tensors = diffs.clone();
                }
                match &mut result.divergence {
                    Some(d) => {
                        d.tensors_at_step = Some(range.to);
                        d.tensors = diffs;
                    }
                    None if !diffs.is_empty() => {
                        result.divergence = Some(Divergence {
                            step: range.to,
                            field: "final_state".into(),
                            recorded: stored.header.state_root.to_hex(),
                            replayed: "differs".into(),
                            tensors_at_step: Some(range.to),
                            tensors: diffs,
                        });
                    }
                    None => {}
                }
            }
        }
    }
    result.verdict = if !result.problems.is_empty() {
        result
            .problems
            .iter()
            .fold(Verdict::Ok, |v, p| v.worst(p.kind))
    } else if result.input_mismatch.is_some() {
        Verdict::InputMismatch
    } else if result.divergence.is_some() {
        if tolerant {
            Verdict::EnvironmentMismatch
        } else {
            Verdict::Diverged
        }
    } else {
        Verdict::Verified
    };
    result.seconds = started.elapsed().as_secs_f64();
    Ok((result, captured))
}

/// A decoded snapshot as a training state (every tensor is `f32`, as the engine writes them).
pub fn state_of(snap: &snapshot_format::snapshot::Snapshot) -> TrainingState {
    TrainingState {
        meta: snap.header.state.clone(),
        tensors: snap
            .header
            .tensors
            .iter()
            .zip(&snap.data)
            .map(|(t, d)| trainer::params::HostTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: burn::tensor::TensorData::from_bytes_vec(
                    d.clone(),
                    t.shape.iter().map(|&x| x as usize).collect::<Vec<_>>(),
                    burn::tensor::DType::F32,
                ),
            })
            .collect(),
    }
}
