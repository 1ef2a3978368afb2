//! The Llama-architecture decoder with LoRA: a base model read from a GGUF file (quantized,
//! with llama.cpp's layout), language-model data, adapters trained on a frozen base, and the
//! determinism contract of every other model (separate processes, resume, thread counts).

use std::path::{Path, PathBuf};
use std::process::Command;

use run_store::testing::{assert_same_run, completion, records};
use snapshot_format::layout;
use trainer::base::{BaseFormat, BaseWeights};
use trainer::fixtures::{self, FixtureOptions};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn train(config: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "run",
            s(config),
            "--out",
            s(out),
            "--quiet",
            "--run-id",
            "llama",
        ])
        .args(extra)
        .output()
        .expect("trainer");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `trainer resume RUN`, which must succeed.
fn resume(run: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["resume", s(run), "--quiet"])
        .output()
        .expect("resume");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fixture(dir: &Path) -> PathBuf {
    fixtures::write_tiny_llama(dir, &FixtureOptions::default()).expect("fixture")
}

#[test]
fn a_gguf_base_reads_back_as_the_hugging_face_model() {
    let c = fixtures::tiny_llama();
    let bytes = fixtures::llama_gguf(&c, 5);
    let w = BaseWeights::parse(&bytes, "base.gguf").expect("parse");
    assert_eq!(w.format, BaseFormat::Gguf);
    let names: Vec<&str> = w.tensors.keys().map(String::as_str).collect();
    assert!(names.contains(&"model.embed_tokens.weight"));
    assert!(names.contains(&"model.layers.1.self_attn.k_proj.weight"));
    assert!(names.contains(&"model.norm.weight"));
    assert!(!names.iter().any(|n| n.starts_with("lm_head")), "tied");
    let k = &w.tensors["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(k.shape, vec![16, 32]);
    // The rows are those of the model, not llama.cpp's permutation of them: compare with the
    // weights the fixture drew, within the Q4_1 quantum.
    let drawn = trainer::model::init_values(
        trainer::model::Init::Normal {
            std: 1.0 / 32f64.sqrt(),
        },
        5,
        "0.k_proj",
        16 * 32,
    );
    let worst = k
        .values
        .iter()
        .zip(&drawn)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 0.2, "largest difference {worst}");
    let v = &w.tensors["model.layers.0.self_attn.v_proj.weight"];
    let drawn_v = trainer::model::init_values(
        trainer::model::Init::Normal {
            std: 1.0 / 32f64.sqrt(),
        },
        5,
        "0.v_proj",
        16 * 32,
    );
    assert!(
        v.values
            .iter()
            .zip(&drawn_v)
            .all(|(a, b)| (a - b).abs() <= b.abs() * 1e-3 + 1e-4),
        "F16 rounds only"
    );
}

#[test]
fn lora_runs_are_bit_identical_across_processes_threads_and_resume() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixture(&t.path().join("in"));
    let export = t.path().join("export");
    train(&cfg, &t.path().join("a"), &["--export", s(&export)]);
    train(&cfg, &t.path().join("b"), &["--threads", "1"]);
    assert_same_run(&t.path().join("a"), &t.path().join("b"));
    // Interrupted after 5 steps and resumed.
    let c = t.path().join("c");
    train(&cfg, &c, &["--max-steps", "5"]);
    resume(&c);
    assert_same_run(&t.path().join("a"), &c);
    // The run keeps its GGUF base, and its checkpoints hold only the adapters and their
    // optimizer state.
    let a = t.path().join("a");
    assert!(a.join(layout::BASE_MODEL_GGUF).exists());
    let key = layout::checkpoint(4);
    let header = snapshot_format::snapshot::read_header(
        &std::fs::read(a.join(&key)).expect("checkpoint"),
        &key,
        &Default::default(),
    )
    .expect("header");
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")),
        "{names:?}"
    );
    // 2 layers × 3 targets × (A, B) × (parameter, 2 AdamW moments)
    assert_eq!(names.len(), 2 * 3 * 2 * 3);
    let last = completion(&a);
    assert_ne!(last.ledger_head, snapshot_format::Hash32::ZERO);
    // The run exported its final adapter as PEFT does, and the merged model.
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "model.safetensors",
    ] {
        assert!(export.join(f).exists(), "{f}");
    }
    // An export directory that holds files is refused before anything is trained.
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["run", s(&cfg), "--out", s(&t.path().join("d")), "--quiet"])
        .args(["--export", s(&export)])
        .output()
        .expect("trainer");
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds files"));
    assert!(!t.path().join("d").join(layout::MANIFEST).exists());
}

/// `data.padding = "longest"`: each batch cut to its longest row (the fixture's rows are 8 to 20
/// tokens, `max_len` 24). The same loss in exact arithmetic, so the first step's loss agrees with
/// the run padded to `max_len` to rounding; other sums, so other bits; and those bits are the
/// same in separate processes, on any thread count and across a resume.
#[test]
fn batches_cut_to_their_longest_row_are_a_deterministic_run_of_their_own() {
    let t = tempfile::tempdir().expect("tmp");
    let full = fixture(&t.path().join("in"));
    let longest = fixtures::padded_to_longest(&full).expect("config");
    let (a, b, c, f) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("c"),
        t.path().join("full"),
    );
    train(&longest, &a, &[]);
    train(&longest, &b, &["--threads", "1"]);
    assert_same_run(&a, &b);
    train(&longest, &c, &["--max-steps", "5"]);
    resume(&c);
    assert_same_run(&a, &c);
    train(&full, &f, &[]);
    assert_ne!(completion(&a).ledger_head, completion(&f).ledger_head);
    let (cut, padded) = (records(&a), records(&f));
    assert_eq!(cut[0].example_ids, padded[0].example_ids);
    let loss = |r: &snapshot_format::ledger::StepRecord| f64::from(f32::from_bits(r.loss_bits));
    let (x, y) = (loss(&cut[0]), loss(&padded[0]));
    assert!(
        (x - y).abs() <= 1e-5 * y.abs(),
        "step 1's loss: {x} cut, {y} padded"
    );
    // The option is recorded in the spec; a run padded to max_len records nothing new.
    let spec =
        |run: &Path| serde_json::to_string(&run_store::testing::manifest(run).spec).expect("spec");
    assert!(spec(&a).contains("\"padding\":\"longest\""), "{}", spec(&a));
    assert!(!spec(&f).contains("padding"), "{}", spec(&f));
}

#[test]
fn a_safetensors_base_with_the_gguf_weights_trains_to_the_same_state() {
    // Hugging Face's layout of a Llama checkpoint: the GGUF's tensors, dequantized, under the
    // names the engine reads them by, in a safetensors file.
    let t = tempfile::tempdir().expect("tmp");
    let dir = t.path().join("in");
    let cfg = fixture(&dir);
    let gguf = BaseWeights::parse(&std::fs::read(dir.join("base.gguf")).expect("gguf"), "gguf")
        .expect("parse");
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = gguf
        .tensors
        .iter()
        .map(|(name, t)| {
            let bytes = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let st = trainer::base::to_safetensors(&tensors).expect("safetensors");
    let pin = snapshot_format::hash::file_hash(&st);
    std::fs::write(dir.join("model.safetensors"), &st).expect("write");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let gguf_pin = gguf.hash.to_string();
    assert!(text.contains("path = \"base.gguf\"") && text.contains(&gguf_pin));
    let st_cfg = dir.join("config-safetensors.toml");
    std::fs::write(
        &st_cfg,
        text.replace("path = \"base.gguf\"", "path = \"model.safetensors\"")
            .replace(&gguf_pin, &pin.to_string()),
    )
    .expect("config");
    train(&cfg, &t.path().join("a"), &[]);
    train(&st_cfg, &t.path().join("b"), &[]);
    let (a, b) = (
        completion(&t.path().join("a")),
        completion(&t.path().join("b")),
    );
    assert_eq!(a.final_state_root, b.final_state_root);
    // The runs differ only in what their specs pin: another base file, another history.
    assert_ne!(a.ledger_head, b.ledger_head);
    assert!(t.path().join("b").join(layout::BASE_MODEL).exists());
}
