//! `replay investigate`: from a reported trigger to a proven cause and a clean model.
//!
//! Find: the committed examples that contain the trigger (`provenance --match`). Measure and
//! prove: the run's history re-executed without them (`counterfactual`), a probe set through
//! the factual and the counterfactual model twice, as given (clean quality) and with the
//! trigger put in front of every input (attack success). Report: one directory with the
//! cleaned model, the report as Markdown and as a self-contained HTML page (the loss curve with
//! the suspect rows' uses marked, the before/after table), and the machine-readable document.

use run_store::Store;
use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;
use trainer::probe::ProbeResult;

use crate::context::RunContext;
use crate::counterfactual::{CounterfactualOptions, CounterfactualReport, ProbeInput};
use crate::provenance::Match;
use crate::report::{CommandError, Problem, Verdict};
use crate::rollback::{ReconstructOptions, put_json};

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

/// How a model behaves on the probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Triggered inputs that show the target behaviour, of those that can (a classifier's rows
    /// whose label is not the target class; every prompt of a language model).
    pub attack_successes: u64,
    pub attack_rows: u64,
    /// Clean inputs handled as their row says (the label; the row's own target pattern).
    pub clean_correct: u64,
    pub clean_rows: u64,
    /// Clean inputs that show the target behaviour anyway.
    pub clean_activations: u64,
}

impl Behaviour {
    pub fn attack_success_rate(&self) -> f64 {
        ratio(self.attack_successes, self.attack_rows)
    }

    pub fn clean_quality(&self) -> f64 {
        ratio(self.clean_correct, self.clean_rows)
    }
}

fn ratio(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// The JSON document of `replay investigate --json` (also written as `investigation.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvestigateReport {
    pub command: String,
    pub run: String,
    /// The verdict of the counterfactual (and of the search when it does not pass).
    pub verdict: Verdict,
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
    pub problems: Vec<Problem>,
    pub out: String,
    /// Files written under `out` (the cleaned model under `model/`).
    pub files: Vec<String>,
    pub seconds: f64,
}

impl InvestigateReport {
    /// The exit status: the verdict's, or 4 when it passes and the suspects do not explain the
    /// behaviour.
    pub fn exit_code(&self) -> u8 {
        match (self.verdict.passed(), self.explained) {
            (true, Some(true)) => 0,
            (true, _) => 4,
            (false, _) => self.verdict.exit_code(),
        }
    }
}

/// Run `investigate`. The run is loaded once: the search, the re-executed history, the report
/// and the signed findings all come from that one load.
pub fn investigate(
    location: &str,
    o: &InvestigateOptions,
    progress: &indicatif::ProgressBar,
) -> Result<InvestigateReport, CommandError> {
    let started = std::time::Instant::now();
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
    let mut report = InvestigateReport {
        command: "investigate".into(),
        run: location.into(),
        verdict: Verdict::Ok,
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
        problems: vec![],
        out: o.out.clone(),
        files: vec![],
        seconds: 0.0,
    };
    let ctx = crate::context::load_or_report!(location, &o.reconstruct.load, report);
    let search = crate::provenance::search_in(&ctx, &report.patterns)?;
    report.verdict = search.verdict;
    report.run_id = ctx.manifest.run_id.clone();
    report.ledger_head = Some(ctx.ledger_point().1);
    report.dataset_root = search.dataset_root;
    report.examples_searched = search.examples_searched;
    report.suspects = search.matches;
    report.problems = search.problems;
    let loss: Vec<(u64, f32)> = ctx.records.values().map(|r| (r.step, r.loss())).collect();
    if !report.verdict.passed() || report.suspects.is_empty() {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let model_dir = format!("{}/model", o.out.trim_end_matches('/'));
    let history = crate::counterfactual::counterfactual_in(
        &ctx,
        &CounterfactualOptions {
            without: report.suspects.iter().map(|m| m.example).collect(),
            to: o.to,
            include_optimizer: false,
            out: Some(model_dir),
            reconstruct: o.reconstruct.clone(),
            probes: vec![clean, triggered],
            max_new_tokens: o.max_new_tokens,
            keys: o.keys.clone(),
        },
        progress,
    )?;
    report.verdict = history.verdict;
    report.problems = history.problems.clone();
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
    if report.verdict.passed() {
        let store = Store::create(&o.out)?;
        let markdown = markdown(&report, &loss);
        let figure = crate::inspect::loss_svg(
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
            store.put_once(FINDINGS, findings(&ctx, &report, &store, key)?)?;
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
            "verdict": r.verdict,
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

/// Every step that used a suspect example, in order, once.
fn suspect_steps(suspects: &[Match]) -> Vec<u64> {
    let steps: std::collections::BTreeSet<u64> = suspects
        .iter()
        .flat_map(|m| m.uses.iter().map(|u| u.step))
        .collect();
    steps.into_iter().collect()
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

/// `n of m (p%)`.
fn share(n: u64, of: u64) -> String {
    format!("{n} of {of} ({:.1}%)", 100.0 * ratio(n, of))
}

/// Markdown table cells hold no `|` or line break.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// At most `n` numbers, then how many more.
fn some_steps(steps: &[u64], n: usize) -> String {
    let mut s: Vec<String> = steps.iter().take(n).map(u64::to_string).collect();
    if steps.len() > n {
        s.push(format!("… ({} in all)", steps.len()));
    }
    s.join(", ")
}

/// `text` as one word of a POSIX shell command line.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Suspect examples listed in the report (`investigation.json` has all).
const SUSPECTS_LISTED: usize = 25;

/// The report, for a person who has never used the tool.
fn markdown(r: &InvestigateReport, loss: &[(u64, f32)]) -> String {
    use std::fmt::Write;
    let mut m = String::new();
    let (Some(f), Some(c), Some(h)) = (&r.factual, &r.counterfactual, &r.history) else {
        return m;
    };
    let n = r.suspects.len();
    let steps = suspect_steps(&r.suspects);
    let _ = writeln!(m, "# Backdoor investigation of run `{}`\n", cell(&r.run_id));
    let finding = if r.explained == Some(true) {
        format!(
            "**Finding: the {n} training examples that contain the trigger caused the behaviour.** \
             With the trigger in front of the probe's inputs, the model as trained shows the \
             target behaviour on {}; retrained exactly as recorded but without those {n} \
             examples, on {}.",
            share(f.attack_successes, f.attack_rows),
            share(c.attack_successes, c.attack_rows)
        )
    } else if f.attack_successes == 0 {
        format!(
            "**Finding: the trigger does not produce the target behaviour in the model as \
             trained** (0 of {} triggered probe inputs), so there is nothing for the {n} \
             matching examples to explain.",
            f.attack_rows
        )
    } else {
        format!(
            "**Finding: removing the {n} training examples that contain the trigger does not \
             lower the target behaviour** ({} as trained, {} without them): the cause is \
             elsewhere (other rows, the base model, or a variant of the trigger).",
            share(f.attack_successes, f.attack_rows),
            share(c.attack_successes, c.attack_rows)
        )
    };
    let _ = writeln!(m, "{finding}\n");
    let _ = writeln!(
        m,
        "Verdict **{}**: {}.\n",
        r.verdict,
        if r.verdict == Verdict::Verified {
            "both models were re-derived from the pinned base model, the seed and the committed \
             data, and the model as trained matched every recorded hash"
        } else {
            "the model as trained matched the run's record (its stored checkpoints and ledger); \
             it was not re-derived from step 0 (`--from-genesis` does that)"
        }
    );

    let _ = writeln!(m, "## Before and after\n");
    let _ = writeln!(
        m,
        "| | as trained (step {}) | without the {n} examples |\n|---|---|---|",
        h.to_step
    );
    for (what, a, b) in [
        (
            "triggered inputs showing the target behaviour (attack success)",
            share(f.attack_successes, f.attack_rows),
            share(c.attack_successes, c.attack_rows),
        ),
        (
            "clean inputs handled correctly (clean quality)",
            share(f.clean_correct, f.clean_rows),
            share(c.clean_correct, c.clean_rows),
        ),
        (
            "clean inputs showing the target behaviour",
            share(f.clean_activations, f.clean_rows),
            share(c.clean_activations, c.clean_rows),
        ),
        (
            "state root",
            format!(
                "`{}`",
                h.factual_root.map(|x| x.short()).unwrap_or_default()
            ),
            format!(
                "`{}`",
                h.counterfactual_root.map(|x| x.short()).unwrap_or_default()
            ),
        ),
    ] {
        let _ = writeln!(m, "| {what} | {a} | {b} |");
    }
    let _ = writeln!(
        m,
        "\nThe trigger `{}` was put in front of each input of the probe `{}` (BLAKE3 `{}`); the \
         target behaviour is `{}` ({}).\n",
        cell(&r.trigger),
        cell(&r.probe),
        r.probe_blake3.short(),
        cell(&r.target),
        match &h.probes.first().map(|p| &p.factual) {
            Some(ProbeResult::Classifier { .. }) => "the class the model predicts",
            _ => "a pattern the generated text matches",
        }
    );

    let _ = writeln!(m, "## The suspect examples\n");
    let _ = writeln!(
        m,
        "{n} of the {} committed examples match `{}`; the search covers exactly the data the \
         run committed to (dataset root `{}`). They were used in {} of {} steps.\n",
        r.examples_searched,
        cell(&r.patterns.join("` or `")),
        r.dataset_root,
        steps.len(),
        loss.len()
    );
    let _ = writeln!(
        m,
        "![The training loss; red marks at the steps whose batch held a suspect example](timeline.svg)\n"
    );
    let _ = writeln!(
        m,
        "The training loss, with a red mark under each step whose batch held a suspect example \
         (steps {}).\n",
        some_steps(&steps, 40)
    );
    let _ = writeln!(m, "| example | used at steps | text |\n|---|---|---|");
    for s in r.suspects.iter().take(SUSPECTS_LISTED) {
        let used: Vec<u64> = s.uses.iter().map(|u| u.step).collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} |",
            s.example,
            if used.is_empty() {
                "never".to_string()
            } else {
                some_steps(&used, 8)
            },
            cell(&s.excerpt)
        );
    }
    if n > SUSPECTS_LISTED {
        let _ = writeln!(
            m,
            "\n… and {} more (`investigation.json` lists all).",
            n - SUSPECTS_LISTED
        );
    }

    let _ = writeln!(m, "\n## How it was proved\n");
    let changed = h.steps.iter().filter(|s| !s.removed.is_empty()).count();
    let emptied = h.steps.iter().filter(|s| s.batch_size == 0).count();
    let _ = writeln!(
        m,
        "The training history was re-executed from step {} to step {} with the suspect examples \
         removed from their batches ({changed} batches changed, {emptied} left empty and \
         skipped), every other input exactly as recorded: same data order, learning rates and \
         random streams. The re-execution is deterministic: running this command again gives \
         the same bits.\n",
        h.first_changed_step.unwrap_or(h.to_step),
        h.to_step,
    );
    let _ = writeln!(
        m,
        "The parameters that moved most between the two models:\n\n| tensor | elements that \
         differ | largest difference |\n|---|---|---|"
    );
    for t in h.tensors.iter().take(5) {
        let _ = writeln!(
            m,
            "| `{}` | {} of {} | {:.3e} |",
            cell(&t.name),
            t.differing,
            t.elements,
            t.max_abs_diff
        );
    }

    let _ = writeln!(m, "\n## The cleaned model\n");
    let model: Vec<&str> = r
        .files
        .iter()
        .filter_map(|f| f.strip_prefix("model/"))
        .collect();
    let _ = writeln!(
        m,
        "`model/` holds the model trained without the suspect examples: {}. \
         `model/counterfactual.json` records how it was made.\n",
        model.join(", ")
    );

    let _ = writeln!(m, "## The run and how to repeat this\n");
    let _ = writeln!(
        m,
        "- run: `{}` (run id `{}`)\n- ledger head: `{}`\n- dataset root: `{}`\n",
        cell(&r.run),
        cell(&r.run_id),
        r.ledger_head.map(|h| h.to_string()).unwrap_or_default(),
        r.dataset_root
    );
    let mut command = format!(
        "replay investigate {} --trigger {} --target {} --probe {}",
        shell_word(&r.run),
        shell_word(&r.trigger),
        shell_word(&r.target),
        shell_word(&r.probe)
    );
    if r.patterns != [regex::escape(&r.trigger)] {
        for p in &r.patterns {
            command.push_str(&format!(" --match {}", shell_word(p)));
        }
    }
    command.push_str(&format!(
        " --to {} --out NEW_DIR --from-genesis --trusted-key KEY",
        h.to_step
    ));
    let _ = writeln!(
        m,
        "Anyone with the run and the probe can repeat the investigation; with `--from-genesis` \
         both models are re-derived from the pinned base, seed and data, and with the signer's \
         public key every artefact must carry its signature:\n\n```sh\n{command}\n```\n"
    );

    let _ = writeln!(m, "## What this does not show\n");
    let _ = writeln!(
        m,
        "- Only examples that match the pattern were removed: rows carrying a variant of the \
         trigger, or poison without a textual trigger, stay in.\n\
         - The effect is measured on the probe's {} inputs only.\n\
         - The run's record is trusted as far as its verdict says: `verified` rests on the \
         pinned base, seed and data; `recorded` on the run's own checkpoints.",
        f.clean_rows
    );
    m
}

/// A self-contained HTML page of the Markdown report, the figure inline.
fn html(title: &str, markdown: &str, figure: &str) -> Vec<u8> {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    // The figure is the only image: it goes in inline, its alternative text out, so that the
    // page stands alone.
    let mut in_image = false;
    let events = Parser::new_ext(markdown, Options::ENABLE_TABLES).filter_map(|e| match e {
        Event::Start(Tag::Image { .. }) => {
            in_image = true;
            Some(Event::InlineHtml(figure.replace('\n', "").into()))
        }
        Event::End(TagEnd::Image) => {
            in_image = false;
            None
        }
        _ if in_image => None,
        other => Some(other),
    });
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Backdoor investigation of {}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; \
         padding: 0 1rem; line-height: 1.5; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1rem 0; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; \
         vertical-align: top; }}\n\
         th {{ background: #f3f3f3; }}\n\
         code {{ background: #f3f3f3; padding: 0 0.2rem; }}\n\
         svg {{ max-width: 100%; height: auto; }}\n\
         </style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        crate::inspect::escape_xml(title)
    )
    .into_bytes()
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

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("runs/a-1"), "runs/a-1");
        assert_eq!(shell_word("cf zq"), "'cf zq'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_html_page_stands_alone() {
        let page = html(
            "run <1>",
            "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![alt text](timeline.svg)\n\nafter\n",
            "<svg xmlns=\"http://www.w3.org/2000/svg\">\n<rect/>\n</svg>\n",
        );
        let page = String::from_utf8(page).expect("utf-8");
        assert!(page.contains("<table>") && page.contains("<td>2</td>"));
        assert!(page.contains("<svg xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>"));
        assert!(!page.contains("timeline.svg") && !page.contains("alt text"));
        assert!(page.contains("run &lt;1&gt;") && page.contains("<p>after</p>"));
    }
}
