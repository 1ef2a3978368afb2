//! `[model]`: which model kind, and its configuration (each kind's beside its code, under
//! `model/`, implementing [`ModelKind`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::model::bert::BertConfig;
pub use crate::model::kind::ModelKind;
pub use crate::model::llama::{LORA_TARGETS, LlamaConfig, LoraConfig};
pub use crate::model::mlp::MlpConfig;

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

impl ModelKind for CustomModelSpec {
    fn validate(&self) -> std::result::Result<(), String> {
        let c = self;
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
                "model.vocab_size: must be at least 5 (four special tokens and one word)".into(),
            );
        }
        Ok(())
    }

    fn num_labels(&self) -> u64 {
        self.num_labels
    }

    fn vocab_size(&self) -> Option<u64> {
        self.vocab_size
    }

    fn input_size(&self) -> Option<u64> {
        self.input_size
    }

    /// The engine does not know a custom model's architecture.
    fn parameter_count(&self) -> Option<u128> {
        None
    }
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
    /// The model kind's configuration.
    pub fn kind(&self) -> &dyn ModelKind {
        match self {
            ModelSpec::Bert(c) => c,
            ModelSpec::Mlp(c) => c,
            ModelSpec::Llama(c) => c,
            ModelSpec::Custom(c) => c,
        }
    }

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
        self.kind().num_labels()
    }

    /// Whether the model is a causal language model (trained on `lm` data).
    pub fn is_language_model(&self) -> bool {
        self.kind().is_language_model()
    }

    /// Vocabulary size of the tokenizer, for models of text.
    pub fn vocab_size(&self) -> Option<u64> {
        self.kind().vocab_size()
    }

    /// Number of parameters (elements) of the model this spec builds, computed from the
    /// architecture without building it (a test checks it against built models); `None` for a
    /// custom model, whose architecture the engine does not know.
    pub fn parameter_count(&self) -> Option<u128> {
        self.kind().parameter_count()
    }

    /// Number of parameters (elements) that are trained and so belong to the training state:
    /// all of them, except under LoRA, where only the adapters are (the base stays frozen,
    /// pinned by the base model's hash).
    pub fn state_parameter_count(&self) -> Option<u128> {
        self.kind().state_parameter_count()
    }

    /// Number of input features, for models of features.
    pub fn input_size(&self) -> Option<u64> {
        self.kind().input_size()
    }
}
