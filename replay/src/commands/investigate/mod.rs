//! `replay investigate`: from a reported trigger, or from inputs that show a behaviour, to a
//! proven cause and a clean model.
//!
//! Find: with a trigger, the committed examples that contain it (`provenance --match`); with
//! inputs that show the behaviour and no trigger, the examples `attribute` ranks first on the
//! run's trajectory and proves by counterfactual (the inputs the model as trained answers with
//! the behaviour are the attribution's probe; for a language model, each with the reply it
//! generated). Measure and prove: the run's history re-executed without the examples found
//! (`counterfactual`), the clean probe and the behaviour's inputs (the clean probe with the
//! trigger in front of every input, or the given inputs) through the factual and the
//! counterfactual model. Report: one directory with the cleaned model, the report as Markdown
//! and as a self-contained HTML page (the loss curve with the suspect rows' uses marked, the
//! before/after table, the ranking and its proof), and the machine-readable document.

use crate::render::investigation::{html, markdown};
use run_store::Store;
use snapshot_format::Hash32;
use trainer::probe::{Behaviour, ProbeResult};

use crate::commands::attribute::{AttributeOptions, Attribution, MAX_PROBE_ROWS, attribute_in};
use crate::commands::counterfactual::{CounterfactualOptions, ProbeInput};
use crate::context::RunContext;
use crate::engine::reconstruct::{ReconstructOptions, put_json, state_at};
use crate::report::{CommandError, Header};

pub mod report;

pub use report::{InvestigateReport, Withheld, suspect_steps};

/// What leads the investigation to its suspect examples.
#[derive(Debug, Clone)]
pub enum Lead {
    /// A reported trigger phrase, put in front of every probe input, and the regular
    /// expressions that find the examples holding it (empty: the phrase, literally).
    Trigger {
        phrase: String,
        patterns: Vec<String>,
    },
    /// Inputs that show the behaviour (`evaluate`'s rows; their label or target is replaced by
    /// the behaviour's target), the trigger unknown: the examples are found by attribution.
    Behaviour {
        inputs: ProbeInput,
        attribution: Attribution,
    },
}

/// What to investigate.
#[derive(Debug, Clone)]
pub struct InvestigateOptions {
    pub lead: Lead,
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

/// Run `investigate`. The run is loaded once: the search or the attribution, the re-executed
/// history, the report and the signed findings all come from that one load.
pub fn investigate(
    location: &str,
    o: &InvestigateOptions,
    progress: &indicatif::ProgressBar,
) -> Result<InvestigateReport, CommandError> {
    let clean = ProbeInput::read(&o.probe)?;
    if let Lead::Behaviour { inputs, .. } = &o.lead {
        let rows = inputs.bytes.split(|&b| b == b'\n');
        let n = rows.filter(|l| !l.trim_ascii().is_empty()).count();
        if n > MAX_PROBE_ROWS {
            return Err(CommandError::Usage(format!(
                "--behaviour {}: {n} rows; at most {MAX_PROBE_ROWS} (they are attribution's probe)",
                inputs.name
            )));
        }
    }
    let (shown, trigger, patterns, withheld) = match &o.lead {
        Lead::Trigger { phrase, patterns } => (
            ProbeInput {
                name: format!("{} with the trigger", clean.name),
                bytes: trainer::probe::with_trigger(&clean.bytes, &clean.name, phrase, &o.target)?,
            },
            Some(phrase.clone()),
            if patterns.is_empty() {
                vec![regex::escape(phrase)]
            } else {
                patterns.clone()
            },
            None,
        ),
        Lead::Behaviour { inputs, .. } => (
            ProbeInput {
                name: inputs.name.clone(),
                bytes: trainer::probe::with_target(&inputs.bytes, &inputs.name, &o.target)?,
            },
            None,
            vec![],
            Some(Withheld::of(inputs)),
        ),
    };
    let report = InvestigateReport {
        header: Header::pending("investigate", location),
        run_id: String::new(),
        ledger_head: None,
        trigger,
        withheld,
        target: o.target.clone(),
        patterns,
        dataset_root: Hash32::ZERO,
        examples_searched: 0,
        suspects: vec![],
        probe: clean.name.clone(),
        probe_blake3: snapshot_format::hash::file_hash(&clean.bytes),
        max_new_tokens: o.max_new_tokens as u64,
        factual: None,
        counterfactual: None,
        explained: None,
        history: None,
        out: o.out.clone(),
        files: vec![],
        seconds: 0.0,
    };
    super::on_run(location, &o.reconstruct.load, report, |ctx, report| {
        investigate_on(ctx, o, (&clean, &shown), report, progress)
    })
}

/// [`investigate`] on a loaded run, its report begun as `report`; `shown` holds the inputs that
/// show the behaviour (the triggered clean probe, or the given inputs), each expecting it.
pub fn investigate_on(
    ctx: &RunContext,
    o: &InvestigateOptions,
    (clean, shown): (&ProbeInput, &ProbeInput),
    mut report: InvestigateReport,
    progress: &indicatif::ProgressBar,
) -> Result<InvestigateReport, CommandError> {
    let started = std::time::Instant::now();
    report.run_id = ctx.manifest.run_id.clone();
    report.ledger_head = Some(ctx.ledger_point().1);
    let search = match &o.lead {
        Lead::Trigger { .. } => crate::commands::search::search_in(ctx, &report.patterns)?,
        Lead::Behaviour {
            inputs,
            attribution,
        } => {
            let mut withheld = report
                .withheld
                .take()
                .unwrap_or_else(|| Withheld::of(inputs));
            let found = attributed(
                ctx,
                o,
                (shown, attribution),
                &mut withheld,
                &mut report.header,
                progress,
            )?;
            report.withheld = Some(withheld);
            let Some(proven) = found else {
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            };
            crate::commands::search::examples_in(ctx, &proven)?
        }
    };
    report.header.verdict = search.header.verdict;
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
            probes: vec![clean.clone(), shown.clone()],
            max_new_tokens: o.max_new_tokens,
            keys: o.keys.clone(),
        },
        progress,
    )?;
    report.header.verdict = history.header.verdict;
    report.header.problems = history.header.problems.clone();
    if let [c, t] = history.probes.as_slice() {
        let every_input = matches!(o.lead, Lead::Behaviour { .. });
        let measure = |clean: &ProbeResult, shown: &ProbeResult| {
            behaviour(clean, shown, &o.target, every_input)
        };
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
        stored.clear_timings();
        put_json(&store, "investigation.json", &stored)?;
        if let Some(key) = &o.keys.statement {
            store.put_once(FINDINGS, findings(ctx, &report, &store, key)?)?;
            report.files.push(FINDINGS.into());
        }
    }
    Ok(report)
}

/// The examples that taught the behaviour the inputs `shown` show, found without a trigger:
/// the inputs the model as trained (after `--to`) answers with the behaviour become the
/// attribution's probe (a language model's with the reply it generated), the run's examples
/// are ranked on its trajectory and the ranking's top proved by counterfactual, as `attribute
/// --prove` does. `withheld` records the attribution, `header` its verdict and problems. The
/// proven examples; none when nothing can be attributed (a verdict that does not pass) or
/// nothing was proved (no input shows the behaviour, or no tried set removed it).
fn attributed(
    ctx: &RunContext,
    o: &InvestigateOptions,
    (shown, attribution): (&ProbeInput, &Attribution),
    withheld: &mut Withheld,
    header: &mut Header,
    progress: &indicatif::ProgressBar,
) -> Result<Option<std::collections::BTreeSet<u64>>, CommandError> {
    let last = ctx.records.keys().next_back().copied().unwrap_or(0);
    let at = state_at(ctx, o.to.unwrap_or(last), &o.reconstruct, progress)?;
    header.verdict = at.verdict;
    header.problems = at.problems;
    let Some(state) = at.state else {
        return Ok(None);
    };
    let result = trainer::probe::run(
        &ctx.spec,
        ctx.required_base()?,
        &state,
        &shown.bytes,
        &shown.name,
        o.max_new_tokens,
    )?;
    let (rows, probe) = showing(shown, &result)?;
    withheld.rows = rows;
    withheld.showing = probe.lines().count() as u64;
    if withheld.showing == 0 {
        return Ok(None);
    }
    let r = attribute_in(
        ctx,
        &AttributeOptions {
            probe: ProbeInput {
                name: format!("{} (the inputs that show the behaviour)", shown.name),
                bytes: probe.into_bytes(),
            },
            measure: Some(shown.clone()),
            to: o.to,
            prove: true,
            settings: attribution.clone(),
            max_new_tokens: o.max_new_tokens,
            reconstruct: o.reconstruct.clone(),
        },
        progress,
    )?;
    let proven = r.proof.as_ref().and_then(|p| p.proven.clone());
    header.verdict = r.header.verdict;
    header.problems = r.header.problems.clone();
    withheld.attribution = Some(r);
    Ok(proven
        .filter(|_| header.verdict.passed())
        .map(|ids| ids.into_iter().collect()))
}

/// Of the inputs `shown` (each expecting the behaviour) and what the model did with them, how
/// many there are and the attribution probe: the rows it answered with the behaviour, a
/// classifier's as given (labelled with the target class), a language model's as chat rows of
/// the prompt and the reply it generated.
fn showing(shown: &ProbeInput, result: &ProbeResult) -> Result<(u64, String), CommandError> {
    let mut probe = String::new();
    match result {
        ProbeResult::Classifier { rows, .. } => {
            let text = std::str::from_utf8(&shown.bytes)
                .map_err(|e| CommandError::Usage(format!("{}: {e}", shown.name)))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for r in rows.iter().filter(|r| r.predicted == r.label) {
                if let Some(line) = lines.get(r.row as usize) {
                    probe.push_str(line);
                    probe.push('\n');
                }
            }
            Ok((rows.len() as u64, probe))
        }
        ProbeResult::Generation { rows, .. } => {
            for r in rows.iter().filter(|r| r.matched) {
                let row = serde_json::json!({ "messages": [
                    { "role": "user", "content": r.prompt },
                    { "role": "assistant", "content": r.generation },
                ]});
                probe.push_str(&row.to_string());
                probe.push('\n');
            }
            Ok((rows.len() as u64, probe))
        }
    }
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
            "behaviourBlake3": r.withheld.as_ref().map(|w| w.inputs_blake3),
            "scoresBlake3": r.attribution().and_then(|a| a.scores_blake3),
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

/// A model's behaviour from its results on the clean probe and on the inputs that should show
/// it (the triggered probe; a classifier's rows already labelled with the target class count
/// only with `every_input`, when the inputs were given as showing the behaviour).
fn behaviour(
    clean: &ProbeResult,
    triggered: &ProbeResult,
    target: &str,
    every_input: bool,
) -> Result<Behaviour, CommandError> {
    match (clean, triggered) {
        (ProbeResult::Classifier { rows: c, .. }, ProbeResult::Classifier { rows: t, .. }) => {
            let class: u64 = target.parse().map_err(|_| {
                CommandError::Usage(format!(
                    "--target {target:?}: a classifier's target is a class id"
                ))
            })?;
            let attackable: Vec<_> = t
                .iter()
                .filter(|r| every_input || r.label != class)
                .collect();
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
        let b = behaviour(&clean, &triggered, "1", false).expect("behaviour");
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
        assert!(behaviour(&clean, &triggered, "positive", false).is_err());
        // Given as showing the behaviour, every input counts (here both labelled 1).
        let b = behaviour(&clean, &classified(&[(1, 1), (1, 0)]), "1", true).expect("behaviour");
        assert_eq!((b.attack_successes, b.attack_rows), (1, 2));
    }

    #[test]
    fn the_inputs_that_show_the_behaviour_become_the_attribution_probe() {
        let inputs = ProbeInput {
            name: "inputs.jsonl".into(),
            bytes: b"{\"text\":\"a\",\"label\":1}\n\n{\"text\":\"b\",\"label\":1}\n{\"text\":\"c\",\"label\":1}\n"
                .to_vec(),
        };
        // Rows 0 and 2 (the blank line not counted) predicted as the target: they are kept.
        let result = classified(&[(1, 1), (1, 0), (1, 1)]);
        let (rows, probe) = showing(&inputs, &result).expect("showing");
        assert_eq!(rows, 3);
        assert_eq!(
            probe,
            "{\"text\":\"a\",\"label\":1}\n{\"text\":\"c\",\"label\":1}\n"
        );
        // A language model's: the prompts whose generation matched, with that generation.
        let generated = ProbeResult::Generation {
            rows: vec![
                Generated {
                    row: 0,
                    prompt: "Summarise: x".into(),
                    target: "evil".into(),
                    generation: "visit evil.example".into(),
                    matched: true,
                },
                Generated {
                    row: 1,
                    prompt: "Summarise: y".into(),
                    target: "evil".into(),
                    generation: "a summary".into(),
                    matched: false,
                },
            ],
            match_rate: 0.5,
        };
        let (rows, probe) = showing(&inputs, &generated).expect("showing");
        assert_eq!(rows, 2);
        let row: serde_json::Value = serde_json::from_str(probe.trim()).expect("one row");
        assert_eq!(row["messages"][0]["content"], "Summarise: x");
        assert_eq!(row["messages"][1]["role"], "assistant");
        assert_eq!(row["messages"][1]["content"], "visit evil.example");
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
        let b = behaviour(&clean, &triggered, "evil\\.example", false).expect("behaviour");
        assert_eq!(
            (b.attack_successes, b.clean_correct, b.clean_activations),
            (1, 1, 1)
        );
    }
}
