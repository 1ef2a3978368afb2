//! Base weights: safetensors files in, pinned by hash; safetensors files out.

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

/// Float tensors of a base model, converted to `f32`.
#[derive(Debug, Clone)]
pub struct BaseWeights {
    pub source: String,
    /// [`file_hash`] of the file's bytes.
    pub hash: Hash32,
    pub tensors: BTreeMap<String, BaseTensor>,
}

impl BaseWeights {
    /// Parse a safetensors file's bytes. F32, F16 and BF16 tensors are read (converted
    /// exactly to `f32`); other dtypes are listed as unusable.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self> {
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
            tensors,
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
