//! Exports of a LoRA run in the forms people load: PEFT's adapter files
//! (`adapter_model.safetensors`, `adapter_config.json`) and the merged model (the base with
//! each adapter folded into its projection, Hugging Face names), a plain `LlamaForCausalLM`
//! checkpoint.

use std::collections::BTreeMap;

use crate::base::BaseWeights;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// A named f32 tensor: name, shape, little-endian bytes.
pub type NamedTensor = (String, Vec<usize>, Vec<u8>);

/// PEFT's prefix of adapter tensor names: the `PeftModel` wraps the causal LM.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// What a LoRA run exports.
#[derive(Debug)]
pub struct LoraExport {
    /// The adapter's tensors under PEFT's names.
    pub adapter: Vec<NamedTensor>,
    /// PEFT's `adapter_config.json`.
    pub adapter_config: serde_json::Value,
    /// Every base tensor, the adapted projections merged: `W + (alpha / rank) · B A`.
    pub merged: Vec<NamedTensor>,
}

/// Little-endian f32 values of `bytes`.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The exports of trained adapter tensors `trained` (the run's parameters, engine names:
/// `….q_proj.lora_A.weight` `[rank, in]`, `….q_proj.lora_B.weight` `[out, rank]`) on `base`,
/// pinned as `base_pin`. Each merged element is `W + scale · Σ_r B[o,r] A[r,i]`, summed in f64
/// in order of `r` and rounded once to f32, so the merge is the same on every machine.
pub fn lora_export(
    config: &LlamaConfig,
    base: &BaseWeights,
    base_pin: &str,
    trained: &[NamedTensor],
) -> Result<LoraExport> {
    let lora = config.lora.as_ref().ok_or_else(|| {
        Error::config(
            "model.lora",
            "the run trains no LoRA adapter: nothing to export as one",
        )
    })?;
    let scale = lora.alpha / lora.rank as f64;
    let by_name: BTreeMap<&str, &NamedTensor> = trained.iter().map(|t| (t.0.as_str(), t)).collect();
    let adapter = trained
        .iter()
        .map(|(name, shape, bytes)| (format!("{PEFT_PREFIX}{name}"), shape.clone(), bytes.clone()))
        .collect();
    let mut merged = Vec::with_capacity(base.tensors.len());
    for (name, t) in &base.tensors {
        let mut values = t.values.clone();
        if let Some(stem) = name.strip_suffix(".weight")
            && let (Some(a), Some(b)) = (
                by_name.get(format!("{stem}.lora_A.weight").as_str()),
                by_name.get(format!("{stem}.lora_B.weight").as_str()),
            )
        {
            let (rank, d_in) = (a.1[0], a.1[1]);
            let d_out = b.1[0];
            if t.shape != [d_out, d_in] || b.1[1] != rank {
                return Err(Error::BaseModel {
                    path: base.source.clone(),
                    detail: format!(
                        "{name} is {:?}; its adapter is A {:?}, B {:?}",
                        t.shape, a.1, b.1
                    ),
                });
            }
            let (a, b) = (f32s(&a.2), f32s(&b.2));
            for o in 0..d_out {
                for i in 0..d_in {
                    let delta: f64 = (0..rank)
                        .map(|r| f64::from(b[o * rank + r]) * f64::from(a[r * d_in + i]))
                        .sum();
                    let w = &mut values[o * d_in + i];
                    *w = (f64::from(*w) + scale * delta) as f32;
                }
            }
        }
        merged.push((name.clone(), t.shape.clone(), le_bytes(&values)));
    }
    let adapter_config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_pin,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    Ok(LoraExport {
        adapter,
        adapter_config,
        merged,
    })
}

/// The files of a model export, by name: `model.safetensors` (the parameters under Hugging Face
/// names; for a LoRA run the base with the adapters merged) and, for a LoRA run,
/// `adapter_model.safetensors` and `adapter_config.json` as PEFT writes them. `params` are the
/// state's parameters (no optimizer state); `base` is the run's pinned base, `base_pin` its pin.
pub fn export_files(
    model: &crate::config::ModelSpec,
    base: Option<&BaseWeights>,
    base_pin: Option<snapshot_format::Hash32>,
    params: Vec<NamedTensor>,
) -> Result<Vec<(String, Vec<u8>)>> {
    use crate::base::to_safetensors;
    match model {
        crate::config::ModelSpec::Llama(c) if c.lora.is_some() => {
            let base = base.ok_or_else(|| {
                Error::config("base", "a LoRA run's export needs its pinned base model")
            })?;
            let pin = format!(
                "blake3:{}",
                base_pin.map(|p| p.to_hex()).unwrap_or_default()
            );
            let e = lora_export(c, base, &pin, &params)?;
            let mut config = serde_json::to_vec_pretty(&e.adapter_config).unwrap_or_default();
            config.push(b'\n');
            Ok(vec![
                ("model.safetensors".into(), to_safetensors(&e.merged)?),
                (
                    "adapter_model.safetensors".into(),
                    to_safetensors(&e.adapter)?,
                ),
                ("adapter_config.json".into(), config),
            ])
        }
        _ => Ok(vec![("model.safetensors".into(), to_safetensors(&params)?)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{BaseFormat, BaseTensor};
    use crate::config::LoraConfig;

    #[test]
    fn the_merge_adds_the_scaled_product_and_names_follow_peft() {
        let mut config = crate::fixtures::tiny_llama();
        config.lora = Some(LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec!["q_proj".into()],
        });
        let w: Vec<f32> = (0..6).map(|v| v as f32).collect(); // [3 out, 2 in]
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "model.layers.0.self_attn.q_proj.weight".to_string(),
            BaseTensor {
                shape: vec![3, 2],
                values: w.clone(),
            },
        );
        tensors.insert(
            "model.norm.weight".to_string(),
            BaseTensor {
                shape: vec![2],
                values: vec![1.0, 1.0],
            },
        );
        let base = BaseWeights {
            source: "base".into(),
            hash: snapshot_format::Hash32::ZERO,
            format: BaseFormat::Safetensors,
            tensors,
            metadata: BTreeMap::new(),
        };
        let a = [1.0f32, 2.0, 3.0, 4.0]; // [2 rank, 2 in]
        let b = [1.0f32, 0.0, 0.0, 1.0, 0.5, 0.5]; // [3 out, 2 rank]
        let trained = vec![
            (
                "model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
                vec![2, 2],
                le_bytes(&a),
            ),
            (
                "model.layers.0.self_attn.q_proj.lora_B.weight".to_string(),
                vec![3, 2],
                le_bytes(&b),
            ),
        ];
        let e = lora_export(&config, &base, "pin", &trained).expect("export");
        // B A = [[1, 2], [3, 4], [2, 3]], scaled by alpha / rank = 2.
        let q = &e
            .merged
            .iter()
            .find(|t| t.0.ends_with("q_proj.weight"))
            .expect("q")
            .2;
        assert_eq!(f32s(q), vec![2.0, 5.0, 8.0, 11.0, 8.0, 11.0]);
        let norm = &e
            .merged
            .iter()
            .find(|t| t.0 == "model.norm.weight")
            .expect("norm")
            .2;
        assert_eq!(f32s(norm), vec![1.0, 1.0]);
        assert_eq!(
            e.adapter[0].0,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(e.adapter_config["r"], 2);
        assert_eq!(e.adapter_config["target_modules"][0], "q_proj");
    }
}
