//! `replay compare`: for two runs that should be identical, the first step where they differ,
//! and the tensors that differ at that step.
//!
//! Both runs are loaded and checked as every command loads a run (the hash chain from the
//! genesis, the completion record against the ledger, signatures under the trust options): two
//! runs are called identical from their own intact ledgers, never from what their completion
//! records claim. A record's hash commits to every record before it, so the first step whose
//! records differ is where the histories part.

use serde::{Deserialize, Serialize};
use snapshot_format::ledger::StepRecord;
use snapshot_format::manifest::RunManifest;
use trainer::backend::DeviceSpec;

use crate::context::{self, LoadOptions, RunContext};
use crate::engine::reconstruct::{ReconstructOptions, reconstruct};
use crate::engine::reexecute;
use crate::report::{Assessment, Claim, CommandError, Header, Problem, Report, Verdict};
use crate::state::{self, TensorDiff};

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
    #[serde(flatten)]
    pub header: Header,
    /// The other run (the header's `run` is the first).
    pub run_b: String,
    /// The two histories are the same, record for record, as far as both go and to the same
    /// end (established from each run's own intact, chained ledger, never from its
    /// completion record alone).
    pub identical: bool,
    /// Spec fields that differ: (JSON path, value in a, value in b).
    pub spec_differences: Vec<(String, String, String)>,
    pub first_difference: Option<FirstDifference>,
    /// Ledger records compared.
    pub steps_compared: u64,
    pub seconds: f64,
}

impl Report for CompareReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
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

/// Options of `compare`.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub device: DeviceSpec,
    /// How both runs are loaded (trust options apply to both).
    pub load: LoadOptions,
}

/// Compare two runs.
pub fn compare(
    a: &str,
    b: &str,
    o: &CompareOptions,
    progress: &indicatif::ProgressBar,
) -> Result<CompareReport, CommandError> {
    let started = std::time::Instant::now();
    let mut report = CompareReport {
        header: Header::pending("compare", a),
        run_b: b.into(),
        identical: false,
        spec_differences: vec![],
        first_difference: None,
        steps_compared: 0,
        seconds: 0.0,
    };
    let mut assessment = Assessment::default();
    let prefixed = |location: &str, p: &Problem| Problem {
        artefact: format!("{location}/{}", p.artefact),
        ..p.clone()
    };
    let (ca, cb) = (context::load(a, &o.load)?, context::load(b, &o.load)?);
    for (location, c) in [(a, &ca), (b, &cb)] {
        match c {
            Ok(ctx) => ctx
                .problems
                .iter()
                .for_each(|p| assessment.problem(prefixed(location, p))),
            Err(p) => assessment.problem(prefixed(location, p)),
        }
    }
    let (Ok(ca), Ok(cb)) = (ca, cb) else {
        report.header.assess(&assessment, Claim::Integrity);
        return Ok(report);
    };
    report.spec_differences = spec_differences(&ca.manifest, &cb.manifest);
    if ca.manifest.genesis != cb.manifest.genesis {
        assessment.outcome(Verdict::Diverged);
        report.first_difference = Some(initial_difference(&ca, &cb)?);
    } else {
        // A record's hash commits to every record before it, so the first step whose records
        // differ (or that one run lacks) is where the histories part.
        let steps: std::collections::BTreeSet<u64> = ca
            .records
            .keys()
            .chain(cb.records.keys())
            .copied()
            .collect();
        let first = steps.iter().copied().find(|s| {
            ca.records.get(s).map(StepRecord::hash) != cb.records.get(s).map(StepRecord::hash)
        });
        report.steps_compared = steps.len() as u64;
        match first {
            None => report.identical = true,
            Some(step) => {
                assessment.outcome(Verdict::Diverged);
                let fields = match (ca.records.get(&step), cb.records.get(&step)) {
                    (Some(r), Some(s)) => field_diffs(r, s),
                    (r, s) => vec![FieldDiff {
                        field: "present".into(),
                        a: r.is_some().to_string(),
                        b: s.is_some().to_string(),
                    }],
                };
                let (tensors_at_step, tensors_from, tensors) =
                    tensors_at(&ca, &cb, step, o, progress)?;
                report.first_difference = Some(FirstDifference {
                    step,
                    fields,
                    tensors_at_step,
                    tensors_from,
                    tensors,
                });
            }
        }
    }
    report.header.assess(&assessment, Claim::Integrity);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn initial_difference(ca: &RunContext, cb: &RunContext) -> Result<FirstDifference, CommandError> {
    let mut fields = Vec::new();
    for (f, x, y) in [
        ("spec_hash", ca.manifest.spec_hash, cb.manifest.spec_hash),
        (
            "initial_state_root",
            ca.manifest.initial_state_root,
            cb.manifest.initial_state_root,
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
    let tensors = match (state::read_checked(ca, 0)?, state::read_checked(cb, 0)?) {
        (Ok(x), Ok(y)) => state::diff_states(&reexecute::state_of(&x), &y),
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

/// The tensors that differ after `step`: states reconstructed by replay (as `rollback` does)
/// when this machine is in both runs' class, otherwise the next checkpoint both runs store.
fn tensors_at(
    ca: &RunContext,
    cb: &RunContext,
    step: u64,
    o: &CompareOptions,
    progress: &indicatif::ProgressBar,
) -> Result<(Option<u64>, String, Vec<TensorDiff>), CommandError> {
    let here = o.device.fingerprint()?.class();
    let r = ReconstructOptions {
        device: o.device,
        from_genesis: false,
        load: o.load.clone(),
    };
    if ca.manifest.environment.class() == here && cb.manifest.environment.class() == here {
        let ra = reconstruct(ca, &[step], &r, false, progress)?.pop();
        let rb = reconstruct(cb, &[step], &r, false, progress)?.pop();
        if let (Some(x), Some(y)) = (
            ra.and_then(|x| x.state.filter(|_| x.outcome.passed())),
            rb.and_then(|x| x.state.filter(|_| x.outcome.passed())),
        ) {
            return Ok((
                Some(step),
                "reconstructed by replay, every step matching its run's ledger".into(),
                state::diff_views(&x.views(), &y.views()),
            ));
        }
    }
    // Fall back to the first checkpoint at or after the step that both runs store.
    let c = ca
        .checkpoints
        .iter()
        .copied()
        .find(|c| *c >= step && cb.checkpoints.contains(c));
    let Some(c) = c else {
        return Ok((None, "no state available".into(), vec![]));
    };
    Ok(
        match (state::read_checked(ca, c)?, state::read_checked(cb, c)?) {
            (Ok(x), Ok(y)) => (
                Some(c),
                "stored checkpoints (replay was not possible here)".into(),
                state::diff_states(&reexecute::state_of(&x), &y),
            ),
            _ => (None, "no state available".into(), vec![]),
        },
    )
}
