//! Datasets: JSON Lines examples, their canonical bytes and hashes, the built-in tokenizer, and
//! the deterministic order in which batches are drawn.

use serde::Deserialize;
use snapshot_format::Hash32;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::hash::{self, DomainHasher};
use snapshot_format::snapshot::DataCursor;

use crate::config::{DataFormat, ModelSpec};
use crate::error::{Error, Result};
use crate::rng;

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Text {
        text: String,
        label: u64,
    },
    Features {
        features: Vec<f32>,
        label: u64,
    },
    Tokens {
        tokens: Vec<u32>,
        label: u64,
    },
    /// A language-model sequence: token ids, and which of them are loss targets.
    Lm {
        tokens: Vec<u32>,
        loss_mask: Vec<bool>,
    },
}

impl Example {
    /// The class label.
    pub fn label(&self) -> u64 {
        match self {
            Example::Text { label, .. }
            | Example::Features { label, .. }
            | Example::Tokens { label, .. } => *label,
            Example::Lm { .. } => 0,
        }
    }

    /// Canonical bytes (hashed into the example hash): for text, `"text" ‖ u64 len ‖ UTF-8 ‖
    /// u64 label`; for features, `"feat" ‖ u64 n ‖ n × f32 little-endian ‖ u64 label`; for
    /// tokens, `"toks" ‖ u64 n ‖ n × u32 little-endian ‖ u64 label`; for a language-model
    /// sequence, `"lmtk" ‖ u64 n ‖ n × u32 little-endian ‖ n × u8` (1 where the token is a loss
    /// target). Other fields of a row do not reach the model and are not hashed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Example::Text { text, label } => {
                b.extend_from_slice(b"text");
                b.extend_from_slice(&(text.len() as u64).to_le_bytes());
                b.extend_from_slice(text.as_bytes());
                b.extend_from_slice(&label.to_le_bytes());
            }
            Example::Features { features, label } => {
                b.extend_from_slice(b"feat");
                b.extend_from_slice(&(features.len() as u64).to_le_bytes());
                for f in features {
                    b.extend_from_slice(&f.to_le_bytes());
                }
                b.extend_from_slice(&label.to_le_bytes());
            }
            Example::Tokens { tokens, label } => {
                b.extend_from_slice(b"toks");
                b.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
                for id in tokens {
                    b.extend_from_slice(&id.to_le_bytes());
                }
                b.extend_from_slice(&label.to_le_bytes());
            }
            Example::Lm { tokens, loss_mask } => {
                b.extend_from_slice(b"lmtk");
                b.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
                for id in tokens {
                    b.extend_from_slice(&id.to_le_bytes());
                }
                b.extend(loss_mask.iter().map(|&m| u8::from(m)));
            }
        }
        b
    }

    /// Example hash.
    pub fn hash(&self) -> Hash32 {
        hash::example_hash(&self.canonical_bytes())
    }
}

/// Call `f` on each non-blank line of the JSON Lines in `bytes` (named `source` in errors),
/// with a constructor of errors that name the file and the line.
pub(crate) fn each_row(
    bytes: &[u8],
    source: &str,
    mut f: impl FnMut(&str, &dyn Fn(String) -> Error) -> Result<()>,
) -> Result<()> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Dataset {
        path: source.to_string(),
        detail: format!("not UTF-8: {e}"),
    })?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row_err = |detail: String| Error::DatasetRow {
            path: source.to_string(),
            line: i as u64 + 1,
            detail,
        };
        f(line, &row_err)?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct TextRow {
    text: String,
    label: u64,
}

#[derive(Deserialize)]
struct FeatureRow {
    features: Vec<f64>,
    label: u64,
}

#[derive(Deserialize)]
struct TokenRow {
    tokens: Vec<u64>,
    label: u64,
}

#[derive(Deserialize)]
struct LmRow {
    tokens: Vec<u64>,
    #[serde(default)]
    loss_mask: Option<Vec<u8>>,
}

/// A parsed dataset with its hashes.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub manifest: DatasetManifest,
    /// Name used in errors.
    pub source: String,
}

impl Dataset {
    /// Parse JSON Lines (blank lines are skipped; example ids count the other lines from 0) and
    /// check every row against the model: labels below `num_labels`, feature vectors of the
    /// model's input size with finite values, token ids from 1 (0 is padding) to below the
    /// model's vocabulary size.
    pub fn parse(
        bytes: &[u8],
        source: &str,
        format: DataFormat,
        model: &ModelSpec,
    ) -> Result<Self> {
        let num_labels = model.num_labels();
        let input_size = model.input_size();
        let vocab_size = model.vocab_size().unwrap_or(0);
        let mut examples = Vec::new();
        each_row(bytes, source, |line, row_err| {
            let ex = match format {
                DataFormat::Text => {
                    let r: TextRow =
                        serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
                    Example::Text {
                        text: r.text,
                        label: r.label,
                    }
                }
                DataFormat::Features => {
                    let r: FeatureRow =
                        serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
                    if let Some(n) = input_size
                        && r.features.len() as u64 != n
                    {
                        return Err(row_err(format!(
                            "{} features, the model takes {n}",
                            r.features.len()
                        )));
                    }
                    let features: Vec<f32> = r.features.iter().map(|&f| f as f32).collect();
                    if features.iter().any(|f| !f.is_finite()) {
                        return Err(row_err("a feature is not finite as f32".into()));
                    }
                    Example::Features {
                        features,
                        label: r.label,
                    }
                }
                DataFormat::Tokens => {
                    let r: TokenRow =
                        serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
                    if r.tokens.is_empty() {
                        return Err(row_err("no tokens".into()));
                    }
                    if let Some(&id) = r.tokens.iter().find(|&&id| id == 0 || id >= vocab_size) {
                        return Err(row_err(format!(
                            "token id {id} is outside 1..{vocab_size} (0 is padding; model.vocab_size = {vocab_size})"
                        )));
                    }
                    Example::Tokens {
                        tokens: r.tokens.iter().map(|&id| id as u32).collect(),
                        label: r.label,
                    }
                }
                DataFormat::Chat => {
                    return Err(row_err(
                        "chat rows are rendered into lm rows before they are parsed (trainer run does it)"
                            .into(),
                    ));
                }
                DataFormat::Lm => {
                    let r: LmRow =
                        serde_json::from_str(line).map_err(|e| row_err(e.to_string()))?;
                    if r.tokens.len() < 2 {
                        return Err(row_err("fewer than 2 tokens: nothing to predict".into()));
                    }
                    if let Some(&id) = r.tokens.iter().find(|&&id| id >= vocab_size) {
                        return Err(row_err(format!(
                            "token id {id} is not below model.vocab_size = {vocab_size}"
                        )));
                    }
                    let loss_mask: Vec<bool> = match r.loss_mask {
                        None => (0..r.tokens.len()).map(|i| i > 0).collect(),
                        Some(m) if m.len() != r.tokens.len() => {
                            return Err(row_err(format!(
                                "{} loss_mask values for {} tokens",
                                m.len(),
                                r.tokens.len()
                            )));
                        }
                        Some(m) => {
                            if m.iter().any(|&v| v > 1) {
                                return Err(row_err("loss_mask values must be 0 or 1".into()));
                            }
                            if m[0] == 1 {
                                return Err(row_err(
                                    "the first token cannot be a target (nothing precedes it)"
                                        .into(),
                                ));
                            }
                            m.iter().map(|&v| v == 1).collect()
                        }
                    };
                    if !loss_mask.iter().any(|&m| m) {
                        return Err(row_err("no token is a loss target".into()));
                    }
                    Example::Lm {
                        tokens: r.tokens.iter().map(|&id| id as u32).collect(),
                        loss_mask,
                    }
                }
            };
            if !matches!(ex, Example::Lm { .. }) && ex.label() >= num_labels {
                return Err(row_err(format!(
                    "label {} is not below model.num_labels = {num_labels}",
                    ex.label()
                )));
            }
            examples.push(ex);
            Ok(())
        })?;
        if examples.is_empty() {
            return Err(Error::Dataset {
                path: source.to_string(),
                detail: "no examples".into(),
            });
        }
        let hashes: Vec<Hash32> = examples.iter().map(Example::hash).collect();
        Ok(Dataset {
            examples,
            manifest: DatasetManifest::new(hashes),
            source: source.to_string(),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> u64 {
        self.examples.len() as u64
    }

    /// True when there are no examples (never, for a parsed dataset).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Batch hash of the examples `ids`, in order.
    pub fn batch_hash(&self, ids: &[u64]) -> Hash32 {
        let hs: Vec<Hash32> = ids
            .iter()
            .map(|&i| self.manifest.example_hashes[i as usize])
            .collect();
        hash::batch_hash(&hs)
    }
}

/// Special token ids of the built-in tokenizer.
pub mod special {
    pub const PAD: i64 = 0;
    pub const CLS: i64 = 1;
    pub const SEP: i64 = 2;
    /// Reserved, for tokenizers with a vocabulary.
    pub const UNK: i64 = 3;
    /// First id of hashed words.
    pub const FIRST_WORD: i64 = 4;
}

/// BLAKE3 context of the built-in tokenizer's word hash.
pub const TOKEN_CONTEXT: &str = "training-replay-verifier v1 hash tokenizer";

/// The built-in tokenizer. Its rules use ASCII classes only, so they do not change with the
/// Unicode tables of a compiler: ASCII letters are lower-cased; ASCII whitespace separates
/// words; each ASCII punctuation character is a word of its own; every other character (digits,
/// letters, any non-ASCII character) belongs to the word around it. A word's id is
/// `4 + u64_le(BLAKE3-derive(TOKEN_CONTEXT, word)[0..8]) mod (vocab_size − 4)`.
#[derive(Debug, Clone, Copy)]
pub struct HashTokenizer {
    pub vocab_size: u64,
}

impl HashTokenizer {
    /// Split text into words.
    pub fn words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut current = String::new();
        for c in text.chars() {
            if c.is_ascii_whitespace() {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            } else if c.is_ascii_punctuation() {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                words.push(c.to_string());
            } else {
                current.push(c.to_ascii_lowercase());
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
        words
    }

    /// Id of one word.
    pub fn word_id(&self, word: &str) -> i64 {
        let mut h = DomainHasher::new(TOKEN_CONTEXT);
        h.bytes(word.as_bytes());
        let d = h.finish().0;
        let v = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        special::FIRST_WORD + (v % (self.vocab_size - special::FIRST_WORD as u64)) as i64
    }

    /// `[CLS] words… [SEP]`, words truncated to fit `max_len`, padded with `[PAD]` to `max_len`.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(max_len);
        ids.push(special::CLS);
        for w in Self::words(text).iter().take(max_len.saturating_sub(2)) {
            ids.push(self.word_id(w));
        }
        ids.push(special::SEP);
        ids.resize(max_len, special::PAD);
        ids
    }
}

/// Order of examples in each epoch, and the data cursor's rule. Epoch `e`'s order is
/// `permutation(stream(seed, "data-order", e), n)`. Batches take consecutive slices of the order;
/// when fewer than `batch_size` examples remain, the remainder is skipped and the next epoch
/// begins (every batch has exactly `batch_size` examples).
#[derive(Debug, Clone)]
pub struct DataOrder {
    seed: u64,
    examples: u64,
    batch_size: u64,
    cached: Option<(u64, Vec<u64>)>,
}

impl DataOrder {
    /// For a dataset of `examples` examples.
    pub fn new(seed: u64, examples: u64, batch_size: u64) -> Self {
        DataOrder {
            seed,
            examples,
            batch_size,
            cached: None,
        }
    }

    /// The cursor after `steps` batches have been drawn from the start: the only cursor a
    /// state after that many steps can hold (batches never straddle epochs).
    pub fn cursor_after(&self, steps: u64) -> DataCursor {
        let per_epoch = (self.examples / self.batch_size.max(1)).max(1);
        match steps {
            0 => DataCursor::default(),
            s => DataCursor {
                epoch: (s - 1) / per_epoch,
                position: ((s - 1) % per_epoch + 1) * self.batch_size,
            },
        }
    }

    /// The next batch after `cursor`: its epoch and example ids; advances `cursor`.
    pub fn next_batch(&mut self, cursor: &mut DataCursor) -> (u64, Vec<u64>) {
        if cursor.position + self.batch_size > self.examples {
            cursor.epoch += 1;
            cursor.position = 0;
        }
        let epoch = cursor.epoch;
        if self.cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let order = rng::permutation(
                &mut rng::stream(self.seed, rng::purpose::DATA_ORDER, epoch),
                self.examples,
            );
            self.cached = Some((epoch, order));
        }
        let order = &self.cached.as_ref().expect("cached above").1;
        let start = cursor.position as usize;
        let ids = order[start..start + self.batch_size as usize].to_vec();
        cursor.position += self.batch_size;
        (epoch, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MlpConfig;

    fn mlp(n: u64) -> ModelSpec {
        ModelSpec::Mlp(MlpConfig {
            input_size: n,
            hidden_sizes: vec![],
            num_labels: 2,
            dropout: 0.0,
            init_std: 0.02,
        })
    }

    #[test]
    fn rows_are_validated_with_line_numbers() {
        let ok = b"{\"features\": [1, 2], \"label\": 1}\n\n{\"features\": [0.5, 2], \"label\": 0, \"id\": \"x\"}\n";
        let d = Dataset::parse(ok, "d.jsonl", DataFormat::Features, &mlp(2)).expect("valid");
        assert_eq!(d.len(), 2);
        for (bad, line, needle) in [
            (
                &b"{\"features\": [1, 2], \"label\": 1}\n{\"features\": [1], \"label\": 0}"[..],
                2,
                "features",
            ),
            (b"{\"features\": [1, 2], \"label\": 7}", 1, "label 7"),
            (b"\n\nnot json", 3, "expected"),
            (b"{\"features\": [1e300, 2], \"label\": 0}", 1, "finite"),
        ] {
            let e =
                Dataset::parse(bad, "d.jsonl", DataFormat::Features, &mlp(2)).expect_err("bad row");
            assert!(
                matches!(&e, Error::DatasetRow { line: l, .. } if *l == line),
                "{e}"
            );
            assert!(
                e.to_string().starts_with(&format!("d.jsonl:{line}:")),
                "{e}"
            );
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(matches!(
            Dataset::parse(b"\n", "d.jsonl", DataFormat::Features, &mlp(2)),
            Err(Error::Dataset { .. })
        ));
    }

    #[test]
    fn hashing_sees_content_not_formatting() {
        let a = Dataset::parse(
            b"{\"features\":[1,2],\"label\":1}",
            "a",
            DataFormat::Features,
            &mlp(2),
        )
        .expect("a");
        let b = Dataset::parse(
            b"{ \"label\": 1, \"features\": [1.0, 2.0] }",
            "b",
            DataFormat::Features,
            &mlp(2),
        )
        .expect("b");
        let c = Dataset::parse(
            b"{\"features\":[1,2.5],\"label\":1}",
            "c",
            DataFormat::Features,
            &mlp(2),
        )
        .expect("c");
        assert_eq!(a.manifest.root, b.manifest.root);
        assert_ne!(a.manifest.root, c.manifest.root);
    }

    #[test]
    fn token_rows_are_checked_against_the_vocabulary_and_hashed_as_specified() {
        let bert = ModelSpec::Bert(crate::fixtures::tiny_bert()); // vocabulary 256, 2 labels
        let parse = |rows: &[u8]| Dataset::parse(rows, "t.jsonl", DataFormat::Tokens, &bert);
        let d = parse(b"{\"tokens\": [1, 255, 2], \"label\": 1, \"text\": \"not hashed\"}")
            .expect("valid");
        // specs/determinism.md 5.9: "toks" ‖ u64 n ‖ u32 LE × n ‖ u64 label.
        let mut canonical = b"toks".to_vec();
        canonical.extend_from_slice(&3u64.to_le_bytes());
        for id in [1u32, 255, 2] {
            canonical.extend_from_slice(&id.to_le_bytes());
        }
        canonical.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(d.manifest.example_hashes, [hash::example_hash(&canonical)]);
        for (bad, needle) in [
            (&b"{\"tokens\": [1, 0, 2], \"label\": 0}"[..], "token id 0"),
            (b"{\"tokens\": [1, 256], \"label\": 0}", "token id 256"),
            (b"{\"tokens\": [], \"label\": 0}", "no tokens"),
            (b"{\"tokens\": [1.5], \"label\": 0}", "invalid type"),
            (b"{\"tokens\": [1], \"label\": 2}", "label 2"),
        ] {
            let e = parse(bad).expect_err("bad row");
            assert!(e.to_string().starts_with("t.jsonl:1:"), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn tokenizer_is_ascii_defined() {
        assert_eq!(
            HashTokenizer::words("Hello, World!  naïve"),
            ["hello", ",", "world", "!", "naïve"]
        );
        let t = HashTokenizer { vocab_size: 100 };
        let ids = t.encode("a b c d e", 5);
        assert_eq!(ids.len(), 5);
        assert_eq!((ids[0], ids[4]), (special::CLS, special::SEP));
        assert_eq!(t.encode("A", 4)[1], t.encode("a", 4)[1]);
        assert_eq!(t.encode("a", 4)[3], special::PAD);
        assert!(ids[1..4].iter().all(|&i| (4..100).contains(&i)));
    }

    #[test]
    fn cursor_walks_epochs_and_skips_the_remainder() {
        let mut order = DataOrder::new(9, 10, 4);
        let mut c = DataCursor::default();
        let (e0, b0) = order.next_batch(&mut c);
        let (_, b1) = order.next_batch(&mut c);
        let (e2, b2) = order.next_batch(&mut c); // 2 examples left: next epoch
        assert_eq!((e0, e2), (0, 1));
        assert_eq!(
            c,
            DataCursor {
                epoch: 1,
                position: 4
            }
        );
        let mut seen: Vec<u64> = b0.iter().chain(&b1).copied().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8, "no repeats within an epoch");
        // A fresh order object resumed from a cursor continues identically.
        let mut resumed = DataOrder::new(9, 10, 4);
        let mut c2 = DataCursor {
            epoch: 0,
            position: 8,
        };
        assert_eq!(resumed.next_batch(&mut c2), (1, b2));
    }
}
