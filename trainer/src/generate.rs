//! Greedy generation with a Llama base model read from a GGUF file: the model's own tokenizer
//! and chat template, the engine's forward pass (with a key-value cache). It serves to prove the
//! forward pass against an independent implementation (`examples/smollm2/reference.py`
//! compares the logits and the generated tokens) and to look at what a base model says.

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
    /// one pass without the cache.
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

/// Greedy decoding of `prompt` (token ids): at each step the token of the largest logit (the
/// lowest id among equal ones), until `max_new` tokens or a token of `stop`.
pub fn greedy(
    model: &Llama<Cpu>,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> (Vec<u32>, Vec<f32>) {
    let device = burn::backend::flex::FlexDevice;
    let ids = |t: &[u32]| {
        let v: Vec<i64> = t.iter().map(|&i| i64::from(i)).collect();
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(v, [1, t.len()]), &device)
    };
    let rows =
        |logits: Tensor<Cpu, 3>| -> Vec<f32> { logits.into_data().to_vec().unwrap_or_default() };
    let prompt_logits = rows(model.logits(ids(prompt), None));
    let vocab = prompt_logits.len() / prompt.len().max(1);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            })
            .0 as u32
    };
    let mut cache = KvCache::default();
    let mut last = rows(model.logits(ids(prompt), Some(&mut cache)));
    let mut out = Vec::new();
    while out.len() < max_new {
        let next = argmax(&last[last.len() - vocab..]);
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        last = rows(model.logits(ids(&[next]), Some(&mut cache)));
    }
    (out, prompt_logits)
}

/// Generate a reply to each prompt with the GGUF model in `bytes` (named `source`): the prompt
/// as a user message in the model's chat template, or as plain text with `raw`.
pub fn generate(
    bytes: &[u8],
    source: &str,
    prompts: &[String],
    max_new: usize,
    raw: bool,
) -> Result<Vec<Generation>> {
    let base = BaseWeights::parse(bytes, source)?;
    let tok = ChatTokenizer::from_gguf(&base)?;
    let config = llama_config(&base)?;
    let model = load(&config, &base)?;
    let mut stop = vec![tok.eos];
    stop.extend(tok.token(crate::chat::IM_END));
    prompts
        .iter()
        .map(|p| {
            let prompt_tokens = if raw {
                tok.encode(p)?
            } else {
                let messages: Vec<Message> = crate::chat::user_prompt(p);
                tok.render(&messages, true)?.0
            };
            if prompt_tokens.is_empty() {
                return Err(Error::config("prompt", "an empty prompt has no tokens"));
            }
            let (tokens, prompt_logits) = greedy(&model, &prompt_tokens, max_new, &stop);
            Ok(Generation {
                text: tok.decode(&tokens),
                prompt_tokens,
                tokens,
                prompt_logits,
            })
        })
        .collect()
}
