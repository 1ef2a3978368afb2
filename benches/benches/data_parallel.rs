//! Data-parallel training on one machine: the demo model (batches of 32) for a number of steps,
//! each batch as one pass or as micro-batches, computed by one process (its threads) or by MPI
//! processes (`trainer run --mpi` under `mpirun`, one thread each); the runs with the same parts
//! must end at the same ledger head whoever computed them (checked). Also what each worker
//! receives per step, and the time a worker spends exchanging sums and completing the tree.
//! Runs the release `trainer` built with MPI (`scripts/bench.sh` builds it).

use std::path::{Path, PathBuf};
use std::process::Command;

use benchmarks::{DemoTraining, Report, r3};

const STEPS: u64 = 80;

/// The release `trainer` beside this benchmark's executable (target/release/deps/… → target/release).
fn trainer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("benchmark executable");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("trainer");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --features trainer/mpi --bin trainer",
        path.display()
    );
    path
}

/// One variant's run: its summary (`trainer --json`).
fn run(config: &Path, out: &Path, workers: usize, threads: usize) -> serde_json::Value {
    let trainer = trainer_binary();
    let mut args: Vec<String> = vec![
        "run".into(),
        config.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--run-id".into(),
        "bench".into(),
        "--threads".into(),
        threads.to_string(),
        "--json".into(),
        "--quiet".into(),
    ];
    let mut c = if workers == 1 {
        Command::new(&trainer)
    } else {
        args.push("--mpi".into());
        let mut c = Command::new("mpirun");
        c.args([
            "-n",
            &workers.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .arg(&trainer)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c
    };
    let o = c.args(&args).output().expect("start trainer");
    assert!(
        o.status.success(),
        "trainer {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON summary");
    serde_json::from_str(line).expect("JSON summary")
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let dir = tempfile::tempdir().expect("tmp");
    let path = trainer::demo::write_assets(&dir.path().join("assets"), STEPS).expect("assets");
    let text = std::fs::read_to_string(&path).expect("config");
    let with_parts = |parts: u64| -> PathBuf {
        let p = dir.path().join(format!("assets/parts-{parts}.toml"));
        let t = text.replace(
            "batch_size = 32\n",
            &format!("batch_size = 32\nmicro_batches = {parts}\n"),
        );
        assert_ne!(t, text, "the demo's config names its batch size");
        std::fs::write(&p, t).expect("config");
        p
    };
    let tensors = DemoTraining::new(1).session().trainable().len() as f64;

    let mut report = Report::new("data_parallel");
    report.context(
        "model",
        "demo classifier (BERT-style, 2 layers, hidden 256)",
    );
    report.context("steps", STEPS);
    report.context("batch", 32);
    report.context(
        "cores",
        std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
    );
    let variants: [(&str, Option<u64>, usize, usize); 5] = [
        ("1 process, 1 thread, one pass", None, 1, 1),
        ("1 process, 2 threads, one pass", None, 1, 2),
        ("1 process, 1 thread, 2 parts", Some(2), 1, 1),
        ("1 process, 2 threads, 2 parts", Some(2), 1, 2),
        ("2 processes x 1 thread, 2 parts", Some(2), 2, 1),
    ];
    let mut heads: Vec<(Option<u64>, String)> = vec![];
    for (i, (label, parts, workers, threads)) in variants.into_iter().enumerate() {
        let config = match parts {
            Some(p) => with_parts(p),
            None => path.clone(),
        };
        let s = run(
            &config,
            &dir.path().join(format!("run-{i}")),
            workers,
            threads,
        );
        let per_s = s["steps_per_second"].as_f64().expect("steps/s");
        let head = s["ledger_head"].as_str().expect("head").to_string();
        if let Some((_, same)) = heads.iter().find(|(p, _)| *p == parts) {
            assert_eq!(
                *same, head,
                "{label}: another ledger head than the same parts elsewhere"
            );
        }
        heads.push((parts, head.clone()));
        // Each worker receives the others' sums: the trained parameters, the weighted loss and a
        // flag per tensor, in f32.
        let trained = s["trained_parameters"].as_f64().expect("parameters");
        let received = 4.0 * (trained + 1.0 + tensors) * (workers as f64 - 1.0);
        let exchange = s["exchange_seconds"].as_f64().expect("exchange seconds");
        report.row(
            label,
            &[
                ("steps/s", r3(per_s).into()),
                ("ms/step", r3(1000.0 / per_s).into()),
                ("received MB/step", r3(received / 1e6).into()),
                (
                    "exchange ms/step",
                    r3(exchange * 1000.0 / STEPS as f64).into(),
                ),
                ("ledger head", head[..16].to_string().into()),
            ],
        );
    }
    report.finish();
}
