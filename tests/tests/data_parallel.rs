//! Data-parallel training whose bits do not depend on the number of workers: a run whose
//! batches are cut into micro-batches is the same run whether one process computes every part
//! or 2 or 4 MPI processes share them (`trainer run --mpi` under Open MPI's `mpirun`), resumes
//! across worker counts to the same bits, and is verified, and re-executed without an example,
//! by `replay` in one process on another thread count.

use std::path::{Path, PathBuf};

use e2e_tests::{mpirun, replay_json, s, train};
use replay::Verdict;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::verify::VerifyReport;
use run_store::testing::{assert_same_run, manifest};
use snapshot_format::layout;
use trainer::fixtures::{self, FixtureOptions};

/// The tiny BERT fixture (12 steps, checkpoints every 4) with batches of 8 in `parts` parts.
fn micro_batched(dir: &Path, parts: u64) -> PathBuf {
    fixtures::write_tiny_bert(
        dir,
        &FixtureOptions {
            batch_size: 8,
            micro_batches: parts,
            ..Default::default()
        },
    )
    .expect("fixture")
}

/// `mpirun -n N trainer ARGS… --mpi --quiet`, which must succeed.
fn workers(n: usize, args: &[&str]) {
    let mut full = args.to_vec();
    full.extend(["--mpi", "--quiet"]);
    let out = mpirun(n, &full);
    assert!(
        out.status.success(),
        "mpirun -n {n} trainer {full:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_two_and_four_mpi_workers_record_the_same_run() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = micro_batched(&t.path().join("in"), 4);
    let one = t.path().join("one");
    train(&cfg, &one, &["--run-id", "dp"]);
    for n in [2, 4] {
        let run = t.path().join(format!("workers-{n}"));
        workers(n, &["run", s(&cfg), "--out", s(&run), "--run-id", "dp"]);
        assert_same_run(&one, &run);
        // The layout is recorded for the investigator, outside the environment class.
        assert_eq!(manifest(&run).environment.workers, n as u64);
        assert_eq!(
            manifest(&run).environment.class(),
            manifest(&one).environment.class()
        );
    }
    assert_eq!(manifest(&one).environment.workers, 1);

    // Stopped after 6 steps on 2 workers, resumed on 4: the same bits.
    let moved = t.path().join("moved");
    workers(
        2,
        &[
            "run",
            s(&cfg),
            "--out",
            s(&moved),
            "--run-id",
            "dp",
            "--max-steps",
            "6",
        ],
    );
    assert!(!moved.join(layout::COMPLETE).exists());
    workers(4, &["resume", s(&moved)]);
    assert_same_run(&one, &moved);

    // A run trained by 4 processes is verified by one.
    let v: VerifyReport = replay_json(&["verify", s(&t.path().join("workers-4")), "--all"], 0);
    assert_eq!(v.header.verdict, Verdict::Verified);

    // 3 workers cannot share 4 parts equally: refused before anything is written.
    let refused = t.path().join("refused");
    let out = mpirun(
        3,
        &["run", s(&cfg), "--out", s(&refused), "--mpi", "--quiet"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run.micro_batches"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!refused.join(layout::MANIFEST).exists());
}

#[test]
fn a_micro_batched_run_replays_bit_for_bit_on_another_worker_count() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = micro_batched(&t.path().join("in"), 4);
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
