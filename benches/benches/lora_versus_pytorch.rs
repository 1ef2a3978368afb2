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

use benchmarks::versus::{Plan, Setup, compare};
use benchmarks::{Report, r3};
use trainer::base::BaseWeights;
use trainer::config::ModelSpec;
use trainer::model::llama::Llama;

const WARMUP: u64 = 2;
const BATCH: u64 = 4;
const MAX_LEN: u64 = 80;

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
        Setup::<Llama<_>>::new(
            path,
            &rows,
            "rows.jsonl",
            &base,
            Some(conversion.clone()),
            |m| match m {
                ModelSpec::Llama(c) => Some(c.clone()),
                _ => None,
            },
        )
    };
    let (setup, cut) = (setup_of(&config_path), setup_of(&longest_path));
    // PyTorch trains on the engine's batches, in the engine's order: the first step's loss (the
    // base model's, LoRA's B being zero) must then agree up to rounding.
    let (ordered, cut_tokens) = setup.ordered_rows(&rows, WARMUP, steps, MAX_LEN);
    let rows_path = dir.path().join("batches.jsonl");
    std::fs::write(&rows_path, ordered).expect("rows");
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

    let plan = Plan {
        batch: BATCH,
        max_len: MAX_LEN,
        warmup: WARMUP,
        steps,
        check,
    };
    let inputs = [gguf.as_os_str(), rows_path.as_os_str()];
    compare(
        &mut rep,
        plan,
        (&setup, &cut),
        cut_tokens,
        "lora_step.py",
        &inputs,
        "+ PEFT",
    );
    rep.finish();
}
