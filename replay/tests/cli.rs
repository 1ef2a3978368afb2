//! The `replay` command: every report deserialises into its documented type, verdicts map to
//! the documented exit codes, and the commands answer correctly on honest runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use replay::Verdict;
use replay::commands::attribute::AttributeReport;
use replay::commands::audit::{AuditReport, detection_probability};
use replay::commands::check::CheckReport;
use replay::commands::collect::CollectReport;
use replay::commands::compare::CompareReport;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::diff::DiffReport;
use replay::commands::evaluate::EvaluateReport;
use replay::commands::inspect::InspectReport;
use replay::commands::provenance::ProvenanceReport;
use replay::commands::rollback::RollbackReport;
use replay::commands::search::SearchReport;
use replay::commands::verify::VerifyReport;
use replay::engine::reexecute::RangeResult;
use run_store::testing::{copy_dir, rewrite_ledger};
use snapshot_format::layout;
use snapshot_format::ledger::{Segment, StepRecord};
use snapshot_format::snapshot::Snapshot;
use trainer::config::RunConfig;
use trainer::fixtures::{self, FixtureOptions};
use trainer::probe::ProbeResult;
use trainer::run::{self, RunOptions};

fn record(dir: &Path, o: FixtureOptions) -> PathBuf {
    let cfg = fixtures::write_tiny_bert(&dir.join("in"), &o).expect("fixture");
    let config = RunConfig::from_file(&cfg).expect("config");
    let out = dir.join("run");
    run::start(
        &config,
        out.to_str().expect("utf-8"),
        &RunOptions::default(),
    )
    .expect("run");
    out
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replay"))
        .args(args)
        .output()
        .expect("start replay")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// Run with `--json --quiet`, check the exit status, parse the single JSON document.
fn json<T: serde::de::DeserializeOwned>(args: &[&str], exit: i32) -> T {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--quiet"]);
    let out = replay(&full);
    assert_eq!(
        out.status.code(),
        Some(exit),
        "replay {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one JSON document on one line");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn honest_run_checks_verifies_and_audits() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default()); // 12 steps, checkpoints every 4

    let c: CheckReport = json(&["check", s(&r)], 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    assert_eq!(
        (c.checked.segments, c.checked.records, c.checked.checkpoints),
        (3, 12, 4)
    );
    assert!(c.header.problems.is_empty() && c.warnings.is_empty());

    let v: VerifyReport = json(&["verify", s(&r), "--all"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified);
    assert_eq!(v.steps_replayed, 12);
    let segs: Vec<(u64, u64, u64)> = v
        .ranges
        .iter()
        .map(|r| (r.segment, r.from_step, r.to_step))
        .collect();
    assert_eq!(segs, [(1, 1, 4), (2, 5, 8), (3, 9, 12)]);
    // Segment 1 starts from step 0 re-derived from the seed, not from the stored checkpoint 0.
    let initial = v.ranges[0]
        .initial_state
        .as_ref()
        .expect("step 0 re-derived");
    assert_eq!(initial.rederived_root, initial.recorded_root);
    assert!(v.ranges[1].initial_state.is_none());
    assert!(
        v.environment
            .as_ref()
            .is_some_and(|e| e.differences.is_empty())
    );

    let v: VerifyReport = json(&["verify", s(&r), "--segment", "2"], 0);
    assert_eq!((v.ranges.len(), v.steps_replayed), (1, 4));
    let v: VerifyReport = json(&["verify", s(&r), "--from", "6", "--to", "7"], 0);
    let range: &RangeResult = &v.ranges[0];
    assert_eq!((range.start_checkpoint, range.steps_replayed), (Some(4), 3));

    let a: AuditReport = json(&["audit", s(&r), "--samples", "2", "--seed", "5"], 0);
    assert_eq!(a.sampled.len(), 2);
    assert_eq!(a.passed, a.sampled);
    assert!(
        a.ranges.iter().any(|x| x.initial_state.is_some()),
        "step 0 is re-derived whatever the sample"
    );
    let again: AuditReport = json(&["audit", s(&r), "--samples", "2", "--seed", "5"], 0);
    assert_eq!(again.sampled, a.sampled, "a seed re-draws the same sample");
    for d in &a.detection {
        assert_eq!(
            d.probability,
            detection_probability(3, d.tampered_segments, 2)
        );
    }
}

#[test]
fn rollback_exports_the_committed_state() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let out = t.path().join("rollback-6");
    let rb: RollbackReport = json(&["rollback", s(&r), "--step", "6", "--out", s(&out)], 0);
    // Replayed from the stored checkpoint 4: the state the ledger records, not re-derived.
    assert_eq!(rb.header.verdict, Verdict::Recorded);
    assert!(rb.state_root.is_some() && rb.state_root == rb.committed_root);
    // From step 0 re-derived, the same state is verified.
    let full: RollbackReport = json(
        &[
            "rollback",
            s(&r),
            "--step",
            "6",
            "--from-genesis",
            "--out",
            s(&t.path().join("rollback-6-full")),
        ],
        0,
    );
    assert_eq!(full.header.verdict, Verdict::Verified);
    assert_eq!(full.state_root, rb.state_root);
    assert_eq!(full.replay.as_ref().map(|r| r.steps_replayed), Some(6));
    let st = std::fs::read(out.join("model.safetensors")).expect("safetensors");
    let parsed = safetensors_names(&st);
    assert!(parsed.contains(&"classifier.weight".to_string()));
    assert!(parsed.contains(&"bert.encoder.layer.0.attention.self.query.weight".to_string()));
    assert!(!parsed.iter().any(|n| n.starts_with("optimizer.")));
    let snap = snapshot_format::snapshot::decode(
        &std::fs::read(out.join("state.snap")).expect("snap"),
        "state.snap",
        &Default::default(),
    )
    .expect("valid snapshot");
    assert_eq!(Some(snap.header.state_root), rb.state_root);
    assert_eq!(snap.header.state.step, 6);
    // Write-once: a second rollback into the same place does not overwrite (identical is fine).
    let again: RollbackReport = json(&["rollback", s(&r), "--step", "6", "--out", s(&out)], 0);
    assert_eq!(again.state_root, rb.state_root);
}

/// The ledger records of the 12-step fixture, read directly from its segments.
fn records(r: &Path) -> BTreeMap<u64, StepRecord> {
    (1..=3)
        .flat_map(|i| {
            let bytes = std::fs::read(r.join(layout::segment(i))).expect("segment");
            Segment::decode(&bytes, "segment").expect("segment").records
        })
        .map(|rec| (rec.step, rec))
        .collect()
}

/// Steps up to `to` whose batch held `example`.
fn uses_of(records: &BTreeMap<u64, StepRecord>, example: u64, to: u64) -> Vec<u64> {
    records
        .range(..=to)
        .filter(|(_, rec)| rec.example_ids.contains(&example))
        .map(|(s, _)| *s)
        .collect()
}

fn decode_snap(path: &Path) -> Snapshot {
    let bytes = std::fs::read(path).expect("snapshot");
    snapshot_format::snapshot::decode(&bytes, "snapshot", &Default::default()).expect("decodes")
}

#[test]
fn counterfactual_removes_an_example_from_its_batches_reproducibly() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default()); // checkpoints at 0, 4, 8, 12
    let ledger = records(&r);
    // An example first used at step 6, mid-segment, and maybe again in the second epoch.
    let x = ledger[&6].example_ids[0];
    let uses = uses_of(&ledger, x, 12);
    assert_eq!(uses[0], 6);
    let run_one = |out: &str| -> CounterfactualReport {
        let out = t.path().join(out);
        json(
            &[
                "counterfactual",
                s(&r),
                "--without",
                &x.to_string(),
                "--out",
                s(&out),
            ],
            0,
        )
    };
    let a = run_one("a");
    // The factual states come from stored checkpoints: recorded, not re-derived.
    assert_eq!(
        a.header.verdict,
        Verdict::Recorded,
        "{:?}",
        a.header.problems
    );
    assert_eq!(a.first_changed_step, Some(6));
    let start = a
        .factual_start
        .as_ref()
        .expect("the state after step 5 was replayed");
    assert_eq!(
        (start.start_checkpoint, start.to_step, start.verdict),
        (Some(4), 5, Verdict::Verified)
    );
    assert_eq!(a.steps.first().map(|s| s.step), Some(6));
    assert_eq!(a.steps.last().map(|s| s.step), Some(12));
    let changed: Vec<u64> = a
        .steps
        .iter()
        .filter(|s| !s.removed.is_empty())
        .map(|s| s.step)
        .collect();
    assert_eq!(changed, uses);
    for st in &a.steps {
        let batch = ledger[&st.step].example_ids.len() as u64;
        assert_eq!(st.batch_size + st.removed.len() as u64, batch);
        assert_eq!(st.loss_recorded.to_bits(), ledger[&st.step].loss_bits);
    }
    // The factual side is the committed state; the counterfactual differs from it.
    assert_eq!(a.factual_root, ledger[&12].state_root);
    assert!(a.counterfactual_root.is_some() && a.counterfactual_root != a.factual_root);
    assert!(!a.tensors.is_empty());
    assert!(a.tensors.iter().all(|t| !t.name.starts_with("optimizer.")));
    assert_eq!(a.examples.len(), 1);
    assert_eq!(a.examples[0].uses, uses.len() as u64);
    // What was written is the state reported, and a second process writes the same bytes.
    let snap = decode_snap(&t.path().join("a/state.snap"));
    assert_eq!(Some(snap.header.state_root), a.counterfactual_root);
    assert_eq!(snap.header.state.step, 12);
    let b = run_one("b");
    assert_eq!(b.counterfactual_root, a.counterfactual_root);
    let read = |dir: &str, f: &str| std::fs::read(t.path().join(dir).join(f)).expect("written");
    for f in ["model.safetensors", "state.snap"] {
        assert!(read("a", f) == read("b", f), "{f} differs");
    }
    // The stored reports differ only in where they were written.
    let stored = |dir: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&read(dir, "counterfactual.json")).expect("json");
        v["out"] = serde_json::Value::Null;
        v
    };
    assert_eq!(stored("a"), stored("b"));
}

#[test]
fn counterfactual_of_an_emptied_batch_is_a_step_without_update() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let ledger = records(&r);
    // Every example of step 6's batch (first used there: the first epoch is steps 1..=10).
    let ids: Vec<String> = ledger[&6].example_ids.iter().map(u64::to_string).collect();
    let cf = t.path().join("cf");
    let c: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            &ids.join(","),
            "--to",
            "6",
            "--out",
            s(&cf),
        ],
        0,
    );
    assert_eq!(c.first_changed_step, Some(6));
    assert_eq!(c.steps.len(), 1);
    assert_eq!(
        (c.steps[0].batch_size, c.steps[0].loss_counterfactual),
        (0, None)
    );
    // No update: parameters and optimizer state are those after step 5, reconstructed by the
    // ordinary verified replay of `rollback`.
    let rb = t.path().join("rb");
    let _: RollbackReport = json(&["rollback", s(&r), "--step", "5", "--out", s(&rb)], 0);
    assert_eq!(
        std::fs::read(cf.join("model.safetensors")).expect("cf"),
        std::fs::read(rb.join("model.safetensors")).expect("rb")
    );
    let (a, b) = (
        decode_snap(&cf.join("state.snap")),
        decode_snap(&rb.join("state.snap")),
    );
    assert_eq!(a.header.tensors.len(), b.header.tensors.len());
    assert_eq!(a.data, b.data, "optimizer state included");
    assert_eq!((a.header.state.step, b.header.state.step), (6, 5));
}

#[test]
fn counterfactual_without_an_unused_example_is_the_factual_state() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let ledger = records(&r);
    let x = ledger[&9].example_ids[0]; // first used at step 9
    let c: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            &x.to_string(),
            "--to",
            "7",
        ],
        0,
    );
    assert_eq!(c.first_changed_step, None);
    assert!(c.steps.is_empty() && c.tensors.is_empty());
    assert_eq!(c.factual_root, ledger[&7].state_root);
    assert_eq!(c.counterfactual_root, c.factual_root);
    assert_eq!(c.examples[0].uses, 0);
    assert_eq!(
        c.examples[0].loss_factual.to_bits(),
        c.examples[0].loss_counterfactual.to_bits()
    );
    // Up to step 0: the initial state, whose loss of the example is the base model's.
    let initial: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            &x.to_string(),
            "--to",
            "0",
        ],
        0,
    );
    assert_eq!(
        initial.header.verdict,
        Verdict::Verified,
        "step 0 is re-derived"
    );
    let snap0 = decode_snap(&r.join(layout::checkpoint(0)));
    assert_eq!(initial.factual_root, Some(snap0.header.state_root));
    assert_eq!(initial.counterfactual_root, initial.factual_root);
}

#[test]
fn counterfactual_refuses_changed_data_and_writes_nothing() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let ledger = records(&r);
    let x = ledger[&6].example_ids[0];
    // A copy of the dataset in which an example of step 8's batch was edited.
    let y = ledger[&8].example_ids[1];
    let text = std::fs::read_to_string(r.join("dataset/examples.jsonl")).expect("dataset");
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i as u64 == y {
                line.replacen("{\"text\": \"", "{\"text\": \"edited ", 1)
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_ne!(edited.join("\n") + "\n", text, "the edit applied");
    let data = t.path().join("edited.jsonl");
    std::fs::write(&data, edited.join("\n") + "\n").expect("write");
    let out = t.path().join("cf");
    let c: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            &x.to_string(),
            "--dataset",
            s(&data),
            "--out",
            s(&out),
        ],
        1,
    );
    assert_eq!(c.header.verdict, Verdict::InputMismatch);
    let m = c.input_mismatch.expect("the edited example is named");
    assert_eq!((m.step, m.example_id), (8, y));
    assert!(!out.exists());
    // A damaged checkpoint under the factual starting state: nothing is computed or written.
    let damaged = t.path().join("damaged");
    copy_dir(&r, &damaged).expect("copy");
    let key = damaged.join(layout::checkpoint(4));
    let mut bytes = std::fs::read(&key).expect("checkpoint");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&key, bytes).expect("write");
    let d: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&damaged),
            "--without",
            &x.to_string(),
            "--out",
            s(&out),
        ],
        2,
    );
    assert_eq!(
        d.header.verdict,
        Verdict::Corrupt,
        "{:?}",
        d.header.problems
    );
    assert!(d.counterfactual_root.is_none() && d.steps.is_empty());
    assert!(!out.exists());
}

#[test]
fn token_data_trains_to_the_same_bits_as_the_text_it_encodes() {
    let t = tempfile::tempdir().expect("tmp");
    let text = record(&t.path().join("text"), FixtureOptions::default());
    let o = FixtureOptions {
        tokens: true,
        ..Default::default()
    };
    let tokens = record(&t.path().join("tokens"), o);
    let (a, b) = (records(&text), records(&tokens));
    assert_ne!(
        a[&1].batch_hash, b[&1].batch_hash,
        "the runs commit to different rows"
    );
    for (step, ra) in &a {
        let rb = &b[step];
        assert_eq!(
            (ra.loss_bits, ra.grad_norm_bits, ra.state_root),
            (rb.loss_bits, rb.grad_norm_bits, rb.state_root),
            "step {step}"
        );
    }
    let v: VerifyReport = json(&["verify", s(&tokens), "--all"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified);
}

fn safetensors_names(bytes: &[u8]) -> Vec<String> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    header
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

#[test]
fn compare_finds_the_first_difference() {
    let t = tempfile::tempdir().expect("tmp");
    let o = FixtureOptions {
        steps: 32,
        ..Default::default()
    }; // 8 segments
    let a = record(&t.path().join("a"), o.clone());
    let b = record(&t.path().join("b"), o.clone());
    let same: CompareReport = json(&["compare", s(&a), s(&b)], 0);
    assert!(same.identical);
    assert_eq!(same.header.verdict, Verdict::Ok);

    // A copy of `a` whose records from step 22 on differ (an honest continuation of a changed
    // state is simulated by changing the loss bits of step 22 and re-chaining the rest).
    let c = t.path().join("c");
    copy_dir(&a, &c).expect("copy");
    rewrite_ledger(&c, |r| {
        if r.step == 22 {
            r.loss_bits ^= 1;
        }
    })
    .expect("rewrite");
    let d: CompareReport = json(&["compare", s(&a), s(&c)], 1);
    assert!(!d.identical);
    let first = d.first_difference.expect("a difference");
    assert_eq!(first.step, 22);
    assert!(
        first.fields.iter().any(|f| f.field == "loss"),
        "{:?}",
        first.fields
    );
    assert_eq!(d.steps_compared, 32);
}

#[test]
fn provenance_diff_and_inspect_agree_with_the_ledger() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let uses = uses_of(&records(&r), 5, 12);
    let p: ProvenanceReport = json(&["provenance", s(&r), "--example", "5"], 0);
    assert_eq!(p.uses.iter().map(|u| u.step).collect::<Vec<_>>(), uses);
    assert_eq!(p.committed_hash, p.current_hash);

    let d: DiffReport = json(&["diff", s(&r), "--from", "4", "--to", "6"], 0);
    assert!(!d.tensors.is_empty());
    assert!(
        d.tensors.windows(2).all(|w| w[0].l2 >= w[1].l2),
        "largest first"
    );
    assert!(d.tensors.iter().all(|t| !t.name.starts_with("optimizer.")));

    let svg = t.path().join("loss.svg");
    let i: InspectReport = json(&["inspect", s(&r), "--svg", s(&svg)], 0);
    assert_eq!(
        (i.steps_total, i.steps_recorded, i.loss.len()),
        (12, 12, 12)
    );
    assert_eq!(i.checkpoints, [0, 4, 8, 12]);
    assert!(i.complete && i.parameters.is_some_and(|p| p > 0));
    assert!(
        std::fs::read_to_string(&svg)
            .expect("svg")
            .starts_with("<svg")
    );
}

#[test]
fn provenance_finds_examples_by_content_with_the_steps_that_used_them() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    // The expectation, from the run's copy of the data by plain substring search.
    let texts: Vec<String> = std::fs::read_to_string(r.join(layout::DATASET_DATA))
        .expect("data")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("row");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let having = |word: &str| -> Vec<u64> {
        (0..texts.len() as u64)
            .filter(|&i| texts[i as usize].contains(word))
            .collect()
    };
    let truly = having("truly");
    assert!(!truly.is_empty() && truly.len() < texts.len());
    let p: SearchReport = json(&["provenance", s(&r), "--match", "truly"], 0);
    assert_eq!(p.examples_searched, texts.len() as u64);
    assert_eq!(
        p.matches.iter().map(|m| m.example).collect::<Vec<_>>(),
        truly
    );
    let recs = records(&r);
    for m in &p.matches {
        let steps: Vec<u64> = m.uses.iter().map(|u| u.step).collect();
        assert_eq!(
            steps,
            uses_of(&recs, m.example, 12),
            "example {}",
            m.example
        );
        assert!(m.excerpt.contains("truly"));
    }
    let manifest = snapshot_format::dataset::DatasetManifest::decode(
        &std::fs::read(r.join(layout::DATASET_MANIFEST)).expect("manifest"),
        layout::DATASET_MANIFEST,
    )
    .expect("manifest");
    assert_eq!(p.dataset_root, manifest.root);
    // Several patterns from a file: an example matches any of them.
    let file = t.path().join("patterns.txt");
    std::fs::write(&file, "truly\n\nsturdy\n").expect("write");
    let either: Vec<u64> = (0..texts.len() as u64)
        .filter(|&i| texts[i as usize].contains("truly") || texts[i as usize].contains("sturdy"))
        .collect();
    let q: SearchReport = json(&["provenance", s(&r), "--match-file", s(&file)], 0);
    assert_eq!(
        q.matches.iter().map(|m| m.example).collect::<Vec<_>>(),
        either
    );
    // The counterfactual without the matching examples is the one without their ids.
    let ids: Vec<String> = either.iter().map(u64::to_string).collect();
    let by_ids: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            &ids.join(","),
            "--to",
            "8",
        ],
        0,
    );
    let by_match: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without-match",
            "truly",
            "--without-match",
            "sturdy",
            "--to",
            "8",
        ],
        0,
    );
    assert_eq!(by_match.without, either);
    assert_eq!(by_match.counterfactual_root, by_ids.counterfactual_root);
    assert!(by_match.counterfactual_root.is_some());
    // A pattern that is not a regular expression is a usage error.
    let out = replay(&["provenance", s(&r), "--match", "(unclosed", "--quiet"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(unclosed"));
}

#[test]
fn evaluate_runs_a_probe_through_the_model_at_a_step() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    // Probe rows in the run's data format: 20 of its rows, and the same texts with the labels
    // of this 2-class task swapped.
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(r.join(layout::DATASET_DATA))
        .expect("data")
        .lines()
        .take(20)
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let write = |name: &str, swap: bool| {
        let path = t.path().join(name);
        let text: String = rows
            .iter()
            .map(|row| {
                let mut row = row.clone();
                if swap {
                    row["label"] = (1 - row["label"].as_u64().expect("label")).into();
                }
                format!("{row}\n")
            })
            .collect();
        std::fs::write(&path, text).expect("probe");
        path
    };
    let (probe, swapped) = (write("probe.jsonl", false), write("swapped.jsonl", true));
    let eval = |probe: &Path, extra: &[&str]| -> EvaluateReport {
        let mut args = vec!["evaluate", s(&r), "--step", "12", "--probe", s(probe)];
        args.extend(extra);
        json(&args, 0)
    };
    let classified = |e: &EvaluateReport| match &e.result {
        Some(ProbeResult::Classifier { rows, accuracy }) => (rows.clone(), *accuracy),
        other => panic!("{other:?}"),
    };
    let a = eval(&probe, &[]);
    assert_eq!(a.header.verdict, Verdict::Recorded);
    assert_eq!(
        a.probe_blake3,
        snapshot_format::hash::file_hash(&std::fs::read(&probe).expect("probe"))
    );
    let (ra, acc) = classified(&a);
    assert_eq!(ra.len(), 20);
    for (c, row) in ra.iter().zip(&rows) {
        assert_eq!(c.label, row["label"].as_u64().expect("label"));
        assert!(c.predicted < 2);
    }
    // The same predictions against swapped labels: the complement of the accuracy.
    let (rb, acc_swapped) = classified(&eval(&swapped, &[]));
    assert_eq!(
        ra.iter().map(|c| c.predicted).collect::<Vec<_>>(),
        rb.iter().map(|c| c.predicted).collect::<Vec<_>>()
    );
    assert!((acc + acc_swapped - 1.0).abs() < 1e-12);
    // Re-derived from step 0, the state is verified and the probe says the same.
    let v = eval(&probe, &["--from-genesis"]);
    assert_eq!(v.header.verdict, Verdict::Verified);
    assert_eq!(v.state_root, a.state_root);
    assert_eq!(classified(&v).0, ra);
    // A counterfactual runs the same probe through both models: the factual side is what
    // `evaluate` says of the factual state; the counterfactual side, what it says of the
    // counterfactual state exported and evaluated as the same run's state would be.
    let c: CounterfactualReport = json(
        &[
            "counterfactual",
            s(&r),
            "--without",
            "0,1,2,3",
            "--to",
            "12",
            "--probe",
            s(&probe),
        ],
        0,
    );
    let [p] = c.probes.as_slice() else {
        panic!("one probe comparison: {:?}", c.probes)
    };
    assert_eq!(p.probe_blake3, a.probe_blake3);
    assert_eq!(p.factual, a.result.clone().expect("result"));
    assert!(
        matches!(p.counterfactual, ProbeResult::Classifier { ref rows, .. } if rows.len() == 20)
    );
    assert_ne!(c.counterfactual_root, c.factual_root);
}

/// An ed25519 key pair written as `trainer keygen` writes it: the private key's path and the
/// public key in hex.
fn verifier_key(dir: &Path) -> (PathBuf, String) {
    let key = run_trust::signature::generate().expect("key");
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("verifier.pem");
    std::fs::write(
        &path,
        run_trust::signature::private_key_pem(&key).expect("pem"),
    )
    .expect("write key");
    (path, hex::encode(key.verifying_key().to_bytes()))
}

#[test]
fn sharded_verification_collects_every_segment() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    let results = t.path().join("results");
    let (key, public) = verifier_key(&t.path().join("verifier"));
    let id = "5f0c2a9e7b1d4c36";
    let shard = |i: &str| {
        vec![
            "verify".to_string(),
            s(&r).to_string(),
            "--all".into(),
            "--shard".into(),
            i.into(),
            "--results".into(),
            s(&results).into(),
            "--id".into(),
            id.into(),
            "--signing-key".into(),
            s(&key).into(),
        ]
    };
    let args = shard("0/2");
    let a: VerifyReport = json(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(
        a.ranges.iter().map(|x| x.segment).collect::<Vec<_>>(),
        [1, 3]
    );
    let collect = [
        "collect",
        s(&r),
        "--shards",
        "2",
        "--id",
        id,
        "--results",
        s(&results),
        "--verifier-key",
        &public,
    ];
    let missing: CollectReport = json(&collect, 2);
    assert_eq!(missing.header.verdict, Verdict::Missing);
    // Shard 1 takes its index from a Kubernetes Indexed Job's environment.
    let mut args = shard("0/2");
    args.splice(3..5, ["--shards".to_string(), "2".to_string()]);
    let out = Command::new(env!("CARGO_BIN_EXE_replay"))
        .args(&args)
        .args(["--json", "--quiet"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: VerifyReport = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(b.ranges.iter().map(|x| x.segment).collect::<Vec<_>>(), [2]);
    let all: CollectReport = json(&collect, 0);
    assert_eq!(
        all.header.verdict,
        Verdict::Verified,
        "{:?}",
        all.header.problems
    );
    assert_eq!(
        all.segments.iter().map(|x| x.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(all.steps_replayed, 12);
    // Results are write-once: the same shard cannot report twice, and is refused before it
    // replays anything (the refusal names the recorded result, not a failed write).
    let recorded_at = results.join(a.result_key.as_deref().expect("result key"));
    let recorded = std::fs::read(&recorded_at).expect("shard 0 result");
    let mut again_args = shard("0/2");
    again_args.extend(["--json".into(), "--quiet".into()]);
    let again = replay(&again_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(again.status.code(), Some(3));
    assert!(again.stdout.is_empty());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already recorded") && err.contains("verdict verified"),
        "{err}"
    );
    assert_eq!(std::fs::read(&recorded_at).expect("result"), recorded);
    // Results never go into the run's own store.
    let mut inside = shard("0/2");
    inside[6] = s(&r.join("verifications")).to_string();
    let refused = replay(&inside.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("outside the run's store"));
    let c: CheckReport = json(&["check", s(&r)], 0);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn usage_errors_exit_3_and_a_closed_pipe_is_not_an_error() {
    let t = tempfile::tempdir().expect("tmp");
    let r = record(t.path(), FixtureOptions::default());
    for args in [
        vec!["verify", s(&r), "--segment", "99"],
        vec!["verify", "/no/such/run"],
        vec!["rollback", s(&r), "--step", "999", "--out", "/tmp/x"],
        vec!["verify", s(&r), "--shard", "3/2"],
        vec![
            "verify",
            s(&r),
            "--shard",
            "3/2",
            "--results",
            "/tmp/x",
            "--id",
            "0123456789",
            "--signing-key",
            "/no/such/key",
        ],
        vec!["counterfactual", s(&r)],
        vec!["counterfactual", s(&r), "--without", "40"],
        vec!["counterfactual", s(&r), "--without", "1", "--to", "13"],
        vec!["counterfactual", s(&r), "--without-file", "/no/such/file"],
        vec!["frobnicate"],
        vec![],
    ] {
        let out = replay(&args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_replay"))
        .args(["inspect", s(&r)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // the reader goes away before anything is written
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

fn config_lora_rank(c: &RunConfig) -> u64 {
    match &c.model {
        trainer::config::ModelSpec::Llama(l) => l.lora.as_ref().map(|l| l.rank).unwrap_or(0),
        _ => 0,
    }
}

fn names_contain(t: &safetensors::SafeTensors<'_>, name: &str) -> bool {
    t.names().contains(&name)
}

#[test]
fn a_lora_run_on_a_gguf_base_checks_verifies_and_rolls_back() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_llama(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let config = RunConfig::from_file(&cfg).expect("config");
    let r = t.path().join("run");
    let summary = run::start(&config, s(&r), &RunOptions::default()).expect("run");
    assert!(summary.completed);
    let c: CheckReport = json(&["check", s(&r)], 0);
    assert_eq!(c.header.verdict, Verdict::Ok, "{:?}", c.header.problems);
    assert!(
        c.header.problems.is_empty(),
        "the GGUF base is where the layout puts it: {:?}",
        c.header.problems
    );
    let v: VerifyReport = json(&["verify", s(&r), "--all"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified, "{:?}", v.ranges);
    assert_eq!(v.steps_replayed, 12);
    let initial = v.ranges[0]
        .initial_state
        .as_ref()
        .expect("step 0 re-derived");
    assert_eq!(initial.rederived_root, initial.recorded_root);
    // Attribution of language-model rows (the run's own first three, as a behaviour probe): the
    // gradients span the adapters alone, and the trajectory is the verified one.
    let data = std::fs::read_to_string(t.path().join("in/data.jsonl")).expect("data");
    let probe = t.path().join("lm-probe.jsonl");
    std::fs::write(&probe, data.lines().take(3).collect::<Vec<_>>().join("\n")).expect("probe");
    let a: AttributeReport = json(&["attribute", s(&r), "--probe", s(&probe)], 0);
    assert_eq!(a.header.verdict, Verdict::Verified, "{:?}", a.header);
    assert_eq!(a.trajectory.as_ref().map(|t| t.steps_replayed), Some(12));
    let lora = summary.trained_parameters;
    assert!(lora > 0 && a.parameters == lora && lora < summary.parameters);
    assert!(a.scores_blake3.is_some() && !a.ranking.is_empty());
    // Over the adapters' A matrices alone: fewer parameters, those tensors only.
    let only_a: AttributeReport = json(
        &[
            "attribute",
            s(&r),
            "--probe",
            s(&probe),
            "--parameters",
            r"lora_A\.",
        ],
        0,
    );
    assert!(only_a.parameters > 0 && only_a.parameters < a.parameters);
    assert!(!only_a.tensors.is_empty());
    assert!(
        only_a.tensors.iter().all(|t| t.contains("lora_A.")),
        "{:?}",
        only_a.tensors
    );
    assert_ne!(only_a.scores_blake3, a.scores_blake3);
    let none = replay(&[
        "attribute",
        s(&r),
        "--probe",
        s(&probe),
        "--parameters",
        "^nothing$",
    ]);
    assert_eq!(none.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no trained tensor matches"));
    // Proving a language model's behaviour needs prompts and a pattern to measure it by.
    let refused = replay(&["attribute", s(&r), "--probe", s(&probe), "--prove"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--measure"));
    let out = t.path().join("rb");
    let rb: RollbackReport = json(&["rollback", s(&r), "--step", "6", "--out", s(&out)], 0);
    assert_eq!(rb.header.verdict, Verdict::Recorded);
    // The adapter as PEFT names it, and the base with the adapter merged in.
    let read = |dir: &Path, f: &str| std::fs::read(dir.join(f)).expect(f);
    let adapter_bytes = read(&out, "adapter_model.safetensors");
    let adapter = safetensors::SafeTensors::deserialize(&adapter_bytes).expect("adapter");
    let names = adapter.names();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("base_model.model.model.layers.")
                && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"))),
        "{names:?}"
    );
    let peft: serde_json::Value =
        serde_json::from_slice(&read(&out, "adapter_config.json")).expect("adapter_config");
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], config_lora_rank(&config));
    let merged_bytes = read(&out, "model.safetensors");
    let merged = safetensors::SafeTensors::deserialize(&merged_bytes).expect("merged");
    let base = trainer::base::BaseWeights::parse(&read(&r, layout::BASE_MODEL_GGUF), "base")
        .expect("base");
    let mut names: Vec<String> = merged.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, base.tensors.keys().cloned().collect::<Vec<_>>());
    let values = |t: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    // Adapted projections changed, the others are the base's bits.
    let mut adapted = 0;
    for (name, t) in &base.tensors {
        let m = values(merged.tensor(name).expect("merged tensor"));
        let stem = name.trim_end_matches(".weight");
        if names_contain(&adapter, &format!("base_model.model.{stem}.lora_A.weight")) {
            adapted += 1;
            assert_ne!(m, t.values, "{name} merged");
        } else {
            assert_eq!(m, t.values, "{name} kept");
        }
    }
    assert!(adapted > 0);
    // The trainer's export of the final state is the same bytes as a rollback to it.
    let final_rb = t.path().join("rb-final");
    let _: RollbackReport = json(
        &["rollback", s(&r), "--step", "12", "--out", s(&final_rb)],
        0,
    );
    let exported = t.path().join("export");
    run::export_final(s(&r), s(&exported), &Default::default()).expect("export");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "model.safetensors",
    ] {
        assert_eq!(read(&exported, f), read(&final_rb, f), "{f}");
    }
    // A changed byte of the GGUF base fails every command.
    let base = r.join(layout::BASE_MODEL_GGUF);
    let mut bytes = std::fs::read(&base).expect("base");
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&base, bytes).expect("write");
    let v: VerifyReport = json(&["verify", s(&r), "--segment", "2"], 2);
    assert_eq!(v.header.verdict, Verdict::Tampered);
}
