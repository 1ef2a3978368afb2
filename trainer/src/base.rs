//! Base weights: safetensors or GGUF files in, pinned by hash; safetensors files out.
//!
//! A GGUF file (llama.cpp's format) of a Llama-architecture model is read with its tensors
//! dequantized to `f32` and renamed to Hugging Face's names, with the permutation llama.cpp's
//! converter applies to the query and key projections (for its interleaved rotary embedding)
//! undone, so that the weights are those of the Hugging Face model. Its metadata (the
//! architecture's hyper-parameters, the tokenizer, the chat template) stays available.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};
use snapshot_format::Hash32;
use snapshot_format::hash::file_hash;

use crate::error::{Error, Result};

/// One base tensor, converted to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The format of a base-weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    #[default]
    Safetensors,
    Gguf,
}

impl BaseFormat {
    /// The format of a file, from its first bytes.
    pub fn of(bytes: &[u8]) -> Self {
        if bytes.starts_with(crate::gguf::MAGIC) {
            BaseFormat::Gguf
        } else {
            BaseFormat::Safetensors
        }
    }

    /// Where a run keeps its copy of a base model of this format.
    pub fn run_key(self) -> &'static str {
        match self {
            BaseFormat::Safetensors => snapshot_format::layout::BASE_MODEL,
            BaseFormat::Gguf => snapshot_format::layout::BASE_MODEL_GGUF,
        }
    }
}

/// Float tensors of a base model, converted to `f32`.
#[derive(Debug, Clone)]
pub struct BaseWeights {
    pub source: String,
    /// [`file_hash`] of the file's bytes.
    pub hash: Hash32,
    pub format: BaseFormat,
    pub tensors: BTreeMap<String, BaseTensor>,
    /// A GGUF file's metadata (empty for safetensors).
    pub metadata: BTreeMap<String, crate::gguf::Value>,
}

impl BaseWeights {
    /// Parse a base-weights file's bytes: GGUF or safetensors (by the magic bytes).
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self> {
        match BaseFormat::of(bytes) {
            BaseFormat::Gguf => Self::parse_gguf(bytes, source),
            BaseFormat::Safetensors => Self::parse_safetensors(bytes, source),
        }
    }

    /// A GGUF file of a Llama-architecture model: every tensor dequantized to `f32`, named as
    /// in Hugging Face's `LlamaForCausalLM`.
    fn parse_gguf(bytes: &[u8], source: &str) -> Result<Self> {
        let g = crate::gguf::Gguf::parse(bytes, source)?;
        let bad = |detail: String| Error::BaseModel {
            path: source.to_string(),
            detail,
        };
        let arch = g
            .get("general.architecture")
            .and_then(crate::gguf::Value::as_str)
            .unwrap_or("?");
        if arch != "llama" {
            return Err(bad(format!(
                "GGUF architecture {arch:?}: only \"llama\" models are supported"
            )));
        }
        let count = |key: &str| {
            g.get(key)
                .and_then(crate::gguf::Value::as_u64)
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(format!("GGUF metadata {key} is missing or zero")))
        };
        let (heads, kv_heads) = (
            count("llama.attention.head_count")?,
            count("llama.attention.head_count_kv")?,
        );
        let mut tensors = BTreeMap::new();
        for t in &g.tensors {
            let (name, permute_heads) = llama_name(&t.name, heads, kv_heads).ok_or_else(|| {
                bad(format!(
                    "GGUF tensor {:?} has no Llama counterpart this engine knows",
                    t.name
                ))
            })?;
            let shape = t.shape();
            let mut values = g.dequantize(bytes, t, source)?;
            if let Some(h) = permute_heads {
                values = unpermute_rows(&values, &shape, h as usize).ok_or_else(|| {
                    bad(format!(
                        "GGUF tensor {:?} of shape {shape:?} does not split into {h} heads",
                        t.name
                    ))
                })?;
            }
            tensors.insert(name, BaseTensor { shape, values });
        }
        Ok(BaseWeights {
            source: source.to_string(),
            hash: file_hash(bytes),
            format: BaseFormat::Gguf,
            tensors,
            metadata: g.metadata,
        })
    }

    /// A safetensors file. F32, F16 and BF16 tensors are read (converted exactly to `f32`);
    /// other dtypes are listed as unusable.
    fn parse_safetensors(bytes: &[u8], source: &str) -> Result<Self> {
        let bad = |detail: String| Error::BaseModel {
            path: source.to_string(),
            detail,
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                // Integer buffers (e.g. BERT's position_ids) are not parameters.
                _ => continue,
            };
            tensors.insert(
                name,
                BaseTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(BaseWeights {
            source: source.to_string(),
            hash: file_hash(bytes),
            format: BaseFormat::Safetensors,
            tensors,
            metadata: BTreeMap::new(),
        })
    }

    /// The tensor for canonical name `name`, also trying it without a leading `bert.` (the
    /// layout of bare `BertModel` checkpoints such as sentence-transformers' MiniLM). Returns
    /// the key found.
    pub fn get(&self, name: &str) -> Option<(&str, &BaseTensor)> {
        let candidates = [Some(name), name.strip_prefix("bert.")];
        candidates
            .into_iter()
            .flatten()
            .find_map(|k| self.tensors.get_key_value(k).map(|(k, v)| (k.as_str(), v)))
    }
}

/// The Hugging Face name of a GGUF Llama tensor, and the number of heads whose rows llama.cpp
/// permuted (query: all heads; key: the key-value heads).
fn llama_name(gguf: &str, heads: u64, kv_heads: u64) -> Option<(String, Option<u64>)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let (hf, permute) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), permute))
}

/// Undo llama.cpp's permutation of a projection's rows: its converter stores row
/// `h·d + 2j + t` of each head `h` (head dimension `d`) where Hugging Face has row
/// `h·d + t·d/2 + j` (for `t` in 0..2, `j` in 0..d/2).
fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Option<Vec<f32>> {
    let [rows, cols] = <[usize; 2]>::try_from(shape).ok()?;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..d / 2 {
            for t in 0..2 {
                let stored = h * d + 2 * j + t;
                let hf = h * d + t * (d / 2) + j;
                out[hf * cols..(hf + 1) * cols]
                    .copy_from_slice(&values[stored * cols..(stored + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// llama.cpp's permutation of a projection's rows (`[rows, cols]`, `heads` heads): the inverse
/// of [`unpermute_rows`], for writing GGUF files as its converter does.
pub(crate) fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..d / 2 {
            for t in 0..2 {
                let stored = h * d + 2 * j + t;
                let hf = h * d + t * (d / 2) + j;
                out[stored * cols..(stored + 1) * cols]
                    .copy_from_slice(&values[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

/// Serialise `f32` tensors (name, shape, values) as safetensors, with no metadata map so that
/// the bytes depend on the tensors alone.
pub fn to_safetensors(tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::BaseModel {
                    path: name.clone(),
                    detail: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::BaseModel {
        path: "safetensors output".into(),
        detail: e.to_string(),
    })
}
