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

use ed25519_dalek::{SigningKey, VerifyingKey};
use run_store::Store;
use run_trust::signature::{self, Signed, Statement, kind};
use serde::{Deserialize, Serialize};
use snapshot_format::hash::file_hash;

use crate::commands::{Scope, VerifyReport, ranges_for};
use crate::context::{LoadOptions, RunContext, load_or_report};
use crate::report::{Assessment, Claim, CommandError, Problem, Verdict, problem_of};

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

/// A verification id: 8 to 64 characters of `[A-Za-z0-9_-]`.
fn check_id(id: &str) -> Result<(), CommandError> {
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
fn statement(
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
            let verdict = serde_json::from_slice::<VerifyReport>(&bytes)
                .map(|r| format!("verdict {}", r.verdict))
                .unwrap_or_else(|_| "unreadable".into());
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

    /// Write the shard's report and the verifier's signature of it, each once. Returns the
    /// report's key.
    pub fn record(
        &self,
        ctx: &RunContext,
        run: &ShardedRun,
        report: &VerifyReport,
    ) -> Result<String, CommandError> {
        let store = Store::create(&self.results)?;
        let key = run.shard.result_key(&run.id);
        let mut report = report.clone();
        report.result_key = Some(key.clone());
        let mut bytes =
            serde_json::to_vec_pretty(&report).map_err(|e| CommandError::Usage(e.to_string()))?;
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
        Ok(key)
    }
}

/// The JSON document of `replay collect --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    pub id: String,
    pub results: String,
    pub shards: u64,
    pub shards_present: Vec<u64>,
    /// Fingerprints of the verifier keys whose signatures were accepted.
    pub verifier_keys: Vec<String>,
    pub problems: Vec<Problem>,
    /// Segments verified by some shard, and their verdicts.
    pub segments: Vec<(u64, Verdict)>,
    pub steps_replayed: u64,
}

/// What `collect` merges.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub shards: u64,
    pub id: String,
    pub results: String,
    /// Keys whose signatures on shard reports are accepted (`--verifier-key`).
    pub verifier_keys: Vec<VerifyingKey>,
    pub load: LoadOptions,
}

/// Merge the shard results of verification `o.id` of the run at `location`.
pub fn collect(location: &str, o: &CollectOptions) -> Result<CollectReport, CommandError> {
    check_id(&o.id)?;
    if o.shards == 0 {
        return Err(CommandError::Usage("--shards: at least 1".into()));
    }
    if o.verifier_keys.is_empty() {
        return Err(CommandError::Usage(
            "--verifier-key: name the key(s) that signed the shards' reports".into(),
        ));
    }
    let mut report = CollectReport {
        command: "collect".into(),
        run: location.into(),
        verdict: Verdict::Verified,
        id: o.id.clone(),
        results: o.results.clone(),
        shards: o.shards,
        shards_present: vec![],
        verifier_keys: o
            .verifier_keys
            .iter()
            .map(|k| signature::fingerprint(&k.to_bytes()))
            .collect(),
        problems: vec![],
        segments: vec![],
        steps_replayed: 0,
    };
    let ctx = load_or_report!(location, &o.load, report);
    let mut assessment = Assessment::of(&ctx);
    let results = Store::open(&o.results)?;
    let trusted: Vec<[u8; 32]> = o.verifier_keys.iter().map(VerifyingKey::to_bytes).collect();
    for index in 0..o.shards {
        let shard = Shard {
            index,
            count: o.shards,
        };
        let key = shard.result_key(&o.id);
        match read_shard(&ctx, &results, &shard, &o.id, &key, &trusted)? {
            Err(p) => assessment.problem(p),
            Ok(r) => {
                report.shards_present.push(index);
                assessment.outcome(r.verdict);
                report.steps_replayed += r.steps_replayed;
                report
                    .segments
                    .extend(r.ranges.iter().map(|x| (x.segment, x.verdict)));
            }
        }
    }
    report.segments.sort_by_key(|(k, _)| *k);
    // Together the shards must cover every segment the run has (step 0 alone for a run
    // without segments).
    for r in ranges_for(&ctx, Scope::All)? {
        if !report.segments.iter().any(|(s, _)| *s == r.segment) {
            let owner = Shard {
                index: r.segment.saturating_sub(1) % o.shards,
                count: o.shards,
            };
            assessment.problem(Problem::new(
                Verdict::Missing,
                owner.result_key(&o.id),
                format!(
                    "no shard report verified segment {} (steps {}..={})",
                    r.segment, r.from, r.to
                ),
            ));
        }
    }
    report.verdict = assessment.verdict(Claim::Replay);
    report.problems = assessment.problems().to_vec();
    Ok(report)
}

/// Read shard `shard`'s report and the verifier's signature of it, and check that a trusted
/// verifier signed exactly these bytes for this run, shard and verification id.
fn read_shard(
    ctx: &RunContext,
    results: &Store,
    shard: &Shard,
    id: &str,
    key: &str,
    trusted: &[[u8; 32]],
) -> Result<Result<VerifyReport, Problem>, CommandError> {
    let Some(bytes) = results.get_opt(key)? else {
        return Ok(Err(Problem::new(
            Verdict::Missing,
            key,
            format!("shard {} of {} has not reported", shard.index, shard.count),
        )));
    };
    let sig_key = signature_key(key);
    let Some(sig) = results.get_opt(&sig_key)? else {
        return Ok(Err(Problem::new(
            Verdict::Unsigned,
            key,
            "the report carries no verifier's signature".to_string(),
        )));
    };
    let signed = match Signed::decode(&sig, &sig_key) {
        Ok(s) => s,
        Err(e) => return Ok(Err(problem_of(e)?)),
    };
    let expected = statement(&ctx.manifest.run_id, ctx.manifest.genesis, shard, &bytes);
    if let Err(e) = signed.verify(&expected, &sig_key) {
        return Ok(Err(problem_of(e)?));
    }
    if !trusted.contains(&signed.public_key) {
        return Ok(Err(Problem::new(
            Verdict::UntrustedSigner,
            key,
            format!(
                "signed by {}, not by a verifier key given with --verifier-key",
                signed.signer()
            ),
        )));
    }
    let report: VerifyReport = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return Ok(Err(Problem::new(Verdict::Corrupt, key, e.to_string()))),
    };
    let expected_run = ShardedRun {
        shard: *shard,
        id: id.to_string(),
    };
    if report.genesis != ctx.manifest.genesis || report.shard.as_ref() != Some(&expected_run) {
        return Ok(Err(Problem::new(
            Verdict::Tampered,
            key,
            "the report belongs to another run, shard or verification".to_string(),
        )));
    }
    if let Some(r) = report.ranges.iter().find(|r| !shard.owns(r.segment)) {
        return Ok(Err(Problem::new(
            Verdict::Tampered,
            key,
            format!("the report covers segment {}, not this shard's", r.segment),
        )));
    }
    // The report is about the history it replayed: the run must still have that history, up
    // to the head of every segment it verified and of the ledger as it stood.
    let rewritten = |what: String, step: u64, head: Option<snapshot_format::Hash32>| {
        let now = ctx.head_at(step);
        (now != head).then(|| {
            Problem::new(
                Verdict::Tampered,
                key,
                format!(
                    "the shard verified {what} ending in {}; the run's ledger {} (its history                      was rewritten after the shard ran)",
                    head.map(|h| h.to_string()).unwrap_or_else(|| "nothing".into()),
                    match now {
                        Some(h) => format!("now has {h} at step {step}"),
                        None => format!("has no record of step {step}"),
                    }
                ),
            )
        })
    };
    let checks = report
        .ranges
        .iter()
        .map(|r| (format!("segment {}", r.segment), r.to_step, r.head))
        .chain(std::iter::once((
            format!("the ledger up to step {}", report.ledger_step),
            report.ledger_step,
            Some(report.ledger_head),
        )));
    for (what, step, head) in checks {
        if let Some(p) = rewritten(what, step, head) {
            return Ok(Err(p));
        }
    }
    Ok(Ok(report))
}
