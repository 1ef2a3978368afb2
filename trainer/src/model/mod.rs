//! The model abstraction, host-drawn dropout, initialisation rules, and the built-in models.
//!
//! A model is any burn [`Module`](burn::module::Module) that also implements
//! [`TrainableModel`]: it builds itself with placeholder values, computes the mean loss of a
//! batch, and names an initialisation rule per parameter. The engine does the rest: it gives
//! every parameter its value (from base weights or from the host's random streams), runs the
//! optimizer, and captures, hashes and restores the full state by canonical parameter names.
//!
//! Canonical names are burn's module paths joined with `.`, with one trailing `_` removed from
//! each component, so that a field named `self_` (Rust keywords cannot be field names) yields
//! the Hugging Face name `self`.
//!
//! Models must not use burn's random operations (`Tensor::random`, `nn::Dropout`): those draw
//! from backend state that cannot be recorded. Use [`Dropout`] instead.

pub mod bert;
pub mod kind;
pub mod layers;
pub mod llama;
pub mod mlp;
pub mod registry;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

use crate::rng;

/// Inputs of one batch, on the device.
#[derive(Debug, Clone)]
pub enum BatchInput<B: Backend> {
    /// Token ids `[batch, seq]` and an attention mask `[batch, seq]` (1 for tokens, 0 for padding).
    Tokens {
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2>,
    },
    /// Numeric features `[batch, features]`.
    Features(Tensor<B, 2>),
    /// Language-model sequences: token ids `[batch, seq]`, attention mask `[batch, seq]` (1 for
    /// tokens, 0 for padding), and loss mask `[batch, seq]` (1 where the token is a target,
    /// predicted from the positions before it).
    Lm {
        ids: Tensor<B, 2, Int>,
        attention: Tensor<B, 2>,
        loss: Tensor<B, 2>,
    },
}

/// One batch: inputs and one-hot targets `[batch, classes]`.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    pub input: BatchInput<B>,
    pub targets: Tensor<B, 2>,
    pub size: usize,
}

/// Dropout whose masks are drawn on the host from the step's `dropout` stream, in the order the
/// forward pass asks for them, then uploaded. Disabled, it is the identity.
#[derive(Debug)]
pub struct Dropout {
    rng: Option<ChaCha8Rng>,
}

impl Dropout {
    /// Dropout for training step `step` of a run with `master_seed`.
    pub fn for_step(master_seed: u64, step: u64) -> Self {
        Dropout {
            rng: Some(rng::stream(master_seed, rng::purpose::DROPOUT, step)),
        }
    }

    /// Dropout for part `part` of training step `step`, when the step's batch is cut into
    /// micro-batches: each part has its own stream, whoever computes it.
    pub fn for_micro_batch(master_seed: u64, step: u64, part: usize) -> Self {
        Dropout {
            rng: Some(rng::stream(
                master_seed,
                &format!("{}{part}", rng::purpose::DROPOUT_PART_PREFIX),
                step,
            )),
        }
    }

    /// No dropout (evaluation).
    pub fn disabled() -> Self {
        Dropout { rng: None }
    }

    /// Zero each element with probability `p` and scale the others by `1 / (1 − p)`. An element
    /// is dropped when the next `u32` of the stream is below `⌊p · 2^32⌋`; elements are visited
    /// in row-major order.
    pub fn apply<B: Backend, const D: usize>(&mut self, x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
        let Some(rng) = self.rng.as_mut() else {
            return x;
        };
        if p <= 0.0 {
            return x;
        }
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let threshold = (p * 4_294_967_296.0) as u64;
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if u64::from(rng.next_u32()) < threshold {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        let mask = Tensor::<B, D>::from_data(TensorData::new(mask, dims), &x.device());
        x * mask
    }
}

/// How a parameter absent from the base weights is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Approximately normal with this standard deviation (see [`rng::standard_normal`]), drawn
    /// from the stream `init/<canonical name>`.
    Normal {
        std: f64,
    },
    /// Uniform in `[−bound, bound)`: `(2u − 1) · bound` in `f32` with `u` from
    /// [`rng::uniform`], drawn from the stream `init/<canonical name>`.
    Uniform {
        bound: f64,
    },
}

/// The usual rule: biases zero, layer-norm gains one, other weights normal(0, `std`).
pub fn default_init(name: &str, std: f64) -> Init {
    if name.ends_with("bias") || name.ends_with(".beta") {
        Init::Zeros
    } else if name.ends_with("LayerNorm.weight")
        || name.ends_with("norm.weight")
        || name.ends_with(".gamma")
    {
        Init::Ones
    } else {
        Init::Normal { std }
    }
}

/// Host values of a parameter initialised by `rule`.
pub fn init_values(rule: Init, master_seed: u64, name: &str, n: usize) -> Vec<f32> {
    match rule {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal { std } => {
            let mut r = rng::stream(
                master_seed,
                &format!("{}{name}", rng::purpose::INIT_PREFIX),
                0,
            );
            let std = std as f32;
            (0..n).map(|_| rng::standard_normal(&mut r) * std).collect()
        }
        Init::Uniform { bound } => {
            let mut r = rng::stream(
                master_seed,
                &format!("{}{name}", rng::purpose::INIT_PREFIX),
                0,
            );
            let bound = bound as f32;
            (0..n)
                .map(|_| (rng::uniform(&mut r) * 2.0 - 1.0) * bound)
                .collect()
        }
    }
}

/// A model the engine can train, record and replay.
///
/// `Self` is the autodiff version of a burn module (`MyModel<B>` with `B: AutodiffBackend`).
/// See `trainer/examples/custom_model.rs` for a complete example.
pub trait TrainableModel<B: AutodiffBackend>: AutodiffModule<B> + Sized {
    /// Hyper-parameters of the architecture.
    type Config: Clone;

    /// Build the module with placeholder parameter values (zeros are fine): the engine replaces
    /// every parameter before training.
    fn build(config: &Self::Config, device: &B::Device) -> Self;

    /// Mean loss of the batch, a tensor of shape `[1]`. All randomness must come from `dropout`.
    fn loss(&self, batch: &Batch<B>, dropout: &mut Dropout) -> Tensor<B, 1>;

    /// Initialisation rule of the parameter with canonical name `name`, used when the base
    /// weights do not provide it.
    fn init_rule(config: &Self::Config, name: &str) -> Init;

    /// Whether the parameter with canonical name `name` is trained. Frozen parameters (a base
    /// model under adapters) take their values from the base weights (or their initialisation
    /// rule), get no gradient and no optimizer state, and are not part of the training state:
    /// the base model's pin commits to them.
    fn trainable(config: &Self::Config, name: &str) -> bool {
        let _ = (config, name);
        true
    }

    /// Canonical name of the parameter at burn module path `path` (field names and `Vec`
    /// indices, outermost first). The default joins them with `.`, dropping one trailing `_`
    /// from each component.
    fn canonical_name(path: &[String]) -> String {
        default_canonical_name(path)
    }
}

/// The default canonical name: components joined with `.`, each without one trailing `_`.
pub fn default_canonical_name(path: &[String]) -> String {
    path.iter()
        .map(|p| p.strip_suffix('_').unwrap_or(p))
        .collect::<Vec<_>>()
        .join(".")
}
