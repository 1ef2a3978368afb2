//! Splitting `verify --all` across machines, and collecting the shards' results.
//!
//! Shard `i` of `N` verifies the segments whose index `k` satisfies `(k − 1) mod N = i`. Shard
//! results belong to the verifier, not to the run: each shard writes its report write-once to
//! `verifications/<id>/shard-<i>-of-<N>.json` in a results store the verifier names (never the
//! run's own store, which the run's owner controls), under a verification id the verifier
//! chooses (a random one: nobody can prepare results for it in advance), and signs it with the
//! verifier's key. `replay collect` accepts only reports signed by a key it is told to trust,
//! of this run, shard and id, and requires that together they cover every segment.

use std::str::FromStr;

use ed25519_dalek::SigningKey;
use run_store::Store;
use run_trust::signature::{self, Statement, kind};
use serde::{Deserialize, Serialize};
use snapshot_format::hash::file_hash;

use crate::context::RunContext;
use crate::report::CommandError;

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
    /// Whether segment `k` (1-based) belongs to this shard; step 0 alone (`k = 0`, a run
    /// without segments) belongs to shard 0.
    pub fn owns(&self, k: u64) -> bool {
        k.saturating_sub(1) % self.count == self.index
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

/// Key of the verifier's signature of the report at `result_key`.
pub fn signature_key(result_key: &str) -> String {
    format!("{result_key}.sig")
}

/// One shard of one verification: what a shard's report says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardedRun {
    pub shard: Shard,
    /// The verification id (chosen by the verifier, shared by all its shards).
    pub id: String,
}

impl ShardedRun {
    /// Store key (in the results store) of this shard's report.
    pub fn result_key(&self) -> String {
        self.shard.result_key(&self.id)
    }
}

/// A verification id: 8 to 64 characters of `[A-Za-z0-9_-]`.
pub(crate) fn check_id(id: &str) -> Result<(), CommandError> {
    let ok = (8..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CommandError::Usage(format!(
            "--id {id:?}: expected 8 to 64 letters, digits, '-' or '_' (a random id, e.g. \
             `openssl rand -hex 16`, shared by all shards)"
        )))
    }
}

/// Where a shard records its result, and the key that signs it.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    pub shard: Shard,
    pub id: String,
    /// The results store (`--results`).
    pub results: String,
    /// The verifier's key (`--signing-key`).
    pub key: SigningKey,
}

/// The statement a verifier signs for a shard's report.
pub(crate) fn statement(
    run_id: &str,
    genesis: snapshot_format::Hash32,
    shard: &Shard,
    report: &[u8],
) -> Statement {
    Statement {
        kind: kind::SHARD_REPORT.to_string(),
        run_id: run_id.to_string(),
        genesis,
        step: shard.index,
        hash: file_hash(report),
    }
}

impl ShardTarget {
    /// Check everything before replaying: a valid id, a results store outside the run's, and
    /// no result already recorded for this shard (results are write-once; the recorded one is
    /// left as it is).
    pub fn prepare(&self, ctx: &RunContext) -> Result<ShardedRun, CommandError> {
        check_id(&self.id)?;
        let run = ctx.location.trim_end_matches('/');
        let results = self.results.trim_end_matches('/');
        if results == run || results.starts_with(&format!("{run}/")) {
            return Err(CommandError::Usage(format!(
                "--results {}: shard results must be kept outside the run's store, which the \
                 run's owner controls",
                self.results
            )));
        }
        let store = Store::create(&self.results)?;
        let key = self.shard.result_key(&self.id);
        if let Some(bytes) = store.get_opt(&key)? {
            // The header's verdict, read without the report's type (`commands::verify` writes
            // the report, through `record`).
            let verdict = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|r| r["verdict"].as_str().map(|v| format!("verdict {v}")))
                .unwrap_or_else(|| "unreadable".into());
            return Err(CommandError::Usage(format!(
                "{}: shard {}/{} of verification {:?} is already recorded at {key:?} ({verdict}); \
                 results are write-once: run `replay collect`, or verify again under a new --id",
                store.location(),
                self.shard.index,
                self.shard.count,
                self.id,
            )));
        }
        Ok(ShardedRun {
            shard: self.shard,
            id: self.id.clone(),
        })
    }

    /// Write the shard's report (which names its own key, [`ShardedRun::result_key`]) and the
    /// verifier's signature of it, each once.
    pub fn record(
        &self,
        ctx: &RunContext,
        run: &ShardedRun,
        report: &impl Serialize,
    ) -> Result<(), CommandError> {
        let store = Store::create(&self.results)?;
        let key = run.result_key();
        let mut bytes =
            serde_json::to_vec_pretty(report).map_err(|e| CommandError::Usage(e.to_string()))?;
        bytes.push(b'\n');
        let signed = signature::sign(
            statement(
                &ctx.manifest.run_id,
                ctx.manifest.genesis,
                &run.shard,
                &bytes,
            ),
            &self.key,
        );
        store.put_new(&key, bytes)?;
        store.put_new(&signature_key(&key), signed.encode())?;
        Ok(())
    }
}
