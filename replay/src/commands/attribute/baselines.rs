//! What an investigator without an exact record would rank the examples by: the baselines that
//! `benches/benches/attribution.rs` sets beside `attribute`'s ranking. Each is a score per
//! example of the run's dataset, higher meaning more suspect; none is a verdict.
//!
//! - **TracIn over the stored checkpoints** (TracIn-CP, what tools that read saved checkpoints
//!   compute): Σ_c η_c ⟨∇ℓ_z(θ_c), ∇L_P(θ_c)⟩ over the run's stored checkpoints c ≤ `to`, with
//!   plain gradients (no optimizer scaling), η_c the learning rate of the step after c (of step c
//!   for the last), every example of the dataset at every checkpoint.
//! - **Highest training loss**: each example's loss at the last of those checkpoints.
//! - **Nearest neighbours of the probe in the model's embedding**: the cosine similarity between
//!   an example's mean input embedding (the rows of the state's word-embedding tensor at its
//!   token ids, padding left out; a feature vector as it is) and the mean of the probe rows'.
//!   Absent when the state holds no input embedding (a LoRA run's is the frozen base's).
//!
//! The states come from the checkpoints as `rollback` reads them (`recorded`); the gradients
//! are `attribute`'s, without dropout; the sums are in f64 in a fixed order, so the scores are
//! the same bits on any thread count.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use trainer::backend::dispatch;
use trainer::model::registry::Job;
use trainer::model::{BatchInput, TrainableModel};
use trainer::session::{PreparedData, Session, TrainingState};

use super::{Prepared, dot, probe_rows};
use crate::commands::counterfactual::ProbeInput;
use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, environment_of, reconstruct};
use crate::report::CommandError;

/// Examples whose gradients are taken in one call (their inner products are kept, not them).
const CHUNK: usize = 256;

/// The baselines' scores (module docs), each indexed by example id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// The checkpoints TracIn-CP summed over.
    pub checkpoints: Vec<u64>,
    pub tracin_checkpoints: Vec<f64>,
    pub loss: Vec<f64>,
    pub embedding: Option<Vec<f64>>,
    /// Time spent on TracIn-CP (the losses come with its last checkpoint) and on the embedding.
    pub tracin_seconds: f64,
    pub embedding_seconds: f64,
}

/// The baselines of the run in `ctx` up to step `to`, for the probe `probe` (rows as
/// `attribute --probe` takes them), over the trained tensors `selected` matches (all: none).
pub fn baselines_in(
    ctx: &RunContext,
    probe: &ProbeInput,
    selected: Option<&regex::Regex>,
    to: u64,
    o: &ReconstructOptions,
) -> Result<Baselines, CommandError> {
    let rows = probe_rows(ctx, probe)?;
    let checkpoints: Vec<u64> = ctx
        .checkpoints
        .iter()
        .copied()
        .filter(|&c| c <= to)
        .collect();
    if checkpoints.is_empty() {
        return Err(CommandError::Usage(format!(
            "no stored checkpoint at or before step {to}"
        )));
    }
    let env = environment_of(ctx, o)?;
    let bar = indicatif::ProgressBar::hidden();
    let mut states = Vec::with_capacity(checkpoints.len());
    for r in reconstruct(ctx, &checkpoints, o, env.cross_class(), &bar)? {
        let (step, outcome) = (r.step, r.outcome);
        match r.state.filter(|_| outcome.passed()) {
            Some(state) => states.push((step, state)),
            None => {
                return Err(CommandError::Usage(format!(
                    "checkpoint {step}: {outcome}; no baseline on a run that does not check"
                )));
            }
        }
    }
    let job = BaselineJob {
        ctx,
        probe: &rows,
        selected,
        states: &states,
    };
    let mut b = dispatch(o.device, &ctx.spec.model, job)??;
    b.checkpoints = checkpoints;
    Ok(b)
}

struct BaselineJob<'a> {
    ctx: &'a RunContext,
    probe: &'a trainer::data::Dataset,
    selected: Option<&'a regex::Regex>,
    states: &'a [(u64, TrainingState)],
}

impl Job for BaselineJob<'_> {
    type Output = Result<Baselines, CommandError>;

    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output {
        let ctx = self.ctx;
        let Prepared {
            data: prepared,
            examples: n,
            probe,
            probe_batch,
        } = Prepared::<B>::new(ctx, self.probe, &device)?;
        let wanted = |name: &str| self.selected.is_none_or(|r| r.is_match(name));
        let started = std::time::Instant::now();
        let (mut tracin, mut loss) = (vec![0.0f64; n], vec![0.0f64; n]);
        for (i, (step, state)) in self.states.iter().enumerate() {
            let session = Session::<B, M>::from_state(
                ctx.spec.clone(),
                config.clone(),
                ctx.required_base()?,
                state,
                device.clone(),
                &format!("checkpoint {step}"),
            )?;
            let lr = ctx
                .records
                .get(&(step + 1))
                .or_else(|| ctx.records.get(step))
                .map_or(0.0, |r| f64::from_bits(r.lr_bits));
            let (_, gp) = session
                .map_gradients(1, |_| probe_batch.clone(), wanted, <[f32]>::to_vec)
                .pop()
                .unwrap_or_default();
            let ids: Vec<u64> = (0..n as u64).collect();
            for chunk in ids.chunks(CHUNK) {
                let scored = session.map_gradients(
                    chunk.len(),
                    |k| prepared.batch_cut::<B>(&chunk[k..=k], &device),
                    wanted,
                    |g| dot(g, &gp),
                );
                for (&id, (l, d)) in chunk.iter().zip(scored) {
                    tracin[id as usize] += lr * d;
                    if i + 1 == self.states.len() {
                        loss[id as usize] = f64::from(l);
                    }
                }
            }
        }
        let tracin_seconds = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let embedding = match self.states.last() {
            Some((_, state)) => {
                let sizes = (self.probe.examples.len() as u64, n as u64);
                embedding_similarity::<B>(state, (&prepared, &probe), sizes, &device)
            }
            None => None,
        };
        Ok(Baselines {
            checkpoints: vec![],
            tracin_checkpoints: tracin,
            loss,
            embedding,
            tracin_seconds,
            embedding_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Each example's cosine similarity with the probe's mean input embedding in `state` (module
/// docs); none when its inputs are tokens and the state holds no word-embedding tensor.
fn embedding_similarity<B: AutodiffBackend>(
    state: &TrainingState,
    (prepared, probe): (&PreparedData, &PreparedData),
    (probe_rows, n): (u64, u64),
    device: &B::Device,
) -> Option<Vec<f64>> {
    let table = state.tensors.iter().find(|t| {
        t.shape.len() == 2
            && (t.name.contains("word_embeddings") || t.name.contains("embed_tokens"))
    });
    let table = table.map(|t| {
        (
            t.data.to_vec::<f32>().unwrap_or_default(),
            t.shape[1] as usize,
        )
    });
    let embed = |data: &PreparedData, id: u64| -> Option<Vec<f64>> {
        let (tokens, mask) = match data.batch_cut::<B>(&[id], device).input {
            BatchInput::Features(x) => {
                let x: Vec<f32> = x.into_data().to_vec().ok()?;
                return Some(x.into_iter().map(f64::from).collect());
            }
            BatchInput::Tokens { ids, mask } => (ids, mask),
            BatchInput::Lm { ids, attention, .. } => (ids, attention),
        };
        let (table, width) = table.as_ref()?;
        let tokens: Vec<i64> = tokens.into_data().convert::<i64>().to_vec().ok()?;
        let mask: Vec<f32> = mask.into_data().to_vec().ok()?;
        let mut sum = vec![0.0f64; *width];
        let mut count = 0.0;
        for (&t, &m) in tokens.iter().zip(&mask) {
            let row = table.get(t as usize * width..(t as usize + 1) * width)?;
            if m > 0.0 {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
                count += 1.0;
            }
        }
        Some(sum.into_iter().map(|s| s / f64::max(count, 1.0)).collect())
    };
    let mut centre: Vec<f64> = vec![];
    for id in 0..probe_rows {
        let e = embed(probe, id)?;
        if centre.is_empty() {
            centre = vec![0.0; e.len()];
        }
        for (c, v) in centre.iter_mut().zip(e) {
            *c += v / probe_rows as f64;
        }
    }
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let centre_norm = norm(&centre);
    (0..n)
        .map(|id| {
            let e = embed(prepared, id)?;
            let d: f64 = e.iter().zip(&centre).map(|(a, b)| a * b).sum();
            Some(d / (norm(&e) * centre_norm).max(f64::MIN_POSITIVE))
        })
        .collect()
}
