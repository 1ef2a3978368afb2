//! `verify` and `audit`: re-execution of whole segments or chosen steps.

use super::{Attest, replay};
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::backend::DeviceSpec;

use crate::context::{LoadOptions, RunContext};
use crate::engine::reexecute::{EnvironmentCheck, Range, RangeResult};
use crate::report::{Claim, CommandError, Header, Report};
use crate::shard::{ShardTarget, ShardedRun};
use crate::signatures::SignatureReport;

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

/// The JSON document of `replay verify --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    #[serde(flatten)]
    pub header: Header,
    pub genesis: Hash32,
    /// The last step of the ledger as it was verified, and the head after it: the history this
    /// report is about (a shard's report is collected only while the run still has it).
    pub ledger_step: u64,
    pub ledger_head: Hash32,
    /// `all`, `segment N` or `steps A..=B`.
    pub scope: String,
    pub environment: Option<EnvironmentCheck>,
    /// The shard this report verified, and the verification it belongs to.
    pub shard: Option<ShardedRun>,
    /// Store key of this shard's written result.
    pub result_key: Option<String>,
    pub ranges: Vec<RangeResult>,
    pub signatures: Option<SignatureReport>,
    pub steps_replayed: u64,
    pub seconds: f64,
    pub steps_per_second: f64,
}

impl Report for VerifyReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

impl VerifyReport {
    /// The report of `verify` on the run at `location`, before anything is found.
    fn pending(location: &str, scope: String) -> Self {
        VerifyReport {
            header: Header::pending("verify", location),
            genesis: Hash32::ZERO,
            ledger_step: 0,
            ledger_head: Hash32::ZERO,
            scope,
            environment: None,
            shard: None,
            result_key: None,
            ranges: vec![],
            signatures: None,
            steps_replayed: 0,
            seconds: 0.0,
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

/// Run `verify`.
pub fn verify(
    location: &str,
    o: &VerifyOptions,
    progress: &indicatif::ProgressBar,
) -> Result<VerifyReport, CommandError> {
    let report = VerifyReport::pending(location, scope_text(o.scope));
    super::on_run(location, &o.load, report, |ctx, _| {
        verify_on(ctx, o, progress)
    })
}

/// [`verify`] on a loaded run.
pub fn verify_on(
    ctx: &RunContext,
    o: &VerifyOptions,
    progress: &indicatif::ProgressBar,
) -> Result<VerifyReport, CommandError> {
    let started = std::time::Instant::now();
    let location = ctx.location.as_str();
    let mut ranges = ranges_for(ctx, o.scope)?;
    // A shard whose result is already recorded is refused before any replay, not after it.
    let sharded = match &o.shard {
        Some(t) => {
            let run = t.prepare(ctx)?;
            ranges.retain(|r| run.shard.owns(r.segment));
            Some(run)
        }
        None => None,
    };
    let mut assessment = ctx.assessment();
    let (env, results) = replay(ctx, &ranges, o.device, &mut assessment, progress)?;
    let steps_replayed = results.iter().map(|r| r.steps_replayed).sum();
    let seconds = started.elapsed().as_secs_f64();
    let (ledger_step, ledger_head) = ctx.ledger_point();
    let mut report = VerifyReport {
        header: assessment.header("verify", location, Claim::Replay),
        genesis: ctx.manifest.genesis,
        ledger_step,
        ledger_head,
        scope: scope_text(o.scope),
        environment: Some(env),
        shard: sharded.clone(),
        result_key: None,
        ranges: results,
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
        report.result_key = Some(run.result_key());
        t.record(ctx, run, &report)?;
    }
    if let Some(a) = &o.attest {
        let env = report.environment.as_ref();
        a.write(ctx, "verify", report.header.verdict, &report.ranges, env)?;
    }
    Ok(report)
}
