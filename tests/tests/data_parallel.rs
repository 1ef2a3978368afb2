//! Data-parallel training whose bits do not depend on the number of workers: a run whose
//! batches are cut into micro-batches is the same run whether one process computes every part
//! or 2 or 4 MPI processes share them (`trainer run --mpi` under Open MPI's `mpirun`), resumes
//! across worker counts to the same bits (stopped, or a worker killed), and is verified, and
//! re-executed without an example, by `replay` in one process on another thread count; a worker
//! that disagrees is caught by that replay.

use std::path::{Path, PathBuf};

use e2e_tests::{mpirun, mpirun_command, replay_json, run_with, s, train};
use replay::Verdict;
use replay::commands::counterfactual::CounterfactualReport;
use replay::commands::verify::VerifyReport;
use run_store::testing::{assert_same_run, manifest};
use snapshot_format::layout;
use trainer::fixtures::{self, FixtureOptions};

/// The tiny BERT fixture (12 steps, checkpoints every 4) with batches of 8 in `parts` parts.
fn micro_batched(dir: &Path, parts: u64) -> PathBuf {
    micro_batched_with(dir, parts, FixtureOptions::default())
}

fn micro_batched_with(dir: &Path, parts: u64, o: FixtureOptions) -> PathBuf {
    fixtures::write_tiny_bert(
        dir,
        &FixtureOptions {
            batch_size: 8,
            micro_batches: parts,
            ..o
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

    // `--workers 2` starts the same job itself (mpirun on this trainer with --mpi).
    let local = t.path().join("local");
    let root = [
        ("OMPI_ALLOW_RUN_AS_ROOT".to_string(), "1".to_string()),
        (
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM".to_string(),
            "1".to_string(),
        ),
    ];
    let args = [
        "run",
        s(&cfg),
        "--out",
        s(&local),
        "--run-id",
        "dp",
        "--workers",
        "2",
        "--quiet",
    ];
    let o = run_with("trainer", &args, &root);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&one, &local);
    assert_eq!(manifest(&local).environment.workers, 2);

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

/// A worker killed in the middle of a run (SIGKILL) stops the job: what is stored is whole, and
/// the run resumes on another number of workers to the uninterrupted run's bits.
#[test]
fn a_killed_worker_stops_the_run_cleanly_and_it_resumes_on_another_worker_count() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = micro_batched_with(
        &t.path().join("in"),
        4,
        FixtureOptions {
            steps: 200,
            checkpoint_interval: 5,
            ..Default::default()
        },
    );
    let full = t.path().join("full");
    train(&cfg, &full, &["--run-id", "dp"]);
    let run = t.path().join("killed");
    let args = [
        "run",
        s(&cfg),
        "--out",
        s(&run),
        "--run-id",
        "dp",
        "--mpi",
        "--quiet",
    ];
    let mut job = mpirun_command(&[(2, &args)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mpirun");
    // Once a few checkpoints are stored, kill the worker of rank 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join(layout::checkpoint(15)).exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint 15");
        assert!(
            job.try_wait().expect("wait").is_none(),
            "the job ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rank1 = workers_of(job.id())
        .into_iter()
        .find(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == b"OMPI_COMM_WORLD_RANK=1"))
        })
        .expect("the worker of rank 1");
    std::process::Command::new("kill")
        .args(["-KILL", &rank1.to_string()])
        .status()
        .expect("kill");
    let status = job.wait().expect("mpirun");
    assert!(!status.success(), "the job stops when a worker dies");
    assert!(!run.join(layout::COMPLETE).exists());
    // Every stored object reads whole; the resumed run is the uninterrupted one.
    let check: replay::commands::check::CheckReport = replay_json(&["check", s(&run)], 2);
    assert!(
        check
            .header
            .problems
            .iter()
            .all(|p| p.kind == Verdict::Incomplete),
        "only incompleteness: {:?}",
        check.header.problems
    );
    workers(4, &["resume", s(&run)]);
    assert_same_run(&full, &run);
}

/// The processes started by `mpirun`'s process (its children, their children).
fn workers_of(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    let mut pending = vec![pid];
    while let Some(p) = pending.pop() {
        let children = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        out.extend(&children);
        pending.extend(children);
    }
    out
}

/// A worker that disagrees (here one reading other data: every label flipped, as a faulty or
/// hostile worker would send wrong gradients) is not averaged away unseen: the first worker
/// records what the sums gave, and `replay verify` in one process, which computes every part
/// itself, finds the first step it touched.
#[test]
fn a_worker_that_disagrees_is_caught_by_replay_at_the_first_step_it_touched() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = micro_batched(&t.path().join("in"), 2);
    let bad = t.path().join("bad");
    let bad_cfg = micro_batched(&bad, 2);
    let data = bad.join("data.jsonl");
    let flipped: String = std::fs::read_to_string(&data)
        .expect("data")
        .lines()
        .map(|l| {
            let mut row: serde_json::Value = serde_json::from_str(l).expect("row");
            let label = row["label"].as_u64().expect("label");
            row["label"] = (1 - label).into();
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&data, flipped).expect("data");
    let run = t.path().join("run");
    let common = ["--out", s(&run), "--run-id", "dp", "--mpi", "--quiet"];
    let good: Vec<&str> = ["run", s(&cfg)].into_iter().chain(common).collect();
    let hostile: Vec<&str> = ["run", s(&bad_cfg)].into_iter().chain(common).collect();
    let o = mpirun_command(&[(1, &good), (1, &hostile)])
        .output()
        .expect("mpirun");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: VerifyReport = replay_json(&["verify", s(&run), "--all"], 1);
    assert_eq!(v.header.verdict, Verdict::Diverged);
    let d = v.ranges[0].divergence.as_ref().expect("a divergence");
    assert_eq!(d.step, 1);
}
