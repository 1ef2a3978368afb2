//! `[data]`, and how the data is recorded in the spec.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use snapshot_format::Hash32;

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
    pub conversion: Option<Conversion>,
}

/// How chat data was turned into the run's token rows (recorded in the spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// `chat` (messages or Alpaca rows).
    pub from: String,
    /// `file_hash` of the source file.
    pub source_blake3: Hash32,
    /// BLAKE3 of the tokenizer's definition.
    pub tokenizer: Hash32,
    /// `file_hash` of the chat template's text.
    pub template: Hash32,
    /// Which tokens the loss covers.
    pub targets: String,
}
