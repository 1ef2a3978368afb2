//! A run whose batches are cut into micro-batches (the unit of data-parallel work) is verified,
//! and re-executed without an example, by `replay` on another number of workers: the parts'
//! gradients meet in the same fixed tree whoever computes them.

use std::path::Path;

use e2e_tests::{replay_json, s, train};
use replay::Verdict;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::verify::VerifyReport;
use trainer::fixtures::{self, FixtureOptions};

#[test]
fn a_micro_batched_run_replays_bit_for_bit_on_another_worker_count() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_bert(
        &t.path().join("in"),
        &FixtureOptions {
            batch_size: 8,
            ..Default::default()
        },
    )
    .expect("fixture");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("batch_size = 8\n", "batch_size = 8\nmicro_batches = 4\n"),
    )
    .expect("config");
    let run = t.path().join("run");
    train(&cfg, &run, &["--threads", "2", "--run-id", "parts"]);

    let v: VerifyReport = replay_json(&["--threads", "1", "verify", s(&run), "--all"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified);
    assert_eq!(v.steps_replayed, 12);

    // Without example 3: its part loses a row, the others keep theirs; the same bits on 1 and 2
    // workers.
    let without = |threads: &str, out: &Path| -> CounterfactualReport {
        replay_json(
            &[
                "--threads",
                threads,
                "counterfactual",
                s(&run),
                "--without",
                "3",
                "--out",
                s(out),
            ],
            0,
        )
    };
    let a = without("1", &t.path().join("cf1"));
    let b = without("2", &t.path().join("cf2"));
    assert!(a.first_changed_step.is_some(), "example 3 is used");
    assert!(a.counterfactual_root.is_some());
    assert_eq!(a.counterfactual_root, b.counterfactual_root);
    assert_ne!(a.counterfactual_root, a.factual_root);
}
