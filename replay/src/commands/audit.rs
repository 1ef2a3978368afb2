//! `replay audit`: step 0 re-derived and randomly sampled segments verified, with the exact
//! probability that the sample would have found a given fraction of tampered segments.

use super::verify::{Scope, ranges_for};
use super::{Attest, replay};
use crate::context::{LoadOptions, RunContext};
use crate::engine::reexecute::{EnvironmentCheck, Range, RangeResult};
use crate::report::{Claim, CommandError, Header, Report};
use crate::signatures::SignatureReport;
use serde::{Deserialize, Serialize};
use trainer::backend::DeviceSpec;

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
    #[serde(flatten)]
    pub header: Header,
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
    pub signatures: Option<SignatureReport>,
    pub seconds: f64,
}

impl Report for AuditReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
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
    let (seed, seed_source) = match o.seed {
        Some(s) => (s, SeedSource::Given),
        None => (os_seed()?, SeedSource::Os),
    };
    let report = AuditReport {
        header: Header::pending("audit", location),
        seed,
        seed_source,
        segments_total: 0,
        sampled: vec![],
        passed: vec![],
        failed: vec![],
        detection: vec![],
        environment: None,
        ranges: vec![],
        signatures: None,
        seconds: 0.0,
    };
    super::on_run(location, &o.load, report, |ctx, report| {
        audit_on(ctx, o, report, progress)
    })
}

/// [`audit`] on a loaded run, its report begun as `report`.
pub fn audit_on(
    ctx: &RunContext,
    o: &AuditOptions,
    mut report: AuditReport,
    progress: &indicatif::ProgressBar,
) -> Result<AuditReport, CommandError> {
    let started = std::time::Instant::now();
    let seed = report.seed;
    let all = ranges_for(ctx, Scope::All)?;
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
    let mut assessment = ctx.assessment();
    let (env, results) = replay(ctx, &ranges, o.device, &mut assessment, progress)?;
    for r in results.iter().filter(|r| r.segment > 0) {
        if r.verdict.passed() {
            report.passed.push(r.segment);
        } else {
            report.failed.push(r.segment);
        }
    }
    report.environment = Some(env);
    report.ranges = results;
    report.header.assess(&assessment, Claim::Replay);
    report.signatures = Some(ctx.signatures.clone());
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(a) = &o.attest {
        let env = report.environment.as_ref();
        a.write(ctx, "audit", report.header.verdict, &report.ranges, env)?;
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
