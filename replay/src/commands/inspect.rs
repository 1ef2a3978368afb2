//! `replay inspect`: a summary of a run, with its loss curve as text or SVG.

use crate::render::chart::loss_svg;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use snapshot_format::manifest::EnvironmentFingerprint;

use crate::context::{self, LoadOptions, RunContext};
use crate::report::{Claim, CommandError, Header, Report};

/// The JSON document of `replay inspect --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectReport {
    #[serde(flatten)]
    pub header: Header,
    pub run_id: String,
    pub created_unix: u64,
    pub engine: String,
    pub spec: serde_json::Value,
    pub parameters: Option<u64>,
    pub steps_total: u64,
    pub steps_recorded: u64,
    pub checkpoints: Vec<u64>,
    pub segments: u64,
    pub complete: bool,
    pub ledger_head: Option<Hash32>,
    pub final_state_root: Option<Hash32>,
    pub environment: EnvironmentFingerprint,
    pub environment_class: Hash32,
    /// (step, loss) of every recorded step.
    pub loss: Vec<(u64, f32)>,
    /// Where the SVG loss curve was written, if asked.
    pub svg: Option<String>,
}

impl Report for InspectReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

/// Run `inspect`; with `svg`, also write the loss curve there.
pub fn inspect(
    location: &str,
    svg: Option<&std::path::Path>,
    load: &LoadOptions,
) -> Result<InspectReport, CommandError> {
    let ctx = context::load(location, load)?
        .map_err(|p| CommandError::Usage(format!("{}: {}", p.artefact, p.detail)))?;
    inspect_on(&ctx, svg)
}

/// [`inspect`] on a loaded run.
pub fn inspect_on(
    ctx: &RunContext,
    svg: Option<&std::path::Path>,
) -> Result<InspectReport, CommandError> {
    let location = ctx.location.as_str();
    let parameters = ctx.states.header(0).ok().map(|h| {
        h.tensors
            .iter()
            .filter(|t| !t.name.starts_with("optimizer."))
            .map(|t| t.shape.iter().product::<u64>())
            .sum()
    });
    let loss: Vec<(u64, f32)> = ctx.records.values().map(|r| (r.step, r.loss())).collect();
    let svg_path = match svg {
        Some(path) => {
            std::fs::write(path, loss_svg(&loss, &ctx.manifest.run_id, &[]))
                .map_err(|e| CommandError::Usage(format!("{}: {e}", path.display())))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let last = ctx.records.values().next_back();
    Ok(InspectReport {
        header: ctx
            .assessment()
            .header("inspect", location, Claim::Integrity),
        run_id: ctx.manifest.run_id.clone(),
        created_unix: ctx.manifest.created_unix,
        engine: format!(
            "{} {}",
            ctx.manifest.engine.name, ctx.manifest.engine.version
        ),
        spec: ctx.manifest.spec.clone(),
        parameters,
        steps_total: ctx.spec.run.steps,
        steps_recorded: ctx.records.len() as u64,
        checkpoints: ctx.checkpoints.clone(),
        segments: ctx.segments.len() as u64,
        complete: ctx.completion.is_some(),
        ledger_head: last.map(|r| r.hash()),
        final_state_root: ctx.completion.as_ref().map(|c| c.final_state_root),
        environment_class: ctx.manifest.environment.class(),
        environment: ctx.manifest.environment.clone(),
        loss,
        svg: svg_path,
    })
}
