//! LoRA on SmolLM2-135M-Instruct, the engine against PyTorch + PEFT, side by side in one run:
//! the GGUF model (`examples/smollm2/run.sh` fetches it; `SMOLLM2_GGUF` names another copy),
//! rank 8 on `q_proj` and `v_proj` (alpha 16, dropout 0.05), AdamW at 1e-3 with clipping, on the
//! example's chat rows (the shipped reviews, rendered and tokenized by the model's own
//! tokenizer), batch 4 × 80 tokens. For each at 1 and 2 threads: milliseconds per step (median
//! after a warm-up), tokens per second, and whether the adapters are bit-identical across two
//! runs and across thread counts; for the engine also what recording adds per step (capture and
//! hash of the state) and the bytes of one checkpoint. PyTorch runs
//! `benches/pytorch/lora_step.py` in the bench's venv (`scripts/bench.sh` creates it), on the
//! engine's batches in the engine's order, so that both first losses (the base model's) agree.

use std::time::Instant;

use benchmarks::{Report, r3};
use trainer::backend::Cpu;
use trainer::base::BaseWeights;
use trainer::config::{ModelSpec, RunConfig, RunSpec};
use trainer::data::Dataset;
use trainer::model::llama::Llama;
use trainer::session::{PreparedData, Session};

type LoraSession = Session<Cpu, Llama<Cpu>>;

const WARMUP: u64 = 2;
const BATCH: u64 = 4;
const MAX_LEN: u64 = 80;

struct Setup {
    spec: RunSpec,
    config: trainer::config::LlamaConfig,
    base: BaseWeights,
    data: PreparedData,
}

impl Setup {
    fn session(&self) -> LoraSession {
        LoraSession::initial(
            self.spec.clone(),
            self.config.clone(),
            Some(&self.base),
            burn::backend::flex::FlexDevice,
        )
        .expect("session")
        .0
    }

    /// One step; its loss.
    fn step(&self, s: &mut LoraSession) -> f32 {
        let (_, ids) = s.next_batch();
        let batch = self.data.batch::<Cpu>(&ids, s.device());
        f32::from_bits(s.train_step(std::slice::from_ref(&batch)).loss_bits)
    }
}

/// What the engine measured at one thread count.
struct Measured {
    ms: f64,
    roots: [String; 2],
    record_ms: f64,
    checkpoint_bytes: u64,
    first_loss: f32,
}

/// Median ms per step on `threads` threads, the state roots after `check` steps of two fresh
/// sessions, the recording work on the final state (ms to capture and hash it, bytes of its
/// checkpoint) and the first step's loss.
fn engine(setup: &Setup, threads: usize, steps: u64, check: u64) -> Measured {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let mut session = setup.session();
        let mut times = Vec::new();
        let mut first_loss = f32::NAN;
        for i in 0..WARMUP + steps {
            let t = Instant::now();
            let loss = setup.step(&mut session);
            if i == 0 {
                first_loss = loss;
            }
            if i >= WARMUP {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let t = Instant::now();
        let state = session.capture();
        let hashes = state.tensor_hashes();
        state.root(&hashes).expect("root");
        let record_ms = t.elapsed().as_secs_f64() * 1e3;
        let provenance = snapshot_format::snapshot::Provenance {
            run_id: "bench".into(),
            kind: snapshot_format::snapshot::SnapshotKind::Checkpoint,
            parent: None,
            producer: "bench".into(),
        };
        let bytes = state
            .encode(&hashes, &provenance, Default::default(), None)
            .expect("encode")
            .len();
        let roots = [0, 1].map(|_| {
            let mut s = setup.session();
            for _ in 0..check {
                setup.step(&mut s);
            }
            let state = s.capture();
            state.root(&state.tensor_hashes()).expect("root").to_hex()
        });
        Measured {
            ms: times[times.len() / 2],
            roots,
            record_ms,
            checkpoint_bytes: bytes,
            first_loss,
        }
    })
}

fn main() {
    trainer::alloc::keep_freed_pages();
    let steps: u64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let check = 3;
    let mut rep = Report::new("lora_versus_pytorch");
    let gguf = benchmarks::smollm2_gguf();
    let Ok(bytes) = std::fs::read(&gguf) else {
        rep.context(
            "not run",
            format!(
                "{} is missing: run examples/smollm2/run.sh first",
                gguf.display()
            ),
        );
        rep.finish();
        return;
    };
    let base = BaseWeights::parse(&bytes, "SmolLM2-135M-Instruct.Q4_1.gguf").expect("gguf");
    let tok = trainer::chat::ChatTokenizer::from_gguf(&base).expect("tokenizer");
    let (rows, conversion) = trainer::chat::convert(
        benchmarks::smollm2_chat_rows().as_bytes(),
        "reviews.chat.jsonl",
        &tok,
        MAX_LEN as usize,
    )
    .expect("chat rows");
    let dir = tempfile::tempdir().expect("tmp");
    let config_path = dir.path().join("run.toml");
    let toml = format!(
        "[run]\nseed = 7\nsteps = {total}\nbatch_size = {BATCH}\n\n{model}\n[base]\npath = \"{gguf}\"\n\
         blake3 = \"{pin}\"\n\n[data]\npath = \"rows.jsonl\"\nformat = \"lm\"\nmax_len = {MAX_LEN}\n",
        total = WARMUP + steps + check,
        model = include_str!("../../examples/smollm2/model.toml"),
        gguf = gguf.display(),
        pin = base.hash,
    );
    std::fs::write(&config_path, &toml).expect("config");
    // The same run with each batch cut to its longest row (`data.padding = "longest"`).
    let longest_path = dir.path().join("longest.toml");
    std::fs::write(&longest_path, format!("{toml}padding = \"longest\"\n")).expect("config");
    let setup_of = |path: &std::path::Path| {
        let config = RunConfig::from_file(path).expect("config");
        let dataset = Dataset::parse(&rows, "rows.jsonl", config.data.format, &config.model)
            .expect("dataset");
        let spec = RunSpec::new(
            &config,
            &dataset.manifest,
            Some(&base),
            Some(conversion.clone()),
        );
        let ModelSpec::Llama(llama) = &config.model else {
            unreachable!("written above")
        };
        Setup {
            data: PreparedData::new(&dataset, &spec),
            config: llama.clone(),
            spec,
            base: base.clone(),
        }
    };
    let (setup, cut) = (setup_of(&config_path), setup_of(&longest_path));
    // PyTorch trains on the engine's batches, in the engine's order: the first step's loss (the
    // base model's, LoRA's B being zero) must then agree up to rounding.
    let lines: Vec<&str> = std::str::from_utf8(&rows).expect("utf-8").lines().collect();
    let row_len = |line: &str| -> u64 {
        let row: serde_json::Value = serde_json::from_str(line).expect("row");
        (row["tokens"].as_array().map_or(0, Vec::len) as u64).min(MAX_LEN)
    };
    let mut ordered = String::new();
    let mut longest_rows = 0;
    let mut order = setup.session();
    for i in 0..WARMUP + steps {
        let ids = order.next_batch().1;
        if i >= WARMUP {
            longest_rows += ids
                .iter()
                .map(|&id| row_len(lines[id as usize]))
                .max()
                .unwrap_or(0);
        }
        for id in ids {
            ordered.push_str(lines[id as usize]);
            ordered.push('\n');
        }
    }
    drop(order);
    let cut_tokens = (BATCH * longest_rows) as f64 / steps as f64;
    let rows_path = dir.path().join("batches.jsonl");
    std::fs::write(&rows_path, ordered).expect("rows");
    let tokens = (BATCH * MAX_LEN) as f64;
    rep.context(
        "model",
        "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to f32)",
    );
    rep.context(
        "lora",
        "rank 8, alpha 16, dropout 0.05, q_proj + v_proj (460,800 trained)",
    );
    rep.context("batch", "4 sequences of 80 tokens (padded)");
    rep.context(
        "batch, each cut to its longest row: mean tokens of the timed steps",
        r3(cut_tokens),
    );
    rep.context("steps_timed", steps);
    rep.context("check_steps", check);

    let ours: Vec<_> = [1usize, 2]
        .into_iter()
        .map(|threads| (threads, engine(&setup, threads, steps, check)))
        .collect();
    let ours_cut: Vec<_> = [1usize, 2]
        .into_iter()
        .map(|threads| (threads, engine(&cut, threads, steps, check)))
        .collect();
    let pytorch = |rep: &mut Report, longest: bool| {
        let (max_len, batch, steps, check) = (
            MAX_LEN.to_string(),
            BATCH.to_string(),
            steps.to_string(),
            check.to_string(),
        );
        let mut args: Vec<&std::ffi::OsStr> = vec![gguf.as_os_str(), rows_path.as_os_str()];
        for a in [
            "--max-len",
            &max_len,
            "--batch",
            &batch,
            "--threads",
            "1",
            "2",
            "--steps",
            &steps,
            "--check-steps",
            &check,
        ] {
            args.push(a.as_ref());
        }
        if longest {
            args.push("--longest".as_ref());
        }
        benchmarks::pytorch(rep, "lora_step.py", &args)
    };
    let torch = pytorch(&mut rep, false);
    let torch_cut = pytorch(&mut rep, true);
    engine_rows(&mut rep, "", &ours, torch.as_ref(), tokens);
    engine_rows(
        &mut rep,
        ", each batch cut to its longest row",
        &ours_cut,
        torch_cut.as_ref(),
        cut_tokens,
    );
    torch_rows(&mut rep, "", torch.as_ref(), tokens);
    torch_rows(
        &mut rep,
        ", each batch cut to its longest row",
        torch_cut.as_ref(),
        cut_tokens,
    );
    rep.finish();
}

/// The engine's rows, `how` the batches were padded.
fn engine_rows(
    rep: &mut Report,
    how: &str,
    ours: &[(usize, Measured)],
    torch: Option<&serde_json::Value>,
    tokens: f64,
) {
    let torch_ms =
        |threads: usize| -> Option<f64> { torch?["ms_per_step"][threads.to_string()].as_f64() };
    let same_threads = ours[0].1.roots[0] == ours[1].1.roots[0];
    for (threads, m) in ours {
        let mut row = vec![
            ("ms/step", r3(m.ms).into()),
            ("tokens/s", r3(tokens / m.ms * 1e3).into()),
            ("identical across runs", (m.roots[0] == m.roots[1]).into()),
            ("identical across 1 and 2 threads", same_threads.into()),
            ("recording: capture + hash, ms", r3(m.record_ms).into()),
            ("checkpoint bytes", m.checkpoint_bytes.into()),
            ("first step's loss", f64::from(m.first_loss).into()),
        ];
        if let Some(t) = torch_ms(*threads) {
            row.push(("× PyTorch's time", r3(m.ms / t).into()));
        }
        rep.row(&format!("engine{how}, {threads} thread(s)"), &row);
    }
}

/// PyTorch's rows, `how` the batches were padded.
fn torch_rows(rep: &mut Report, how: &str, torch: Option<&serde_json::Value>, tokens: f64) {
    let Some(t) = torch else {
        return;
    };
    for threads in [1usize, 2] {
        let key = threads.to_string();
        let ms = t["ms_per_step"][&key].as_f64().unwrap_or(f64::NAN);
        rep.row(
            &format!(
                "PyTorch {} + PEFT{how}, {threads} thread(s)",
                t["torch"].as_str().unwrap_or("?")
            ),
            &[
                ("ms/step", r3(ms).into()),
                ("tokens/s", r3(tokens / ms * 1e3).into()),
                (
                    "identical across runs",
                    t["identical_across_runs"][&key].clone(),
                ),
                (
                    "identical across 1 and 2 threads",
                    t["identical_across_threads"].clone(),
                ),
                ("first step's loss", t["first_loss"].clone()),
            ],
        );
    }
}
