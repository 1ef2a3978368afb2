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

mod data;
pub(crate) mod fields;
mod model;
mod optim;
mod recording;

pub use data::*;
pub use model::*;
pub use optim::*;
pub use recording::*;

/// Version of the engine's numerics: the training semantics (loss, optimizer update, dropout,
/// data order, initialisation) and the kernels' rounding (3: every `f32` matrix product in the
/// fixed order of `kernels::matmul`, where 2 had gemm's, which for small outputs and vector
/// shapes summed across 8 SIMD lanes). Bumped whenever any of them changes bits.
pub const NUMERICS_VERSION: u64 = 3;

/// `[run]`: what is trained, how long, in what order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Master seed: every random number of the run derives from it.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: u64,
    pub batch_size: u64,
    /// Parts each batch is cut into (`specs/determinism.md` §5.6): each part's gradient is taken
    /// alone and the parts' gradients are summed in a fixed pairwise tree over the part index,
    /// so the step's bits do not depend on how many workers compute the parts. 1 (the default,
    /// left out of the spec): one backward pass over the whole batch.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub micro_batches: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
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
            padding: self.data.padding,
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
            Hash32::from_hex(&b.blake3).ok_or_else(|| {
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
    padding: Padding,
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
        if self.run.micro_batches == 0
            || !self.run.batch_size.is_multiple_of(self.run.micro_batches)
        {
            return bad(
                "run.micro_batches",
                "must be at least 1 and divide run.batch_size (the parts are of equal size)",
            );
        }
        self.model.kind().validate()?;
        optim::validate_optimizer(self.optimizer)?;
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
            (DataFormat::Features, _, Some(_)) => {
                if self.padding != Padding::MaxLen {
                    return bad(
                        "data.padding",
                        "pads rows of tokens; features have no length to pad",
                    );
                }
            }
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
        dataset: &snapshot_format::dataset::DatasetManifest,
        base: Option<&crate::base::BaseWeights>,
        conversion: Option<Conversion>,
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
                padding: config.data.padding,
                tokenizer: config.data.tokenizer,
                examples: dataset.len(),
                dataset_root: dataset.root,
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
            padding: self.data.padding,
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
        let slots = self.optimizer.slot_names("").len() as u128;
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
    fn micro_batches_must_divide_the_batch() {
        let with = |n: &str| {
            RunConfig::from_toml(
                &MINIMAL.replace(
                    "batch_size = 4",
                    &format!("batch_size = 4\nmicro_batches = {n}"),
                ),
                "c.toml",
                PathBuf::new(),
            )
        };
        assert_eq!(with("2").expect("2 divides 4").run.micro_batches, 2);
        for bad in ["0", "3", "8"] {
            let e = with(bad).expect_err(bad).to_string();
            assert!(e.contains("run.micro_batches"), "{bad}: {e}");
        }
    }

    #[test]
    fn padding_to_the_longest_row_is_for_token_rows() {
        let e = RunConfig::from_toml(
            &MINIMAL.replace(
                "format = \"features\"",
                "format = \"features\"\npadding = \"longest\"",
            ),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("features have no length");
        assert!(e.to_string().contains("data.padding"), "{e}");
        let e = RunConfig::from_toml(
            &MINIMAL.replace(
                "format = \"features\"",
                "format = \"features\"\npadding = \"shortest\"",
            ),
            "c.toml",
            PathBuf::new(),
        )
        .expect_err("no such padding");
        assert!(e.to_string().contains("shortest"), "{e}");
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
                padding: Padding::MaxLen,
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
        // The default padding is left out of the recorded spec (older specs hash as before);
        // a hostile spec that asks to cut features is refused as a configuration would be.
        let mut value = spec.to_value();
        assert!(value["data"].get("padding").is_none(), "{value}");
        value["data"]["padding"] = "longest".into();
        let e = RunSpec::from_value(&value, "m").expect_err("features have no length");
        assert!(e.to_string().contains("data.padding"), "{e}");
    }
}
