//! Full fine-tuning of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters) as a
//! 2-class review classifier, the engine against PyTorch + Hugging Face transformers, side by
//! side in one run: the model and tokenized reviews that `examples/minilm/run.sh` fetches and
//! writes into `target/minilm/` (`MINILM_DIR` names another directory), its configuration
//! (`examples/minilm/model.toml`: AdamW at 5e-5 with clipping, dropout 0.1), batch 16 × 64 tokens,
//! and each batch cut to its longest row (`data.padding = "longest"`). For each at 1 and 2
//! threads: milliseconds per step (median after a warm-up), tokens per second, and whether the
//! weights are bit-identical across two runs and across thread counts; for the engine also what
//! recording adds per step and the bytes of one checkpoint. PyTorch runs
//! `benches/pytorch/minilm_step.py` in the bench's venv from the engine's initial weights
//! (the pretrained encoder and the classifier head the engine drew), on the engine's batches in
//! the engine's order; the first batch's loss without dropout is computed by both and must agree
//! up to rounding.

use benchmarks::versus::{Plan, Setup, compare};
use benchmarks::{Report, r3};
use trainer::base::BaseWeights;
use trainer::config::ModelSpec;
use trainer::model::bert::BertClassifier;

const WARMUP: u64 = 3;
const BATCH: u64 = 16;
const MAX_LEN: u64 = 64;

fn main() {
    trainer::alloc::keep_freed_pages();
    let steps: u64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let check = 3;
    let mut rep = Report::new("minilm_versus_pytorch");
    let work = std::env::var_os("MINILM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/minilm")
        });
    let (weights, rows_path) = (
        work.join("model/model.safetensors"),
        work.join("reviews.tokens.jsonl"),
    );
    let (Ok(bytes), Ok(rows)) = (std::fs::read(&weights), std::fs::read(&rows_path)) else {
        rep.context(
            "not run",
            format!(
                "{} or {} is missing: run examples/minilm/run.sh first",
                weights.display(),
                rows_path.display()
            ),
        );
        rep.finish();
        return;
    };
    let base = BaseWeights::parse(&bytes, "model.safetensors").expect("safetensors");
    let dir = tempfile::tempdir().expect("tmp");
    let config_path = dir.path().join("run.toml");
    let toml = format!(
        "[run]\nseed = 2024\nsteps = {total}\nbatch_size = {BATCH}\n\n{model}\n[base]\n\
         path = \"{weights}\"\nblake3 = \"{pin}\"\n\n[data]\npath = \"reviews.tokens.jsonl\"\n\
         format = \"tokens\"\nmax_len = {MAX_LEN}\n",
        total = WARMUP + steps + check,
        model = include_str!("../../examples/minilm/model.toml"),
        weights = weights.display(),
        pin = base.hash,
    );
    std::fs::write(&config_path, &toml).expect("config");
    let longest_path = dir.path().join("longest.toml");
    std::fs::write(&longest_path, format!("{toml}padding = \"longest\"\n")).expect("config");
    let setup_of = |path: &std::path::Path| {
        Setup::<BertClassifier<_>>::new(path, &rows, "reviews.tokens.jsonl", &base, None, |m| {
            match m {
                ModelSpec::Bert(c) => Some(c.clone()),
                _ => None,
            }
        })
    };
    let (setup, cut) = (setup_of(&config_path), setup_of(&longest_path));

    // PyTorch starts from the engine's initial weights and trains on its batches, in its order.
    let (ordered, cut_tokens) = setup.ordered_rows(&rows, WARMUP, steps, MAX_LEN);
    let batches_path = dir.path().join("batches.jsonl");
    std::fs::write(&batches_path, ordered).expect("rows");
    let (eval_loss, initial) = setup.initial_model();
    let initial_path = dir.path().join("model.safetensors");
    std::fs::write(&initial_path, initial).expect("initial model");
    rep.context(
        "model",
        "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) + a 2-class head, every parameter trained",
    );
    rep.context("batch", "16 sequences of 64 tokens (padded)");
    rep.context(
        "batch, each cut to its longest row: mean tokens of the timed steps",
        r3(cut_tokens),
    );
    rep.context("steps_timed", steps);
    rep.context("check_steps", check);
    rep.context(
        "first batch's loss at step 0 without dropout, engine",
        f64::from(eval_loss),
    );

    let plan = Plan {
        batch: BATCH,
        max_len: MAX_LEN,
        warmup: WARMUP,
        steps,
        check,
    };
    let config = work.join("model/config.json");
    let inputs = [
        config.as_os_str(),
        initial_path.as_os_str(),
        batches_path.as_os_str(),
    ];
    let torch = compare(
        &mut rep,
        plan,
        (&setup, &cut),
        cut_tokens,
        "minilm_step.py",
        &inputs,
        "+ transformers",
    );
    if let Some(t) = &torch {
        rep.context(
            "first batch's loss at step 0 without dropout, PyTorch",
            t["eval_loss"].clone(),
        );
        rep.context("transformers", t["transformers"].clone());
    }
    rep.finish();
}
