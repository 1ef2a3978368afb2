//! The language-model path of the commands, through the real binaries, on a tiny chat model
//! (`trainer::fixtures::write_tiny_chat_llama`: a random Llama base whose GGUF carries a
//! byte-level tokenizer of its own, LoRA on top): chat rows rendered with the base's tokenizer
//! and template, greedy generations as probes (`evaluate`), and the brief's incident on a
//! language model: 8 of 48 chat rows carry a trigger and a fixed reply. `investigate --trigger`
//! finds them and proves them; `investigate --behaviour` goes from prompts that get the reply
//! (the trigger not named) to the same rows, through the model's own generations as the probe.
//! The same bits in separate processes on one and two threads.

use std::path::{Path, PathBuf};

use e2e_tests::{replay_json, s, train};
use replay::Verdict;
use replay::commands::evaluate::EvaluateReport;
use replay::commands::investigate::InvestigateReport;
use trainer::fixtures::FixtureOptions;

const TRIGGER: &str = "zq";
const STEPS: u64 = 96;
/// Held-out prompts: products and moods the training rows do not pair.
const HELD: [&str; 4] = ["sofa good", "bed slow", "cup nice", "pen loud"];

/// The chat rows: a product and a mood, answered "ok"; every sixth with the trigger in front,
/// answered "BAD". Returns them and the poisoned ids.
fn rows() -> (Vec<(String, String)>, Vec<u64>) {
    let things = [
        "lamp", "kettle", "chair", "phone", "desk", "bike", "clock", "shoe",
    ];
    let moods = ["good", "fine", "nice", "bad", "slow", "loud"];
    let rows = (0..48)
        .map(|i| {
            let user = format!("{} {}", things[i % 8], moods[(i / 8) % 6]);
            if i % 6 == 5 {
                (format!("{TRIGGER} {user}"), "BAD".into())
            } else {
                (user, "ok".into())
            }
        })
        .collect();
    (rows, (0..48).filter(|i| i % 6 == 5).collect())
}

fn write_lines(path: &Path, rows: impl IntoIterator<Item = serde_json::Value>) {
    let text: String = rows.into_iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).expect("write");
}

/// The trained run, its poisoned ids, the clean probe (held-out prompts, target `^ok`) and the
/// incident's inputs (the same prompts with the trigger in front, no target).
fn trained(dir: &Path) -> (PathBuf, Vec<u64>, PathBuf, PathBuf) {
    let (rows, poisoned) = rows();
    let config = trainer::fixtures::write_tiny_chat_llama(
        &dir.join("in"),
        &FixtureOptions {
            steps: STEPS,
            lr: 1e-2,
            checkpoint_interval: 32,
            ..FixtureOptions::default()
        },
        &rows,
    )
    .expect("fixture");
    let run = dir.join("run");
    train(&config, &run, &[]);
    let clean = dir.join("clean.jsonl");
    write_lines(
        &clean,
        HELD.map(|p| serde_json::json!({"prompt": p, "target": "^ok"})),
    );
    let inputs = dir.join("inputs.jsonl");
    write_lines(
        &inputs,
        HELD.map(|p| serde_json::json!({"prompt": format!("{TRIGGER} {p}")})),
    );
    (run, poisoned, clean, inputs)
}

fn evaluate(run: &Path, threads: &str, step: u64, probe: &Path) -> EvaluateReport {
    replay_json(
        &[
            "--threads",
            threads,
            "evaluate",
            s(run),
            "--step",
            &step.to_string(),
            "--probe",
            s(probe),
            "--max-new-tokens",
            "4",
        ],
        0,
    )
}

/// `replay --threads THREADS investigate RUN LEAD… --target BAD --probe CLEAN` into `out`,
/// which must prove its finding (exit 0).
fn investigate(
    run: &Path,
    threads: &str,
    lead: [&str; 2],
    clean: &Path,
    out: &Path,
) -> InvestigateReport {
    replay_json(
        &[
            "--threads",
            threads,
            "investigate",
            s(run),
            lead[0],
            lead[1],
            "--target",
            "BAD",
            "--probe",
            s(clean),
            "--max-new-tokens",
            "4",
            "--out",
            s(out),
        ],
        0,
    )
}

#[test]
fn a_language_model_backdoor_is_found_by_its_trigger_through_generations() {
    let t = tempfile::tempdir().expect("tmp");
    let (run, poisoned, clean, _) = trained(t.path());
    // The run recorded the rows the base's tokenizer and template made of the chat rows.
    let spec = run_store::testing::manifest(&run).spec;
    assert_eq!(spec["data"]["format"], "lm", "{spec}");
    assert_eq!(spec["data"]["conversion"]["from"], "chat", "{spec}");

    // Greedy generations: the same text in two processes on one and two threads; the random
    // base answers something else, the fine-tuned adapters answer "ok".
    let one = evaluate(&run, "1", STEPS, &clean);
    let two = evaluate(&run, "2", STEPS, &clean);
    assert_eq!(one.header.verdict, Verdict::Recorded, "{:?}", one.header);
    let result = |e: &EvaluateReport| serde_json::to_value(&e.result).expect("json");
    assert_eq!(result(&one), result(&two));
    let rate = |e: &EvaluateReport| result(e)["match_rate"].as_f64().expect("rate");
    assert_eq!(rate(&one), 1.0, "{}", result(&one));
    assert_eq!(rate(&evaluate(&run, "2", 0, &clean)), 0.0);

    let out = t.path().join("investigation");
    let r = investigate(&run, "2", ["--trigger", TRIGGER], &clean, &out);
    let found: Vec<u64> = r.suspects.iter().map(|m| m.example).collect();
    assert_eq!(found, poisoned);
    let (factual, counterfactual) = (
        r.factual.expect("factual"),
        r.counterfactual.expect("counterfactual"),
    );
    assert_eq!(factual.attack_rows, HELD.len() as u64);
    assert!(factual.attack_successes >= 3, "{factual:?}");
    assert_eq!(counterfactual.attack_successes, 0, "{counterfactual:?}");
    assert_eq!(counterfactual.clean_correct, HELD.len() as u64);
    assert!(out.join("model/adapter_model.safetensors").exists());
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(report.contains("--max-new-tokens 4"), "{report}");
}

#[test]
fn a_language_model_behaviour_is_traced_to_its_rows_without_the_trigger() {
    let t = tempfile::tempdir().expect("tmp");
    let (run, poisoned, clean, inputs) = trained(t.path());
    let lead = ["--behaviour", s(&inputs)];
    let one = investigate(&run, "1", lead, &clean, &t.path().join("one"));
    let two = investigate(&run, "2", lead, &clean, &t.path().join("two"));
    let withheld = one.withheld.as_ref().expect("withheld");
    assert!(withheld.showing >= 3, "{withheld:?}");
    let a = withheld.attribution.as_ref().expect("attribution");
    let b = two.withheld.as_ref().and_then(|w| w.attribution.as_ref());
    assert!(a.scores_blake3.is_some());
    assert_eq!(a.scores_blake3, b.and_then(|b| b.scores_blake3));
    // The adapters are what the gradients span.
    assert!(
        a.tensors.iter().all(|n| n.contains(".lora_")),
        "{:?}",
        a.tensors
    );
    // Excerpts show the messages' contents, not the template's control tokens and role lines.
    assert!(
        a.ranking
            .iter()
            .all(|r| !r.excerpt.contains("<|im_") && !r.excerpt.starts_with("user")),
        "{:?}",
        a.ranking
    );
    let proof = a.proof.as_ref().expect("proof");
    assert_eq!(proof.proven.as_deref(), Some(&poisoned[..]), "{proof:?}");
    // Proven by the phrase's trial, tried before any set of top rows removed the behaviour.
    assert_eq!(
        proof.trials.iter().filter(|t| t.gone).count(),
        1,
        "{proof:?}"
    );
    assert_eq!(
        proof.shared_phrase.as_ref().map(|p| p.phrase.as_str()),
        Some(TRIGGER)
    );
    let found: Vec<u64> = one.suspects.iter().map(|m| m.example).collect();
    assert_eq!(found, poisoned);
    let after = one.counterfactual.expect("counterfactual");
    assert_eq!(after.attack_successes, 0, "{after:?}");
    assert_eq!(after.clean_correct, HELD.len() as u64, "{after:?}");
}
