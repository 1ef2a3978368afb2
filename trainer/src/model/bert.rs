//! A BERT-style encoder with a sequence-classification head. Parameter names and shapes are
//! those of Hugging Face's `BertForSequenceClassification` (`bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.0.attention.self.query.weight` `[out, in]`, …, `classifier.weight`), so
//! BERT and MiniLM checkpoints load into it; checkpoints of a bare `BertModel` (no `bert.` prefix)
//! load too.

use burn::module::Module;
use burn::tensor::activation;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

use super::layers::{Embedding, LayerNorm, Linear, cross_entropy, softmax_last};
use super::{Batch, BatchInput, Dropout, Init, TrainableModel, default_init};
use serde::{Deserialize, Serialize};

use super::kind::{ModelKind, linear_parameters};
use crate::config::fields::{
    default_dropout, default_init_std, finite_positive, positive, probability,
};

/// A BERT-style encoder with a classification head. Parameter names and shapes follow Hugging
/// Face's `BertForSequenceClassification`, so a BERT or MiniLM `model.safetensors` loads into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub intermediate_size: u64,
    pub max_position: u64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: u64,
    pub num_labels: u64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout: f64,
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}
fn default_type_vocab() -> u64 {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}

impl ModelKind for BertConfig {
    fn validate(&self) -> Result<(), String> {
        let b = self;
        for (k, v) in [
            ("model.vocab_size", b.vocab_size),
            ("model.hidden_size", b.hidden_size),
            ("model.num_layers", b.num_layers),
            ("model.num_heads", b.num_heads),
            ("model.intermediate_size", b.intermediate_size),
            ("model.max_position", b.max_position),
            ("model.type_vocab_size", b.type_vocab_size),
        ] {
            positive(k, v)?;
        }
        if b.num_labels < 2 {
            return Err("model.num_labels: must be at least 2".into());
        }
        if !b.hidden_size.is_multiple_of(b.num_heads) {
            return Err("model.hidden_size: must be a multiple of model.num_heads".into());
        }
        if b.vocab_size < 5 {
            return Err(
                "model.vocab_size: must be at least 5 (four special tokens and one word)".into(),
            );
        }
        probability("model.hidden_dropout", b.hidden_dropout)?;
        probability("model.attention_dropout", b.attention_dropout)?;
        finite_positive("model.layer_norm_eps", b.layer_norm_eps)?;
        finite_positive("model.init_std", b.init_std)
    }

    fn num_labels(&self) -> u64 {
        self.num_labels
    }

    fn vocab_size(&self) -> Option<u64> {
        Some(self.vocab_size)
    }

    fn parameter_count(&self) -> Option<u128> {
        let c = self;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let embeddings = u128::from(c.vocab_size + c.max_position + c.type_vocab_size)
            * u128::from(h)
            + 2 * u128::from(h);
        let layer = 4 * linear_parameters(h, h)
            + linear_parameters(h, i)
            + linear_parameters(i, h)
            + 4 * u128::from(h);
        Some(
            embeddings
                + u128::from(c.num_layers) * layer
                + linear_parameters(h, h)
                + linear_parameters(h, c.num_labels),
        )
    }
}

/// Added to attention scores at padding positions.
const MASKED: f32 = -10_000.0;

#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
}

#[derive(Module, Debug)]
pub struct AttentionOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Named `self` in Hugging Face checkpoints.
    pub self_: SelfAttention<B>,
    pub output: AttentionOutput<B>,
}

#[derive(Module, Debug)]
pub struct Intermediate<B: Backend> {
    pub dense: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Output<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub attention: Attention<B>,
    pub intermediate: Intermediate<B>,
    pub output: Output<B>,
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layer: Vec<Layer<B>>,
}

#[derive(Module, Debug)]
pub struct Pooler<B: Backend> {
    pub dense: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub encoder: Encoder<B>,
    pub pooler: Pooler<B>,
}

/// The classifier: encoder, pooler, dropout, linear head.
#[derive(Module, Debug)]
pub struct BertClassifier<B: Backend> {
    pub bert: Bert<B>,
    pub classifier: Linear<B>,
    pub num_heads: usize,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
}

impl<B: Backend> BertClassifier<B> {
    /// All parameters as placeholders.
    pub fn zeros(c: &BertConfig, device: &B::Device) -> Self {
        let h = c.hidden_size as usize;
        let i = c.intermediate_size as usize;
        let eps = c.layer_norm_eps;
        let layer = || Layer {
            attention: Attention {
                self_: SelfAttention {
                    query: Linear::zeros(h, h, device),
                    key: Linear::zeros(h, h, device),
                    value: Linear::zeros(h, h, device),
                },
                output: AttentionOutput {
                    dense: Linear::zeros(h, h, device),
                    layer_norm: LayerNorm::new(h, eps, device),
                },
            },
            intermediate: Intermediate {
                dense: Linear::zeros(h, i, device),
            },
            output: Output {
                dense: Linear::zeros(i, h, device),
                layer_norm: LayerNorm::new(h, eps, device),
            },
        };
        BertClassifier {
            bert: Bert {
                embeddings: Embeddings {
                    word_embeddings: Embedding::zeros(c.vocab_size as usize, h, device),
                    position_embeddings: Embedding::zeros(c.max_position as usize, h, device),
                    token_type_embeddings: Embedding::zeros(c.type_vocab_size as usize, h, device),
                    layer_norm: LayerNorm::new(h, eps, device),
                },
                encoder: Encoder {
                    layer: (0..c.num_layers).map(|_| layer()).collect(),
                },
                pooler: Pooler {
                    dense: Linear::zeros(h, h, device),
                },
            },
            classifier: Linear::zeros(h, c.num_labels as usize, device),
            num_heads: c.num_heads as usize,
            hidden_dropout: c.hidden_dropout,
            attention_dropout: c.attention_dropout,
        }
    }

    /// Logits `[batch, classes]` for token ids and attention mask `[batch, seq]`.
    pub fn logits(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2>,
        dropout: &mut Dropout,
    ) -> Tensor<B, 2> {
        let [b, s] = ids.dims();
        let emb = &self.bert.embeddings;
        let h = emb.word_embeddings.weight.dims()[1];
        let words = emb.word_embeddings.forward(ids);
        let positions = emb.position_embeddings.first_rows(s).reshape([1, s, h]);
        let token_type = emb.token_type_embeddings.first_rows(1).reshape([1, 1, h]);
        let mut x = emb.layer_norm.forward(words + positions + token_type);
        x = dropout.apply(x, self.hidden_dropout);

        // 0 where attended, MASKED at padding: [batch, 1, 1, seq].
        let additive = (mask.neg() + 1.0).mul_scalar(MASKED).reshape([b, 1, 1, s]);
        for layer in &self.bert.encoder.layer {
            x = self.layer_forward(layer, x, additive.clone(), dropout);
        }
        let cls = x.slice([0..b, 0..1, 0..h]).reshape([b, h]);
        let pooled = activation::tanh(self.bert.pooler.dense.forward(cls));
        let pooled = dropout.apply(pooled, self.hidden_dropout);
        self.classifier.forward(pooled)
    }

    fn layer_forward(
        &self,
        layer: &Layer<B>,
        x: Tensor<B, 3>,
        additive_mask: Tensor<B, 4>,
        dropout: &mut Dropout,
    ) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let nh = self.num_heads;
        let dh = h / nh;
        let att = &layer.attention.self_;
        let heads = |t: Tensor<B, 3>| t.reshape([b, s, nh, dh]).swap_dims(1, 2);
        let q = heads(att.query.forward(x.clone()));
        let k = heads(att.key.forward(x.clone()));
        let v = heads(att.value.forward(x.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt()) + additive_mask;
        let probs = dropout.apply(softmax_last(scores), self.attention_dropout);
        let context = probs.matmul(v).swap_dims(1, 2).reshape([b, s, h]);

        let out = &layer.attention.output;
        let attended = dropout.apply(out.dense.forward(context), self.hidden_dropout);
        let x = out.layer_norm.forward(attended + x);

        let inner = activation::gelu(layer.intermediate.dense.forward(x.clone()));
        let projected = dropout.apply(layer.output.dense.forward(inner), self.hidden_dropout);
        layer.output.layer_norm.forward(projected + x)
    }
}

impl<B: AutodiffBackend> TrainableModel<B> for BertClassifier<B> {
    type Config = BertConfig;

    fn build(config: &BertConfig, device: &B::Device) -> Self {
        Self::zeros(config, device)
    }

    fn loss(&self, batch: &Batch<B>, dropout: &mut Dropout) -> Tensor<B, 1> {
        match &batch.input {
            BatchInput::Tokens { ids, mask } => cross_entropy(
                self.logits(ids.clone(), mask.clone(), dropout),
                batch.targets.clone(),
            ),
            BatchInput::Features(_) | BatchInput::Lm { .. } => {
                unreachable!("the configuration check pairs bert with text")
            }
        }
    }

    fn init_rule(config: &BertConfig, name: &str) -> Init {
        default_init(name, config.init_std)
    }

    fn canonical_name(path: &[String]) -> String {
        path.iter()
            .map(|p| match p.as_str() {
                "layer_norm" => "LayerNorm",
                "self_" => "self",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}
