//! `replay provenance`: every step whose batch contained a given example.

use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;

use crate::context::{LoadOptions, RunContext};
use crate::report::{Claim, CommandError, Header, Report, Verdict};

/// One use of the example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Use {
    pub step: u64,
    pub epoch: u64,
    /// Position in the batch.
    pub position: u64,
}

/// The JSON document of `replay provenance --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvenanceReport {
    #[serde(flatten)]
    pub header: Header,
    pub example: u64,
    pub committed_hash: Option<Hash32>,
    pub current_hash: Option<Hash32>,
    pub uses: Vec<Use>,
    /// Steps the scan covered.
    pub steps_scanned: u64,
}

impl Report for ProvenanceReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }
}

/// Run `provenance`.
pub fn provenance(
    location: &str,
    example: u64,
    load: &LoadOptions,
) -> Result<ProvenanceReport, CommandError> {
    let report = ProvenanceReport {
        header: Header::pending("provenance", location),
        example,
        committed_hash: None,
        current_hash: None,
        uses: vec![],
        steps_scanned: 0,
    };
    super::on_run(location, load, report, |ctx, report| {
        provenance_on(ctx, example, report)
    })
}

/// [`provenance`] on a loaded run, its report begun as `report`.
pub fn provenance_on(
    ctx: &RunContext,
    example: u64,
    mut report: ProvenanceReport,
) -> Result<ProvenanceReport, CommandError> {
    if example >= ctx.spec.data.examples {
        return Err(CommandError::Usage(format!(
            "--example {example}: the dataset has examples 0..{}",
            ctx.spec.data.examples
        )));
    }
    report.committed_hash = ctx
        .dataset_manifest
        .as_ref()
        .and_then(|m| m.example_hashes.get(example as usize).copied());
    report.current_hash = ctx
        .dataset
        .as_ref()
        .and_then(|d| d.manifest.example_hashes.get(example as usize).copied());
    for r in ctx.records.values() {
        for (position, _) in r
            .example_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == example)
        {
            report.uses.push(Use {
                step: r.step,
                epoch: r.epoch,
                position: position as u64,
            });
        }
    }
    report.steps_scanned = ctx.records.len() as u64;
    // Every problem of the run counts: damage to the ledger means uses may be missing from the
    // list, a bad signature that the history may not be the signer's.
    let mut assessment = ctx.assessment();
    if report.committed_hash.is_some() && report.committed_hash != report.current_hash {
        assessment.outcome(Verdict::InputMismatch);
    }
    report.header.assess(&assessment, Claim::Integrity);
    Ok(report)
}
