//! Splitting `verify --all` across machines, and collecting the shards' results.
//!
//! Shard `i` of `N` verifies the segments whose index `k` satisfies `(k − 1) mod N = i`. Each
//! shard writes its report write-once to `verifications/<id>/shard-<i>-of-<N>.json` in the
//! results store (by default the run's own); `replay collect` requires all `N`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use snapshot_format::{Store, layout};

use crate::commands::VerifyReport;
use crate::report::{CommandError, Problem, Verdict};

/// Prefix of verification results in a store.
pub const RESULTS_PREFIX: &str = "verifications/";

/// One shard of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl FromStr for Shard {
    type Err = CommandError;
    fn from_str(s: &str) -> Result<Self, CommandError> {
        let bad = || CommandError::Usage(format!("--shard {s:?}: expected i/N with 0 <= i < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether segment `k` (1-based) belongs to this shard.
    pub fn owns(&self, k: u64) -> bool {
        (k - 1) % self.count == self.index
    }

    /// The shard index given by a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`) or a Slurm
    /// array task (`SLURM_ARRAY_TASK_ID`), if any.
    pub fn index_from_env() -> Option<u64> {
        ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"]
            .iter()
            .find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse().ok()))
    }

    /// Key of this shard's result for verification `id`.
    pub fn result_key(&self, id: &str) -> String {
        format!(
            "{RESULTS_PREFIX}{id}/shard-{}-of-{}.json",
            self.index, self.count
        )
    }
}

/// The default verification id: one per run and shard count, so that every shard of a job
/// agrees on it without talking to the others.
pub fn default_id(genesis: &snapshot_format::Hash32, count: u64) -> String {
    format!("all-{}-{count}", genesis.short())
}

/// Refuse a shard whose result for verification `id` is already recorded: results are
/// write-once, so verifying it again needs a new `--id`.
pub fn ensure_unrecorded(results: &Store, shard: &Shard, id: &str) -> Result<(), CommandError> {
    let key = shard.result_key(id);
    match results.get_opt(&key)? {
        None => Ok(()),
        Some(bytes) => {
            let verdict = serde_json::from_slice::<VerifyReport>(&bytes)
                .map(|r| format!("verdict {}", r.verdict))
                .unwrap_or_else(|_| "unreadable".into());
            Err(CommandError::Usage(format!(
                "{}: shard {}/{} of verification {id:?} is already recorded at {key:?} ({verdict}); \
                 results are write-once: run `replay collect`, or pass a new --id to verify again",
                results.location(),
                shard.index,
                shard.count,
            )))
        }
    }
}

/// Write a shard's report once (a concurrent writer of the same shard loses with an error).
pub fn write_result(
    results: &Store,
    shard: &Shard,
    id: &str,
    report: &VerifyReport,
) -> Result<String, CommandError> {
    let key = shard.result_key(id);
    let mut bytes =
        serde_json::to_vec_pretty(report).map_err(|e| CommandError::Usage(e.to_string()))?;
    bytes.push(b'\n');
    results.put_new(&key, bytes)?;
    Ok(key)
}

/// The JSON document of `replay collect --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    pub id: String,
    pub shards: u64,
    pub shards_present: Vec<u64>,
    pub problems: Vec<Problem>,
    /// Segments verified by some shard, and their verdicts.
    pub segments: Vec<(u64, Verdict)>,
    pub steps_replayed: u64,
}

/// Merge the `count` shard results of verification `id` of the run at `location`.
pub fn collect(
    location: &str,
    results: &Store,
    id: &str,
    count: u64,
) -> Result<CollectReport, CommandError> {
    let run = Store::open(location)?;
    let manifest = snapshot_format::manifest::RunManifest::from_json(
        &run.get(layout::MANIFEST)?,
        layout::MANIFEST,
    )?;
    let mut problems = Vec::new();
    let mut present = Vec::new();
    let mut segments: Vec<(u64, Verdict)> = Vec::new();
    let mut verdict = Verdict::Verified;
    let mut steps = 0;
    for index in 0..count {
        let shard = Shard { index, count };
        let key = shard.result_key(id);
        let Some(bytes) = results.get_opt(&key)? else {
            problems.push(Problem::new(
                Verdict::Missing,
                key,
                format!("shard {index} of {count} has not reported"),
            ));
            verdict = verdict.worst(Verdict::Missing);
            continue;
        };
        let report: VerifyReport = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem::new(Verdict::Corrupt, key, e.to_string()));
                verdict = verdict.worst(Verdict::Corrupt);
                continue;
            }
        };
        if report.genesis != manifest.genesis || report.shard != Some(shard) {
            problems.push(Problem::new(
                Verdict::Tampered,
                key,
                "the result belongs to another run or shard".to_string(),
            ));
            verdict = verdict.worst(Verdict::Tampered);
            continue;
        }
        present.push(index);
        verdict = verdict.worst(report.verdict);
        steps += report.steps_replayed;
        segments.extend(report.ranges.iter().map(|r| (r.segment, r.verdict)));
    }
    segments.sort_by_key(|(k, _)| *k);
    // Every segment of a completed run must have been verified by some shard.
    if let Some(bytes) = run.get_opt(layout::COMPLETE)? {
        let completion =
            snapshot_format::manifest::Completion::from_json(&bytes, layout::COMPLETE)?;
        if present.len() as u64 == count {
            for k in 1..=completion.segments {
                if !segments.iter().any(|(s, _)| *s == k) {
                    problems.push(Problem::new(
                        Verdict::Missing,
                        layout::segment(k),
                        "no shard verified this segment".to_string(),
                    ));
                    verdict = verdict.worst(Verdict::Missing);
                }
            }
        }
    }
    Ok(CollectReport {
        command: "collect".into(),
        run: location.into(),
        verdict,
        id: id.into(),
        shards: count,
        shards_present: present,
        problems,
        segments,
        steps_replayed: steps,
    })
}
