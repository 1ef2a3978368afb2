//! `replay compare`: for two runs that should be identical, the first step where they differ,
//! found by bisection over the hash chain, and the tensors that differ at that step.
//!
//! A segment head (the hash of its last record) commits to every record before it, so two runs
//! agree up to segment `k` exactly when their heads of segment `k` are equal: the first
//! differing segment is found by binary search, reading `O(log n)` segments of each run.

use serde::{Deserialize, Serialize};
use snapshot_format::ledger::{Segment, StepRecord};
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::{Completion, RunManifest};
use snapshot_format::{Store, layout, snapshot};
use trainer::backend::DeviceSpec;

use crate::context::{self, LoadOptions};
use crate::report::{CommandError, Problem, Verdict, problem_of};
use crate::rollback::{ReconstructOptions, reconstruct};
use crate::state::{self, TensorDiff};
use crate::verify;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub a: String,
    pub b: String,
}

/// Where and how the runs first differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstDifference {
    /// First step whose record differs (0: the runs start from different specs or states).
    pub step: u64,
    pub fields: Vec<FieldDiff>,
    /// The step at which the tensors were compared, and how the states were obtained.
    pub tensors_at_step: Option<u64>,
    pub tensors_from: String,
    pub tensors: Vec<TensorDiff>,
}

/// The JSON document of `replay compare --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub command: String,
    pub run_a: String,
    pub run_b: String,
    /// `ok` when identical, `diverged` when they differ, or an integrity verdict.
    pub verdict: Verdict,
    pub identical: bool,
    /// Spec fields that differ: (JSON path, value in a, value in b).
    pub spec_differences: Vec<(String, String, String)>,
    pub first_difference: Option<FirstDifference>,
    /// Ledger segments read from each run by the bisection, and how many each run has.
    pub segments_read: u64,
    pub segments_total: u64,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

struct Side {
    store: Store,
    manifest: RunManifest,
    completion: Option<Completion>,
    segments: u64,
}

fn open_side(location: &str) -> Result<Result<Side, Problem>, CommandError> {
    let inner = || -> Result<Side, snapshot_format::Error> {
        let store = Store::open(location)?;
        let manifest = RunManifest::from_json(&store.get(layout::MANIFEST)?, layout::MANIFEST)?;
        let completion = match store.get_opt(layout::COMPLETE)? {
            Some(b) => Some(Completion::from_json(&b, layout::COMPLETE)?),
            None => None,
        };
        let segments = store
            .list(layout::LEDGER)?
            .iter()
            .filter_map(|(k, _)| layout::parse_segment(k))
            .max()
            .unwrap_or(0);
        Ok(Side {
            store,
            manifest,
            completion,
            segments,
        })
    };
    match inner() {
        Ok(s) => Ok(Ok(s)),
        Err(e) => Ok(Err(problem_of(e)?)),
    }
}

fn read_segment(side: &Side, k: u64) -> Result<Result<Segment, Problem>, CommandError> {
    let key = layout::segment(k);
    let bytes = match side.store.get(&key) {
        Ok(b) => b,
        Err(e) => return Ok(Err(problem_of(e)?)),
    };
    match Segment::decode(&bytes, &key) {
        Ok(s) => Ok(Ok(s)),
        Err(e) => Ok(Err(problem_of(e)?)),
    }
}

/// Leaves of a JSON value: (path, value).
fn leaves(v: &serde_json::Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                leaves(
                    x,
                    if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    },
                    out,
                );
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}[{i}]"), out);
            }
        }
        other => out.push((path, other.to_string())),
    }
}

/// The spec fields in which two manifests differ.
pub fn spec_differences(a: &RunManifest, b: &RunManifest) -> Vec<(String, String, String)> {
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    leaves(&a.spec, String::new(), &mut la);
    leaves(&b.spec, String::new(), &mut lb);
    let mb: std::collections::BTreeMap<_, _> = lb.into_iter().collect();
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (p, va) in &la {
        seen.insert(p.clone());
        let vb = mb.get(p).cloned().unwrap_or_else(|| "absent".into());
        if *va != vb {
            out.push((p.clone(), va.clone(), vb));
        }
    }
    for (p, vb) in mb {
        if !seen.contains(&p) {
            out.push((p, "absent".into(), vb));
        }
    }
    out
}

fn field_diffs(a: &StepRecord, b: &StepRecord) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    let mut cmp = |field: &str, x: String, y: String| {
        if x != y {
            out.push(FieldDiff {
                field: field.into(),
                a: x,
                b: y,
            });
        }
    };
    cmp("epoch", a.epoch.to_string(), b.epoch.to_string());
    cmp(
        "example_ids",
        format!("{:?}", a.example_ids),
        format!("{:?}", b.example_ids),
    );
    cmp("batch_hash", a.batch_hash.to_hex(), b.batch_hash.to_hex());
    cmp("lr", a.lr().to_string(), b.lr().to_string());
    cmp(
        "loss",
        format!("{} ({:#010x})", a.loss(), a.loss_bits),
        format!("{} ({:#010x})", b.loss(), b.loss_bits),
    );
    cmp(
        "grad_norm",
        format!("{} ({:#010x})", a.grad_norm(), a.grad_norm_bits),
        format!("{} ({:#010x})", b.grad_norm(), b.grad_norm_bits),
    );
    let root = |r: &StepRecord| {
        r.state_root
            .map(|h| h.to_hex())
            .unwrap_or_else(|| "none".into())
    };
    cmp("state_root", root(a), root(b));
    cmp("prev_hash", a.prev_hash.to_hex(), b.prev_hash.to_hex());
    out
}

/// Compare two runs.
pub fn compare(
    a: &str,
    b: &str,
    device: DeviceSpec,
    progress: &indicatif::ProgressBar,
) -> Result<CompareReport, CommandError> {
    let started = std::time::Instant::now();
    let mut report = CompareReport {
        command: "compare".into(),
        run_a: a.into(),
        run_b: b.into(),
        verdict: Verdict::Ok,
        identical: false,
        spec_differences: vec![],
        first_difference: None,
        segments_read: 0,
        segments_total: 0,
        problems: vec![],
        seconds: 0.0,
    };
    let (sa, sb) = match (open_side(a)?, open_side(b)?) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => {
            for p in [x.err(), y.err()].into_iter().flatten() {
                report.verdict = report.verdict.worst(p.kind);
                report.problems.push(p);
            }
            return Ok(report);
        }
    };
    report.spec_differences = spec_differences(&sa.manifest, &sb.manifest);
    report.segments_total = sa.segments.max(sb.segments);
    if sa.manifest.genesis != sb.manifest.genesis {
        report.verdict = Verdict::Diverged;
        report.first_difference = Some(initial_difference(&sa, &sb)?);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if let (Some(ca), Some(cb)) = (&sa.completion, &sb.completion)
        && ca.ledger_head == cb.ledger_head
        && ca.final_state_root == cb.final_state_root
    {
        report.identical = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Bisection: the first segment whose heads differ (or that one run lacks).
    let n = sa.segments.max(sb.segments);
    let (mut lo, mut hi) = (1u64, n + 1);
    let mut cache: std::collections::HashMap<u64, (Option<Segment>, Option<Segment>)> =
        Default::default();
    while lo < hi {
        let mid = (lo + hi) / 2;
        let pair = load_pair(&sa, &sb, mid, &mut report)?;
        let differs = match (&pair.0, &pair.1) {
            (Some(x), Some(y)) => x.head() != y.head(),
            _ => true,
        };
        cache.insert(mid, pair);
        if differs {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if lo > n {
        report.identical = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let k = lo;
    let (seg_a, seg_b) = match cache.remove(&k) {
        Some(p) => p,
        None => load_pair(&sa, &sb, k, &mut report)?,
    };
    report.verdict = report.verdict.worst(Verdict::Diverged);
    let first = match (&seg_a, &seg_b) {
        (Some(x), Some(y)) => {
            let pos = x
                .records
                .iter()
                .zip(&y.records)
                .position(|(r, s)| r.hash() != s.hash())
                .unwrap_or(x.records.len().min(y.records.len()));
            match (x.records.get(pos), y.records.get(pos)) {
                (Some(r), Some(s)) => (r.step, field_diffs(r, s)),
                (r, s) => {
                    let step = r.or(s).map(|x| x.step).unwrap_or(0);
                    (
                        step,
                        vec![FieldDiff {
                            field: "present".into(),
                            a: r.is_some().to_string(),
                            b: s.is_some().to_string(),
                        }],
                    )
                }
            }
        }
        (x, y) => {
            let step = x
                .as_ref()
                .or(y.as_ref())
                .map(|s| s.first_step())
                .unwrap_or(0);
            (
                step,
                vec![FieldDiff {
                    field: format!("segment {k}"),
                    a: x.is_some().to_string(),
                    b: y.is_some().to_string(),
                }],
            )
        }
    };
    let (step, fields) = first;
    let (tensors_at_step, tensors_from, tensors) =
        tensors_at(a, b, &sa, k, step, device, progress)?;
    report.first_difference = Some(FirstDifference {
        step,
        fields,
        tensors_at_step,
        tensors_from,
        tensors,
    });
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn load_pair(
    sa: &Side,
    sb: &Side,
    k: u64,
    report: &mut CompareReport,
) -> Result<(Option<Segment>, Option<Segment>), CommandError> {
    let mut one = |side: &Side| -> Result<Option<Segment>, CommandError> {
        if k > side.segments {
            return Ok(None);
        }
        report.segments_read += 1;
        Ok(match read_segment(side, k)? {
            Ok(s) => Some(s),
            Err(p) => {
                report.verdict = report.verdict.worst(p.kind);
                report.problems.push(p);
                None
            }
        })
    };
    Ok((one(sa)?, one(sb)?))
}

fn initial_difference(sa: &Side, sb: &Side) -> Result<FirstDifference, CommandError> {
    let mut fields = Vec::new();
    for (f, x, y) in [
        ("spec_hash", sa.manifest.spec_hash, sb.manifest.spec_hash),
        (
            "initial_state_root",
            sa.manifest.initial_state_root,
            sb.manifest.initial_state_root,
        ),
    ] {
        if x != y {
            fields.push(FieldDiff {
                field: f.into(),
                a: x.to_hex(),
                b: y.to_hex(),
            });
        }
    }
    let key = layout::checkpoint(0);
    let read = |s: &Side| -> Option<snapshot::Snapshot> {
        s.store
            .get(&key)
            .ok()
            .and_then(|b| snapshot::decode(&b, &key, &ReadLimits::default()).ok())
    };
    let tensors = match (read(sa), read(sb)) {
        (Some(x), Some(y)) => state::diff_states(&verify::state_of(&x), &y),
        _ => vec![],
    };
    Ok(FirstDifference {
        step: 0,
        fields,
        tensors_at_step: Some(0),
        tensors_from: "stored checkpoints".into(),
        tensors,
    })
}

/// The tensors that differ after `step`: states reconstructed by verified replay when this
/// machine is in both runs' class, otherwise the next checkpoint both runs have.
fn tensors_at(
    a: &str,
    b: &str,
    sa: &Side,
    k: u64,
    step: u64,
    device: DeviceSpec,
    progress: &indicatif::ProgressBar,
) -> Result<(Option<u64>, String, Vec<TensorDiff>), CommandError> {
    let here = device.fingerprint()?.class();
    let o = ReconstructOptions {
        device,
        allow_environment_mismatch: false,
        load: LoadOptions {
            dataset: None,
            segments: Some((k.saturating_sub(1).max(1), k)),
        },
    };
    let ctx_of = |loc: &str| context::load(loc, &o.load).map(Result::ok);
    let (ca, cb) = (ctx_of(a)?, ctx_of(b)?);
    if let (Some(ca), Some(cb)) = (&ca, &cb)
        && ca.manifest.environment.class() == here
        && cb.manifest.environment.class() == here
    {
        let ra = reconstruct(ca, step, &o, false, progress)?;
        let rb = reconstruct(cb, step, &o, false, progress)?;
        if let (Some(x), Some(y)) = (ra.state, rb.state) {
            return Ok((
                Some(step),
                "reconstructed by verified replay".into(),
                state::diff_views(&x.views(), &y.views()),
            ));
        }
    }
    // Fall back to the first checkpoint at or after the step that both runs store.
    let interval = sa.manifest.recording.checkpoint_interval;
    let c = step.div_ceil(interval) * interval;
    let key = layout::checkpoint(c);
    let read = |loc: &str| -> Option<snapshot::Snapshot> {
        Store::open(loc)
            .ok()?
            .get(&key)
            .ok()
            .and_then(|bytes| snapshot::decode(&bytes, &key, &ReadLimits::default()).ok())
    };
    Ok(match (read(a), read(b)) {
        (Some(x), Some(y)) => (
            Some(c),
            "stored checkpoints (replay was not possible here)".into(),
            state::diff_states(&verify::state_of(&x), &y),
        ),
        _ => (None, "no state available".into(), vec![]),
    })
}
