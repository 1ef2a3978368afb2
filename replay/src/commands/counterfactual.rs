//! `replay counterfactual`: the run's history re-executed without chosen examples.
//!
//! The factual state before the first step whose batch held a removed example is reconstructed
//! and verified, as by `rollback`. From there each step draws its recorded batch (checked
//! against the ledger and the dataset's commitments), drops the removed examples and trains on
//! the rest; a batch left empty is a step without an update. The state reached is compared with
//! the verified factual state after the same step: per tensor, and by the loss of each removed
//! example under both. The counterfactual is itself deterministic: the same command gives the
//! same bits.

use std::collections::BTreeSet;

use burn::tensor::backend::AutodiffBackend;
use run_store::Store;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use snapshot_format::snapshot::TensorView;
use trainer::backend::dispatch;
use trainer::model::TrainableModel;
use trainer::model::registry::Job;
use trainer::probe::ProbeResult;
use trainer::session::{PreparedData, Session, TrainingState};

use crate::attestations::attest_export;
use crate::context::RunContext;
use crate::engine::reconstruct::{
    ReconstructOptions, environment_of, export_state, put_json, reconstruct,
};
use crate::engine::reexecute::{EnvironmentCheck, InputMismatch, RangeResult, input_mismatch};
use crate::report::{Claim, CommandError, Header, Problem, Report, Verdict, read_document};
use crate::state::{TensorDiff, diff_views};

/// One step of the counterfactual history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterfactualStep {
    pub step: u64,
    /// Removed examples the recorded batch held.
    pub removed: Vec<u64>,
    /// Examples the counterfactual step trained on.
    pub batch_size: u64,
    pub loss_recorded: f32,
    /// None when the whole batch was removed (no update).
    pub loss_counterfactual: Option<f32>,
}

/// A removed example's loss (no dropout) under the factual and counterfactual states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleLoss {
    pub example: u64,
    pub label: u64,
    /// Steps up to `to_step` whose batch held it.
    pub uses: u64,
    pub loss_factual: f32,
    pub loss_counterfactual: f32,
}

/// The JSON document of `replay counterfactual --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterfactualReport {
    #[serde(flatten)]
    pub header: Header,
    pub without: Vec<u64>,
    pub to_step: u64,
    pub environment: Option<EnvironmentCheck>,
    /// The first step whose batch held a removed example (none: the histories are the same).
    pub first_changed_step: Option<u64>,
    /// How the factual state before that step, and the one after `to_step`, were confirmed.
    pub factual_start: Option<RangeResult>,
    pub factual_end: Option<RangeResult>,
    /// Every counterfactual step, from the first changed one to `to_step`.
    pub steps: Vec<CounterfactualStep>,
    pub factual_root: Option<Hash32>,
    pub counterfactual_root: Option<Hash32>,
    pub examples: Vec<ExampleLoss>,
    /// Parameters (and optimizer state with `--optimizer`) that differ, largest L2 first.
    pub tensors: Vec<TensorDiff>,
    pub input_mismatch: Option<InputMismatch>,
    pub out: Option<String>,
    pub files: Vec<String>,
    /// Each probe set through both models.
    pub probes: Vec<ProbeComparison>,
    pub seconds: f64,
}

impl Report for CounterfactualReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

impl CounterfactualReport {
    /// Set the timings of the replays it rests on to 0 (its own `seconds` is set last).
    pub fn clear_timings(&mut self) {
        for r in [&mut self.factual_start, &mut self.factual_end]
            .into_iter()
            .flatten()
        {
            r.clear_timings();
        }
    }
}

/// What to remove, how far to go, and where to write the result.
#[derive(Debug, Clone)]
pub struct CounterfactualOptions {
    pub without: BTreeSet<u64>,
    /// Also remove every example whose content matches one of these regular expressions, as
    /// `provenance --match` finds them in the loaded run.
    pub without_match: Vec<String>,
    /// Last step (default: the ledger's last).
    pub to: Option<u64>,
    pub include_optimizer: bool,
    pub out: Option<String>,
    pub reconstruct: ReconstructOptions,
    /// Probe sets run through both end states (`evaluate`'s rows), and the most tokens a
    /// language model generates per prompt.
    pub probes: Vec<ProbeInput>,
    pub max_new_tokens: usize,
    /// Keys that sign the export (`--signing-key`, `--model-signing-key`).
    pub keys: run_trust::attest::ExportKeys,
}

/// A probe set: its name (the file it came from, or what made it) and its rows.
#[derive(Debug, Clone)]
pub struct ProbeInput {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ProbeInput {
    /// The probe rows of a file.
    pub fn read(path: &std::path::Path) -> Result<Self, CommandError> {
        Self::read_option(path, "--probe")
    }

    /// [`Self::read`] of the file an option other than `--probe` names (errors name it).
    pub fn read_option(path: &std::path::Path, option: &str) -> Result<Self, CommandError> {
        let name = path.display().to_string();
        let bytes = read_document(path, option)?;
        Ok(Self { name, bytes })
    }
}

/// The same probe set through the factual and the counterfactual model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeComparison {
    pub probe: String,
    pub probe_blake3: Hash32,
    pub factual: ProbeResult,
    pub counterfactual: ProbeResult,
}

/// Run `counterfactual`.
pub fn counterfactual(
    location: &str,
    o: &CounterfactualOptions,
    progress: &indicatif::ProgressBar,
) -> Result<CounterfactualReport, CommandError> {
    let report = CounterfactualReport::new(location, o);
    super::on_run(location, &o.reconstruct.load, report, |ctx, _| {
        counterfactual_in(ctx, o, progress)
    })
}

impl CounterfactualReport {
    /// The report of a counterfactual of the run at `location`, before anything is found.
    fn new(location: &str, o: &CounterfactualOptions) -> Self {
        CounterfactualReport {
            header: Header::pending("counterfactual", location),
            without: o.without.iter().copied().collect(),
            to_step: 0,
            environment: None,
            first_changed_step: None,
            factual_start: None,
            factual_end: None,
            steps: vec![],
            factual_root: None,
            counterfactual_root: None,
            examples: vec![],
            tensors: vec![],
            input_mismatch: None,
            out: None,
            files: vec![],
            probes: vec![],
            seconds: 0.0,
        }
    }
}

/// The examples to remove: those named, and those the patterns of `without_match` find. A
/// search whose verdict does not pass is a usage error: the removed set would not be what the
/// patterns find in the run as committed.
fn removed(ctx: &RunContext, o: &CounterfactualOptions) -> Result<BTreeSet<u64>, CommandError> {
    let mut without = o.without.clone();
    if !o.without_match.is_empty() {
        let found = crate::commands::search::search_in(ctx, &o.without_match)?;
        if !found.header.verdict.passed() {
            let problems: Vec<String> = found
                .header
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.artefact, p.detail))
                .collect();
            return Err(CommandError::Usage(format!(
                "the search for the examples to remove is {}: {}",
                found.header.verdict,
                problems.join("; ")
            )));
        }
        without.extend(found.matches.iter().map(|m| m.example));
    }
    Ok(without)
}

/// [`counterfactual`] of a loaded run.
pub fn counterfactual_in(
    ctx: &RunContext,
    o: &CounterfactualOptions,
    progress: &indicatif::ProgressBar,
) -> Result<CounterfactualReport, CommandError> {
    let started = std::time::Instant::now();
    let mut report = CounterfactualReport::new(&ctx.location, o);
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    let to = o.to.unwrap_or(last);
    report.to_step = to;
    if to > last {
        return Err(CommandError::Usage(format!(
            "--to {to}: the run's ledger ends at step {last}"
        )));
    }
    let without = removed(ctx, o)?;
    report.without = without.iter().copied().collect();
    let examples = ctx.spec.data.examples;
    match (without.first(), without.last()) {
        (None, _) => {
            return Err(CommandError::Usage(
                "no example to remove: name one with --without, --without-file or --without-match"
                    .into(),
            ));
        }
        (_, Some(&id)) if id >= examples => {
            return Err(CommandError::Usage(format!(
                "--without {id}: the dataset has examples 0..{examples}"
            )));
        }
        _ => {}
    }
    let env = environment_of(ctx, &o.reconstruct)?;
    let cross_class = env.cross_class();
    report.environment = Some(env);
    let mut assessment = ctx.assessment();
    // The ledger up to `to` must be whole: its batches are the history being changed.
    if !ctx.problems_before(to).is_empty() {
        report
            .header
            .assess(&assessment, Claim::State { rederived: false });
        return Ok(report);
    }
    let first = ctx
        .records
        .range(..=to)
        .find(|(_, r)| r.example_ids.iter().any(|id| without.contains(id)))
        .map(|(s, _)| *s);
    report.first_changed_step = first;

    // The factual states the counterfactual rests on: the one before the first changed step,
    // and the one after `to`; both must match the record.
    let steps: Vec<u64> = match first {
        Some(f) => vec![f - 1, to],
        None => vec![to],
    };
    let states = reconstruct(ctx, &steps, &o.reconstruct, cross_class, progress)?;
    let rederived = states.iter().all(|r| r.rederived);
    let all_matched = states.iter().all(|r| r.outcome == Verdict::Verified);
    let mut confirmed = Vec::new();
    for r in states {
        let replay = r.replay.clone();
        let root = r.root;
        let state = r.fold_into(&mut assessment);
        confirmed.push((state.zip(root), replay));
    }
    let claim = Claim::State { rederived };
    let (end, end_replay) = confirmed.pop().unwrap_or((None, None));
    report.factual_end = end_replay;
    let start = match confirmed.pop() {
        Some((start, replay)) => {
            report.factual_start = replay;
            start.map(|(s, _)| s)
        }
        None => None,
    };
    let (Some((factual, factual_root)), true) = (end, all_matched) else {
        report.header.assess(&assessment, claim);
        return Ok(report);
    };
    report.factual_root = Some(factual_root);
    if first.is_some() && start.is_none() {
        report.header.assess(&assessment, claim);
        return Ok(report);
    }

    progress.set_position(0);
    progress.set_length(first.map(|f| to + 1 - f).unwrap_or(0));
    let job = CounterfactualJob {
        ctx,
        start: start.as_ref(),
        factual: &factual,
        without: &without,
        to,
        progress,
    };
    let walk = dispatch(o.reconstruct.device, &ctx.spec.model, job)??;
    report.steps = walk.steps;
    report.examples = walk.examples;
    if let Some(m) = walk.input_mismatch {
        assessment.outcome(Verdict::InputMismatch);
        report.input_mismatch = Some(m);
    }
    if let Some(p) = walk.problem {
        assessment.problem(p);
    }
    report.header.assess(&assessment, claim);
    let Some(state) = walk.state else {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    report.counterfactual_root = Some(state.root(&state.tensor_hashes())?);
    let views = |s| compared_views(s, o.include_optimizer);
    report.tensors = diff_views(&views(&state), &views(&factual));
    if report.header.verdict.passed() {
        for p in &o.probes {
            let base = ctx.required_base()?;
            let run = |s: &TrainingState| {
                trainer::probe::run(&ctx.spec, base, s, &p.bytes, &p.name, o.max_new_tokens)
            };
            report.probes.push(ProbeComparison {
                probe: p.name.clone(),
                probe_blake3: snapshot_format::hash::file_hash(&p.bytes),
                factual: run(&factual)?,
                counterfactual: run(&state)?,
            });
        }
    }

    if let Some(out) = &o.out
        && report.header.verdict.passed()
    {
        let store = Store::create(out)?;
        let parent = first.map(|f| f - 1).or(Some(to));
        report.files = export_state(&store, ctx, &state, parent, "counterfactual.json")?;
        report.out = Some(out.clone());
        // The stored record leaves out timings, so that the same command writes the same bytes.
        let mut stored = report.clone();
        stored.clear_timings();
        put_json(&store, "counterfactual.json", &stored)?;
        let state = serde_json::json!({
            "step": to,
            "stateRoot": report.counterfactual_root,
            "verdict": report.header.verdict,
            "derivation": {"kind": "counterfactual", "without": report.without},
        });
        let signed = attest_export(&store, ctx, out, &report.files, state, &o.keys)?;
        report.files.extend(signed);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The tensors compared: the parameters, and the optimizer's state if asked.
fn compared_views(s: &TrainingState, include_optimizer: bool) -> Vec<TensorView<'_>> {
    let mut v = s.views();
    v.retain(|t| include_optimizer || !t.name.starts_with("optimizer."));
    v
}

/// The counterfactual steps and what they led to.
struct Walk {
    steps: Vec<CounterfactualStep>,
    /// The state after `to` (none when the walk stopped early).
    state: Option<TrainingState>,
    examples: Vec<ExampleLoss>,
    input_mismatch: Option<InputMismatch>,
    problem: Option<Problem>,
}

struct CounterfactualJob<'a> {
    ctx: &'a RunContext,
    /// The factual state before the first changed step (none: nothing changes).
    start: Option<&'a TrainingState>,
    factual: &'a TrainingState,
    without: &'a BTreeSet<u64>,
    to: u64,
    progress: &'a indicatif::ProgressBar,
}

impl Job for CounterfactualJob<'_> {
    type Output = Result<Walk, CommandError>;

    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output {
        let ctx = self.ctx;
        let dataset = ctx.loaded_dataset()?;
        let prepared = PreparedData::new(dataset, &ctx.spec);
        let base = ctx.base_weights()?.ok().flatten();
        let session = |state: &TrainingState, what: &str| {
            Session::<B, M>::from_state(
                ctx.spec.clone(),
                config.clone(),
                base,
                state,
                device.clone(),
                what,
            )
        };
        let factual = session(self.factual, "the factual state")?;
        let mut walk = Walk {
            steps: vec![],
            state: None,
            examples: vec![],
            input_mismatch: None,
            problem: None,
        };
        let mut counterfactual = match self.start {
            Some(start) => Some(session(start, "the factual starting state")?),
            None => None,
        };
        if let Some(s) = counterfactual.as_mut() {
            while s.step() < self.to {
                let step = s.step() + 1;
                let (epoch, ids) = s.next_batch();
                let Some(rec) = ctx.records.get(&step) else {
                    walk.problem = Some(Problem::new(
                        Verdict::Missing,
                        ctx.segment_key(step),
                        format!("no ledger record for step {step}"),
                    ));
                    return Ok(walk);
                };
                if (epoch, &ids) != (rec.epoch, &rec.example_ids) {
                    walk.problem = Some(Problem::new(
                        Verdict::Diverged,
                        ctx.segment_key(step),
                        format!(
                            "step {step}: the data order gives epoch {epoch} {ids:?}, the ledger records epoch {} {:?}",
                            rec.epoch, rec.example_ids
                        ),
                    ));
                    return Ok(walk);
                }
                let (removed, kept): (Vec<u64>, Vec<u64>) =
                    ids.iter().partition(|id| self.without.contains(id));
                if let Some(m) = input_mismatch(ctx, step, &kept) {
                    walk.input_mismatch = Some(m);
                    return Ok(walk);
                }
                let loss = if kept.is_empty() {
                    s.skip_step();
                    None
                } else {
                    let parts = prepared.step_batches::<B>(
                        &ids,
                        ctx.spec.run.micro_batches,
                        |id| !self.without.contains(&id),
                        s.device(),
                    );
                    Some(f32::from_bits(s.train_step(&parts).loss_bits))
                };
                walk.steps.push(CounterfactualStep {
                    step,
                    removed,
                    batch_size: kept.len() as u64,
                    loss_recorded: f32::from_bits(rec.loss_bits),
                    loss_counterfactual: loss,
                });
                self.progress.inc(1);
            }
        }
        let after = counterfactual.as_ref().unwrap_or(&factual);
        walk.examples = self
            .without
            .iter()
            .map(|&id| {
                let one = prepared.batch::<B>(&[id], after.device());
                ExampleLoss {
                    example: id,
                    label: dataset.examples[id as usize].label(),
                    uses: ctx
                        .records
                        .range(..=self.to)
                        .filter(|(_, r)| r.example_ids.contains(&id))
                        .count() as u64,
                    loss_factual: factual.evaluate(&one),
                    loss_counterfactual: after.evaluate(&one),
                }
            })
            .collect();
        walk.state = Some(after.capture());
        Ok(walk)
    }
}
