//! The document of `replay investigate` (`investigation.json`), which the renderers read.

use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::probe::Behaviour;

use crate::commands::attribute::AttributeReport;
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
    /// The reported trigger; none when the investigation started from inputs that show the
    /// behaviour (`withheld`).
    pub trigger: Option<String>,
    /// The investigation without a trigger: the inputs and the attribution that found the
    /// suspects.
    pub withheld: Option<Withheld>,
    pub target: String,
    /// The search's patterns (none when the suspects were found by attribution).
    pub patterns: Vec<String>,
    /// The committed data the search is a statement about.
    pub dataset_root: Hash32,
    pub examples_searched: u64,
    /// The examples that match (or that attribution proved), each with the steps that used it.
    pub suspects: Vec<Match>,
    pub probe: String,
    pub probe_blake3: Hash32,
    /// Most tokens a language model generated per prompt.
    pub max_new_tokens: u64,
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
/// An investigation from inputs that show the behaviour, the trigger withheld (`--behaviour`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withheld {
    /// The inputs as given, and their `file_hash`.
    pub inputs: String,
    pub inputs_blake3: Hash32,
    /// Of the `rows` inputs, how many show the behaviour in the model as trained: those are the
    /// attribution's probe.
    pub showing: u64,
    pub rows: u64,
    /// The ranking and its proof, as `attribute --prove` reports them.
    pub attribution: Option<AttributeReport>,
}

impl Withheld {
    /// The record of `inputs`, before anything is run through them.
    pub fn of(inputs: &crate::commands::counterfactual::ProbeInput) -> Self {
        Withheld {
            inputs: inputs.name.clone(),
            inputs_blake3: snapshot_format::hash::file_hash(&inputs.bytes),
            showing: 0,
            rows: 0,
            attribution: None,
        }
    }
}

impl InvestigateReport {
    /// The attribution that found the suspects, when there was one.
    pub fn attribution(&self) -> Option<&AttributeReport> {
        self.withheld.as_ref().and_then(|w| w.attribution.as_ref())
    }

    /// Counterfactual replays run: the proof's trials and the history without the suspects.
    pub fn replays(&self) -> u64 {
        let proof = self.attribution().and_then(|a| a.proof.as_ref());
        proof.map_or(0, |p| p.trials.len() as u64) + u64::from(self.history.is_some())
    }

    /// Set every timing to 0, for the stored document (the same command writes the same bytes).
    pub fn clear_timings(&mut self) {
        self.seconds = 0.0;
        if let Some(h) = self.history.as_mut() {
            h.seconds = 0.0;
            h.clear_timings();
        }
        if let Some(a) = self.withheld.as_mut().and_then(|w| w.attribution.as_mut()) {
            a.clear_timings();
        }
    }
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
pub fn suspect_steps(suspects: &[Match]) -> Vec<u64> {
    let steps: std::collections::BTreeSet<u64> = suspects
        .iter()
        .flat_map(|m| m.uses.iter().map(|u| u.step))
        .collect();
    steps.into_iter().collect()
}
