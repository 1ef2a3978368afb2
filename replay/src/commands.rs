//! `verify` and `audit`: re-execution of whole segments or chosen steps.

use serde::{Deserialize, Serialize};
use snapshot_format::{Hash32, Store};
use trainer::backend::DeviceSpec;

use crate::context::{self, LoadOptions, RunContext, load_or_report};
use crate::report::{CommandError, Problem, Verdict};
use crate::shard::{self, Shard};
use crate::signatures::{SignatureOptions, SignatureReport};
use crate::verify::{self, EnvironmentCheck, Range, RangeResult};

/// Which steps to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every segment (each from its own starting checkpoint).
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
    pub allow_environment_mismatch: bool,
    pub shard: Option<Shard>,
    pub load: LoadOptions,
    /// Where shard results go (default: the run's store).
    pub results: Option<String>,
    /// Verification id for shard results (default: derived from the run and the shard count).
    pub id: Option<String>,
    pub signatures: SignatureOptions,
}

/// The JSON document of `replay verify --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub command: String,
    pub run: String,
    pub genesis: Hash32,
    pub verdict: Verdict,
    /// `all`, `segment N` or `steps A..=B`.
    pub scope: String,
    pub environment: Option<EnvironmentCheck>,
    pub shard: Option<Shard>,
    /// Store key of this shard's written result.
    pub result_key: Option<String>,
    pub ranges: Vec<RangeResult>,
    /// Problems found outside the replayed ranges: an unusable manifest, signatures.
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

/// The ranges a scope covers in this run.
pub fn ranges_for(ctx: &RunContext, scope: Scope) -> Result<Vec<Range>, CommandError> {
    let segments = ctx.segment_ranges();
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    match scope {
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
            if from == 0 || from > to || to > last.max(ctx.spec.run.steps) {
                return Err(CommandError::Usage(format!(
                    "--from {from} --to {to}: steps must satisfy 1 <= from <= to <= {}",
                    ctx.spec.run.steps
                )));
            }
            Ok(vec![Range::new(0, from, to)])
        }
    }
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
    if let Some(s) = o.shard {
        ranges.retain(|r| r.segment != 0 && s.owns(r.segment));
    }
    let mut env = verify::environment(&ctx.manifest.environment, o.device)?;
    let mismatch = !env.differences.is_empty();
    env.replayed_anyway = mismatch && o.allow_environment_mismatch;
    let mut report = VerifyReport {
        command: "verify".into(),
        run: location.into(),
        genesis: ctx.manifest.genesis,
        verdict: Verdict::Verified,
        scope: scope_text(o.scope),
        environment: Some(env),
        shard: o.shard,
        result_key: None,
        ranges: vec![],
        problems: vec![],
        signatures: None,
        steps_replayed: 0,
        seconds: 0.0,
        steps_per_second: 0.0,
    };
    // A shard whose result is already recorded is refused before any replay, not after it.
    let destination = match o.shard {
        Some(s) => {
            let results = match &o.results {
                Some(url) => Store::create(url)?,
                None => ctx.store.clone(),
            };
            let id =
                o.id.clone()
                    .unwrap_or_else(|| shard::default_id(&ctx.manifest.genesis, s.count));
            shard::ensure_unrecorded(&results, &s, &id)?;
            report.result_key = Some(s.result_key(&id));
            Some((results, s, id))
        }
        None => None,
    };
    let (signatures, signature_problems) = crate::signatures::check(&ctx, &o.signatures)?;
    report.signatures = Some(signatures);
    report.problems = signature_problems;
    if mismatch && !o.allow_environment_mismatch {
        report.verdict = Verdict::EnvironmentMismatch;
    } else {
        progress.set_length(ranges.iter().map(|r| r.to + 1 - r.from).sum());
        let results = verify::replay_ranges(&ctx, &ranges, o.device, mismatch, progress)?;
        report.ranges = results.into_iter().map(|(r, _)| r).collect();
        report.steps_replayed = report.ranges.iter().map(|r| r.steps_replayed).sum();
        report.verdict = report
            .ranges
            .iter()
            .fold(Verdict::Verified, |v, r| v.worst(r.verdict));
    }
    report.verdict = report
        .problems
        .iter()
        .fold(report.verdict, |v, p| v.worst(p.kind));
    report.seconds = started.elapsed().as_secs_f64();
    report.steps_per_second = if report.seconds > 0.0 {
        report.steps_replayed as f64 / report.seconds
    } else {
        0.0
    };
    if let Some((results, s, id)) = &destination {
        shard::write_result(results, s, id, &report)?;
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

/// The JSON document of `replay audit --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub command: String,
    pub run: String,
    pub verdict: Verdict,
    pub seed: u64,
    pub segments_total: u64,
    pub sampled: Vec<u64>,
    pub passed: Vec<u64>,
    pub failed: Vec<u64>,
    pub detection: Vec<Detection>,
    pub environment: Option<EnvironmentCheck>,
    pub ranges: Vec<RangeResult>,
    pub problems: Vec<Problem>,
    pub signatures: Option<SignatureReport>,
    pub seconds: f64,
}

/// Options of `audit`.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub samples: u64,
    pub seed: u64,
    pub fractions: Vec<f64>,
    pub device: DeviceSpec,
    pub allow_environment_mismatch: bool,
    pub load: LoadOptions,
    pub signatures: SignatureOptions,
}

/// Run `audit`: verify `samples` segments drawn uniformly without replacement from the stream
/// `(seed, "audit", 0)`.
pub fn audit(
    location: &str,
    o: &AuditOptions,
    progress: &indicatif::ProgressBar,
) -> Result<AuditReport, CommandError> {
    let started = std::time::Instant::now();
    let mut report = AuditReport {
        command: "audit".into(),
        run: location.into(),
        verdict: Verdict::Verified,
        seed: o.seed,
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
    let (signatures, signature_problems) = crate::signatures::check(&ctx, &o.signatures)?;
    report.signatures = Some(signatures);
    report.problems = signature_problems;
    let all = ranges_for(&ctx, Scope::All)?;
    let n = all.len() as u64;
    let k = o.samples.min(n);
    let order = trainer::rng::permutation(&mut trainer::rng::stream(o.seed, "audit", 0), n);
    let mut sampled: Vec<Range> = order
        .iter()
        .take(k as usize)
        .map(|&i| all[i as usize])
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
    let mut env = verify::environment(&ctx.manifest.environment, o.device)?;
    let mismatch = !env.differences.is_empty();
    env.replayed_anyway = mismatch && o.allow_environment_mismatch;
    report.environment = Some(env);
    if mismatch && !o.allow_environment_mismatch {
        report.verdict = Verdict::EnvironmentMismatch;
    } else {
        progress.set_length(sampled.iter().map(|r| r.to + 1 - r.from).sum());
        let results = verify::replay_ranges(&ctx, &sampled, o.device, mismatch, progress)?;
        report.ranges = results.into_iter().map(|(r, _)| r).collect();
        for r in &report.ranges {
            if r.verdict.passed() {
                report.passed.push(r.segment);
            } else {
                report.failed.push(r.segment);
            }
        }
        report.verdict = report
            .ranges
            .iter()
            .fold(Verdict::Verified, |v, r| v.worst(r.verdict));
    }
    report.verdict = report
        .problems
        .iter()
        .fold(report.verdict, |v, p| v.worst(p.kind));
    report.seconds = started.elapsed().as_secs_f64();
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
}
