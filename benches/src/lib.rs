//! Shared measurement and reporting for the benchmarks in `benches/benches/`.
//!
//! Each benchmark times whole operations (median of several runs, after one warm-up), prints
//! a Markdown table, and writes `bench-results/<name>.json` so that every figure in the README
//! can be traced to a run of `scripts/bench.sh`.

pub mod versus;

use std::time::{Duration, Instant};

/// The allocator of the `trainer` and `replay` binaries, so that benchmarks measure what they run
/// (each benchmark's `main` also calls `trainer::alloc::keep_freed_pages`, as theirs do).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Time `f` `runs` times after one warm-up run; returns the median.
pub fn median_time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    std::hint::black_box(f());
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Rows of one benchmark's results.
#[derive(Debug, Default)]
pub struct Report {
    name: String,
    context: Vec<(String, serde_json::Value)>,
    rows: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
}

impl Report {
    /// A report named after its benchmark.
    pub fn new(name: &str) -> Self {
        Report {
            name: name.into(),
            ..Default::default()
        }
    }

    /// A fact about the setup (data size, model, threads…).
    pub fn context(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.context.push((key.into(), value.into()));
    }

    /// One measured row with named values.
    pub fn row(&mut self, label: &str, values: &[(&str, serde_json::Value)]) {
        let map = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.rows.push((label.into(), map));
    }

    /// Print as Markdown and write `bench-results/<name>.json` at the workspace root.
    pub fn finish(self) {
        println!("\n## {}\n", self.name);
        for (k, v) in &self.context {
            println!("- {k}: {v}");
        }
        let mut cols: Vec<String> = Vec::new();
        for (_, m) in &self.rows {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        println!("\n| | {} |", cols.join(" | "));
        println!("|---|{}", "---|".repeat(cols.len()));
        for (label, m) in &self.rows {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| m.get(c).map(fmt_value).unwrap_or_default())
                .collect();
            println!("| {label} | {} |", cells.join(" | "));
        }
        let json = serde_json::json!({
            "benchmark": self.name,
            "context": self.context.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "rows": self.rows.iter().map(|(l, m)| {
                let mut m = m.clone();
                m.insert("label".into(), l.clone().into());
                serde_json::Value::Object(m)
            }).collect::<Vec<_>>(),
        });
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
        let path = dir.join(format!("{}.json", self.name));
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap_or_default())
        });
        match written {
            Ok(()) => println!("\nwrote {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    }
}

fn fmt_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Run the PyTorch reference `benches/pytorch/<script>` with `args` in the bench's venv
/// (`target/bench-venv`, which `scripts/bench.sh` creates; `BENCH_PYTHON` names another
/// Python) and record in `rep` which torch ran, or why none did. Returns the script's JSON.
pub fn pytorch<S: AsRef<std::ffi::OsStr>>(
    rep: &mut Report,
    script: &str,
    args: &[S],
) -> Option<serde_json::Value> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("BENCH_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| here.join("../target/bench-venv/bin/python"));
    let script = here.join("pytorch").join(script);
    let out: Option<serde_json::Value> = std::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    match &out {
        Some(t) => rep.context("pytorch", t["torch"].clone()),
        None => rep.context(
            "pytorch",
            format!(
                "not run: {} could not run {}",
                python.display(),
                script.display()
            ),
        ),
    }
    out
}

/// Round to 3 decimals, for JSON output.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The demo model, data and spec, for benchmarks that train it without recording.
#[allow(missing_debug_implementations)]
pub struct DemoTraining {
    pub spec: trainer::config::RunSpec,
    pub config: trainer::config::RunConfig,
    pub dataset: trainer::data::Dataset,
    pub data: trainer::session::PreparedData,
    base: trainer::base::BaseWeights,
    _assets: tempfile::TempDir,
}

/// A training session of the demo model on the CPU.
pub type DemoSession = trainer::session::Session<
    trainer::backend::Cpu,
    trainer::model::bert::BertClassifier<trainer::backend::Cpu>,
>;

impl DemoTraining {
    /// The demo of `steps` steps (its spec, pinned base and shipped data).
    pub fn new(steps: u64) -> Self {
        use trainer::{base::BaseWeights, config, data::Dataset, demo};
        let assets = tempfile::tempdir().expect("tmp");
        let path = demo::write_assets(assets.path(), steps).expect("assets");
        let config = config::RunConfig::from_file(&path).expect("config");
        let dataset = Dataset::parse(
            demo::DATASET,
            "reviews.jsonl",
            config.data.format,
            &config.model,
        )
        .expect("data");
        let base = BaseWeights::parse(&demo::base_model().expect("base"), "base").expect("base");
        let spec = config::RunSpec::new(&config, &dataset.manifest, Some(&base), None);
        let data = trainer::session::PreparedData::new(&dataset, &spec);
        DemoTraining {
            spec,
            config,
            dataset,
            data,
            base,
            _assets: assets,
        }
    }

    /// A fresh session at step 0.
    pub fn session(&self) -> DemoSession {
        DemoSession::initial(
            self.spec.clone(),
            trainer::demo::model_config(),
            Some(&self.base),
            burn::backend::flex::FlexDevice,
        )
        .expect("session")
        .0
    }

    /// One training step of `session` (batch, forward, backward, optimizer), no recording:
    /// the batch's epoch and example ids, and what the step produced.
    pub fn step(
        &self,
        session: &mut DemoSession,
    ) -> (u64, Vec<u64>, trainer::session::StepOutcome) {
        let (epoch, ids) = session.next_batch();
        let batch = self
            .data
            .batch::<trainer::backend::Cpu>(&ids, session.device());
        let out = session.train_step(std::slice::from_ref(&batch));
        (epoch, ids, out)
    }
}

/// SmolLM2-135M-Instruct's GGUF file, as `examples/smollm2/run.sh` fetches it into
/// `target/smollm2/` (`SMOLLM2_GGUF` names another copy).
pub fn smollm2_gguf() -> std::path::PathBuf {
    std::env::var_os("SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

/// The SmolLM2 example's chat rows (JSON Lines): the first 512 shipped reviews as a question and
/// a one-word answer.
pub fn smollm2_chat_rows() -> String {
    let mut out = String::new();
    for line in std::str::from_utf8(trainer::demo::DATASET)
        .expect("utf-8")
        .lines()
        .take(512)
    {
        let r: serde_json::Value = serde_json::from_str(line).expect("review");
        let answer = if r["label"] == 1 {
            "positive"
        } else {
            "negative"
        };
        let question = format!(
            "Is this review positive or negative? {}",
            r["text"].as_str().unwrap_or_default()
        );
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]});
        out.push_str(&row.to_string());
        out.push('\n');
    }
    out
}
