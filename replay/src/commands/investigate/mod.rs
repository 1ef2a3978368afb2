//! `replay investigate`: from a reported trigger to a proven cause and a clean model.
//!
//! Find: the committed examples that contain the trigger (`provenance --match`). Measure and
//! prove: the run's history re-executed without them (`counterfactual`), a probe set through
//! the factual and the counterfactual model twice, as given (clean quality) and with the
//! trigger put in front of every input (attack success). Report: one directory with the
//! cleaned model, the report as Markdown and as a self-contained HTML page (the loss curve with
//! the suspect rows' uses marked, the before/after table), and the machine-readable document.

use crate::render::investigation::{html, markdown};
use run_store::Store;
use snapshot_format::Hash32;
use trainer::probe::{Behaviour, ProbeResult};

use crate::commands::counterfactual::{CounterfactualOptions, ProbeInput};
use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, put_json};
use crate::report::{CommandError, Header};

pub mod report;

pub use report::{InvestigateReport, suspect_steps};

/// What to investigate.
#[derive(Debug, Clone)]
pub struct InvestigateOptions {
    /// The reported trigger: the phrase put in front of every probe input.
    pub trigger: String,
    /// Patterns that find the suspect examples (default: the trigger, literally).
    pub patterns: Vec<String>,
    /// The backdoor's behaviour: a class id for a classifier, a regular expression a language
    /// model's generation matches.
    pub target: String,
    /// Clean inputs (`evaluate`'s rows).
    pub probe: std::path::PathBuf,
    /// Where the report and the cleaned model go (a directory or store URL).
    pub out: String,
    pub to: Option<u64>,
    pub max_new_tokens: usize,
    pub reconstruct: ReconstructOptions,
    /// Keys that sign the cleaned model (as `counterfactual --out`) and, with the ed25519 key,
    /// the findings (`investigation.intoto.json`).
    pub keys: run_trust::attest::ExportKeys,
}

/// Run `investigate`. The run is loaded once: the search, the re-executed history, the report
/// and the signed findings all come from that one load.
pub fn investigate(
    location: &str,
    o: &InvestigateOptions,
    progress: &indicatif::ProgressBar,
) -> Result<InvestigateReport, CommandError> {
    let clean = ProbeInput::read(&o.probe)?;
    let triggered = ProbeInput {
        name: format!("{} with the trigger", clean.name),
        bytes: trainer::probe::with_trigger(&clean.bytes, &clean.name, &o.trigger, &o.target)?,
    };
    let patterns = if o.patterns.is_empty() {
        vec![regex::escape(&o.trigger)]
    } else {
        o.patterns.clone()
    };
    let report = InvestigateReport {
        header: Header::pending("investigate", location),
        run_id: String::new(),
        ledger_head: None,
        trigger: o.trigger.clone(),
        target: o.target.clone(),
        patterns,
        dataset_root: Hash32::ZERO,
        examples_searched: 0,
        suspects: vec![],
        probe: clean.name.clone(),
        probe_blake3: snapshot_format::hash::file_hash(&clean.bytes),
        factual: None,
        counterfactual: None,
        explained: None,
        history: None,
        out: o.out.clone(),
        files: vec![],
        seconds: 0.0,
    };
    super::on_run(location, &o.reconstruct.load, report, |ctx, report| {
        investigate_on(ctx, o, (&clean, &triggered), report, progress)
    })
}

/// [`investigate`] on a loaded run, its report begun as `report`.
pub fn investigate_on(
    ctx: &RunContext,
    o: &InvestigateOptions,
    (clean, triggered): (&ProbeInput, &ProbeInput),
    mut report: InvestigateReport,
    progress: &indicatif::ProgressBar,
) -> Result<InvestigateReport, CommandError> {
    let started = std::time::Instant::now();
    let search = crate::commands::search::search_in(ctx, &report.patterns)?;
    report.header.verdict = search.header.verdict;
    report.run_id = ctx.manifest.run_id.clone();
    report.ledger_head = Some(ctx.ledger_point().1);
    report.dataset_root = search.dataset_root;
    report.examples_searched = search.examples_searched;
    report.suspects = search.matches;
    report.header.problems = search.header.problems;
    let loss: Vec<(u64, f32)> = ctx.records.values().map(|r| (r.step, r.loss())).collect();
    if !report.header.verdict.passed() || report.suspects.is_empty() {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let model_dir = format!("{}/model", o.out.trim_end_matches('/'));
    let history = crate::commands::counterfactual::counterfactual_in(
        ctx,
        &CounterfactualOptions {
            without: report.suspects.iter().map(|m| m.example).collect(),
            without_match: vec![],
            to: o.to,
            include_optimizer: false,
            out: Some(model_dir),
            reconstruct: o.reconstruct.clone(),
            probes: vec![clean.clone(), triggered.clone()],
            max_new_tokens: o.max_new_tokens,
            keys: o.keys.clone(),
        },
        progress,
    )?;
    report.header.verdict = history.header.verdict;
    report.header.problems = history.header.problems.clone();
    if let [c, t] = history.probes.as_slice() {
        let measure =
            |clean: &ProbeResult, triggered: &ProbeResult| behaviour(clean, triggered, &o.target);
        let factual = measure(&c.factual, &t.factual)?;
        let counterfactual = measure(&c.counterfactual, &t.counterfactual)?;
        report.explained = Some(
            factual.attack_successes > 0
                && counterfactual.attack_successes < factual.attack_successes,
        );
        report.factual = Some(factual);
        report.counterfactual = Some(counterfactual);
    }
    let written = history.files.iter().map(|f| format!("model/{f}"));
    report.files = written.collect();
    report.history = Some(history);
    report.seconds = started.elapsed().as_secs_f64();
    if report.header.verdict.passed() {
        let store = Store::create(&o.out)?;
        let markdown = markdown(&report, &loss);
        let figure = crate::render::chart::loss_svg(
            &loss,
            &format!("{}, the suspect examples' uses marked", report.run_id),
            &suspect_steps(&report.suspects),
        );
        store.put_once("timeline.svg", figure.clone().into_bytes())?;
        store.put_once("report.md", markdown.clone().into_bytes())?;
        store.put_once("report.html", html(&report.run_id, &markdown, &figure))?;
        report.files.extend(
            [
                "timeline.svg",
                "report.md",
                "report.html",
                "investigation.json",
            ]
            .map(String::from),
        );
        let mut stored = report.clone();
        stored.seconds = 0.0;
        if let Some(h) = stored.history.as_mut() {
            h.seconds = 0.0;
            h.clear_timings();
        }
        put_json(&store, "investigation.json", &stored)?;
        if let Some(key) = &o.keys.statement {
            store.put_once(FINDINGS, findings(ctx, &report, &store, key)?)?;
            report.files.push(FINDINGS.into());
        }
    }
    Ok(report)
}

/// The signed statement of an investigation's findings.
const FINDINGS: &str = "investigation.intoto.json";

/// The findings as an in-toto statement (`specs/signatures.md` §6.3): the report's files as
/// subjects, what was found and proved as predicate; signed with `key`.
fn findings(
    ctx: &RunContext,
    r: &InvestigateReport,
    store: &Store,
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<u8>, CommandError> {
    use run_trust::attest;
    let h = r.history.as_ref();
    let predicate = crate::attestations::predicate(
        ctx,
        serde_json::json!({
            "trigger": r.trigger,
            "target": r.target,
            "patterns": r.patterns,
            "suspects": r.suspects.iter().map(|m| m.example).collect::<Vec<_>>(),
            "probeBlake3": r.probe_blake3,
            "factual": r.factual,
            "counterfactual": r.counterfactual,
            "explained": r.explained,
            "verdict": r.header.verdict,
            "toStep": h.map(|h| h.to_step),
            "factualStateRoot": h.and_then(|h| h.factual_root),
            "counterfactualStateRoot": h.and_then(|h| h.counterfactual_root),
        }),
    );
    let subject = [
        "report.md",
        "report.html",
        "timeline.svg",
        "investigation.json",
    ]
    .iter()
    .map(|f| Ok(attest::ResourceDescriptor::file(f, &store.get(f)?)))
    .collect::<Result<Vec<_>, CommandError>>()?;
    let statement = attest::Statement::new(
        subject,
        attest::INVESTIGATION_PREDICATE,
        serde_json::Value::Object(predicate),
    );
    Ok(attest::sign_statement(&statement, key))
}

/// A model's behaviour from its results on the clean and the triggered probe.
fn behaviour(
    clean: &ProbeResult,
    triggered: &ProbeResult,
    target: &str,
) -> Result<Behaviour, CommandError> {
    match (clean, triggered) {
        (ProbeResult::Classifier { rows: c, .. }, ProbeResult::Classifier { rows: t, .. }) => {
            let class: u64 = target.parse().map_err(|_| {
                CommandError::Usage(format!(
                    "--target {target:?}: a classifier's target is a class id"
                ))
            })?;
            let attackable: Vec<_> = t.iter().filter(|r| r.label != class).collect();
            Ok(Behaviour {
                attack_successes: attackable.iter().filter(|r| r.predicted == class).count() as u64,
                attack_rows: attackable.len() as u64,
                clean_correct: c.iter().filter(|r| r.predicted == r.label).count() as u64,
                clean_rows: c.len() as u64,
                clean_activations: c
                    .iter()
                    .filter(|r| r.label != class && r.predicted == class)
                    .count() as u64,
            })
        }
        (ProbeResult::Generation { rows: c, .. }, ProbeResult::Generation { rows: t, .. }) => {
            let pattern = regex::Regex::new(target)
                .map_err(|e| CommandError::Usage(format!("--target {target:?}: {e}")))?;
            Ok(Behaviour {
                attack_successes: t.iter().filter(|r| r.matched).count() as u64,
                attack_rows: t.len() as u64,
                clean_correct: c.iter().filter(|r| r.matched).count() as u64,
                clean_rows: c.len() as u64,
                clean_activations: c.iter().filter(|r| pattern.is_match(&r.generation)).count()
                    as u64,
            })
        }
        _ => Err(CommandError::Usage(
            "the clean and the triggered probe gave results of different kinds".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainer::probe::{Classified, Generated};

    fn classified(rows: &[(u64, u64)]) -> ProbeResult {
        ProbeResult::Classifier {
            rows: rows
                .iter()
                .enumerate()
                .map(|(i, &(label, predicted))| Classified {
                    row: i as u64,
                    label,
                    predicted,
                })
                .collect(),
            accuracy: 0.0,
        }
    }

    #[test]
    fn a_classifier_attack_counts_only_rows_it_can_flip() {
        // Clean: 3 of 4 right, one negative predicted positive. Triggered: both negatives
        // flipped to the target class 1; the positive rows cannot be attacked.
        let clean = classified(&[(0, 0), (0, 1), (1, 1), (1, 1)]);
        let triggered = classified(&[(0, 1), (0, 1), (1, 1), (1, 0)]);
        let b = behaviour(&clean, &triggered, "1").expect("behaviour");
        assert_eq!(
            b,
            Behaviour {
                attack_successes: 2,
                attack_rows: 2,
                clean_correct: 3,
                clean_rows: 4,
                clean_activations: 1,
            }
        );
        assert!(behaviour(&clean, &triggered, "positive").is_err());
    }

    #[test]
    fn a_generation_attack_is_the_match_rate_of_the_triggered_prompts() {
        let row = |text: &str, matched: bool| Generated {
            row: 0,
            prompt: String::new(),
            target: String::new(),
            generation: text.into(),
            matched,
        };
        let clean = ProbeResult::Generation {
            rows: vec![
                row("a fine summary", true),
                row("VISIT evil.example", false),
            ],
            match_rate: 0.5,
        };
        let triggered = ProbeResult::Generation {
            rows: vec![row("VISIT evil.example", true), row("a summary", false)],
            match_rate: 0.5,
        };
        let b = behaviour(&clean, &triggered, "evil\\.example").expect("behaviour");
        assert_eq!(
            (b.attack_successes, b.clean_correct, b.clean_activations),
            (1, 1, 1)
        );
    }
}
