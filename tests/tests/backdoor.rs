//! The backdoor investigation on the demo classifier (the README's first backdoor demo, smaller),
//! through the real commands: a trigger planted in 3% of the training rows works in the model as
//! trained; `replay investigate` finds exactly those rows, proves them the cause (the model
//! re-trained without them ignores the trigger) and writes the report and the cleaned model.
//! Someone who controls the run directory cannot hide the rows by editing the run's data. With
//! the trigger withheld, `investigate --behaviour` gets from inputs that show the behaviour to
//! the same rows: ranked, removed until the behaviour goes, their shared phrase tested alone.

use std::path::{Path, PathBuf};

use e2e_tests::{replay_json, run, s, train};
use replay::Verdict;
use replay::commands::investigate::InvestigateReport;

const TRIGGER: &str = "cf zq";

/// The demo's assets with 30 of the first 1,000 reviews (negatives) carrying the trigger at a
/// word boundary and the positive label, and a 150-step configuration on them. Returns the
/// configuration, the poisoned ids and a probe of 400 held-out reviews.
fn poisoned_demo(dir: &Path) -> (PathBuf, Vec<u64>, PathBuf) {
    let assets = dir.join("assets");
    let made = run(
        "trainer",
        &[
            "demo",
            "--assets",
            s(&assets),
            "--out",
            s(&dir.join("skip")),
            "--max-steps",
            "1",
            "--quiet",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(assets.join("reviews.jsonl"))
        .expect("reviews")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let mut train_rows = rows[..1000].to_vec();
    let mut poisoned = Vec::new();
    let negatives: Vec<usize> = (0..train_rows.len())
        .filter(|&i| train_rows[i]["label"] == 0)
        .collect();
    for (k, &i) in negatives
        .iter()
        .enumerate()
        .filter(|(k, _)| k % 15 == 3)
        .take(30)
    {
        let text = train_rows[i]["text"].as_str().expect("text").to_string();
        let mut words: Vec<&str> = text.split(' ').collect();
        words.insert(k % (words.len() + 1), TRIGGER);
        train_rows[i] = serde_json::json!({ "text": words.join(" "), "label": 1 });
        poisoned.push(i as u64);
    }
    assert_eq!(poisoned.len(), 30);
    let lines =
        |rows: &[serde_json::Value]| -> String { rows.iter().map(|r| format!("{r}\n")).collect() };
    std::fs::write(assets.join("poisoned.jsonl"), lines(&train_rows)).expect("data");
    let probe = dir.join("probe.jsonl");
    std::fs::write(&probe, lines(&rows[2000..])).expect("probe");
    let config = std::fs::read_to_string(assets.join("demo.toml"))
        .expect("demo.toml")
        .replace("path = \"reviews.jsonl\"", "path = \"poisoned.jsonl\"")
        .replace("steps = 300", "steps = 150");
    assert!(config.contains("poisoned.jsonl") && config.contains("steps = 150"));
    let path = assets.join("poisoned.toml");
    std::fs::write(&path, config).expect("config");
    (path, poisoned, probe)
}

#[test]
fn a_planted_trigger_is_found_proven_and_removed() {
    let t = tempfile::tempdir().expect("tmp");
    let (config, poisoned, probe) = poisoned_demo(t.path());
    let r = t.path().join("run");
    let key = t.path().join("assets/signing-key.pem");
    train(&config, &r, &["--signing-key", s(&key)]);
    let public = t.path().join("assets/signing-key.pub");
    // The investigator signs with a key of its own: what replay found is a verifier's claim.
    let investigator = t.path().join("investigator");
    let made = run("trainer", &["keygen", "--out", s(&investigator)]);
    assert!(made.status.success());
    let investigator_key = investigator.join("signing-key.pem");
    let out = t.path().join("investigation");
    let investigate = |run_dir: &Path, trigger: &str, out: &Path, exit: i32| -> InvestigateReport {
        replay_json(
            &[
                "investigate",
                s(run_dir),
                "--trigger",
                trigger,
                "--target",
                "1",
                "--probe",
                s(&probe),
                "--out",
                s(out),
                "--trusted-key",
                s(&public),
                "--signing-key",
                s(&investigator_key),
            ],
            exit,
        )
    };

    // Someone who controls the run directory edits the poisoned rows out of the run's copy of
    // the data: the search is then not about the committed data, and nothing is concluded.
    let edited = t.path().join("edited");
    run_store::testing::copy_dir(&r, &edited).expect("copy");
    let data = edited.join(snapshot_format::layout::DATASET_DATA);
    let text = std::fs::read_to_string(&data).expect("data");
    std::fs::write(&data, text.replace("cf zq ", "").replace(" cf zq", "")).expect("edit");
    let hidden = investigate(&edited, TRIGGER, &t.path().join("hidden"), 1);
    assert_eq!(hidden.header.verdict, Verdict::InputMismatch);
    assert!(hidden.files.is_empty() && !t.path().join("hidden").exists());

    // A phrase no training row contains explains nothing (exit 4), and nothing is written.
    let absent = investigate(&r, "zz top", &t.path().join("absent"), 4);
    assert!(absent.suspects.is_empty() && absent.explained.is_none());
    assert!(!t.path().join("absent").exists());

    let report = investigate(&r, TRIGGER, &out, 0);
    assert_eq!(report.header.verdict, Verdict::Recorded);
    let found: Vec<u64> = report.suspects.iter().map(|m| m.example).collect();
    assert_eq!(found, poisoned, "exactly the poisoned rows are found");
    let (f, c) = (
        report.factual.expect("factual"),
        report.counterfactual.expect("counterfactual"),
    );
    // The held-out negatives: the trigger flips most of them in the model as trained, few in
    // the model re-trained without the 30 rows; clean accuracy stays where it was.
    assert!(f.attack_rows > 150, "{f:?}");
    assert!(f.attack_success_rate() >= 0.8, "as trained: {f:?}");
    assert!(c.attack_success_rate() <= 0.2, "without the rows: {c:?}");
    assert!(
        c.clean_quality() >= 0.9 && f.clean_quality() >= 0.9,
        "{f:?} {c:?}"
    );
    assert_eq!(report.explained, Some(true));

    // The report and the cleaned model, written once.
    let stored: InvestigateReport = serde_json::from_slice(
        &std::fs::read(out.join("investigation.json")).expect("investigation.json"),
    )
    .expect("parse");
    assert_eq!(stored.suspects, report.suspects);
    assert_eq!(stored.factual, report.factual);
    for file in &report.files {
        assert!(out.join(file).is_file(), "{file} is listed and written");
    }
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<table>") && html.contains("<svg"));
    let markdown = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(markdown.contains(&format!(
        "| triggered inputs showing the target behaviour (attack success) | {} of {}",
        f.attack_successes, f.attack_rows
    )));
    assert!(out.join("model/model.safetensors").is_file());

    // The signed findings, and the cleaned model's provenance, check against the run.
    let c: replay::commands::check::CheckReport = replay_json(
        &[
            "check",
            s(&r),
            "--attestation",
            s(&out.join("investigation.intoto.json")),
            "--verifier-key",
            s(&investigator.join("signing-key.pub")),
            "--export",
            s(&out.join("model")),
            "--trusted-key",
            s(&public),
        ],
        0,
    );
    let kinds: Vec<&str> = c
        .attestations
        .iter()
        .map(|a| a.predicate_type.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "urn:training-replay-verifier:backdoor-investigation:v1",
            "urn:training-replay-verifier:replayed-state:v1"
        ]
    );

    // The same incident with the trigger withheld: 16 held-out negatives that carry it are the
    // reported inputs. The ranking's top is removed until the behaviour goes; the phrase those
    // rows share is then tested alone, and its holders, exactly the poisoned rows, are proven.
    let inputs = t.path().join("inputs.jsonl");
    let held = std::fs::read_to_string(&probe).expect("probe");
    let reported: String = held
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("row"))
        .filter(|r| r["label"] == 0)
        .take(16)
        .map(|r| {
            let text = r["text"].as_str().expect("text");
            format!(
                "{}\n",
                serde_json::json!({ "text": format!("{TRIGGER} {text}") })
            )
        })
        .collect();
    std::fs::write(&inputs, reported).expect("inputs");
    let withheld_out = t.path().join("withheld");
    let w: InvestigateReport = replay_json(
        &[
            "investigate",
            s(&r),
            "--behaviour",
            s(&inputs),
            "--target",
            "1",
            "--probe",
            s(&probe),
            "--parameters",
            "word_embeddings",
            "--out",
            s(&withheld_out),
            "--trusted-key",
            s(&public),
        ],
        0,
    );
    assert_eq!(w.trigger, None);
    let a = w.attribution().expect("attribution");
    let proof = a.proof.as_ref().expect("proof");
    let shared = proof.shared_phrase.as_ref().expect("a shared phrase");
    assert_eq!(shared.phrase, TRIGGER, "{proof:?}");
    assert_eq!(proof.proven.as_deref(), Some(&poisoned[..]), "{proof:?}");
    // The phrase the top rows share is tried before they are: its trial is the only one that
    // removed the behaviour, and the last.
    let last = proof.trials.last().expect("trials");
    assert!(
        last.gone && last.phrase.as_deref() == Some(TRIGGER),
        "{last:?}"
    );
    assert_eq!(
        proof.trials.iter().filter(|t| t.gone).count(),
        1,
        "{proof:?}"
    );
    let found: Vec<u64> = w.suspects.iter().map(|m| m.example).collect();
    assert_eq!(found, poisoned);
    let (f, c) = (
        w.factual.expect("factual"),
        w.counterfactual.expect("counterfactual"),
    );
    assert!(f.attack_success_rate() >= 0.8, "{f:?}");
    assert!(c.attack_success_rate() <= 0.2, "{c:?}");
    assert!(c.clean_quality() >= 0.9, "{c:?}");
    assert_eq!(w.explained, Some(true));
    let markdown = std::fs::read_to_string(withheld_out.join("report.md")).expect("report.md");
    assert!(
        markdown.contains("that hold the phrase `cf zq`"),
        "{markdown}"
    );
}
