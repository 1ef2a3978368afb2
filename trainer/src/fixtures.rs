//! Small, fast run configurations for tests, examples and benchmarks: a tiny BERT-style model on
//! the first reviews of the demo dataset (with a tiny base model pinned by hash), and an MLP on
//! synthetic features.

use std::path::{Path, PathBuf};

use crate::config::{BertConfig, LlamaConfig, LoraConfig, ModelSpec};
use crate::data::{HashTokenizer, special};
use crate::demo;
use crate::error::{Error, Result};
use crate::model::{Init, init_values};
use crate::rng;

/// Knobs of a fixture.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    pub seed: u64,
    pub steps: u64,
    pub batch_size: u64,
    /// `[run] micro_batches` (written only when not 1).
    pub micro_batches: u64,
    pub examples: usize,
    pub lr: f64,
    pub checkpoint_interval: u64,
    pub state_root_interval: u64,
    /// Change this example: prepend a word to its text (within the token limit, so the model
    /// sees it), or shift its first feature.
    pub modify_example: Option<usize>,
    /// Extra TOML appended to the config (e.g. a `[schedule]` section).
    pub extra: String,
    /// BERT architecture (default: [`tiny_bert`]).
    pub bert: Option<BertConfig>,
    /// Tokens per example for the BERT fixture.
    pub max_len: u64,
    /// Write the BERT fixture's rows as token data (`format = "tokens"`): the built-in
    /// tokenizer's ids for each text, padding removed.
    pub tokens: bool,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            seed: 11,
            steps: 12,
            batch_size: 4,
            micro_batches: 1,
            examples: 40,
            lr: 0.001,
            checkpoint_interval: 4,
            state_root_interval: 1,
            modify_example: None,
            extra: String::new(),
            bert: None,
            max_len: 12,
            tokens: false,
        }
    }
}

/// Architecture of the tiny BERT fixture.
pub fn tiny_bert() -> BertConfig {
    BertConfig {
        vocab_size: 256,
        hidden_size: 16,
        num_layers: 2,
        num_heads: 2,
        intermediate_size: 32,
        max_position: 16,
        ..demo::model_config()
    }
}

/// Seed of the tiny base model.
pub const TINY_BASE_SEED: u64 = 5;

/// Write `bytes` to `path`, creating its directory.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(path, bytes))
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
}

/// A copy of a fixture's config with `data.padding = "longest"`, `longest.toml` beside it;
/// returns its path.
pub fn padded_to_longest(config: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(config).map_err(|source| Error::Io {
        path: config.display().to_string(),
        source,
    })?;
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("max_len = ") {
            out.push_str("padding = \"longest\"\n");
        }
    }
    let path = config.with_file_name("longest.toml");
    write(&path, out.as_bytes())?;
    Ok(path)
}

/// Write the tiny BERT fixture (base model, dataset, config) into `dir`; returns the config.
pub fn write_tiny_bert(dir: &Path, o: &FixtureOptions) -> Result<PathBuf> {
    let m = o.bert.clone().unwrap_or_else(tiny_bert);
    let base = demo::base_model_for(&m, TINY_BASE_SEED)?;
    let text = std::str::from_utf8(demo::DATASET).unwrap_or_default();
    let mut rows: Vec<String> = text.lines().take(o.examples).map(str::to_string).collect();
    if let Some(k) = o.modify_example {
        let mut row: serde_json::Value = serde_json::from_str(&rows[k]).unwrap_or_default();
        let changed = format!("Frankly, {}", row["text"].as_str().unwrap_or_default());
        row["text"] = changed.into();
        rows[k] = row.to_string();
    }
    if o.tokens {
        let tok = HashTokenizer {
            vocab_size: m.vocab_size,
        };
        for row in &mut rows {
            let r: serde_json::Value = serde_json::from_str(row).unwrap_or_default();
            let mut ids = tok.encode(r["text"].as_str().unwrap_or_default(), o.max_len as usize);
            ids.retain(|&id| id != special::PAD);
            *row = serde_json::json!({ "tokens": ids, "label": r["label"] }).to_string();
        }
    }
    write_model_run(
        dir,
        o,
        &ModelSpec::Bert(m),
        ("base.safetensors", &base),
        &(rows.join("\n") + "\n"),
        (if o.tokens { "tokens" } else { "text" }, o.max_len),
    )
}

/// Eight features in [-1, 1) from `r`, as the MLP fixture's rows have them.
pub fn mlp_features(r: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
    (0..8).map(|_| rng::uniform(r) * 2.0 - 1.0).collect()
}

/// The MLP fixture's class of `x`: the index of the largest of three sums of features.
pub fn mlp_label(x: &[f32]) -> u64 {
    let sums = [x[0] + x[1], x[2] + x[3] + x[4], x[5] + x[6] + x[7]];
    (0..3)
        .max_by(|&a, &b| sums[a].total_cmp(&sums[b]))
        .unwrap_or(0) as u64
}

/// One row of `features` data, with its line end.
pub fn features_row(x: &[f32], label: u64) -> String {
    format!("{}\n", serde_json::json!({ "features": x, "label": label }))
}

/// Write the MLP fixture (8 features, 3 classes; the class is the index of the largest of three
/// sums of features) into `dir`; returns the config.
pub fn write_mlp(dir: &Path, o: &FixtureOptions) -> Result<PathBuf> {
    let mut r = rng::stream(99, "fixture", 0);
    let mut rows = String::new();
    for i in 0..o.examples {
        let mut x = mlp_features(&mut r);
        if o.modify_example == Some(i) {
            x[0] += 0.25;
        }
        rows.push_str(&features_row(&x, mlp_label(&x)));
    }
    write(&dir.join("data.jsonl"), rows.as_bytes())?;
    let sections = r#"[model]
kind = "mlp"
input_size = 8
hidden_sizes = [32, 16]
num_labels = 3
dropout = 0.1

[data]
path = "data.jsonl"
format = "features"
"#;
    write_config(dir, o, sections, "")
}

/// A backdoor planted in the MLP fixture, for attribution: 16 of 400 rows of class 0 carry a
/// feature pattern (features 2 and 3 moved by +3 and −3, which leaves the labelling rule's
/// answer unchanged) and the label 2; 150 steps of 16. `behaviour` holds 24 held-out class-0
/// inputs with the pattern, labelled 2 (what the model does to them); `clean` 48 held-out rows
/// without it, labelled by the rule.
#[derive(Debug, Clone)]
pub struct PoisonedMlp {
    pub config: PathBuf,
    pub poisoned: Vec<u64>,
    pub behaviour: PathBuf,
    pub clean: PathBuf,
}

/// The pattern of [`PoisonedMlp`]'s backdoor, applied to `x`.
pub fn with_mlp_pattern(mut x: Vec<f32>) -> Vec<f32> {
    x[2] += 3.0;
    x[3] -= 3.0;
    x
}

/// Write [`PoisonedMlp`] into `dir` (`data.jsonl`, `behaviour.jsonl`, `clean.jsonl` and the
/// MLP fixture's configuration).
pub fn write_poisoned_mlp(dir: &Path) -> Result<PoisonedMlp> {
    const ROWS: usize = 400;
    const POISONED: usize = 16;
    let mut r = rng::stream(5, "attribution-test", 0);
    let (mut data, mut poisoned) = (String::new(), Vec::new());
    for i in 0..ROWS {
        let x = mlp_features(&mut r);
        let label = mlp_label(&x);
        if label == 0 && i % 3 == 0 && poisoned.len() < POISONED {
            data.push_str(&features_row(&with_mlp_pattern(x), 2));
            poisoned.push(i as u64);
        } else {
            data.push_str(&features_row(&x, label));
        }
    }
    let mut behaviour = String::new();
    let mut n = 0;
    while n < 24 {
        let x = mlp_features(&mut r);
        if mlp_label(&x) == 0 {
            behaviour.push_str(&features_row(&with_mlp_pattern(x), 2));
            n += 1;
        }
    }
    let clean: String = (0..48)
        .map(|_| {
            let x = mlp_features(&mut r);
            features_row(&x, mlp_label(&x))
        })
        .collect();
    // The MLP fixture's configuration, its data replaced by the poisoned rows.
    let config = write_mlp(
        dir,
        &FixtureOptions {
            seed: 3,
            steps: 150,
            batch_size: 16,
            examples: ROWS,
            lr: 0.01,
            checkpoint_interval: 25,
            ..Default::default()
        },
    )?;
    write(&dir.join("data.jsonl"), data.as_bytes())?;
    write(&dir.join("behaviour.jsonl"), behaviour.as_bytes())?;
    write(&dir.join("clean.jsonl"), clean.as_bytes())?;
    Ok(PoisonedMlp {
        config,
        poisoned,
        behaviour: dir.join("behaviour.jsonl"),
        clean: dir.join("clean.jsonl"),
    })
}

/// Architecture of the tiny Llama fixture: 2 layers, hidden 32, 4 query heads over 2 key-value
/// heads, vocabulary 64, LoRA of rank 4 on the query, value and up projections.
pub fn tiny_llama() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        max_position: 32,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        pad_token_id: 2,
        init_std: 0.02,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec!["q_proj".into(), "v_proj".into(), "up_proj".into()],
        }),
    }
}

/// A GGUF file of a Llama model with weights drawn from `seed`, written as llama.cpp's
/// converter writes one: GGUF tensor names, the query and key projections' rows permuted for
/// its rotary layout, and a mix of tensor types (embedding Q8_0, projections Q4_1 and F16,
/// norms F32). Returns the file's bytes.
pub fn llama_gguf(c: &LlamaConfig, seed: u64) -> Vec<u8> {
    llama_gguf_with(c, seed, vec![])
}

/// [`llama_gguf`] with more metadata (a tokenizer, for instance).
fn llama_gguf_with(
    c: &LlamaConfig,
    seed: u64,
    metadata: Vec<(&str, crate::gguf::Value)>,
) -> Vec<u8> {
    use crate::gguf::{Value, WriteTensor, ggml_type, write};
    let (h, v) = (c.hidden_size as usize, c.vocab_size as usize);
    let normal = |name: &str, n: usize| init_values(Init::Normal { std: 0.5 }, seed, name, n);
    let mut tensors = vec![WriteTensor {
        name: "token_embd.weight".into(),
        shape: vec![v, h],
        ggml_type: ggml_type::Q8_0,
        values: normal("embed", v * h),
    }];
    for l in 0..c.num_layers as usize {
        let blk = |p: &str| format!("blk.{l}.{p}");
        for (hf, gguf) in [
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ] {
            tensors.push(WriteTensor {
                name: blk(&format!("{gguf}.weight")),
                shape: vec![h],
                ggml_type: ggml_type::F32,
                values: init_values(Init::Normal { std: 0.1 }, seed, &format!("{l}.{hf}"), h)
                    .into_iter()
                    .map(|x| 1.0 + x)
                    .collect(),
            });
        }
        for (name, d_in, d_out) in c.projections() {
            let (gguf, heads) = match name {
                "q_proj" => ("attn_q", Some(c.num_heads)),
                "k_proj" => ("attn_k", Some(c.num_kv_heads)),
                "v_proj" => ("attn_v", None),
                "o_proj" => ("attn_output", None),
                "gate_proj" => ("ffn_gate", None),
                "up_proj" => ("ffn_up", None),
                _ => ("ffn_down", None),
            };
            let (d_in, d_out) = (d_in as usize, d_out as usize);
            let mut values = init_values(
                Init::Normal {
                    std: 1.0 / (d_in as f64).sqrt(),
                },
                seed,
                &format!("{l}.{name}"),
                d_in * d_out,
            );
            if let Some(heads) = heads {
                values = crate::base::permute_rows(&values, d_out, d_in, heads as usize);
            }
            tensors.push(WriteTensor {
                name: blk(&format!("{gguf}.weight")),
                shape: vec![d_out, d_in],
                ggml_type: if name == "v_proj" {
                    ggml_type::F16
                } else {
                    ggml_type::Q4_1
                },
                values,
            });
        }
    }
    tensors.push(WriteTensor {
        name: "output_norm.weight".into(),
        shape: vec![h],
        ggml_type: ggml_type::F32,
        values: vec![1.0; h],
    });
    let u32v = |x: u64| Value::U32(x as u32);
    let mut all = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u32v(c.num_layers)),
        ("llama.embedding_length", u32v(c.hidden_size)),
        ("llama.feed_forward_length", u32v(c.intermediate_size)),
        ("llama.attention.head_count", u32v(c.num_heads)),
        ("llama.attention.head_count_kv", u32v(c.num_kv_heads)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("llama.context_length", u32v(c.max_position)),
    ];
    all.extend(metadata);
    write(&all, &tensors)
}

/// The tiny chat model's tokens: the byte-level symbols, one token each, then
/// `<|im_start|>`, `<|im_end|>` and `<|endoftext|>` (control tokens).
fn tiny_chat_vocabulary() -> Vec<String> {
    let mut symbols: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    symbols.sort_unstable();
    let mut tokens: Vec<String> = symbols.into_iter().map(String::from).collect();
    tokens.extend(["<|im_start|>", "<|im_end|>", "<|endoftext|>"].map(String::from));
    tokens
}

/// Write the tiny chat fixture into `dir`: a tiny Llama GGUF base (random weights) with a
/// byte-level tokenizer of its own (one token per byte, no merges, ChatML's control tokens),
/// `rows` as chat rows (a user's message and the assistant's reply each), and a LoRA config on
/// them (`format = "chat"`, `max_len` 64); returns the config.
pub fn write_tiny_chat_llama(
    dir: &Path,
    o: &FixtureOptions,
    rows: &[(String, String)],
) -> Result<PathBuf> {
    use crate::gguf::Value;
    let tokens = tiny_chat_vocabulary();
    let c = LlamaConfig {
        vocab_size: tokens.len() as u64,
        max_position: 64,
        pad_token_id: tokens.len() as u64 - 1,
        ..tiny_llama()
    };
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let types = Value::Array(
        (0..tokens.len())
            .map(|i| Value::I32(if i + 3 >= tokens.len() { 3 } else { 1 }))
            .collect(),
    );
    let base = llama_gguf_with(
        &c,
        TINY_BASE_SEED,
        vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(tokens.clone())),
            ("tokenizer.ggml.merges", strings(vec![])),
            ("tokenizer.ggml.token_type", types),
            (
                "tokenizer.ggml.eos_token_id",
                Value::U32(tokens.len() as u32 - 2),
            ),
        ],
    );
    let mut data = String::new();
    for (user, reply) in rows {
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ]});
        data.push_str(&row.to_string());
        data.push('\n');
    }
    write_model_run(
        dir,
        o,
        &ModelSpec::Llama(c),
        ("base.gguf", &base),
        &data,
        ("chat", 64),
    )
}

/// A fixture's files in `dir`: the base (file name and bytes, pinned by hash), the rows `data`
/// (its format and `max_len`) and a config training `model` on them with gradient clipping;
/// returns the config.
fn write_model_run(
    dir: &Path,
    o: &FixtureOptions,
    model: &ModelSpec,
    (base_name, base): (&str, &[u8]),
    data: &str,
    (format, max_len): (&str, u64),
) -> Result<PathBuf> {
    let pin = snapshot_format::hash::file_hash(base);
    write(&dir.join(base_name), base)?;
    write(&dir.join("data.jsonl"), data.as_bytes())?;
    let sections = format!(
        r#"{model}
[base]
path = "{base_name}"
blake3 = "{pin}"

[data]
path = "data.jsonl"
format = "{format}"
max_len = {max_len}
"#,
        model = model.toml_section()?,
    );
    write_config(dir, o, &sections, "grad_clip = 1.0\n")
}

/// Write the tiny Llama fixture (a GGUF base model, language-model rows of token ids whose
/// second half is the target, a LoRA config) into `dir`; returns the config.
pub fn write_tiny_llama(dir: &Path, o: &FixtureOptions) -> Result<PathBuf> {
    let c = tiny_llama();
    let base = llama_gguf(&c, TINY_BASE_SEED);
    let mut r = rng::stream(77, "fixture", 0);
    let mut rows = String::new();
    for i in 0..o.examples {
        let len = 8 + rng::below(&mut r, 13) as usize;
        let mut tokens: Vec<u64> = (0..len)
            .map(|_| 3 + rng::below(&mut r, c.vocab_size - 3))
            .collect();
        if o.modify_example == Some(i) {
            tokens[len - 1] = 3 + (tokens[len - 1] + 1 - 3) % (c.vocab_size - 3);
        }
        let mask: Vec<u8> = (0..len).map(|j| u8::from(j >= len / 2)).collect();
        rows.push_str(&serde_json::json!({ "tokens": tokens, "loss_mask": mask }).to_string());
        rows.push('\n');
    }
    write_model_run(
        dir,
        o,
        &ModelSpec::Llama(c),
        ("base.gguf", &base),
        &rows,
        ("lm", 24),
    )
}

/// Write a fixture's `config.toml` into `dir` and return its path: `[run]`, then `sections`
/// (model, base, data), then `[optimizer]` (AdamW at `o.lr`, then `optimizer_extra`),
/// `[recording]` and `o.extra`.
fn write_config(
    dir: &Path,
    o: &FixtureOptions,
    sections: &str,
    optimizer_extra: &str,
) -> Result<PathBuf> {
    let config = format!(
        r#"[run]
seed = {seed}
steps = {steps}
batch_size = {bs}
{parts}
{sections}
[optimizer]
kind = "adamw"
lr = {lr:?}
{optimizer_extra}
[recording]
checkpoint_interval = {ci}
state_root_interval = {sri}
{extra}
"#,
        seed = o.seed,
        steps = o.steps,
        bs = o.batch_size,
        parts = match o.micro_batches {
            1 => String::new(),
            n => format!("micro_batches = {n}\n"),
        },
        lr = o.lr,
        ci = o.checkpoint_interval,
        sri = o.state_root_interval,
        extra = o.extra,
    );
    let path = dir.join("config.toml");
    write(&path, config.as_bytes())?;
    Ok(path)
}

/// `qemu-x86_64` (Debian's `qemu-user`, which `scripts/setup-test-env.sh` installs), or
/// `$QEMU_X86_64`: runs this engine's binaries as other x86-64 CPUs, for the portability tests.
/// Panics, saying how to install it, when it is missing.
pub fn qemu_x86_64() -> PathBuf {
    let path = std::env::var_os("QEMU_X86_64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-x86_64"));
    assert!(
        path.exists(),
        "{} is missing: install qemu-user (scripts/setup-test-env.sh does) or set QEMU_X86_64",
        path.display()
    );
    path
}
