//! Data-parallel training on one machine: the demo model (batches of 32) and SmolLM2-135M + LoRA
//! (batches of 4 × 80 tokens; when `examples/smollm2/run.sh` has fetched it) for some steps,
//! each batch as one pass or as micro-batches, computed by one process (its threads) or by MPI
//! processes (`trainer run --mpi` under `mpirun`, one thread each); the runs with the same parts
//! must end at the same ledger head whoever computed them (checked). Also what each worker
//! receives per step, and the time a worker spends exchanging sums and completing the tree.
//! Runs the release `trainer` built with MPI (`scripts/bench.sh` builds it).

use std::path::{Path, PathBuf};
use std::process::Command;

use benchmarks::{Report, r3};

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

/// What a model's runs are made of: its configuration (with `{PARTS}` where the micro-batch line
/// goes), the files it names, and its batch size.
struct Model {
    label: &'static str,
    config: String,
    batch: u64,
    steps: u64,
}

/// The demo classifier: its shipped assets, written into `dir`.
fn demo(dir: &Path) -> Model {
    let steps = 80;
    let path = trainer::demo::write_assets(dir, steps).expect("assets");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(
        text.contains("batch_size = 32\n"),
        "the demo's config names its batch size"
    );
    Model {
        label: "demo",
        config: text.replace("batch_size = 32\n", "batch_size = 32\n{PARTS}"),
        batch: 32,
        steps,
    }
}

/// SmolLM2-135M-Instruct + LoRA as `examples/smollm2/run.sh` trains it (chat rows of the shipped
/// reviews, batch 4 × 80 tokens), if its GGUF has been fetched.
fn smollm2(dir: &Path) -> Option<Model> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = benchmarks::smollm2_gguf();
    if !gguf.exists() {
        eprintln!(
            "{} is missing (examples/smollm2/run.sh fetches it): SmolLM2 not measured",
            gguf.display()
        );
        return None;
    }
    let bytes = std::fs::read(&gguf).expect("gguf");
    let pin = snapshot_format::hash::file_hash(&bytes);
    std::fs::write(dir.join("smollm2.gguf"), &bytes).expect("gguf");
    let rows = benchmarks::smollm2_chat_rows();
    std::fs::write(dir.join("reviews.chat.jsonl"), rows).expect("rows");
    let model =
        std::fs::read_to_string(workspace.join("examples/smollm2/model.toml")).expect("model.toml");
    let steps = 12;
    Some(Model {
        label: "SmolLM2-135M + LoRA",
        config: format!(
            "[run]\nseed = 7\nsteps = {steps}\nbatch_size = 4\n{{PARTS}}\n{model}\n[base]\n\
             path = \"smollm2.gguf\"\nblake3 = \"{pin}\"\n\n[data]\npath = \"reviews.chat.jsonl\"\n\
             format = \"chat\"\nmax_len = 80\n\n[recording]\ncheckpoint_interval = 10\n"
        ),
        batch: 4,
        steps,
    })
}

fn measure(report: &mut Report, dir: &Path, m: &Model) {
    let with_parts = |parts: u64| -> PathBuf {
        let p = dir.join(format!("parts-{parts}.toml"));
        let line = if parts == 1 {
            String::new()
        } else {
            format!("micro_batches = {parts}\n")
        };
        std::fs::write(&p, m.config.replace("{PARTS}", &line)).expect("config");
        p
    };
    let variants: [(&str, u64, usize, usize); 5] = [
        ("1 process, 1 thread, one pass", 1, 1, 1),
        ("1 process, 2 threads, one pass", 1, 1, 2),
        ("1 process, 1 thread, 2 parts", 2, 1, 1),
        ("1 process, 2 threads, 2 parts", 2, 1, 2),
        ("2 processes x 1 thread, 2 parts", 2, 2, 1),
    ];
    let mut heads: Vec<(u64, String)> = vec![];
    for (i, (label, parts, workers, threads)) in variants.into_iter().enumerate() {
        let s = run(
            &with_parts(parts),
            &dir.join(format!("run-{i}")),
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
        // flag per tensor, in f32 (the flags left out here).
        let trained = s["trained_parameters"].as_f64().expect("parameters");
        let received = 4.0 * (trained + 1.0) * (workers as f64 - 1.0);
        let exchange = s["exchange_seconds"].as_f64().expect("exchange seconds");
        report.row(
            &format!("{}: {label}", m.label),
            &[
                ("steps/s", r3(per_s).into()),
                ("ms/step", r3(1000.0 / per_s).into()),
                ("received MB/step", r3(received / 1e6).into()),
                (
                    "exchange ms/step",
                    r3(exchange * 1000.0 / m.steps as f64).into(),
                ),
                ("ledger head", head[..16].to_string().into()),
                ("batch", m.batch.into()),
                ("steps", m.steps.into()),
            ],
        );
    }
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let dir = tempfile::tempdir().expect("tmp");
    let mut report = Report::new("data_parallel");
    report.context(
        "cores",
        std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
    );
    let demo_dir = dir.path().join("demo");
    measure(&mut report, &demo_dir, &demo(&demo_dir));
    let lm_dir = dir.path().join("smollm2");
    std::fs::create_dir_all(&lm_dir).expect("dir");
    if let Some(m) = smollm2(&lm_dir) {
        measure(&mut report, &lm_dir, &m);
    }
    report.finish();
}
