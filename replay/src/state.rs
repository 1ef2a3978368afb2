//! Stored states: checkpoints read and checked against the run's commitments, and the
//! per-tensor difference between two states.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use snapshot_format::snapshot::{self, Snapshot, TensorView};
use snapshot_format::{DType, layout};
use trainer::session::TrainingState;

use crate::context::RunContext;
use crate::report::{CommandError, Problem, Verdict, problem_of};

/// Read checkpoint `step`, decode it (every tensor hash verified) and check it against the run:
/// its step, run id and seed, and its state root against the ledger (or the manifest's initial
/// root). Integrity findings come back as problems.
pub fn read_checked(
    ctx: &RunContext,
    step: u64,
) -> Result<Result<Arc<Snapshot>, Vec<Problem>>, CommandError> {
    let key = layout::checkpoint(step);
    let snap = match ctx.states.read(step) {
        Ok(s) => s,
        Err(e) => return Ok(Err(vec![problem_of(e)?])),
    };
    let problems = commitment_problems(ctx, step, &key, &snap.header);
    Ok(if problems.is_empty() {
        Ok(snap)
    } else {
        Err(problems)
    })
}

/// How a decoded checkpoint disagrees with what the run commits to.
pub fn commitment_problems(
    ctx: &RunContext,
    step: u64,
    key: &str,
    h: &snapshot::Header,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |detail: String| problems.push(Problem::new(Verdict::Tampered, key, detail));
    if h.state.step != step {
        bad(format!(
            "holds the state after step {}, not {step}",
            h.state.step
        ));
    }
    if h.provenance.run_id != ctx.manifest.run_id {
        bad(format!(
            "belongs to run {:?}, not {:?}",
            h.provenance.run_id, ctx.manifest.run_id
        ));
    }
    let order = trainer::data::DataOrder::new(
        ctx.spec.run.seed,
        ctx.spec.data.examples,
        ctx.spec.run.batch_size,
    );
    let implied = order.cursor_after(h.state.step);
    if h.state.data_cursor != implied {
        bad(format!(
            "data cursor (epoch {}, position {}) is not the one {} steps lead to (epoch {}, position {})",
            h.state.data_cursor.epoch,
            h.state.data_cursor.position,
            h.state.step,
            implied.epoch,
            implied.position
        ));
    }
    if h.state.rng.master_seed != ctx.spec.run.seed {
        bad(format!(
            "seed {} differs from the spec's {}",
            h.state.rng.master_seed, ctx.spec.run.seed
        ));
    }
    match ctx.committed_root(step) {
        Some(root) if root != h.state_root => bad(format!(
            "state root {} differs from the one the run commits to for step {step} ({root})",
            h.state_root
        )),
        Some(_) => {}
        None if ctx.records.contains_key(&step) => bad(format!(
            "the ledger record of step {step} carries no state root, yet a checkpoint exists"
        )),
        // The record itself is missing: reported as a ledger problem.
        None => {}
    }
    problems
}

/// How one tensor differs between two states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorDiff {
    pub name: String,
    pub elements: u64,
    /// Elements whose bits differ.
    pub differing: u64,
    /// Largest absolute difference (infinite where a NaN or infinity differs).
    pub max_abs_diff: f64,
    /// L2 norm of the difference.
    pub l2: f64,
    /// `present in both`, `only in replay`, `only in stored`, `shape differs`.
    pub status: String,
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Difference of two `f32` tensors of equal length.
pub fn diff_values(name: &str, a: &[u8], b: &[u8]) -> TensorDiff {
    let mut differing = 0u64;
    let mut max = 0f64;
    let mut sq = 0f64;
    for (x, y) in f32s(a).zip(f32s(b)) {
        if x.to_bits() != y.to_bits() {
            differing += 1;
            let d = (f64::from(x) - f64::from(y)).abs();
            let d = if d.is_finite() { d } else { f64::INFINITY };
            max = max.max(d);
            sq += d * d;
        }
    }
    TensorDiff {
        name: name.to_string(),
        elements: (a.len() / 4) as u64,
        differing,
        max_abs_diff: max,
        l2: sq.sqrt(),
        status: "present in both".into(),
    }
}

/// Tensors that differ between two states (`a` replayed or reconstructed, `b` stored or another
/// run's), largest difference first. Tensors present on one side only are listed too.
pub fn diff_views(a: &[TensorView<'_>], b: &[TensorView<'_>]) -> Vec<TensorDiff> {
    fn find<'v>(set: &[TensorView<'v>], name: &str) -> Option<TensorView<'v>> {
        set.iter().find(|t| t.name == name).copied()
    }
    let mut out = Vec::new();
    for t in a {
        match find(b, t.name) {
            None => out.push(missing(t.name, "only in the first")),
            Some(u) if u.dtype != DType::F32 || t.dtype != DType::F32 || u.shape != t.shape => {
                out.push(missing(t.name, "shape differs"))
            }
            Some(u) => {
                let d = diff_values(t.name, t.data, u.data);
                if d.differing > 0 {
                    out.push(d);
                }
            }
        }
    }
    for u in b {
        if find(a, u.name).is_none() {
            out.push(missing(u.name, "only in the second"));
        }
    }
    sort_largest_first(&mut out);
    out
}

/// [`diff_views`] of a replayed state against a stored snapshot.
pub fn diff_states(replayed: &TrainingState, stored: &Snapshot) -> Vec<TensorDiff> {
    diff_views(&replayed.views(), &stored.views())
}

fn missing(name: &str, status: &str) -> TensorDiff {
    TensorDiff {
        name: name.to_string(),
        elements: 0,
        differing: 0,
        max_abs_diff: f64::INFINITY,
        l2: f64::INFINITY,
        status: status.into(),
    }
}

/// Sort by L2, then max difference, largest first; names break ties.
pub fn sort_largest_first(diffs: &mut [TensorDiff]) {
    diffs.sort_by(|a, b| {
        b.l2.total_cmp(&a.l2)
            .then(b.max_abs_diff.total_cmp(&a.max_abs_diff))
            .then(a.name.cmp(&b.name))
    });
}
