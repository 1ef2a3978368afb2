//! Greedy generation with a Llama base model read from a GGUF file: the model's own tokenizer
//! and chat template, the engine's forward pass (with a key-value cache). It serves to prove the
//! forward pass against an independent implementation (`examples/smollm2/reference.py`
//! compares the logits and the generated tokens) and to look at what a base model says.

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::backend::Cpu;
use crate::base::BaseWeights;
use crate::chat::{ChatTokenizer, Message};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::model::llama::{KvCache, Llama};

/// What one prompt produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// Token ids of the rendered prompt.
    pub prompt_tokens: Vec<u32>,
    /// Token ids generated after it (up to and including a stop token).
    pub tokens: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Logits of every prompt position (`[prompt_tokens.len(), vocab]`, row-major), computed in
    /// one pass without the cache (empty unless asked for).
    #[serde(skip)]
    pub prompt_logits: Vec<f32>,
}

/// The architecture a GGUF file describes, as a Llama configuration without adapters.
pub fn llama_config(base: &BaseWeights) -> Result<LlamaConfig> {
    let hp = crate::chat::gguf_hyperparameters(base);
    let get = |field: &str| {
        hp.get(field).copied().ok_or_else(|| Error::BaseModel {
            path: base.source.clone(),
            detail: format!("the GGUF metadata does not give the model's {field}"),
        })
    };
    Ok(LlamaConfig {
        vocab_size: get("vocab_size")? as u64,
        hidden_size: get("hidden_size")? as u64,
        intermediate_size: get("intermediate_size")? as u64,
        num_layers: get("num_layers")? as u64,
        num_heads: get("num_heads")? as u64,
        num_kv_heads: get("num_kv_heads")? as u64,
        max_position: get("max_position")? as u64,
        rope_theta: get("rope_theta")?,
        rms_norm_eps: get("rms_norm_eps")?,
        tie_word_embeddings: base.get("lm_head.weight").is_none(),
        pad_token_id: 0,
        init_std: 0.02,
        lora: None,
    })
}

/// The model of `config` with every parameter from `base` (shapes must match; none may be
/// missing).
pub fn load(config: &LlamaConfig, base: &BaseWeights) -> Result<Llama<Cpu>> {
    type M = Llama<Cpu>;
    let device = burn::backend::flex::FlexDevice;
    let model = <M as TrainableModel<Cpu>>::build(config, &device);
    let namer = <M as TrainableModel<Cpu>>::canonical_name;
    for (name, shape) in crate::params::list::<Cpu, M>(&model, namer) {
        match base.get(&name) {
            Some((_, t)) if t.shape == shape => {}
            Some((key, t)) => {
                return Err(Error::BaseModel {
                    path: base.source.clone(),
                    detail: format!(
                        "tensor {key:?} has shape {:?}; the model's {name:?} is {shape:?}",
                        t.shape
                    ),
                });
            }
            None => {
                return Err(Error::BaseModel {
                    path: base.source.clone(),
                    detail: format!("no tensor for the model's {name:?}"),
                });
            }
        }
    }
    Ok(crate::params::replace::<Cpu, M, _>(
        model,
        namer,
        &|_| false,
        |name, current| {
            let values = base
                .get(name)
                .map(|(_, t)| t.values.clone())
                .unwrap_or_default();
            Tensor::from_data(TensorData::new(values, current.dims()), &device)
        },
    ))
}

/// Seeded sampling instead of greedy choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Seed of the sampling stream.
    pub seed: u64,
}

/// Purpose of the sampling stream; its index is the position of the generated token.
pub const SAMPLING_STREAM: &str = "generate/sample";

/// The index of the largest value (the lowest index among equal ones).
pub fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0 as u32
}

/// A token drawn from `softmax(row / temperature)`: weights `exp((l − max) / T)` in `f64`
/// (`libm`), summed in index order; `u` uniform in [0, 1) from 53 bits of the stream
/// `(seed, SAMPLING_STREAM, position)`; the first index whose running sum exceeds `u · total`.
/// Defined by the logits' bits and the seed alone.
pub fn sample(row: &[f32], s: Sampling, position: u64) -> u32 {
    use rand_core::Rng;
    let max = f64::from(row[argmax(row) as usize]);
    let weights: Vec<f64> = row
        .iter()
        .map(|&l| libm::exp((f64::from(l) - max) / s.temperature))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut rng = crate::rng::stream(s.seed, SAMPLING_STREAM, position);
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0);
    let target = u * total;
    let mut sum = 0.0;
    for (i, w) in weights.iter().enumerate() {
        sum += w;
        if sum > target {
            return i as u32;
        }
    }
    argmax(row)
}

fn ids_tensor<B: Backend>(t: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = t.iter().map(|&i| i64::from(i)).collect();
    Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, t.len()]), device)
}

fn device_of<B: Backend>(model: &Llama<B>) -> B::Device {
    use burn::module::Module;
    model.devices().into_iter().next().unwrap_or_default()
}

fn host<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    logits.into_data().to_vec().unwrap_or_default()
}

/// The model for inference: on the backend without autodiff. Forward passes on the training
/// backend would register every operation in autodiff's graph, which nothing ever frees without
/// a backward pass (measured: 17 GB and hours for 64 greedy generations of SmolLM2-135M); the
/// inner backend computes the same operations on the same values, without the graph.
pub fn inference(model: &Llama<Cpu>) -> Llama<burn::backend::Flex> {
    model.valid()
}

/// Logits of every position of `prompt` (`[len, vocab]`, row-major), in one pass without the
/// cache.
pub fn prompt_logits<B: Backend>(model: &Llama<B>, prompt: &[u32]) -> Vec<f32> {
    host(model.logits(ids_tensor(prompt, &device_of(model)), None))
}

/// Decoding of `prompt` (token ids) with the key-value cache: at each step the token of the
/// largest logit (greedy), or one drawn by `sampling`, until `max_new` tokens or a token of
/// `stop`.
pub fn decode<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    sampling: Option<Sampling>,
) -> Vec<u32> {
    let device = &device_of(model);
    let mut cache = KvCache::default();
    let mut last = host(model.logits(ids_tensor(prompt, device), Some(&mut cache)));
    let vocab = last.len() / prompt.len().max(1);
    let mut out = Vec::new();
    while out.len() < max_new {
        let row = &last[last.len() - vocab..];
        let next = match sampling {
            None => argmax(row),
            Some(s) => sample(row, s, (prompt.len() + out.len()) as u64),
        };
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        last = host(model.logits(ids_tensor(&[next], device), Some(&mut cache)));
    }
    out
}

/// How [`generate`] works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens per prompt.
    pub max_new_tokens: usize,
    /// The prompt as plain text, without the chat template.
    pub raw: bool,
    /// Sample instead of choosing greedily.
    pub sampling: Option<Sampling>,
    /// Also compute the logits of every prompt position.
    pub with_logits: bool,
}

/// A LoRA adapter as PEFT writes it: `adapter_config.json` and `adapter_model.safetensors` in
/// `dir`.
#[derive(Debug)]
pub struct PeftAdapter {
    pub lora: crate::config::LoraConfig,
    pub tensors: Vec<crate::peft::NamedTensor>,
}

impl PeftAdapter {
    /// Read the adapter in `dir` (f32 tensors under PEFT's `base_model.model.` names).
    pub fn read(dir: &std::path::Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let bad = |name: &str, detail: String| Error::BaseModel {
            path: dir.join(name).display().to_string(),
            detail,
        };
        const CONFIG: &str = "adapter_config.json";
        const MODEL: &str = "adapter_model.safetensors";
        let c: serde_json::Value =
            serde_json::from_slice(&read(CONFIG)?).map_err(|e| bad(CONFIG, e.to_string()))?;
        if c["peft_type"] != "LORA" || c["use_dora"] == true || c["use_rslora"] == true {
            return Err(bad(
                CONFIG,
                "not a plain LoRA adapter (peft_type LORA, no DoRA, no rsLoRA)".into(),
            ));
        }
        let lora = crate::config::LoraConfig {
            rank: c["r"]
                .as_u64()
                .ok_or_else(|| bad(CONFIG, "no rank r".into()))?,
            alpha: c["lora_alpha"]
                .as_f64()
                .ok_or_else(|| bad(CONFIG, "no lora_alpha".into()))?,
            dropout: c["lora_dropout"].as_f64().unwrap_or(0.0),
            targets: serde_json::from_value(c["target_modules"].clone())
                .map_err(|e| bad(CONFIG, format!("target_modules: {e}")))?,
        };
        let bytes = read(MODEL)?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(MODEL, e.to_string()))?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let stem = name.strip_prefix(crate::peft::PEFT_PREFIX).ok_or_else(|| {
                bad(
                    MODEL,
                    format!("{name}: not under {}", crate::peft::PEFT_PREFIX),
                )
            })?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(
                    MODEL,
                    format!("{name} is {:?}; f32 adapters are read", view.dtype()),
                ));
            }
            tensors.push((
                stem.to_string(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        }
        Ok(PeftAdapter { lora, tensors })
    }
}

/// Generate a reply to each prompt with the GGUF model in `bytes` (named `source`), with
/// `adapter` merged into it when given: the prompt as a user message in the model's chat
/// template, or as plain text (`o.raw`); greedy, or drawn by `o.sampling`; with the prompt's
/// logits when `o.with_logits`.
pub fn generate(
    bytes: &[u8],
    source: &str,
    adapter: Option<&PeftAdapter>,
    prompts: &[String],
    o: &GenerateOptions,
) -> Result<Vec<Generation>> {
    let mut base = BaseWeights::parse(bytes, source)?;
    let tok = ChatTokenizer::from_gguf(&base)?;
    let mut config = llama_config(&base)?;
    if let Some(a) = adapter {
        config.lora = Some(a.lora.clone());
        let merged = crate::peft::lora_export(&config, &base, "", &a.tensors)?.merged;
        config.lora = None;
        for (name, _, bytes) in merged {
            if let Some(t) = base.tensors.get_mut(&name) {
                t.values = crate::peft::f32s(&bytes);
            }
        }
    }
    let model = inference(&load(&config, &base)?);
    let mut stop = vec![tok.eos];
    stop.extend(tok.token(crate::chat::IM_END));
    prompts
        .iter()
        .map(|p| {
            let prompt_tokens = if o.raw {
                tok.encode(p)?
            } else {
                let messages: Vec<Message> = crate::chat::user_prompt(p);
                tok.render(&messages, true)?.0
            };
            if prompt_tokens.is_empty() {
                return Err(Error::config("prompt", "an empty prompt has no tokens"));
            }
            let tokens = decode(&model, &prompt_tokens, o.max_new_tokens, &stop, o.sampling);
            let prompt_logits = if o.with_logits {
                prompt_logits(&model, &prompt_tokens)
            } else {
                Vec::new()
            };
            Ok(Generation {
                text: tok.decode(&tokens),
                prompt_tokens,
                tokens,
                prompt_logits,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_a_function_of_the_logits_and_the_seed() {
        let row: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let s = |seed, temperature| Sampling { temperature, seed };
        let draw = |seed, t| {
            (0..40)
                .map(|p| sample(&row, s(seed, t), p))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1, 1.0), draw(1, 1.0));
        assert_ne!(draw(1, 1.0), draw(2, 1.0));
        // A tiny temperature leaves only the tokens of the largest logit (tied here).
        let top = row[argmax(&row) as usize];
        assert!(draw(3, 1e-6).iter().all(|&t| row[t as usize] == top));
        // At temperature 1 the draws spread over several tokens.
        let distinct: std::collections::BTreeSet<u32> = draw(4, 1.0).into_iter().collect();
        assert!(distinct.len() > 3, "{distinct:?}");
    }
}
