//! `verify` and `audit`: re-execution of whole segments or chosen steps.

use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::backend::DeviceSpec;

use crate::context::{self, LoadOptions, RunContext, load_or_report};
use crate::report::{Assessment, Claim, CommandError, Problem, Verdict};
use crate::shard::{ShardTarget, ShardedRun};
use crate::signatures::SignatureReport;
use crate::verify::{self, EnvironmentCheck, Range, RangeResult};

/// Which steps to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every segment (each from its own starting state; segment 1 from step 0 re-derived).
    All,
    /// Segment `n` (1-based).
    Segment(u64),
    /// Steps `from..=to`.
    Steps { from: u64, to: u64 },
}

/// Options of `verify`.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub scope: Scope,
    pub device: DeviceSpec,
    /// Verify one shard of the segments and record a signed result (`--shard`).
    pub shard: Option<ShardTarget>,
    pub load: LoadOptions,
    /// Write a signed verification statement of the result (`--attest`).
    pub attest: Option<Attest>,
}

/// Where to write a signed in-toto statement of a verification, and the key that signs it.
#[derive(Debug, Clone)]
pub struct Attest {
    pub out: std::path::PathBuf,
    pub key: ed25519_dalek::SigningKey,
}

impl Attest {
    fn write(
        &self,
        ctx: &RunContext,
        command: &str,
        verdict: Verdict,
        ranges: &[RangeResult],
        environment: Option<&EnvironmentCheck>,
    ) -> Result<(), CommandError> {
        let v = crate::attestations::Verification {
            command,
            verdict,
            ranges,
            environment,
            steps_replayed: ranges.iter().map(|r| r.steps_replayed).sum(),
        };
        crate::attestations::write_verification(ctx, &v, &self.key, &self.out)
    }
}

/// The JSON document of `replay verify --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub command: String,
    pub run: String,
    pub genesis: Hash32,
    /// The last step of the ledger as it was verified, and the head after it: the history this
    /// report is about (a shard's report is collected only while the run still has it).
    pub ledger_step: u64,
    pub ledger_head: Hash32,
    pub verdict: Verdict,
    /// `all`, `segment N` or `steps A..=B`.
    pub scope: String,
    pub environment: Option<EnvironmentCheck>,
    /// The shard this report verified, and the verification it belongs to.
    pub shard: Option<ShardedRun>,
    /// Store key of this shard's written result.
    pub result_key: Option<String>,
    pub ranges: Vec<RangeResult>,
    /// Every problem known about the run (outside the replayed ranges too): each counts toward
    /// the verdict.
    pub problems: Vec<Problem>,
    pub signatures: Option<SignatureReport>,
    pub steps_replayed: u64,
    pub seconds: f64,
    pub steps_per_second: f64,
}

impl VerifyReport {
    fn failed(
        location: &str,
        scope: String,
        problem: Problem,
        started: std::time::Instant,
    ) -> Self {
        VerifyReport {
            command: "verify".into(),
            run: location.into(),
            genesis: Hash32::ZERO,
            ledger_step: 0,
            ledger_head: Hash32::ZERO,
            verdict: problem.kind,
            scope,
            environment: None,
            shard: None,
            result_key: None,
            ranges: vec![],
            problems: vec![problem],
            signatures: None,
            steps_replayed: 0,
            seconds: started.elapsed().as_secs_f64(),
            steps_per_second: 0.0,
        }
    }
}

fn scope_text(s: Scope) -> String {
    match s {
        Scope::All => "all".into(),
        Scope::Segment(n) => format!("segment {n}"),
        Scope::Steps { from, to } => format!("steps {from}..={to}"),
    }
}

/// The ranges a scope covers in this run. `All` covers every segment the run should have so
/// far, and step 0 alone when it has none yet (step 0 is re-derived by the range that starts
/// there).
pub fn ranges_for(ctx: &RunContext, scope: Scope) -> Result<Vec<Range>, CommandError> {
    let segments = ctx.segment_ranges();
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    match scope {
        Scope::All if segments.is_empty() => Ok(vec![Range::new(0, 0, 0)]),
        Scope::All => Ok(segments
            .iter()
            .map(|&(k, a, b)| Range::new(k, a + 1, b))
            .collect()),
        Scope::Segment(n) => segments
            .iter()
            .find(|(k, _, _)| *k == n)
            .map(|&(k, a, b)| vec![Range::new(k, a + 1, b)])
            .ok_or_else(|| {
                CommandError::Usage(format!(
                    "--segment {n}: the run has segments 1..={}",
                    segments.len()
                ))
            }),
        Scope::Steps { from, to } => {
            let end = last.min(ctx.spec.run.steps);
            if from == 0 || from > to || to > end {
                return Err(CommandError::Usage(format!(
                    "--from {from} --to {to}: steps must satisfy 1 <= from <= to <= {end}"
                )));
            }
            Ok(vec![Range::new(0, from, to)])
        }
    }
}

/// Replay `ranges` of a loaded run in this machine's class (or across classes, reported as
/// such), adding each range's verdict to `assessment`.
fn replay(
    ctx: &RunContext,
    ranges: &[Range],
    device: DeviceSpec,
    assessment: &mut Assessment,
    progress: &indicatif::ProgressBar,
) -> Result<(EnvironmentCheck, Vec<RangeResult>), CommandError> {
    let env = verify::environment(&ctx.manifest.environment, device)?;
    progress.set_length(ranges.iter().map(|r| r.to + 1 - r.from.max(1)).sum());
    let results: Vec<RangeResult> =
        verify::replay_ranges(ctx, ranges, device, env.cross_class(), progress)?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
    for r in &results {
        assessment.outcome(r.verdict);
    }
    Ok((env, results))
}

/// Run `verify`.
pub fn verify(
    location: &str,
    o: &VerifyOptions,
    progress: &indicatif::ProgressBar,
) -> Result<VerifyReport, CommandError> {
    let started = std::time::Instant::now();
    let ctx = match context::load(location, &o.load)? {
        Ok(c) => c,
        Err(p) => {
            return Ok(VerifyReport::failed(
                location,
                scope_text(o.scope),
                p,
                started,
            ));
        }
    };
    let mut ranges = ranges_for(&ctx, o.scope)?;
    // A shard whose result is already recorded is refused before any replay, not after it.
    let sharded = match &o.shard {
        Some(t) => {
            let run = t.prepare(&ctx)?;
            ranges.retain(|r| run.shard.owns(r.segment));
            Some(run)
        }
        None => None,
    };
    let mut assessment = Assessment::of(&ctx);
    let (env, results) = replay(&ctx, &ranges, o.device, &mut assessment, progress)?;
    let steps_replayed = results.iter().map(|r| r.steps_replayed).sum();
    let seconds = started.elapsed().as_secs_f64();
    let (ledger_step, ledger_head) = ctx.ledger_point();
    let mut report = VerifyReport {
        command: "verify".into(),
        run: location.into(),
        genesis: ctx.manifest.genesis,
        ledger_step,
        ledger_head,
        verdict: assessment.verdict(Claim::Replay),
        scope: scope_text(o.scope),
        environment: Some(env),
        shard: sharded.clone(),
        result_key: None,
        ranges: results,
        problems: assessment.problems().to_vec(),
        signatures: Some(ctx.signatures.clone()),
        steps_replayed,
        seconds,
        steps_per_second: if seconds > 0.0 {
            steps_replayed as f64 / seconds
        } else {
            0.0
        },
    };
    if let (Some(t), Some(run)) = (&o.shard, &sharded) {
        report.result_key = Some(t.record(&ctx, run, &report)?);
    }
    if let Some(a) = &o.attest {
        let env = report.environment.as_ref();
        a.write(&ctx, "verify", report.verdict, &report.ranges, env)?;
    }
    Ok(report)
}

/// Probability that a uniform sample of `k` distinct segments out of `n` includes at least one
/// of `m` tampered ones: `1 − C(n−m, k) / C(n, k)`.
pub fn detection_probability(n: u64, m: u64, k: u64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    if k + m > n {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in 0..k {
        miss *= (n - m - i) as f64 / (n - i) as f64;
    }
    1.0 - miss
}

/// Detection probability for one assumed fraction of tampered segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub tampered_fraction: f64,
    pub tampered_segments: u64,
    pub probability: f64,
}

/// Where the audit's seed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    /// Drawn from the operating system's random source: the run's owner could not predict the
    /// sample.
    Os,
    /// Given with `--seed`: anyone who knows it knows the sample in advance.
    Given,
}

/// The JSON document of `replay audit --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    /// The sample's seed, always reported so that the same sample can be drawn again.
    pub seed: u64,
    pub seed_source: SeedSource,
    pub segments_total: u64,
    pub sampled: Vec<u64>,
    pub passed: Vec<u64>,
    pub failed: Vec<u64>,
    pub detection: Vec<Detection>,
    pub environment: Option<EnvironmentCheck>,
    /// The sampled segments, and step 0 re-derived (always checked; segment 1 includes it).
    pub ranges: Vec<RangeResult>,
    pub problems: Vec<Problem>,
    pub signatures: Option<SignatureReport>,
    pub seconds: f64,
}

/// Options of `audit`.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub samples: u64,
    /// The sample's seed; `None` draws one from the operating system.
    pub seed: Option<u64>,
    pub fractions: Vec<f64>,
    pub device: DeviceSpec,
    pub load: LoadOptions,
    /// Write a signed verification statement of the result (`--attest`).
    pub attest: Option<Attest>,
}

/// A seed from the operating system's random source.
pub fn os_seed() -> Result<u64, CommandError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| CommandError::Usage(format!("no operating-system randomness: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// Run `audit`: re-derive step 0, and verify `samples` segments drawn uniformly without
/// replacement from the stream `(seed, "audit", 0)`.
pub fn audit(
    location: &str,
    o: &AuditOptions,
    progress: &indicatif::ProgressBar,
) -> Result<AuditReport, CommandError> {
    let started = std::time::Instant::now();
    let (seed, seed_source) = match o.seed {
        Some(s) => (s, SeedSource::Given),
        None => (os_seed()?, SeedSource::Os),
    };
    let mut report = AuditReport {
        command: "audit".into(),
        run: location.into(),
        verdict: Verdict::Verified,
        seed,
        seed_source,
        segments_total: 0,
        sampled: vec![],
        passed: vec![],
        failed: vec![],
        detection: vec![],
        environment: None,
        ranges: vec![],
        problems: vec![],
        signatures: None,
        seconds: 0.0,
    };
    let ctx = load_or_report!(location, &o.load, report);
    let all = ranges_for(&ctx, Scope::All)?;
    let n = all.len() as u64;
    let k = o.samples.min(n);
    let order = trainer::rng::permutation(&mut trainer::rng::stream(seed, "audit", 0), n);
    let mut sampled: Vec<Range> = order
        .iter()
        .take(k as usize)
        .map(|&i| all[i as usize].clone())
        .collect();
    sampled.sort_by_key(|r| r.segment);
    report.segments_total = n;
    report.sampled = sampled.iter().map(|r| r.segment).collect();
    report.detection = o
        .fractions
        .iter()
        .map(|&f| {
            let m = ((f * n as f64).ceil() as u64).clamp(1, n.max(1));
            Detection {
                tampered_fraction: f,
                tampered_segments: m,
                probability: detection_probability(n, m, k),
            }
        })
        .collect();
    // Step 0 is always re-derived: cheap, and a substituted starting model is caught whatever
    // the sample (a sampled segment 1 re-derives it itself).
    let mut ranges = sampled;
    if !ranges.iter().any(|r| r.from <= 1) {
        ranges.insert(0, Range::new(0, 0, 0));
    }
    let mut assessment = Assessment::of(&ctx);
    let (env, results) = replay(&ctx, &ranges, o.device, &mut assessment, progress)?;
    for r in results.iter().filter(|r| r.segment > 0) {
        if r.verdict.passed() {
            report.passed.push(r.segment);
        } else {
            report.failed.push(r.segment);
        }
    }
    report.environment = Some(env);
    report.ranges = results;
    report.verdict = assessment.verdict(Claim::Replay);
    report.problems = assessment.problems().to_vec();
    report.signatures = Some(ctx.signatures.clone());
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(a) = &o.attest {
        let env = report.environment.as_ref();
        a.write(&ctx, "audit", report.verdict, &report.ranges, env)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_probability_matches_hand_computation() {
        // 10 segments, 1 tampered, 3 sampled: 1 - (9/10)(8/9)(7/8) = 0.3.
        assert!((detection_probability(10, 1, 3) - 0.3).abs() < 1e-12);
        assert_eq!(detection_probability(10, 0, 3), 0.0);
        assert_eq!(detection_probability(10, 8, 3), 1.0);
        assert_eq!(detection_probability(10, 1, 10), 1.0);
    }

    #[test]
    fn os_seeds_differ() {
        let a = os_seed().expect("seed");
        let b = os_seed().expect("seed");
        assert_ne!(
            a, b,
            "two draws of 64 random bits collide with probability 2^-64"
        );
    }
}
