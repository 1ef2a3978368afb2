//! A Llama-architecture decoder (`LlamaForCausalLM` in Hugging Face's names and shapes), with
//! optional LoRA adapters on its projections, trained with next-token cross-entropy on the
//! targets of each sequence.
//!
//! Per layer: `x + attention(rms_norm(x))`, then `x + mlp(rms_norm(x))`; attention with rotary
//! position embeddings (Hugging Face's "rotate half" layout, frequencies `θ^(−2i/d)`),
//! grouped-query key-value heads and a causal mask; the MLP `down(silu(gate(x)) · up(x))`; a
//! final RMS norm and the output projection (the embedding matrix when tied). The rotary table
//! is computed on the host in `f64` with `libm`, so it is the same everywhere.

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData, activation};

use crate::model::layers::{Embedding, softmax_last};
use crate::model::{Batch, BatchInput, Dropout, Init, TrainableModel, default_init};
use serde::{Deserialize, Serialize};

use super::kind::ModelKind;
use crate::config::fields::{default_init_std, finite_positive, positive, probability};

/// A Llama-architecture decoder (Llama, Mistral, Qwen-style, SmolLM), trained with next-token
/// cross-entropy. Parameter names and shapes follow Hugging Face's `LlamaForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    /// Key-value heads (grouped-query attention); `num_heads` for plain multi-head attention.
    pub num_kv_heads: u64,
    /// Positions the rotary embedding is defined for.
    pub max_position: u64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// The output projection is the embedding matrix (no `lm_head.weight`).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Token that fills sequences up to `data.max_len` (never a target, never attended to).
    #[serde(default)]
    pub pad_token_id: u64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Train low-rank adapters on these projections, the base frozen.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}
/// Low-rank adaptation (LoRA, as PEFT defines it): `W x + (alpha / rank) · B A dropout(x)` on
/// each target projection, `A` `[rank, in]` drawn uniform in `±1/√in`, `B` `[out, rank]`
/// zero; only `A` and `B` are trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: u64,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Among `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`.
    pub targets: Vec<String>,
}
/// Projections LoRA can adapt.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
impl LlamaConfig {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_heads.max(1)
    }

    /// `(name, in, out)` of the projections of one layer.
    pub fn projections(&self) -> [(&'static str, u64, u64); 7] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_kv_heads * self.head_dim();
        [
            ("q_proj", h, h),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", h, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]
    }
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl ModelKind for LlamaConfig {
    fn validate(&self) -> Result<(), String> {
        let l = self;
        for (k, v) in [
            ("model.vocab_size", l.vocab_size),
            ("model.hidden_size", l.hidden_size),
            ("model.intermediate_size", l.intermediate_size),
            ("model.num_layers", l.num_layers),
            ("model.num_heads", l.num_heads),
            ("model.num_kv_heads", l.num_kv_heads),
            ("model.max_position", l.max_position),
        ] {
            positive(k, v)?;
        }
        if !l.hidden_size.is_multiple_of(l.num_heads) || !l.head_dim().is_multiple_of(2) {
            return Err("model.hidden_size: must be num_heads times an even head dimension".into());
        }
        if !l.num_heads.is_multiple_of(l.num_kv_heads) {
            return Err("model.num_kv_heads: must divide model.num_heads".into());
        }
        if l.pad_token_id >= l.vocab_size {
            return Err("model.pad_token_id: must be below model.vocab_size".into());
        }
        finite_positive("model.rope_theta", l.rope_theta)?;
        finite_positive("model.rms_norm_eps", l.rms_norm_eps)?;
        finite_positive("model.init_std", l.init_std)?;
        if let Some(lora) = &l.lora {
            positive("model.lora.rank", lora.rank)?;
            finite_positive("model.lora.alpha", lora.alpha)?;
            probability("model.lora.dropout", lora.dropout)?;
            if lora.targets.is_empty() {
                return Err("model.lora.targets: name at least one projection".into());
            }
            if let Some(t) = lora
                .targets
                .iter()
                .find(|t| !LORA_TARGETS.contains(&t.as_str()))
            {
                return Err(format!(
                    "model.lora.targets: {t:?} is not one of {LORA_TARGETS:?}"
                ));
            }
        }
        Ok(())
    }

    fn num_labels(&self) -> u64 {
        0
    }

    fn vocab_size(&self) -> Option<u64> {
        Some(self.vocab_size)
    }

    fn is_language_model(&self) -> bool {
        true
    }

    fn parameter_count(&self) -> Option<u128> {
        let c = self;
        let (v, h) = (u128::from(c.vocab_size), u128::from(c.hidden_size));
        let per_layer: u128 = c
            .projections()
            .iter()
            .map(|&(_, i, o)| u128::from(i) * u128::from(o))
            .sum::<u128>()
            + 2 * h;
        let head = if c.tie_word_embeddings { 0 } else { v * h };
        Some(v * h + u128::from(c.num_layers) * per_layer + h + head)
    }

    /// Under LoRA only the adapters are trained (the base stays frozen, pinned by the base
    /// model's hash).
    fn state_parameter_count(&self) -> Option<u128> {
        match &self.lora {
            Some(l) => Some(
                self.projections()
                    .iter()
                    .filter(|(name, _, _)| l.targets.iter().any(|t| t == name))
                    .map(|&(_, i, o)| u128::from(l.rank) * u128::from(i + o))
                    .sum::<u128>()
                    * u128::from(self.num_layers),
            ),
            None => self.parameter_count(),
        }
    }
}

/// Additive mask value of positions a query may not attend to.
const MASKED: f32 = -1e9;

/// Root-mean-square normalisation over the last dimension with gain `weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps,
        }
    }

    /// `x / sqrt(mean(x²) + eps) · weight`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let ms = (x.clone() * x.clone()).mean_dim(D - 1);
        let mut shape = [1usize; D];
        shape[D - 1] = self.weight.dims()[0];
        x / (ms + self.eps).sqrt() * self.weight.val().reshape(shape)
    }
}

/// One matrix of a LoRA adapter (`lora_A` or `lora_B`).
#[derive(Module, Debug)]
pub struct LoraMatrix<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

/// A projection `x Wᵀ` without bias (`W` `[out, in]`), with an optional LoRA adapter.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub lora_a: Option<LoraMatrix<B>>,
    pub lora_b: Option<LoraMatrix<B>>,
}

/// How a layer's LoRA adapters act: their scale `alpha / rank` and input dropout.
#[derive(Debug, Clone, Copy)]
struct LoraScale {
    scale: f32,
    dropout: f64,
}

impl<B: Backend> Projection<B> {
    fn new(d_in: usize, d_out: usize, rank: Option<usize>, device: &B::Device) -> Self {
        let matrix = |rows, cols| LoraMatrix {
            weight: Param::from_tensor(Tensor::zeros([rows, cols], device)),
        };
        Projection {
            weight: Param::from_tensor(Tensor::zeros([d_out, d_in], device)),
            lora_a: rank.map(|r| matrix(r, d_in)),
            lora_b: rank.map(|r| matrix(d_out, r)),
        }
    }

    /// Apply to `[rows, in]`: `x Wᵀ + scale · dropout(x) Aᵀ Bᵀ`.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        lora: Option<LoraScale>,
        drop: &mut Dropout,
    ) -> Tensor<B, 2> {
        let y = x.clone().matmul(self.weight.val().transpose());
        match (&self.lora_a, &self.lora_b, lora) {
            (Some(a), Some(b), Some(l)) => {
                let x = drop.apply(x, l.dropout);
                let delta = x
                    .matmul(a.weight.val().transpose())
                    .matmul(b.weight.val().transpose());
                y + delta.mul_scalar(l.scale)
            }
            _ => y,
        }
    }
}

/// Self-attention with grouped-query key-value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Projection<B>,
    pub k_proj: Projection<B>,
    pub v_proj: Projection<B>,
    pub o_proj: Projection<B>,
}

/// The gated MLP.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Projection<B>,
    pub up_proj: Projection<B>,
    pub down_proj: Projection<B>,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

/// The decoder stack.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// The output projection, when not tied to the embedding.
#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

/// `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub model: LlamaModel<B>,
    pub lm_head: Option<LmHead<B>>,
    num_heads: usize,
    num_kv_heads: usize,
    rope_theta: f64,
    lora_scale: f64,
    lora_dropout: f64,
}

/// Rotary tables `cos`, `sin` `[seq, head_dim]` for positions `start..start + seq`: angle
/// `p · θ^(−2i/d)` for `i < d/2`, repeated for the second half (Hugging Face's layout).
pub fn rope_tables(theta: f64, head_dim: usize, start: usize, seq: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for p in start..start + seq {
        let row: Vec<f64> = (0..half)
            .map(|i| p as f64 * libm::pow(theta, -((2 * i) as f64) / head_dim as f64))
            .collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|&a| libm::cos(a) as f32));
            sin.extend(row.iter().map(|&a| libm::sin(a) as f32));
        }
    }
    (cos, sin)
}

/// Key and value tensors of earlier positions, per layer (`[batch, kv_heads, past, head_dim]`),
/// for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> KvCache<B> {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.layers.first().map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> Llama<B> {
    /// Placeholder parameters for `c` (zeros; norms one).
    pub fn zeros(c: &LlamaConfig, device: &B::Device) -> Self {
        let (h, v) = (c.hidden_size as usize, c.vocab_size as usize);
        let lora_on = |name: &str| {
            c.lora
                .as_ref()
                .filter(|l| l.targets.iter().any(|t| t == name))
                .map(|l| l.rank as usize)
        };
        let proj = |name: &str| {
            let (_, i, o) = c
                .projections()
                .into_iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or((name, 0, 0));
            Projection::new(i as usize, o as usize, lora_on(name), device)
        };
        let layers = (0..c.num_layers)
            .map(|_| DecoderLayer {
                input_layernorm: RmsNorm::new(h, c.rms_norm_eps, device),
                self_attn: Attention {
                    q_proj: proj("q_proj"),
                    k_proj: proj("k_proj"),
                    v_proj: proj("v_proj"),
                    o_proj: proj("o_proj"),
                },
                post_attention_layernorm: RmsNorm::new(h, c.rms_norm_eps, device),
                mlp: Mlp {
                    gate_proj: proj("gate_proj"),
                    up_proj: proj("up_proj"),
                    down_proj: proj("down_proj"),
                },
            })
            .collect();
        Llama {
            model: LlamaModel {
                embed_tokens: Embedding::zeros(v, h, device),
                layers,
                norm: RmsNorm::new(h, c.rms_norm_eps, device),
            },
            lm_head: (!c.tie_word_embeddings).then(|| LmHead {
                weight: Param::from_tensor(Tensor::zeros([v, h], device)),
            }),
            num_heads: c.num_heads as usize,
            num_kv_heads: c.num_kv_heads as usize,
            rope_theta: c.rope_theta,
            lora_scale: c
                .lora
                .as_ref()
                .map(|l| l.alpha / l.rank as f64)
                .unwrap_or(0.0),
            lora_dropout: c.lora.as_ref().map(|l| l.dropout).unwrap_or(0.0),
        }
    }

    fn lora(&self) -> Option<LoraScale> {
        (self.lora_scale > 0.0).then_some(LoraScale {
            scale: self.lora_scale as f32,
            dropout: self.lora_dropout,
        })
    }

    /// Rotate `x` `[batch, heads, seq, d]` by the rotary tables `[1, 1, seq, d]`.
    fn rotate(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, n, s, d] = x.dims();
        let first = x.clone().slice([0..b, 0..n, 0..s, 0..d / 2]);
        let second = x.clone().slice([0..b, 0..n, 0..s, d / 2..d]);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * cos + rotated * sin
    }

    /// Hidden states `[batch, seq, hidden]` after the final norm, for token ids `[batch, seq]`
    /// at positions `cache.len()..`, with an additive attention mask `[batch, 1, seq,
    /// past + seq]`; the cache, when given, is extended with this step's keys and values.
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4>,
        mut cache: Option<&mut KvCache<B>>,
        drop: &mut Dropout,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let mut x = self.model.embed_tokens.forward(ids);
        let h = x.dims()[2];
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        let d = h / nh;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (cos, sin) = rope_tables(self.rope_theta, d, past, s);
        let table =
            |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, s, d]), &device);
        let (cos, sin) = (table(cos), table(sin));
        let lora = self.lora();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let normed = layer.input_layernorm.forward(x.clone()).reshape([b * s, h]);
            let att = &layer.self_attn;
            let heads = |t: Tensor<B, 2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
            let q = heads(att.q_proj.forward(normed.clone(), lora, drop), nh);
            let k = heads(att.k_proj.forward(normed.clone(), lora, drop), nkv);
            let v = heads(att.v_proj.forward(normed, lora, drop), nkv);
            let q = Self::rotate(q, cos.clone(), sin.clone());
            let mut k = Self::rotate(k, cos.clone(), sin.clone());
            let mut v = v;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = c.layers.get(i) {
                    k = Tensor::cat(vec![pk.clone(), k], 2);
                    v = Tensor::cat(vec![pv.clone(), v], 2);
                }
                if c.layers.len() > i {
                    c.layers[i] = (k.clone(), v.clone());
                } else {
                    c.layers.push((k.clone(), v.clone()));
                }
            }
            let total = k.dims()[2];
            // Each key-value head serves num_heads / num_kv_heads query heads.
            let repeat = |t: Tensor<B, 4>| {
                t.reshape([b, nkv, 1, total, d])
                    .repeat_dim(2, nh / nkv)
                    .reshape([b, nh, total, d])
            };
            let (k, v) = (repeat(k), repeat(v));
            let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt()) + mask.clone();
            let context = softmax_last(scores)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b * s, h]);
            let attended = att.o_proj.forward(context, lora, drop).reshape([b, s, h]);
            x = x + attended;
            let normed = layer
                .post_attention_layernorm
                .forward(x.clone())
                .reshape([b * s, h]);
            let gate = activation::silu(layer.mlp.gate_proj.forward(normed.clone(), lora, drop));
            let up = layer.mlp.up_proj.forward(normed, lora, drop);
            let down = layer.mlp.down_proj.forward(gate * up, lora, drop);
            x = x + down.reshape([b, s, h]);
        }
        self.model.norm.forward(x)
    }

    /// Logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    fn project(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val(),
        };
        x.matmul(w.transpose())
    }

    /// The causal mask `[batch, 1, seq, past + seq]` of queries at positions `past..past + seq`
    /// over keys `0..past + seq`, with keys where `attention` (`[batch, past + seq]`) is 0
    /// masked too.
    fn causal_mask(
        attention: &[f32],
        batch: usize,
        past: usize,
        seq: usize,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let total = past + seq;
        let mut m = vec![0f32; batch * seq * total];
        for bi in 0..batch {
            for qi in 0..seq {
                for ki in 0..total {
                    if ki > past + qi || attention[bi * total + ki] == 0.0 {
                        m[(bi * seq + qi) * total + ki] = MASKED;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [batch, 1, seq, total]), device)
    }

    /// Logits `[batch, seq, vocab]` of token ids `[batch, seq]` (all attended), without dropout,
    /// continuing `cache` (extended with these positions) when given.
    pub fn logits(&self, ids: Tensor<B, 2, Int>, cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mask = Self::causal_mask(&vec![1.0; b * (past + s)], b, past, s, &device);
        let x = self.hidden(ids, mask, cache, &mut Dropout::disabled());
        let h = x.dims()[2];
        let logits = self.project(x.reshape([b * s, h]));
        let v = logits.dims()[1];
        logits.reshape([b, s, v])
    }
}

/// Mean next-token cross-entropy over the targets: position `t` of each sequence predicts
/// token `t + 1` where the loss mask of `t + 1` is 1. `z = logits − max` (max detached),
/// `nll = log Σ exp z − z[target]`, the target picked by a one-hot product (no gather).
fn next_token_loss<B: Backend>(
    logits: Tensor<B, 3>,
    ids: Tensor<B, 2, Int>,
    loss: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    let n = b * (s - 1);
    let z = logits.slice([0..b, 0..s - 1, 0..v]).reshape([n, v]);
    let targets = ids.slice([0..b, 1..s]).reshape([n]);
    let weights = loss.slice([0..b, 1..s]).reshape([n, 1]);
    let m = z.clone().detach().max_dim(1);
    let z = z - m;
    let lse = z.clone().exp().sum_dim(1).log();
    let onehot = targets.one_hot::<2>(v).float();
    let picked = (z * onehot).sum_dim(1);
    let nll = (lse - picked) * weights.clone();
    let count = weights.sum_dim(0).reshape([1]);
    nll.sum_dim(0).reshape([1]) / count
}

impl<B: AutodiffBackend> TrainableModel<B> for Llama<B> {
    type Config = LlamaConfig;

    fn build(config: &LlamaConfig, device: &B::Device) -> Self {
        Self::zeros(config, device)
    }

    fn loss(&self, batch: &Batch<B>, dropout: &mut Dropout) -> Tensor<B, 1> {
        let BatchInput::Lm {
            ids,
            attention,
            loss,
        } = &batch.input
        else {
            unreachable!("the configuration check pairs llama with lm data")
        };
        let [b, s] = ids.dims();
        let device = ids.device();
        let att: Vec<f32> = attention.clone().into_data().to_vec().unwrap_or_default();
        let mask = Self::causal_mask(&att, b, 0, s, &device);
        let x = self.hidden(ids.clone(), mask, None, dropout);
        let h = x.dims()[2];
        let logits = self.project(x.reshape([b * s, h]));
        let v = logits.dims()[1];
        next_token_loss(logits.reshape([b, s, v]), ids.clone(), loss.clone())
    }

    fn init_rule(config: &LlamaConfig, name: &str) -> Init {
        if name.ends_with("lora_B.weight") {
            return Init::Zeros;
        }
        if name.ends_with("lora_A.weight") {
            // PEFT's default: Kaiming-uniform with a = √5, i.e. uniform in ±1/√in.
            let fan_in = config
                .projections()
                .iter()
                .find(|(p, _, _)| name.contains(&format!(".{p}.")))
                .map(|&(_, i, _)| i)
                .unwrap_or(1);
            return Init::Uniform {
                bound: 1.0 / (fan_in as f64).sqrt(),
            };
        }
        default_init(name, config.init_std)
    }

    fn trainable(config: &LlamaConfig, name: &str) -> bool {
        config.lora.is_none() || name.contains(".lora_")
    }

    fn canonical_name(path: &[String]) -> String {
        path.iter()
            .map(|p| match p.as_str() {
                "lora_a" => "lora_A",
                "lora_b" => "lora_B",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}
