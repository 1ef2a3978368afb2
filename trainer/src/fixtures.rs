//! Small, fast run configurations for tests, examples and benchmarks: a tiny BERT-style model on
//! the first reviews of the demo dataset (with a tiny base model pinned by hash), and an MLP on
//! synthetic features.

use std::path::{Path, PathBuf};

use crate::config::{BertConfig, ModelSpec};
use crate::data::{HashTokenizer, special};
use crate::demo;
use crate::error::{Error, Result};
use crate::rng;

/// Knobs of a fixture.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    pub seed: u64,
    pub steps: u64,
    pub batch_size: u64,
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

/// Write the tiny BERT fixture (base model, dataset, config) into `dir`; returns the config.
pub fn write_tiny_bert(dir: &Path, o: &FixtureOptions) -> Result<PathBuf> {
    let m = o.bert.clone().unwrap_or_else(tiny_bert);
    let base = demo::base_model_for(&m, TINY_BASE_SEED)?;
    let base_hash = snapshot_format::hash::file_hash(&base);
    write(&dir.join("base.safetensors"), &base)?;
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
    write(&dir.join("data.jsonl"), (rows.join("\n") + "\n").as_bytes())?;
    let sections = format!(
        r#"{model}
[base]
path = "base.safetensors"
blake3 = "{base_hash}"

[data]
path = "data.jsonl"
format = "{format}"
max_len = {max_len}
"#,
        model = ModelSpec::Bert(m).toml_section()?,
        format = if o.tokens { "tokens" } else { "text" },
        max_len = o.max_len,
    );
    write_config(dir, o, &sections, "grad_clip = 1.0\n")
}

/// Write the MLP fixture (8 features, 3 classes; the class is the index of the largest of three
/// sums of features) into `dir`; returns the config.
pub fn write_mlp(dir: &Path, o: &FixtureOptions) -> Result<PathBuf> {
    let mut r = rng::stream(99, "fixture", 0);
    let mut rows = String::new();
    for i in 0..o.examples {
        let mut x: Vec<f32> = (0..8).map(|_| rng::uniform(&mut r) * 2.0 - 1.0).collect();
        if o.modify_example == Some(i) {
            x[0] += 0.25;
        }
        let sums = [x[0] + x[1], x[2] + x[3] + x[4], x[5] + x[6] + x[7]];
        let label = (0..3)
            .max_by(|&a, &b| sums[a].total_cmp(&sums[b]))
            .unwrap_or(0);
        let json = serde_json::json!({ "features": x, "label": label });
        rows.push_str(&json.to_string());
        rows.push('\n');
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
