//! One file per command: each takes its options and a run, loaded once by [`on_run`] (or
//! already loaded: `X_on`/`X_in` take a `RunContext`), and returns its report; nothing here
//! prints.

use crate::context::{self, LoadOptions, RunContext};
use crate::engine::reexecute::{self, EnvironmentCheck, Range, RangeResult};
use crate::report::{Assessment, CommandError, Report, Verdict};
use trainer::backend::DeviceSpec;

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
/// Replay `ranges` of a loaded run in this machine's class (or across classes, reported as
/// such), adding each range's verdict to `assessment`.
fn replay(
    ctx: &RunContext,
    ranges: &[Range],
    device: DeviceSpec,
    assessment: &mut Assessment,
    progress: &indicatif::ProgressBar,
) -> Result<(EnvironmentCheck, Vec<RangeResult>), CommandError> {
    let env = reexecute::environment(&ctx.manifest.environment, device)?;
    progress.set_length(ranges.iter().map(|r| r.to + 1 - r.from.max(1)).sum());
    let results: Vec<RangeResult> =
        reexecute::replay_ranges(ctx, ranges, device, env.cross_class(), progress)?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
    for r in &results {
        assessment.outcome(r.verdict);
    }
    Ok((env, results))
}

pub mod attribute;
pub mod audit;
pub mod check;
pub mod collect;
pub mod compare;
pub mod counterfactual;
pub mod diff;
pub mod evaluate;
pub mod inspect;
pub mod investigate;
pub mod provenance;
pub mod rollback;
pub mod search;
pub mod verify;

/// Load the run at `location` and run `command` on it with its report begun as `report`; when
/// a finding prevents loading the run, the report is `report` with that finding as its verdict
/// and problem (`specs/replay-cli.md` §2.1).
pub fn on_run<R: Report>(
    location: &str,
    load: &LoadOptions,
    mut report: R,
    command: impl FnOnce(&RunContext, R) -> Result<R, CommandError>,
) -> Result<R, CommandError> {
    match context::load(location, load)? {
        Ok(ctx) => command(&ctx, report),
        Err(p) => {
            let header = report.header_mut();
            header.verdict = p.kind;
            header.problems.push(p);
            Ok(report)
        }
    }
}
