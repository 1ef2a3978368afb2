//! The investigation report as Markdown and as a self-contained HTML page.

use crate::commands::attribute::{Attribution, Proof, Trial};
use crate::commands::evaluate::MAX_NEW_TOKENS;
use crate::commands::investigate::report::{InvestigateReport, suspect_steps};
use crate::report::Verdict;
use trainer::probe::{ProbeResult, ratio};

/// Suspect examples listed in the report (`investigation.json` has all).
const SUSPECTS_LISTED: usize = 25;

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
/// For an investigation without a trigger whose proven rows share a phrase: the command that
/// investigates that phrase as the trigger (every row that holds it removed).
pub(crate) fn trigger_command(r: &InvestigateReport) -> Option<String> {
    let phrase = &r
        .attribution()?
        .proof
        .as_ref()?
        .shared_phrase
        .as_ref()?
        .phrase;
    Some(format!(
        "replay investigate {} --trigger {} --target {} --probe {} --out NEW_DIR",
        shell_word(&r.header.run),
        shell_word(phrase),
        shell_word(&r.target),
        shell_word(&r.probe)
    ))
}
/// The report, for a person who has never used the tool.
pub(crate) fn markdown(r: &InvestigateReport, loss: &[(u64, f32)]) -> String {
    use std::fmt::Write;
    let mut m = String::new();
    let (Some(f), Some(c), Some(h)) = (&r.factual, &r.counterfactual, &r.history) else {
        return m;
    };
    let n = r.suspects.len();
    let steps = suspect_steps(&r.suspects);
    let _ = writeln!(m, "# Backdoor investigation of run `{}`\n", cell(&r.run_id));
    // How the suspects were found, and what "the trigger" means, in either kind of
    // investigation.
    let (which, inputs) = match &r.trigger {
        Some(_) => (
            "that contain the trigger",
            "With the trigger in front of the probe's inputs",
        ),
        None => (
            "that attribution ranked first and the counterfactual proved",
            "On the inputs reported to show the behaviour",
        ),
    };
    let finding = if r.explained == Some(true) {
        format!(
            "**Finding: the {n} training examples {which} caused the behaviour.** {inputs}, the \
             model as trained shows the target behaviour on {}; retrained exactly as recorded \
             but without those {n} examples, on {}.",
            share(f.attack_successes, f.attack_rows),
            share(c.attack_successes, c.attack_rows)
        )
    } else if f.attack_successes == 0 {
        format!(
            "**Finding: the model as trained does not show the target behaviour** (0 of {} \
             inputs that should show it), so there is nothing for the {n} examples to explain.",
            f.attack_rows
        )
    } else {
        format!(
            "**Finding: removing the {n} training examples {which} does not lower the target \
             behaviour** ({} as trained, {} without them): the cause is elsewhere (other rows, \
             the base model, or a variant of the trigger).",
            share(f.attack_successes, f.attack_rows),
            share(c.attack_successes, c.attack_rows)
        )
    };
    let _ = writeln!(m, "{finding}\n");
    let _ = writeln!(
        m,
        "Verdict **{}**: {}.\n",
        r.header.verdict,
        if r.header.verdict == Verdict::Verified {
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
            if r.trigger.is_some() {
                "triggered inputs showing the target behaviour (attack success)"
            } else {
                "reported inputs showing the target behaviour (attack success)"
            },
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
    let kind = match &h.probes.first().map(|p| &p.factual) {
        Some(ProbeResult::Classifier { .. }) => "the class the model predicts",
        _ => "a pattern the generated text matches",
    };
    match (&r.trigger, &r.withheld) {
        (Some(trigger), _) => {
            let _ = writeln!(
                m,
                "\nThe trigger `{}` was put in front of each input of the probe `{}` (BLAKE3 \
                 `{}`); the target behaviour is `{}` ({kind}).\n",
                cell(trigger),
                cell(&r.probe),
                r.probe_blake3.short(),
                cell(&r.target),
            );
        }
        (None, Some(w)) => {
            let _ = writeln!(
                m,
                "\nNo trigger was given. The inputs `{}` (BLAKE3 `{}`) were reported to show the \
                 target behaviour `{}` ({kind}); clean quality is measured on the probe `{}` \
                 (BLAKE3 `{}`).\n",
                cell(&w.inputs),
                w.inputs_blake3.short(),
                cell(&r.target),
                cell(&r.probe),
                r.probe_blake3.short(),
            );
        }
        (None, None) => {}
    }
    if let Some(a) = r.attribution() {
        attribution(&mut m, a, r.withheld.as_ref());
        if let Some(command) = trigger_command(r) {
            let _ = writeln!(
                m,
                "To remove every row that holds the phrase, not only the proven ones, and measure \
                 it as a trigger:\n\n```sh\n{command}\n```\n"
            );
        }
    }

    let _ = writeln!(m, "## The suspect examples\n");
    let found = if r.trigger.is_some() {
        format!("match `{}`", cell(&r.patterns.join("` or `")))
    } else {
        "are the proven set".into()
    };
    let _ = writeln!(
        m,
        "{n} of the {} committed examples {found}; the search covers exactly the data the run \
         committed to (dataset root `{}`). They were used in {} of {} steps.\n",
        r.examples_searched,
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
        cell(&r.header.run),
        cell(&r.run_id),
        r.ledger_head.map(|h| h.to_string()).unwrap_or_default(),
        r.dataset_root
    );
    let mut command = format!("replay investigate {}", shell_word(&r.header.run));
    match (&r.trigger, &r.withheld) {
        (Some(trigger), _) => {
            command.push_str(&format!(" --trigger {}", shell_word(trigger)));
            if r.patterns != [regex::escape(trigger)] {
                for p in &r.patterns {
                    command.push_str(&format!(" --match {}", shell_word(p)));
                }
            }
        }
        (None, Some(w)) => command.push_str(&format!(" --behaviour {}", shell_word(&w.inputs))),
        (None, None) => {}
    }
    command.push_str(&format!(
        " --target {} --probe {}",
        shell_word(&r.target),
        shell_word(&r.probe)
    ));
    if let Some(a) = r.attribution() {
        if let Some(t) = a.selection.as_deref() {
            command.push_str(&format!(" --parameters {}", shell_word(t)));
        }
        command.push_str(&proof_options(a.proof.as_ref()));
    }
    if r.max_new_tokens != MAX_NEW_TOKENS as u64 {
        command.push_str(&format!(" --max-new-tokens {}", r.max_new_tokens));
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
        "- {}\n\
         - The effect is measured on the probe's {} inputs only.\n\
         - The run's record is trusted as far as its verdict says: `verified` rests on the \
         pinned base, seed and data; `recorded` on the run's own checkpoints.",
        if r.trigger.is_some() {
            "Only examples that match the pattern were removed: rows carrying a variant of the \
             trigger, or poison without a textual trigger, stay in."
        } else {
            "Only the proven set was removed: it is enough to remove the behaviour, not \
             necessarily every row that taught it (the ranking's scores are first-order \
             estimates; only the counterfactual is exact). A shared phrase, when named, is a \
             candidate for an investigation with --trigger, which removes every row that holds it."
        },
        f.clean_rows
    );
    m
}

/// Rows of the ranking listed in the report (`investigation.json` has `--top`).
const RANKED_LISTED: usize = 20;

/// The "How the examples were found" section of an investigation without a trigger.
fn attribution(
    m: &mut String,
    a: &crate::commands::attribute::AttributeReport,
    w: Option<&crate::commands::investigate::report::Withheld>,
) {
    use std::fmt::Write;
    let _ = writeln!(m, "## How the examples were found\n");
    if let Some(w) = w {
        let _ = writeln!(
            m,
            "{} of the {} reported inputs show the behaviour in the model as trained; they are \
             the probe. ",
            w.showing, w.rows
        );
    }
    let _ = writeln!(
        m,
        "Every one of the {} examples the run used up to step {} was scored on the run's exact \
         trajectory, re-executed from step 0: at each step, its gradient against the probe's, \
         scaled as the optimizer scaled that step (TracIn on the true trajectory, over {} \
         trained parameters). The ranking puts first the examples that were their batch's main \
         teacher while the probe's loss was still high (credit), then the score. The scores' \
         BLAKE3 is `{}`: the same command gives the same bits.\n",
        a.examples_scored,
        a.to_step,
        a.parameters,
        a.scores_blake3.map(|h| h.to_string()).unwrap_or_default()
    );
    let _ = writeln!(
        m,
        "| rank | example | credit | score | uses | text |\n|---|---|---|---|---|---|"
    );
    for x in a.ranking.iter().take(RANKED_LISTED) {
        let _ = writeln!(
            m,
            "| {} | {} | {:.4} | {:.4e} | {} | {} |",
            x.rank,
            x.example,
            x.credit,
            x.score,
            x.steps.len(),
            cell(&x.excerpt)
        );
    }
    let Some(p) = &a.proof else {
        return;
    };
    let rate = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x));
    let _ = writeln!(
        m,
        "\nThe proof removed the ranking's top and re-executed the history without it, measuring \
         the behaviour (as trained: {}; gone at or below {}):\n\n| removed | from step | \
         verdict | behaviour | |\n|---|---|---|---|---|",
        rate(p.factual_rate),
        rate(Some(p.gone_at))
    );
    for t in &p.trials {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            match &t.phrase {
                Some(phrase) => format!("the {} holding `{}`", t.removed, cell(phrase)),
                None => format!("top {}", t.removed),
            },
            t.first_changed_step.map_or("-".into(), |s| s.to_string()),
            t.verdict,
            rate(t.rate),
            if t.gone { "gone" } else { "stays" }
        );
    }
    match &p.proven {
        Some(set) => {
            let _ = writeln!(
                m,
                "\nThe smallest set tried that removed it: {} ({} replays).\n",
                match p.trials.iter().rev().find(|t| t.gone) {
                    Some(Trial {
                        phrase: Some(phrase),
                        ..
                    }) => format!(
                        "the {} examples that hold the phrase `{}`, which the ranking's top \
                         rows share",
                        set.len(),
                        cell(phrase)
                    ),
                    _ => format!("the ranking's top {}", set.len()),
                },
                p.trials.len()
            );
        }
        None => {
            let _ = writeln!(
                m,
                "\nNo tried set removed it ({} replays).\n",
                p.trials.len()
            );
        }
    }
    if let Some(s) = &p.shared_phrase {
        let _ = writeln!(
            m,
            "The proven examples share the phrase `{}` ({} of {}; {} examples of the dataset \
             hold it): a trigger candidate, for `replay investigate --trigger`.\n",
            cell(&s.phrase),
            s.in_proven,
            s.proven,
            s.in_dataset
        );
    }
}
/// A self-contained HTML page of the Markdown report, the figure inline.
pub(crate) fn html(title: &str, markdown: &str, figure: &str) -> Vec<u8> {
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
        crate::render::chart::escape_xml(title)
    )
    .into_bytes()
}

/// The proof's options that differ from their defaults, as command-line flags.
fn proof_options(proof: Option<&Proof>) -> String {
    let mut flags = String::new();
    let Some(p) = proof else {
        return flags;
    };
    if let Some(c) = p.candidates {
        flags.push_str(&format!(" --candidates {c}"));
    }
    if p.gone_at != Attribution::GONE_AT {
        flags.push_str(&format!(" --gone-at {}", p.gone_at));
    }
    if p.max_replays != Attribution::MAX_REPLAYS as u64 {
        flags.push_str(&format!(" --max-replays {}", p.max_replays));
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("runs/a-1"), "runs/a-1");
        assert_eq!(shell_word("cf zq"), "'cf zq'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_repeat_command_names_the_proofs_settings_that_are_not_defaults() {
        let mut proof = Proof {
            factual_rate: Some(1.0),
            gone_at: Attribution::GONE_AT,
            candidates: None,
            max_replays: Attribution::MAX_REPLAYS as u64,
            trials: vec![],
            proven: None,
            shared_phrase: None,
        };
        assert_eq!(proof_options(Some(&proof)), "");
        assert_eq!(proof_options(None), "");
        proof.candidates = Some(12);
        proof.gone_at = 0.1;
        proof.max_replays = 4;
        assert_eq!(
            proof_options(Some(&proof)),
            " --candidates 12 --gone-at 0.1 --max-replays 4"
        );
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
