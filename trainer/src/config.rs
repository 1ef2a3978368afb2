//! Run configuration (TOML, written by the user) and run spec (JSON, recorded in the manifest).
//!
//! The *config* names files on this machine; the *spec* replaces them by the hashes of their
//! content and holds everything that determines the bits of the run. The spec is what the
//! ledger's genesis commits to, and all that resume and replay need besides the run's own
//! artefacts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snapshot_format::Hash32;

use crate::error::{Error, Result};

/// Version of the engine's numerics: the training semantics (loss, optimizer update, dropout,
/// data order, initialisation). Bumped whenever any of them changes bits.
pub const NUMERICS_VERSION: u64 = 2;

/// `[run]`: what is trained, how long, in what order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Master seed: every random number of the run derives from it.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: u64,
    pub batch_size: u64,
}

/// A BERT-style encoder with a classification head. Parameter names and shapes follow Hugging
/// Face's `BertForSequenceClassification`, so a BERT or MiniLM `model.safetensors` loads into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub intermediate_size: u64,
    pub max_position: u64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: u64,
    pub num_labels: u64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout: f64,
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

/// A Llama-architecture decoder (Llama, Mistral, Qwen-style, SmolLM), trained with next-token
/// cross-entropy. Parameter names and shapes follow Hugging Face's `LlamaForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    /// Key-value heads (grouped-query attention); `num_heads` for plain multi-head attention.
    pub num_kv_heads: u64,
    /// Positions the rotary embedding is defined for.
    pub max_position: u64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// The output projection is the embedding matrix (no `lm_head.weight`).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Token that fills sequences up to `data.max_len` (never a target, never attended to).
    #[serde(default)]
    pub pad_token_id: u64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Train low-rank adapters on these projections, the base frozen.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

/// Low-rank adaptation (LoRA, as PEFT defines it): `W x + (alpha / rank) · B A dropout(x)` on
/// each target projection, `A` `[rank, in]` drawn uniform in `±1/√in`, `B` `[out, rank]`
/// zero; only `A` and `B` are trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: u64,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Among `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`.
    pub targets: Vec<String>,
}

/// Projections LoRA can adapt.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LlamaConfig {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_heads.max(1)
    }

    /// `(name, in, out)` of the projections of one layer.
    pub fn projections(&self) -> [(&'static str, u64, u64); 7] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_kv_heads * self.head_dim();
        [
            ("q_proj", h, h),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", h, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]
    }
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// A multi-layer perceptron over numeric features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub input_size: u64,
    pub hidden_sizes: Vec<u64>,
    pub num_labels: u64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

/// A model defined outside this crate (see `trainer/examples/custom_model.rs`). The engine
/// knows only what it needs to prepare batches; `config` is recorded in the spec as it is and
/// handed to the model's own configuration type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomModelSpec {
    /// Name of the model type, for people and for programs that dispatch on it.
    pub name: String,
    pub num_labels: u64,
    /// Vocabulary of the built-in tokenizer (text data).
    #[serde(default)]
    pub vocab_size: Option<u64>,
    /// Number of features (feature data).
    #[serde(default)]
    pub input_size: Option<u64>,
    /// The model's own configuration.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// `[model]`: a built-in model, or a custom one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    Bert(BertConfig),
    Mlp(MlpConfig),
    Llama(LlamaConfig),
    Custom(CustomModelSpec),
}

impl ModelSpec {
    /// The `[model]` section of a run config that specifies this model.
    pub fn toml_section(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Section<'a> {
            model: &'a ModelSpec,
        }
        toml::to_string(&Section { model: self }).map_err(|e| Error::Config {
            path: "[model]".into(),
            detail: e.to_string(),
        })
    }

    /// Number of classes (0 for a language model, whose examples carry no label).
    pub fn num_labels(&self) -> u64 {
        match self {
            ModelSpec::Bert(c) => c.num_labels,
            ModelSpec::Mlp(c) => c.num_labels,
            ModelSpec::Llama(_) => 0,
            ModelSpec::Custom(c) => c.num_labels,
        }
    }

    /// Whether the model is a causal language model (trained on `lm` data).
    pub fn is_language_model(&self) -> bool {
        matches!(self, ModelSpec::Llama(_))
    }

    /// Vocabulary size of the tokenizer, for models of text.
    pub fn vocab_size(&self) -> Option<u64> {
        match self {
            ModelSpec::Bert(c) => Some(c.vocab_size),
            ModelSpec::Mlp(_) => None,
            ModelSpec::Llama(c) => Some(c.vocab_size),
            ModelSpec::Custom(c) => c.vocab_size,
        }
    }

    /// Number of parameters (elements) of the model this spec builds, computed from the
    /// architecture without building it (a test checks it against built models); `None` for a
    /// custom model, whose architecture the engine does not know.
    pub fn parameter_count(&self) -> Option<u128> {
        let linear = |i: u64, o: u64| u128::from(i) * u128::from(o) + u128::from(o);
        match self {
            ModelSpec::Bert(c) => {
                let (h, i) = (c.hidden_size, c.intermediate_size);
                let embeddings = u128::from(c.vocab_size + c.max_position + c.type_vocab_size)
                    * u128::from(h)
                    + 2 * u128::from(h);
                let layer = 4 * linear(h, h) + linear(h, i) + linear(i, h) + 4 * u128::from(h);
                Some(
                    embeddings
                        + u128::from(c.num_layers) * layer
                        + linear(h, h)
                        + linear(h, c.num_labels),
                )
            }
            ModelSpec::Mlp(c) => {
                let mut widths = vec![c.input_size];
                widths.extend(&c.hidden_sizes);
                widths.push(c.num_labels);
                Some(widths.windows(2).map(|w| linear(w[0], w[1])).sum())
            }
            ModelSpec::Llama(c) => {
                let (v, h) = (u128::from(c.vocab_size), u128::from(c.hidden_size));
                let per_layer: u128 = c
                    .projections()
                    .iter()
                    .map(|&(_, i, o)| u128::from(i) * u128::from(o))
                    .sum::<u128>()
                    + 2 * h;
                let head = if c.tie_word_embeddings { 0 } else { v * h };
                Some(v * h + u128::from(c.num_layers) * per_layer + h + head)
            }
            ModelSpec::Custom(_) => None,
        }
    }

    /// Number of parameters (elements) that are trained and so belong to the training state:
    /// all of them, except under LoRA, where only the adapters are (the base stays frozen,
    /// pinned by the base model's hash).
    pub fn state_parameter_count(&self) -> Option<u128> {
        match self {
            ModelSpec::Llama(c) => match &c.lora {
                Some(l) => Some(
                    c.projections()
                        .iter()
                        .filter(|(name, _, _)| l.targets.iter().any(|t| t == name))
                        .map(|&(_, i, o)| u128::from(l.rank) * u128::from(i + o))
                        .sum::<u128>()
                        * u128::from(c.num_layers),
                ),
                None => self.parameter_count(),
            },
            _ => self.parameter_count(),
        }
    }

    /// Number of input features, for models of features.
    pub fn input_size(&self) -> Option<u64> {
        match self {
            ModelSpec::Bert(_) | ModelSpec::Llama(_) => None,
            ModelSpec::Mlp(c) => Some(c.input_size),
            ModelSpec::Custom(c) => c.input_size,
        }
    }
}

/// AdamW with decoupled weight decay (PyTorch's semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamwSpec {
    pub lr: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this value.
    #[serde(default)]
    pub grad_clip: Option<f64>,
}

/// SGD with momentum (PyTorch's semantics: no dampening, L2 weight decay in the gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdSpec {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub grad_clip: Option<f64>,
}

/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerSpec {
    Adamw(AdamwSpec),
    Sgd(SgdSpec),
}

impl OptimizerSpec {
    /// Peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Adamw(a) => a.lr,
            OptimizerSpec::Sgd(g) => g.lr,
        }
    }
    /// Gradient clipping threshold, if any.
    pub fn grad_clip(&self) -> Option<f64> {
        match self {
            OptimizerSpec::Adamw(a) => a.grad_clip,
            OptimizerSpec::Sgd(g) => g.grad_clip,
        }
    }
}

/// Shape of the learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Constant,
    Linear,
    Cosine,
}

/// `[schedule]`: linear warm-up, then constant, linear or cosine decay to `min_lr_ratio × lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub decay: Decay,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub min_lr_ratio: f64,
}

/// Format of dataset rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// `{"text": "...", "label": 0}`
    Text,
    /// `{"features": [0.5, ...], "label": 0}`
    Features,
    /// `{"tokens": [101, 2023, ..., 102], "label": 0}`: token ids from any tokenizer, applied
    /// before training (the ids are what the run commits to). Id 0 is padding.
    Tokens,
    /// Language-model sequences: `{"tokens": [1, 9690, ...], "loss_mask": [0, 0, 1, ...]}`,
    /// token ids (any below the vocabulary size) and which of them are targets of the
    /// next-token loss (default: all but the first).
    Lm,
    /// Chat or instruction rows (`{"messages": [...]}` or `{"instruction", "input",
    /// "output"}`), in a configuration only: `trainer run` renders them with the GGUF base
    /// model's chat template and tokenizer into `lm` rows, the loss on the assistant's replies
    /// (`trainer/src/chat.rs`); the run records those rows and how they were made.
    Chat,
}

/// Tokenizer for text datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// Built-in: lower-cased words and punctuation, hashed into the vocabulary (needs no vocab
    /// file; `specs/determinism.md` defines it).
    #[default]
    Hash,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSON Lines file, relative to the config file.
    pub path: PathBuf,
    pub format: DataFormat,
    /// Tokens per example, `[CLS]` and `[SEP]` included (text only).
    #[serde(default)]
    pub max_len: Option<u64>,
    #[serde(default)]
    pub tokenizer: TokenizerKind,
}

/// `[signing]`: sign the run (`specs/signatures.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// PKCS#8 PEM ed25519 private key (`trainer keygen` writes one), relative to the config.
    pub key: PathBuf,
}

/// `[base]`: weights to start from, pinned by hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    /// A safetensors file, relative to the config file.
    pub path: PathBuf,
    /// Expected file hash (`snapshot_format::hash::file_hash`, 64 hex digits). Training refuses
    /// to start when the file does not match.
    pub blake3: String,
}

/// `[recording]`: does not change the bits of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Codec of checkpoint tensors: zstd, planes (byte-grouped zstd) or raw (no decoding).
    #[serde(default)]
    pub codec: snapshot_format::manifest::CheckpointCodec,
    /// State root in the ledger every this many steps (and at every checkpoint). Default:
    /// every step for models under [`LARGE_MODEL_PARAMETERS`], every
    /// [`LARGE_MODEL_STATE_ROOT_INTERVAL`] steps above.
    #[serde(default)]
    pub state_root_interval: Option<u64>,
}

/// Models with at least this many parameters get a sparser default state-root interval.
pub const LARGE_MODEL_PARAMETERS: u64 = 50_000_000;
/// The default state-root interval of large models.
pub const LARGE_MODEL_STATE_ROOT_INTERVAL: u64 = 10;

impl RecordingSection {
    /// The state-root interval for a model of `parameters` parameters.
    pub fn state_root_interval_for(&self, parameters: u64) -> u64 {
        self.state_root_interval
            .unwrap_or(if parameters < LARGE_MODEL_PARAMETERS {
                1
            } else {
                LARGE_MODEL_STATE_ROOT_INTERVAL
            })
    }
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            checkpoint_interval: default_checkpoint_interval(),
            codec: Default::default(),
            state_root_interval: None,
        }
    }
}

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub run: RunSection,
    pub model: ModelSpec,
    pub base: Option<BaseSection>,
    pub data: DataSection,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    pub recording: RecordingSection,
    /// Key that signs the run's artefacts, if any.
    pub signing: Option<SigningSection>,
    /// Directory of the config file; relative paths resolve against it.
    pub dir: PathBuf,
    /// Display name of the config file, for errors.
    pub source: String,
}

/// Reads the sections of a TOML document, with errors that name the key (`optimizer.lr: …`).
struct Sections<'a> {
    doc: toml::Table,
    source: &'a str,
}

impl Sections<'_> {
    fn typed<T: serde::de::DeserializeOwned>(&self, value: toml::Value, prefix: &str) -> Result<T> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                prefix.to_string()
            } else {
                format!("{prefix}.{path}")
            };
            Error::config(self.source, format!("{at}: {}", e.inner()))
        })
    }

    fn optional<T: serde::de::DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        match self.doc.remove(key) {
            None => Ok(None),
            Some(v) => self.typed(v, key).map(Some),
        }
    }

    fn required<T: serde::de::DeserializeOwned>(&mut self, key: &str) -> Result<T> {
        self.optional(key)?
            .ok_or_else(|| Error::config(self.source, format!("missing section [{key}]")))
    }

    /// A section with a `kind` key choosing its shape: returns the kind and the other keys.
    fn tagged(&mut self, key: &str, kinds: &[&str]) -> Result<(String, toml::Value)> {
        let mut table = match self.doc.remove(key) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(Error::config(
                    self.source,
                    format!("{key}: must be a table"),
                ));
            }
            None => {
                return Err(Error::config(
                    self.source,
                    format!("missing section [{key}]"),
                ));
            }
        };
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) if kinds.contains(&k.as_str()) => k,
            Some(other) => {
                return Err(Error::config(
                    self.source,
                    format!("{key}.kind: {other} is not one of {kinds:?}"),
                ));
            }
            None => {
                return Err(Error::config(
                    self.source,
                    format!("{key}.kind: missing; one of {kinds:?}"),
                ));
            }
        };
        Ok((kind, toml::Value::Table(table)))
    }
}

fn default_type_vocab() -> u64 {
    2
}
fn default_dropout() -> f64 {
    0.1
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_init_std() -> f64 {
    0.02
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_checkpoint_interval() -> u64 {
    50
}

impl RunConfig {
    /// Read and validate a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &path.display().to_string(), dir)
    }

    /// Parse and validate TOML text; `source` names it in errors, `dir` resolves paths.
    pub fn from_toml(text: &str, source: &str, dir: PathBuf) -> Result<Self> {
        let doc: toml::Table =
            toml::from_str(text).map_err(|e| Error::config(source, e.to_string()))?;
        let mut sec = Sections { doc, source };
        let run = sec.required("run")?;
        let model = match sec.tagged("model", &["bert", "mlp", "llama", "custom"])? {
            (k, v) if k == "bert" => ModelSpec::Bert(sec.typed(v, "model")?),
            (k, v) if k == "mlp" => ModelSpec::Mlp(sec.typed(v, "model")?),
            (k, v) if k == "llama" => ModelSpec::Llama(sec.typed(v, "model")?),
            (_, v) => ModelSpec::Custom(sec.typed(v, "model")?),
        };
        let optimizer = match sec.tagged("optimizer", &["adamw", "sgd"])? {
            (k, v) if k == "adamw" => OptimizerSpec::Adamw(sec.typed(v, "optimizer")?),
            (_, v) => OptimizerSpec::Sgd(sec.typed(v, "optimizer")?),
        };
        let c = RunConfig {
            run,
            model,
            base: sec.optional("base")?,
            data: sec.required("data")?,
            optimizer,
            schedule: sec.optional("schedule")?.unwrap_or_default(),
            recording: sec.optional("recording")?.unwrap_or_default(),
            signing: sec.optional("signing")?,
            dir,
            source: source.to_string(),
        };
        if let Some(unknown) = sec.doc.keys().next() {
            return Err(Error::config(
                source,
                format!("unknown section [{unknown}]"),
            ));
        }
        c.validate()?;
        Ok(c)
    }

    /// Resolve a path of the config against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn validate(&self) -> Result<()> {
        let parts = SpecParts {
            run: &self.run,
            model: &self.model,
            format: self.data.format,
            max_len: self.data.max_len,
            optimizer: &self.optimizer,
            schedule: &self.schedule,
        };
        parts
            .validate()
            .map_err(|d| Error::config(&self.source, d))?;
        let bad = |key: &str, why: &str| Err(Error::config(&self.source, format!("{key}: {why}")));
        if self.recording.checkpoint_interval == 0 {
            return bad("recording.checkpoint_interval", "must be at least 1");
        }
        if self.recording.state_root_interval == Some(0) {
            return bad("recording.state_root_interval", "must be at least 1");
        }
        if let Some(b) = &self.base {
            Hash32::from_hex(&b.blake3).map_err(|_| {
                Error::config(&self.source, "base.blake3: expected 64 hexadecimal digits")
            })?;
        }
        Ok(())
    }
}

/// The sections that determine a run's bits, as a configuration or a recorded spec holds them:
/// one validation for both, so that a spec read from a run is held to the rules a configuration
/// is (a hostile manifest must not reach a state the engine cannot handle).
struct SpecParts<'a> {
    run: &'a RunSection,
    model: &'a ModelSpec,
    format: DataFormat,
    max_len: Option<u64>,
    optimizer: &'a OptimizerSpec,
    schedule: &'a ScheduleSpec,
}

impl SpecParts<'_> {
    fn validate(&self) -> std::result::Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("{key}: {why}"));
        if self.run.steps == 0 {
            return bad("run.steps", "must be at least 1");
        }
        if self.run.batch_size == 0 {
            return bad("run.batch_size", "must be at least 1");
        }
        validate_model(self.model)?;
        validate_optimizer(self.optimizer)?;
        let s = self.schedule;
        if !(0.0..=1.0).contains(&s.min_lr_ratio) {
            return bad("schedule.min_lr_ratio", "must be within [0, 1]");
        }
        if s.warmup_steps > self.run.steps {
            return bad("schedule.warmup_steps", "exceeds run.steps");
        }
        let format = match self.format {
            DataFormat::Chat => DataFormat::Lm,
            f => f,
        };
        if (format == DataFormat::Lm) != self.model.is_language_model() {
            return bad(
                "data.format",
                "\"lm\" data trains a language model (model.kind = \"llama\"), and a language \
                 model trains on \"lm\" data",
            );
        }
        match (format, self.model.vocab_size(), self.model.input_size()) {
            (DataFormat::Lm | DataFormat::Chat, _, _) => {
                let max_position = match self.model {
                    ModelSpec::Llama(l) => l.max_position,
                    _ => u64::MAX,
                };
                match self.max_len {
                    None => return bad("data.max_len", "required for lm data"),
                    Some(l) if l < 2 => return bad("data.max_len", "must be at least 2"),
                    Some(l) if l > max_position => {
                        return bad("data.max_len", "exceeds model.max_position");
                    }
                    Some(_) => {}
                }
            }
            (DataFormat::Text | DataFormat::Tokens, Some(_), _) => {
                let max_position = match self.model {
                    ModelSpec::Bert(b) => b.max_position,
                    _ => u64::MAX,
                };
                match self.max_len {
                    None => return bad("data.max_len", "required for text and token data"),
                    Some(l) if l < 2 => {
                        return bad("data.max_len", "must be at least 2 ([CLS] and [SEP])");
                    }
                    Some(l) if l > max_position => {
                        return bad("data.max_len", "exceeds model.max_position");
                    }
                    Some(_) => {}
                }
            }
            (DataFormat::Features, _, Some(_)) => {}
            (DataFormat::Text | DataFormat::Tokens, None, _) => {
                return bad(
                    "data.format",
                    "text and token data need a model with a vocabulary (model.vocab_size)",
                );
            }
            (DataFormat::Features, _, None) => {
                return bad(
                    "data.format",
                    "feature data needs a model with model.input_size",
                );
            }
        }
        #[derive(Serialize)]
        struct Numbers<'a> {
            run: &'a RunSection,
            model: &'a ModelSpec,
            max_len: Option<u64>,
            optimizer: &'a OptimizerSpec,
            schedule: &'a ScheduleSpec,
        }
        let numbers = serde_json::to_value(Numbers {
            run: self.run,
            model: self.model,
            max_len: self.max_len,
            optimizer: self.optimizer,
            schedule: self.schedule,
        })
        .map_err(|e| e.to_string())?;
        snapshot_format::manifest::check_exact_integers(&numbers)
    }
}

fn positive(key: &str, v: u64) -> std::result::Result<(), String> {
    if v == 0 {
        Err(format!("{key}: must be at least 1"))
    } else {
        Ok(())
    }
}

fn probability(key: &str, v: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key}: must be within [0, 1)"))
    }
}

fn finite_positive(key: &str, v: f64) -> std::result::Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{key}: must be a positive finite number"))
    }
}

fn validate_model(m: &ModelSpec) -> std::result::Result<(), String> {
    match m {
        ModelSpec::Bert(b) => {
            for (k, v) in [
                ("model.vocab_size", b.vocab_size),
                ("model.hidden_size", b.hidden_size),
                ("model.num_layers", b.num_layers),
                ("model.num_heads", b.num_heads),
                ("model.intermediate_size", b.intermediate_size),
                ("model.max_position", b.max_position),
                ("model.type_vocab_size", b.type_vocab_size),
            ] {
                positive(k, v)?;
            }
            if b.num_labels < 2 {
                return Err("model.num_labels: must be at least 2".into());
            }
            if b.hidden_size % b.num_heads != 0 {
                return Err("model.hidden_size: must be a multiple of model.num_heads".into());
            }
            if b.vocab_size < 5 {
                return Err(
                    "model.vocab_size: must be at least 5 (four special tokens and one word)"
                        .into(),
                );
            }
            probability("model.hidden_dropout", b.hidden_dropout)?;
            probability("model.attention_dropout", b.attention_dropout)?;
            finite_positive("model.layer_norm_eps", b.layer_norm_eps)?;
            finite_positive("model.init_std", b.init_std)
        }
        ModelSpec::Mlp(m) => {
            positive("model.input_size", m.input_size)?;
            for (i, h) in m.hidden_sizes.iter().enumerate() {
                positive(&format!("model.hidden_sizes[{i}]"), *h)?;
            }
            if m.num_labels < 2 {
                return Err("model.num_labels: must be at least 2".into());
            }
            probability("model.dropout", m.dropout)?;
            finite_positive("model.init_std", m.init_std)
        }
        ModelSpec::Llama(l) => {
            for (k, v) in [
                ("model.vocab_size", l.vocab_size),
                ("model.hidden_size", l.hidden_size),
                ("model.intermediate_size", l.intermediate_size),
                ("model.num_layers", l.num_layers),
                ("model.num_heads", l.num_heads),
                ("model.num_kv_heads", l.num_kv_heads),
                ("model.max_position", l.max_position),
            ] {
                positive(k, v)?;
            }
            if l.hidden_size % l.num_heads != 0 || l.head_dim() % 2 != 0 {
                return Err(
                    "model.hidden_size: must be num_heads times an even head dimension".into(),
                );
            }
            if l.num_heads % l.num_kv_heads != 0 {
                return Err("model.num_kv_heads: must divide model.num_heads".into());
            }
            if l.pad_token_id >= l.vocab_size {
                return Err("model.pad_token_id: must be below model.vocab_size".into());
            }
            finite_positive("model.rope_theta", l.rope_theta)?;
            finite_positive("model.rms_norm_eps", l.rms_norm_eps)?;
            finite_positive("model.init_std", l.init_std)?;
            if let Some(lora) = &l.lora {
                positive("model.lora.rank", lora.rank)?;
                finite_positive("model.lora.alpha", lora.alpha)?;
                probability("model.lora.dropout", lora.dropout)?;
                if lora.targets.is_empty() {
                    return Err("model.lora.targets: name at least one projection".into());
                }
                if let Some(t) = lora
                    .targets
                    .iter()
                    .find(|t| !LORA_TARGETS.contains(&t.as_str()))
                {
                    return Err(format!(
                        "model.lora.targets: {t:?} is not one of {LORA_TARGETS:?}"
                    ));
                }
            }
            Ok(())
        }
        ModelSpec::Custom(c) => {
            if c.name.is_empty() {
                return Err("model.name: must not be empty".into());
            }
            if c.num_labels < 2 {
                return Err("model.num_labels: must be at least 2".into());
            }
            if let Some(v) = c.vocab_size
                && v < 5
            {
                return Err(
                    "model.vocab_size: must be at least 5 (four special tokens and one word)"
                        .into(),
                );
            }
            Ok(())
        }
    }
}

fn validate_optimizer(o: &OptimizerSpec) -> std::result::Result<(), String> {
    finite_positive("optimizer.lr", o.lr())?;
    if let Some(c) = o.grad_clip() {
        finite_positive("optimizer.grad_clip", c)?;
    }
    match o {
        OptimizerSpec::Adamw(a) => {
            probability("optimizer.beta1", a.beta1)?;
            probability("optimizer.beta2", a.beta2)?;
            finite_positive("optimizer.eps", a.eps)?;
            if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
                return Err("optimizer.weight_decay: must be finite and not negative".into());
            }
        }
        OptimizerSpec::Sgd(g) => {
            probability("optimizer.momentum", g.momentum)?;
            if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
                return Err("optimizer.weight_decay: must be finite and not negative".into());
            }
        }
    }
    Ok(())
}

/// Data settings as recorded in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub format: DataFormat,
    pub max_len: Option<u64>,
    pub tokenizer: TokenizerKind,
    pub examples: u64,
    /// Merkle root of the example hashes (the dataset manifest's root).
    pub dataset_root: Hash32,
    /// How chat data was rendered and tokenized into these rows (absent for data given as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion: Option<crate::chat::Conversion>,
}

/// Base weights as recorded in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// `file_hash` of the file.
    pub blake3: Hash32,
    /// Its format (absent: safetensors, as in runs recorded before GGUF was read).
    #[serde(default, skip_serializing_if = "is_safetensors")]
    pub format: crate::base::BaseFormat,
}

fn is_safetensors(f: &crate::base::BaseFormat) -> bool {
    *f == crate::base::BaseFormat::Safetensors
}

impl BaseSpec {
    /// Where the run keeps its copy of the base model.
    pub fn run_key(&self) -> &'static str {
        self.format.run_key()
    }
}

/// Everything that determines the bits of a run (the manifest's `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub numerics: u64,
    pub run: RunSection,
    pub model: ModelSpec,
    pub base: Option<BaseSpec>,
    pub data: DataSpec,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
}

impl RunSpec {
    /// The spec of a run of `config` on `dataset`, starting from `base`.
    pub fn new(
        config: &RunConfig,
        dataset: &crate::data::Dataset,
        base: Option<&crate::base::BaseWeights>,
        conversion: Option<crate::chat::Conversion>,
    ) -> Self {
        RunSpec {
            numerics: NUMERICS_VERSION,
            run: config.run.clone(),
            model: config.model.clone(),
            base: base.map(|w| BaseSpec {
                blake3: w.hash,
                format: w.format,
            }),
            data: DataSpec {
                format: match config.data.format {
                    DataFormat::Chat => DataFormat::Lm,
                    f => f,
                },
                max_len: config.data.max_len,
                tokenizer: config.data.tokenizer,
                examples: dataset.len(),
                dataset_root: dataset.manifest.root,
                conversion,
            },
            optimizer: config.optimizer.clone(),
            schedule: config.schedule.clone(),
        }
    }

    /// The spec as the JSON value recorded in the manifest.
    pub fn to_value(&self) -> serde_json::Value {
        // A plain struct of numbers, strings and enums always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Read the spec of a manifest, checking it was written by these numerics.
    pub fn from_value(v: &serde_json::Value, artefact: &str) -> Result<Self> {
        let spec: RunSpec = serde_json::from_value(v.clone())
            .map_err(|e| Error::config(artefact, format!("spec: {e}")))?;
        // Runs of earlier numerics still load (their integrity can be checked); their
        // environment class differs from this engine's, so replay reports what it finds as such.
        if spec.numerics == 0 || spec.numerics > NUMERICS_VERSION {
            return Err(Error::config(
                artefact,
                format!(
                    "spec: written with numerics version {}, this engine implements 1 to {NUMERICS_VERSION}",
                    spec.numerics
                ),
            ));
        }
        spec.validate()
            .map_err(|d| Error::config(artefact, format!("spec: {d}")))?;
        Ok(spec)
    }

    /// The rules of a configuration (see [`RunConfig`]), and those a recorded spec adds: the
    /// dataset holds at least one batch.
    pub fn validate(&self) -> std::result::Result<(), String> {
        SpecParts {
            run: &self.run,
            model: &self.model,
            format: self.data.format,
            max_len: self.data.max_len,
            optimizer: &self.optimizer,
            schedule: &self.schedule,
        }
        .validate()?;
        if self.data.format == DataFormat::Chat {
            return Err("data.format: a run records chat data as \"lm\" rows".into());
        }
        if self.data.examples < self.run.batch_size {
            return Err(format!(
                "data.examples: {} examples, fewer than run.batch_size = {}",
                self.data.examples, self.run.batch_size
            ));
        }
        snapshot_format::manifest::check_exact_integers(&serde_json::json!({
            "examples": self.data.examples
        }))
    }

    /// Bytes of one full training state (parameters and optimizer slots, `f32`), when the
    /// model's architecture is known.
    pub fn state_bytes(&self) -> Option<u128> {
        let slots = crate::optim::slot_names(&self.optimizer, "").len() as u128;
        self.model
            .state_parameter_count()
            .map(|n| 4 * n * (1 + slots))
    }

    /// Learning rate of step `step` (1-based): linear warm-up from 0, then the decay, computed in
    /// `f64` with `libm` (a pure-Rust libm, so the value does not depend on the C library).
    pub fn lr(&self, step: u64) -> f64 {
        let peak = self.optimizer.lr();
        let warm = self.schedule.warmup_steps;
        if step <= warm && warm > 0 {
            return peak * step as f64 / warm as f64;
        }
        let floor = peak * self.schedule.min_lr_ratio;
        let span = self.run.steps.saturating_sub(warm);
        if span == 0 {
            return peak;
        }
        let progress = (step.saturating_sub(warm)) as f64 / span as f64;
        match self.schedule.decay {
            Decay::Constant => peak,
            Decay::Linear => floor + (peak - floor) * (1.0 - progress),
            Decay::Cosine => {
                floor + (peak - floor) * 0.5 * (1.0 + libm::cos(std::f64::consts::PI * progress))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[run]
seed = 1
steps = 10
batch_size = 4

[model]
kind = "mlp"
input_size = 3
hidden_sizes = [8]
num_labels = 2

[data]
path = "d.jsonl"
format = "features"

[optimizer]
kind = "adamw"
lr = 0.001
"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = RunConfig::from_toml(MINIMAL, "c.toml", PathBuf::from("/cfg")).expect("valid");
        assert_eq!(c.recording.checkpoint_interval, 50);
        assert_eq!(
            c.resolve(Path::new("d.jsonl")),
            PathBuf::from("/cfg/d.jsonl")
        );
        assert!(matches!(&c.optimizer, OptimizerSpec::Adamw(a) if a.beta2 == 0.999));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = RunConfig::from_toml(
            &MINIMAL.replace("lr = 0.001", "lrr = 0.001"),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.starts_with("c.toml:") && msg.contains("lrr"), "{msg}");

        let e = RunConfig::from_toml(
            &MINIMAL.replace("batch_size = 4", "batch_size = 0"),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("zero batch");
        assert!(e.to_string().contains("run.batch_size"), "{e}");

        let e = RunConfig::from_toml(
            &MINIMAL.replace("[data]\npath = \"d.jsonl\"\n", "[data]\n"),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("missing key");
        assert!(e.to_string().contains("path"), "{e}");

        let e = RunConfig::from_toml(
            &MINIMAL.replace("lr = 0.001", "lr = -1.0"),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("negative lr");
        assert!(e.to_string().contains("optimizer.lr"), "{e}");
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let mut c = RunConfig::from_toml(MINIMAL, "c.toml", PathBuf::new()).expect("valid");
        c.schedule = ScheduleSpec {
            decay: Decay::Cosine,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
        };
        let spec = RunSpec {
            numerics: NUMERICS_VERSION,
            run: c.run.clone(),
            model: c.model.clone(),
            base: None,
            data: DataSpec {
                format: DataFormat::Features,
                max_len: None,
                tokenizer: TokenizerKind::Hash,
                examples: 8,
                dataset_root: Hash32::ZERO,
                conversion: None,
            },
            optimizer: c.optimizer.clone(),
            schedule: c.schedule.clone(),
        };
        assert_eq!(spec.lr(1), 0.0005);
        assert_eq!(spec.lr(2), 0.001);
        assert!((spec.lr(10) - 0.0001).abs() < 1e-12);
        assert!(spec.lr(6) < spec.lr(3));
        let back = RunSpec::from_value(&spec.to_value(), "m").expect("round trip");
        assert_eq!(back, spec);
    }
}
