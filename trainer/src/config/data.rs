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
/// How the token rows of a batch are padded (`data.padding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Padding {
    /// Every row to `max_len`: the default, and how every run recorded before the option was
    /// padded.
    #[default]
    #[serde(rename = "max_len")]
    MaxLen,
    /// Each batch to its longest row (at most `max_len`). The masked positions a shorter batch
    /// leaves out change no loss or gradient in exact arithmetic, but the sums run over other
    /// lengths, so the bits are another run's: a choice made in the configuration and recorded
    /// in the spec, never a speed-up applied to an existing run.
    #[serde(rename = "longest")]
    Longest,
}

impl Padding {
    /// Whether this is the default (left out of a recorded spec, so that a spec written before
    /// the option existed reads and hashes as it did).
    pub fn is_max_len(&self) -> bool {
        *self == Padding::MaxLen
    }
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
    /// How a batch's token rows are padded (text, token, lm and chat data).
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub tokenizer: TokenizerKind,
}
/// Data settings as recorded in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub format: DataFormat,
    pub max_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Padding::is_max_len")]
    pub padding: Padding,
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
