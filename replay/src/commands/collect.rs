//! `replay collect`: the signed results of a sharded verification, merged.

use crate::commands::verify::{Scope, VerifyReport, ranges_for};
use crate::context::{LoadOptions, RunContext};
use crate::report::{Claim, CommandError, Header, Problem, Report, Verdict, problem_of};
use crate::shard::*;
use ed25519_dalek::VerifyingKey;
use run_store::Store;
use run_trust::signature::{self, Signed};
use serde::{Deserialize, Serialize};

/// The JSON document of `replay collect --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectReport {
    #[serde(flatten)]
    pub header: Header,
    pub id: String,
    pub results: String,
    pub shards: u64,
    pub shards_present: Vec<u64>,
    /// Fingerprints of the verifier keys whose signatures were accepted.
    pub verifier_keys: Vec<String>,
    /// Segments verified by some shard, and their verdicts.
    pub segments: Vec<(u64, Verdict)>,
    pub steps_replayed: u64,
}

impl Report for CollectReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
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
    let report = CollectReport {
        header: Header::pending("collect", location),
        id: o.id.clone(),
        results: o.results.clone(),
        shards: o.shards,
        shards_present: vec![],
        verifier_keys: o
            .verifier_keys
            .iter()
            .map(|k| signature::fingerprint(&k.to_bytes()))
            .collect(),
        segments: vec![],
        steps_replayed: 0,
    };
    super::on_run(location, &o.load, report, |ctx, report| {
        collect_on(ctx, o, report)
    })
}

/// [`collect`] on a loaded run, its report begun as `report`.
pub fn collect_on(
    ctx: &RunContext,
    o: &CollectOptions,
    mut report: CollectReport,
) -> Result<CollectReport, CommandError> {
    let mut assessment = ctx.assessment();
    let results = Store::open(&o.results)?;
    let trusted: Vec<[u8; 32]> = o.verifier_keys.iter().map(VerifyingKey::to_bytes).collect();
    for index in 0..o.shards {
        let shard = Shard {
            index,
            count: o.shards,
        };
        let key = shard.result_key(&o.id);
        match read_shard(ctx, &results, &shard, &o.id, &key, &trusted)? {
            Err(p) => assessment.problem(p),
            Ok(r) => {
                report.shards_present.push(index);
                assessment.outcome(r.header.verdict);
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
    for r in ranges_for(ctx, Scope::All)? {
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
    report.header.assess(&assessment, Claim::Replay);
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
