//! The document of `replay investigate` (`investigation.json`), which the renderers read.

use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::probe::Behaviour;

use crate::commands::counterfactual::CounterfactualReport;
use crate::commands::search::Match;
use crate::report::{Header, Report};

/// The JSON document of `replay investigate --json` (also written as `investigation.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvestigateReport {
    #[serde(flatten)]
    pub header: Header,
    pub run_id: String,
    pub ledger_head: Option<Hash32>,
    pub trigger: String,
    pub target: String,
    pub patterns: Vec<String>,
    /// The committed data the search is a statement about.
    pub dataset_root: Hash32,
    pub examples_searched: u64,
    /// The examples that match, each with the steps that used it.
    pub suspects: Vec<Match>,
    pub probe: String,
    pub probe_blake3: Hash32,
    /// The factual model (after the last step) and the model trained without the suspects.
    pub factual: Option<Behaviour>,
    pub counterfactual: Option<Behaviour>,
    /// Whether the trigger works in the factual model and removing the suspects lowers its
    /// attack success (exit 0); false when either does not hold (exit 4). None when there was
    /// nothing to measure (no suspect, or a verdict that does not pass).
    pub explained: Option<bool>,
    /// The re-executed history, as `counterfactual` reports it (its `probes` are the clean and
    /// the triggered probe).
    pub history: Option<CounterfactualReport>,
    pub out: String,
    /// Files written under `out` (the cleaned model under `model/`).
    pub files: Vec<String>,
    pub seconds: f64,
}
impl Report for InvestigateReport {
    fn header(&self) -> &Header {
        &self.header
    }

    fn header_mut(&mut self) -> &mut Header {
        &mut self.header
    }

    /// The exit status: the verdict's, or 4 when it passes and the suspects do not explain the
    /// behaviour.
    fn exit_code(&self) -> u8 {
        match (self.header.verdict.passed(), self.explained) {
            (true, Some(true)) => 0,
            (true, _) => 4,
            (false, _) => self.header.verdict.exit_code(),
        }
    }
}
/// Every step that used a suspect example, in order, once.
/// The steps that used any of the suspects, in order.
pub fn suspect_steps(suspects: &[Match]) -> Vec<u64> {
    let steps: std::collections::BTreeSet<u64> = suspects
        .iter()
        .flat_map(|m| m.uses.iter().map(|u| u.step))
        .collect();
    steps.into_iter().collect()
}
