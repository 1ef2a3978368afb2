//! Re-execution of recorded steps, compared bit for bit with the record.
//!
//! For each range of steps: start from the state before it, which is the re-derived step 0
//! (rebuilt from the pinned base weights and the seed, its root compared with the manifest's)
//! when the range starts at step 1, or a stored checkpoint checked against the ledger
//! otherwise; then, step by step, re-derive the batch from the data cursor, check each
//! example's content hash against the dataset manifest, re-execute the step with the trainer's
//! own session, and compare the learning rate, loss, gradient norm and state root with the
//! record. At the end of a range that ends at a checkpoint, the whole replayed state is compared
//! with the stored one, tensor by tensor.
//!
//! The run's recorded environment class decides nothing: replay always runs. When this machine
//! is in another class, every step is compared and its deviation reported, and a difference is
//! judged against what floating-point noise can produce (`environment_mismatch`) or not
//! (`diverged`); it is never a pass.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use snapshot_format::layout;
use snapshot_format::manifest::EnvironmentFingerprint;
use trainer::backend::{DeviceSpec, dispatch};
use trainer::model::TrainableModel;
use trainer::model::registry::Job;
use trainer::session::{PreparedData, Session, TrainingState};

use crate::context::RunContext;
use crate::report::{CommandError, Problem, Verdict, problem_of_trainer};
use crate::state::{self, TensorDiff};

/// Largest relative deviation of a step's loss or gradient norm that floating-point noise
/// across environment classes is taken to explain.
pub const NOISE_STEP_RELATIVE: f64 = 1e-3;
/// Under SGD, the largest L2 deviation of a parameter at the end of a range, relative to how
/// far that parameter moved over the range, that floating-point noise is taken to explain. (Under
/// AdamW the bound is the optimizer's own: see [`trainer::optim::max_gradient_step`].)
pub const NOISE_STATE_RELATIVE: f64 = 1e-2;

/// The first recorded value replay did not reproduce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub step: u64,
    /// `initial_state`, `lr`, `example_ids`, `loss`, `grad_norm`, `state_root` or
    /// `final_state`.
    pub field: String,
    pub recorded: String,
    pub replayed: String,
    /// Step of the stored state the tensors were compared with, if any.
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

/// Recorded against replayed values of one step, when replaying in another environment class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDelta {
    pub step: u64,
    pub loss_recorded: f32,
    pub loss_replayed: f32,
    pub loss_abs_diff: f64,
    pub grad_norm_recorded: f32,
    pub grad_norm_replayed: f32,
    pub grad_norm_abs_diff: f64,
    /// The larger of the loss's and the gradient norm's relative deviations.
    pub largest_relative_deviation: f64,
    pub state_root_equal: Option<bool>,
}

/// Whether the differences of a range replayed in another environment class are what
/// floating-point noise can produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseJudgement {
    pub consistent_with_noise: bool,
    /// Largest relative deviation of any step's loss or gradient norm.
    pub largest_step_deviation: f64,
    /// Largest deviation of a parameter at the end of the range, as a multiple of what
    /// rounding can explain (at most 1 when consistent; none when the range does not end at a
    /// stored checkpoint).
    pub largest_state_deviation: Option<f64>,
    /// The parameter that deviates the most.
    pub tensor: Option<String>,
    pub reason: String,
}

/// Step 0 rebuilt from the pinned base weights and the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitialState {
    /// The root the manifest records (`initial_state_root`).
    pub recorded_root: Hash32,
    pub rederived_root: Hash32,
    /// Time to rebuild and hash it.
    pub seconds: f64,
}

/// The verdict of one range of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeResult {
    /// Segment index, or 0 for a `--from/--to` range or step 0 alone.
    pub segment: u64,
    pub from_step: u64,
    pub to_step: u64,
    /// The step of the state replay started from (0: the re-derived initial state).
    pub start_checkpoint: Option<u64>,
    /// Set when replay started from step 0 re-derived, rather than from a stored checkpoint.
    pub initial_state: Option<InitialState>,
    pub verdict: Verdict,
    pub steps_replayed: u64,
    pub divergence: Option<Divergence>,
    pub input_mismatch: Option<InputMismatch>,
    pub problems: Vec<Problem>,
    /// Per-step differences (only when replaying in another environment class).
    pub deltas: Vec<StepDelta>,
    /// Tensor differences at the end of the range (only in another environment class).
    pub final_tensors: Vec<TensorDiff>,
    /// How the differences compare with floating-point noise (another class, when they exist).
    pub noise: Option<NoiseJudgement>,
    /// The ledger's head after `to_step` as it was replayed (the hash of that record; the
    /// genesis for step 0): which history the verdict is about.
    pub head: Option<Hash32>,
    pub seconds: f64,
}

impl RangeResult {
    /// Set the timings to 0, for records stored so that the same command writes the same bytes.
    pub fn clear_timings(&mut self) {
        self.seconds = 0.0;
        if let Some(i) = self.initial_state.as_mut() {
            i.seconds = 0.0;
        }
    }

    /// True when the range's start is the re-derived step 0 and every bit replayed matched:
    /// every state it reached is re-derived from the pinned inputs.
    pub fn rederived(&self) -> bool {
        self.verdict == Verdict::Verified && self.initial_state.is_some()
    }
}

/// A range of steps to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub segment: u64,
    /// First step checked (every replayed step is checked, from the starting state on).
    pub from: u64,
    pub to: u64,
    /// Keep the replayed states after these steps (for rollback, diff, counterfactual).
    pub capture: Vec<u64>,
}

impl Range {
    /// Steps `from..=to` of segment `segment` (0 for none). `from = to = 0` re-derives step 0
    /// alone.
    pub fn new(segment: u64, from: u64, to: u64) -> Self {
        Range {
            segment,
            from,
            to,
            capture: vec![],
        }
    }

    /// The step whose state replay starts from: 0 (re-derived) when the range starts at step
    /// 1 or 0, else the latest checkpoint at or before `from − 1`.
    fn start(&self, ctx: &RunContext) -> Option<u64> {
        if self.from <= 1 {
            Some(0)
        } else {
            ctx.checkpoint_at_or_before(self.from - 1)
        }
    }
}

/// A range's result, and the states captured after the steps of [`Range::capture`] that were
/// reached, in the order of those steps.
pub type Replayed = (RangeResult, Vec<TrainingState>);

/// How the environment of this machine relates to the run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCheck {
    /// The class the run's manifest claims.
    pub run_class: Hash32,
    /// The class this machine measures for itself.
    pub here_class: Hash32,
    /// `(field, run's value, this machine's value)` for every class field that differs.
    pub differences: Vec<(String, String, String)>,
}

impl EnvironmentCheck {
    /// Whether this machine is in another class than the one the run claims.
    pub fn cross_class(&self) -> bool {
        !self.differences.is_empty()
    }
}

/// Compare this machine's class, measured here, with the one the run claims.
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
    })
}

/// Replays `ranges` of the run on `device`. `cross_class` is true when this machine is in
/// another environment class than the run claims: every step is then compared and reported.
pub fn replay_ranges(
    ctx: &RunContext,
    ranges: &[Range],
    device: DeviceSpec,
    cross_class: bool,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Replayed>, CommandError> {
    let job = VerifyJob {
        ctx,
        ranges,
        cross_class,
        progress,
    };
    let mut replayed = dispatch(device, &ctx.spec.model, job)??;
    for (r, _) in &mut replayed {
        r.head = ctx.head_at(r.to_step);
    }
    Ok(replayed)
}

struct VerifyJob<'a> {
    ctx: &'a RunContext,
    ranges: &'a [Range],
    cross_class: bool,
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
            let data: Vec<Problem> = self
                .ctx
                .problems
                .iter()
                .filter(|p| p.artefact.starts_with("dataset/") || p.kind == Verdict::InputMismatch)
                .cloned()
                .collect();
            return Ok(self
                .ranges
                .iter()
                .map(|r| (unverifiable(r, data.clone(), Verdict::Corrupt), vec![]))
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
                    self.cross_class,
                    self.progress,
                    &mut (),
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
        initial_state: None,
        verdict: if verdict.passed() { default } else { verdict },
        steps_replayed: 0,
        divergence: None,
        input_mismatch: None,
        problems,
        deltas: vec![],
        final_tensors: vec![],
        noise: None,
        head: None,
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

/// `|a − b| / max(|a|, |b|)`, 0 when both are 0, infinite where a value is not finite.
fn relative(a: f32, b: f32) -> f64 {
    let (a, b) = (f64::from(a), f64::from(b));
    if a == b {
        return 0.0;
    }
    let d = (a - b).abs() / a.abs().max(b.abs());
    if d.is_finite() { d } else { f64::INFINITY }
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

/// Rebuild the state before step 1 from the pinned base weights (the run's copy, already
/// checked against its pin) and the seed: the session, its state and its root. A base model
/// that is absent or does not match its pin comes back as a problem.
#[allow(clippy::type_complexity)]
pub(crate) fn rederive_initial<B: AutodiffBackend, M: TrainableModel<B>>(
    ctx: &RunContext,
    config: M::Config,
    device: B::Device,
) -> Result<Result<(Session<B, M>, TrainingState, Hash32), Problem>, CommandError> {
    let base = match ctx.base_weights()? {
        Ok(b) => b,
        Err(p) => return Ok(Err(p)),
    };
    let session = match Session::<B, M>::initial(ctx.spec.clone(), config, base, device) {
        Ok((s, _)) => s,
        Err(e) => return Ok(Err(problem_of_trainer(e)?)),
    };
    let state = session.capture();
    let root = state.root(&state.tensor_hashes())?;
    Ok(Ok((session, state, root)))
}

/// What a command sees of each replayed step, while the replay still matches the record: the
/// session in the state before the step, the step's number and its example ids (checked against
/// the ledger and the dataset's commitments); then the session after the step.
pub(crate) trait StepObserver<B: AutodiffBackend, M: TrainableModel<B>> {
    fn before_step(
        &mut self,
        session: &Session<B, M>,
        step: u64,
        ids: &[u64],
    ) -> Result<(), CommandError>;

    fn after_step(&mut self, session: &Session<B, M>, step: u64) -> Result<(), CommandError>;
}

/// Nothing to observe (`verify`, `audit`, reconstruction).
impl<B: AutodiffBackend, M: TrainableModel<B>> StepObserver<B, M> for () {
    fn before_step(&mut self, _: &Session<B, M>, _: u64, _: &[u64]) -> Result<(), CommandError> {
        Ok(())
    }

    fn after_step(&mut self, _: &Session<B, M>, _: u64) -> Result<(), CommandError> {
        Ok(())
    }
}

/// Replay `range` from its starting state, checking every step against the record, with
/// `observer` shown each step before it is taken.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replay_range<B: AutodiffBackend, M: TrainableModel<B>>(
    ctx: &RunContext,
    range: &Range,
    config: M::Config,
    device: B::Device,
    prepared: &PreparedData,
    cross_class: bool,
    progress: &indicatif::ProgressBar,
    observer: &mut impl StepObserver<B, M>,
) -> Result<Replayed, CommandError> {
    let started = std::time::Instant::now();
    // The ledger must hold up to the end of the range (the chain into it included).
    let problems = ctx.problems_before(range.to);
    if !problems.is_empty() {
        return Ok((unverifiable(range, problems, Verdict::Tampered), vec![]));
    }
    let Some(start) = range.start(ctx) else {
        return Ok((
            unverifiable(
                range,
                vec![Problem::new(
                    Verdict::Missing,
                    layout::checkpoint(range.from.saturating_sub(1)),
                    format!("no checkpoint at or before step {}", range.from - 1),
                )],
                Verdict::Missing,
            ),
            vec![],
        ));
    };
    let mut result = RangeResult {
        segment: range.segment,
        from_step: range.from,
        to_step: range.to,
        start_checkpoint: Some(start),
        initial_state: None,
        verdict: Verdict::Verified,
        steps_replayed: 0,
        divergence: None,
        input_mismatch: None,
        problems: vec![],
        deltas: vec![],
        final_tensors: vec![],
        noise: None,
        head: None,
        seconds: 0.0,
    };
    let mut captured: Vec<TrainingState> = Vec::new();
    // The state replay starts from, kept in another class to measure how far tensors moved.
    let mut start_state: Option<TrainingState> = None;
    let mut session = if start == 0 {
        let rederived = std::time::Instant::now();
        let (session, state, root) = match rederive_initial::<B, M>(ctx, config, device)? {
            Ok(x) => x,
            Err(p) => return Ok((unverifiable(range, vec![p], Verdict::Missing), vec![])),
        };
        let recorded = ctx.manifest.initial_state_root;
        result.initial_state = Some(InitialState {
            recorded_root: recorded,
            rederived_root: root,
            seconds: rederived.elapsed().as_secs_f64(),
        });
        if root != recorded {
            // A starting model other than the pinned base and seed give: name its tensors.
            let stored = state::read_checked(ctx, 0)?.ok();
            result.divergence = Some(Divergence {
                step: 0,
                field: "initial_state".into(),
                recorded: recorded.to_hex(),
                replayed: root.to_hex(),
                tensors_at_step: stored.as_ref().map(|_| 0),
                tensors: stored
                    .map(|s| state::diff_states(&state, &s))
                    .unwrap_or_default(),
            });
            result.verdict = Verdict::Diverged;
            result.seconds = started.elapsed().as_secs_f64();
            return Ok((result, vec![]));
        }
        if range.capture.contains(&0) {
            captured.push(state.clone());
        }
        if cross_class {
            start_state = Some(state);
        }
        session
    } else {
        let snap = match state::read_checked(ctx, start)? {
            Ok(s) => s,
            Err(problems) => return Ok((unverifiable(range, problems, Verdict::Corrupt), vec![])),
        };
        if range.capture.contains(&start) || cross_class {
            let st = state_of(&snap);
            if range.capture.contains(&start) {
                captured.push(st.clone());
            }
            start_state = Some(st);
        }
        let key = layout::checkpoint(start);
        // Frozen parameters (a base under adapters) come from the pinned base; a base that is
        // not available as pinned is reported by the restore when the model needs it.
        let base = ctx.base_weights()?.ok().flatten();
        match Session::<B, M>::restore(ctx.spec.clone(), config, base, &snap, device, &key) {
            Ok(s) => s,
            Err(e) => {
                return Ok((
                    unverifiable(range, vec![problem_of_trainer(e)?], Verdict::Corrupt),
                    vec![],
                ));
            }
        }
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
        // Every replayed step is checked, those before `from` included; in the run's own class
        // checking stops at the first difference, in another class every step is compared.
        let checking = cross_class || result.divergence.is_none();
        if ids != rec.example_ids || epoch != rec.epoch {
            if result.divergence.is_none() {
                result.divergence = Some(Divergence {
                    step,
                    field: "example_ids".into(),
                    recorded: format!("epoch {} {:?}", rec.epoch, rec.example_ids),
                    replayed: format!("epoch {epoch} {ids:?}"),
                    tensors_at_step: None,
                    tensors: vec![],
                });
            }
            // The batches no longer match the record: nothing further can be compared.
            break;
        }
        if let Some(m) = input_mismatch(ctx, step, &ids) {
            result.input_mismatch = Some(m);
            break;
        }
        let observed = result.divergence.is_none();
        if observed {
            observer.before_step(&session, step, &ids)?;
        }
        let parts = prepared.step_batches::<B>(
            &ids,
            ctx.spec.run.micro_batches,
            |_| true,
            session.device(),
        );
        let out = session.train_step(&parts);
        if observed {
            observer.after_step(&session, step)?;
        }
        result.steps_replayed += 1;
        progress.inc(1);
        let needs_root = rec.state_root.is_some() || step == range.to;
        let replayed_root = if needs_root || range.capture.contains(&step) {
            let st = session.capture();
            let root = st.root(&st.tensor_hashes())?;
            if range.capture.contains(&step) {
                captured.push(st.clone());
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
        if cross_class {
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
                largest_relative_deviation: relative(lr, lp).max(relative(gr, gp)),
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
    let mut judged_state: Option<(f64, String)> = None;
    if result.problems.is_empty()
        && result.input_mismatch.is_none()
        && ctx.checkpoints.contains(&range.to)
        && let Some(replayed) = &last_state
    {
        match state::read_checked(ctx, range.to)? {
            Err(problems) => result.problems.extend(problems),
            Ok(stored) => {
                let diffs = state::diff_states(replayed, &stored);
                if cross_class {
                    result.final_tensors = diffs.clone();
                    if let Some(from) = &start_state {
                        judged_state = Some(state_deviation(
                            ctx,
                            start + 1..=range.to,
                            &diffs,
                            from,
                            &stored,
                        ));
                    }
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
    if cross_class && let Some(d) = &result.divergence {
        result.noise = Some(judge_noise(d, &result.deltas, judged_state));
    }
    result.verdict = if !result.problems.is_empty() {
        result
            .problems
            .iter()
            .fold(Verdict::Ok, |v, p| v.worst(p.kind))
    } else if result.input_mismatch.is_some() {
        Verdict::InputMismatch
    } else if let Some(n) = &result.noise {
        if n.consistent_with_noise {
            Verdict::EnvironmentMismatch
        } else {
            Verdict::Diverged
        }
    } else if result.divergence.is_some() {
        Verdict::Diverged
    } else {
        Verdict::Verified
    };
    result.seconds = started.elapsed().as_secs_f64();
    Ok((result, captured))
}

/// How far the parameters at the end of a range deviate from the stored ones, as a multiple of
/// what rounding differences over the range can explain, and the parameter that deviates the
/// most. Under AdamW, rounding can move an element by at most twice the sum, over the replayed
/// steps, of [`trainer::optim::max_gradient_step`] (the update normalises even a gradient that
/// is zero up to rounding to a full-size step, so no relative bound holds). Under SGD, the update
/// follows the gradient, and a parameter may deviate by at most [`NOISE_STATE_RELATIVE`] of its
/// movement over the range. Optimizer state is not judged: its effect shows in the parameters.
fn state_deviation(
    ctx: &RunContext,
    steps: std::ops::RangeInclusive<u64>,
    diffs: &[TensorDiff],
    start: &TrainingState,
    stored: &snapshot_format::snapshot::Snapshot,
) -> (f64, String) {
    let optimizer = &ctx.spec.optimizer;
    let adam: Option<f64> = steps
        .map(|t| trainer::optim::max_gradient_step(optimizer, ctx.spec.lr(t), t))
        .sum::<Option<f64>>()
        .map(|total| 2.0 * total);
    let views = stored.views();
    diffs
        .iter()
        .filter(|d| !d.name.starts_with("optimizer."))
        .map(|d| {
            let r = match adam {
                Some(allowed) if allowed > 0.0 => d.max_abs_diff / allowed,
                Some(_) => f64::INFINITY,
                None => {
                    let moved = match (
                        start.tensor(&d.name),
                        views.iter().find(|v| v.name == d.name),
                    ) {
                        (Some(a), Some(b)) if a.bytes().len() == b.data.len() => {
                            state::diff_values(&d.name, a.bytes(), b.data).l2
                        }
                        _ => 0.0,
                    };
                    if moved > 0.0 && d.l2.is_finite() {
                        d.l2 / moved / NOISE_STATE_RELATIVE
                    } else {
                        f64::INFINITY
                    }
                }
            };
            (if r.is_nan() { f64::INFINITY } else { r }, d.name.clone())
        })
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
}

/// Whether a divergence found in another environment class is what floating-point noise can
/// produce. It is not when the batches differ (data order is integer arithmetic, the same
/// everywhere); when an earlier step of the range reproduced its state root exactly (this
/// machine then computes the model as the run's did, so the difference is not rounding); when
/// a step's loss or gradient norm deviates by more than [`NOISE_STEP_RELATIVE`]; or when a
/// parameter at the end deviates by more than rounding can explain ([`state_deviation`]). A
/// poisoned update or a swapped checkpoint moves a model by far more than rounding does.
fn judge_noise(
    d: &Divergence,
    deltas: &[StepDelta],
    state: Option<(f64, String)>,
) -> NoiseJudgement {
    let step = deltas
        .iter()
        .map(|x| x.largest_relative_deviation)
        .fold(0.0, f64::max);
    let reproduced = deltas
        .iter()
        .filter(|x| x.step < d.step && x.state_root_equal == Some(true))
        .map(|x| x.step)
        .next_back();
    let (consistent, reason) = if d.field == "example_ids" || d.field == "initial_state" {
        (
            false,
            format!(
                "{} differs at step {}: integer and host computations do not depend on the \
                 environment",
                d.field, d.step
            ),
        )
    } else if let Some(s) = reproduced {
        (
            false,
            format!(
                "step {s} reproduced every bit on this machine, so it computes this model as the \
                 run's did: the difference at step {} is not rounding",
                d.step
            ),
        )
    } else if step > NOISE_STEP_RELATIVE {
        (
            false,
            format!(
                "a step's loss or gradient norm deviates by {step:.3e} relative, above the \
                 {NOISE_STEP_RELATIVE:e} floating-point noise can explain"
            ),
        )
    } else if let Some((s, name)) = state.as_ref().filter(|(s, _)| *s > 1.0) {
        (
            false,
            format!(
                "{name} at the end of the range deviates by {s:.3e} times what rounding over the \
                 range can explain"
            ),
        )
    } else {
        (
            true,
            format!(
                "deviations within floating-point noise (steps {step:.3e} relative, parameters \
                 {} of what rounding can explain): the bits differ, as they may across \
                 environment classes",
                state
                    .as_ref()
                    .map(|(s, _)| format!("{s:.3e}"))
                    .unwrap_or_else(|| "not compared".into())
            ),
        )
    };
    NoiseJudgement {
        consistent_with_noise: consistent,
        largest_step_deviation: step,
        largest_state_deviation: state.as_ref().map(|(s, _)| *s),
        tensor: state.map(|(_, name)| name),
        reason,
    }
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
