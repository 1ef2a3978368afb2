//! `[optimizer]` and `[schedule]`.

use serde::{Deserialize, Serialize};

use super::fields::{finite_positive, probability};

/// AdamW with decoupled weight decay (PyTorch's semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamwSpec {
    pub lr: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient L2 norm to this value.
    #[serde(default)]
    pub grad_clip: Option<f64>,
}
/// SGD with momentum (PyTorch's semantics: no dampening, L2 weight decay in the gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdSpec {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub grad_clip: Option<f64>,
}
/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerSpec {
    Adamw(AdamwSpec),
    Sgd(SgdSpec),
}
impl OptimizerSpec {
    /// Names of the state tensors of `param` under `spec`, as stored in snapshots.
    pub fn slot_names(&self, param: &str) -> Vec<String> {
        match self {
            OptimizerSpec::Adamw(_) => vec![
                format!("optimizer.exp_avg.{param}"),
                format!("optimizer.exp_avg_sq.{param}"),
            ],
            OptimizerSpec::Sgd(g) if g.momentum > 0.0 => {
                vec![format!("optimizer.momentum_buffer.{param}")]
            }
            OptimizerSpec::Sgd(_) => vec![],
        }
    }

    /// Peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Adamw(a) => a.lr,
            OptimizerSpec::Sgd(g) => g.lr,
        }
    }
    /// Gradient clipping threshold, if any.
    pub fn grad_clip(&self) -> Option<f64> {
        match self {
            OptimizerSpec::Adamw(a) => a.grad_clip,
            OptimizerSpec::Sgd(g) => g.grad_clip,
        }
    }
}
/// Shape of the learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Constant,
    Linear,
    Cosine,
}
/// `[schedule]`: linear warm-up, then constant, linear or cosine decay to `min_lr_ratio × lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub decay: Decay,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub min_lr_ratio: f64,
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.01
}
pub(super) fn validate_optimizer(o: &OptimizerSpec) -> std::result::Result<(), String> {
    finite_positive("optimizer.lr", o.lr())?;
    if let Some(c) = o.grad_clip() {
        finite_positive("optimizer.grad_clip", c)?;
    }
    match o {
        OptimizerSpec::Adamw(a) => {
            probability("optimizer.beta1", a.beta1)?;
            probability("optimizer.beta2", a.beta2)?;
            finite_positive("optimizer.eps", a.eps)?;
            if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
                return Err("optimizer.weight_decay: must be finite and not negative".into());
            }
        }
        OptimizerSpec::Sgd(g) => {
            probability("optimizer.momentum", g.momentum)?;
            if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
                return Err("optimizer.weight_decay: must be finite and not negative".into());
            }
        }
    }
    Ok(())
}
