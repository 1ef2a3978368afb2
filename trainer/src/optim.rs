//! Optimizers with state keyed by canonical parameter name, and the global gradient norm.
//!
//! Written here rather than taken from burn's optimizers because the state must be captured,
//! hashed and restored by stable names (burn keys it by `ParamId`s drawn from OS entropy), and
//! because every operation's order must be pinned. Scalars are computed in `f64` on the host and
//! rounded to `f32` once; tensor arithmetic is element-wise `f32`. The exact formulas are in
//! `specs/determinism.md`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::OptimizerSpec;
use crate::error::{Error, Result};
use crate::model::layers::sum_of_squares;
use crate::params::HostTensor;

/// Per-parameter optimizer state.
#[derive(Debug, Clone)]
enum Slots<B: Backend> {
    /// AdamW first and second moments.
    Adam { m: Tensor<B, 1>, v: Tensor<B, 1> },
    /// SGD momentum buffer.
    Momentum { buf: Tensor<B, 1> },
    /// Plain SGD keeps nothing.
    None,
}

/// An optimizer and its state for every parameter.
#[derive(Debug, Clone)]
pub struct Optimizer<B: Backend> {
    spec: OptimizerSpec,
    slots: BTreeMap<String, Slots<B>>,
}

impl<B: Backend> Optimizer<B> {
    /// Zero state for parameters of the given sizes.
    pub fn new(spec: &OptimizerSpec, params: &[(String, usize)], device: &B::Device) -> Self {
        let zeros = |n: usize| Tensor::<B, 1>::zeros([n], device);
        let slots = params
            .iter()
            .map(|(name, n)| {
                let s = match spec {
                    OptimizerSpec::Adamw(_) => Slots::Adam {
                        m: zeros(*n),
                        v: zeros(*n),
                    },
                    OptimizerSpec::Sgd(g) if g.momentum > 0.0 => Slots::Momentum { buf: zeros(*n) },
                    OptimizerSpec::Sgd(_) => Slots::None,
                };
                (name.clone(), s)
            })
            .collect();
        Optimizer {
            spec: spec.clone(),
            slots,
        }
    }

    /// State from host tensors: `lookup(name)` returns the stored tensor, which must have
    /// `n` elements.
    pub fn from_host(
        spec: &OptimizerSpec,
        params: &[(String, usize)],
        device: &B::Device,
        mut lookup: impl FnMut(&str, usize) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let mut opt = Self::new(spec, params, device);
        let mut load = |name: String, n: usize| -> Result<Tensor<B, 1>> {
            Ok(Tensor::from_data(
                TensorData::new(lookup(&name, n)?, [n]),
                device,
            ))
        };
        for (name, n) in params {
            let mut names = spec.slot_names(name).into_iter();
            let slot = opt.slots.get_mut(name).ok_or_else(|| Error::Run {
                store: String::new(),
                detail: format!("optimizer has no state for {name}"),
            })?;
            match slot {
                Slots::Adam { m, v } => {
                    *m = load(names.next().unwrap_or_default(), *n)?;
                    *v = load(names.next().unwrap_or_default(), *n)?;
                }
                Slots::Momentum { buf } => *buf = load(names.next().unwrap_or_default(), *n)?,
                Slots::None => {}
            }
        }
        Ok(opt)
    }

    /// AdamW's second moment of parameter `name` (none for other optimizers or other names).
    pub fn second_moment(&self, name: &str) -> Option<Tensor<B, 1>> {
        match self.slots.get(name)? {
            Slots::Adam { v, .. } => Some(v.clone()),
            _ => None,
        }
    }

    /// Host copies of the state tensors, with their snapshot names.
    pub fn to_host(&self) -> Vec<HostTensor> {
        let mut out = Vec::new();
        for (name, slot) in &self.slots {
            let names = self.spec.slot_names(name);
            let tensors: Vec<&Tensor<B, 1>> = match slot {
                Slots::Adam { m, v } => vec![m, v],
                Slots::Momentum { buf } => vec![buf],
                Slots::None => vec![],
            };
            for (n, t) in names.into_iter().zip(tensors) {
                out.push(HostTensor::from_tensor(n, t.clone()));
            }
        }
        out
    }

    /// Update `param` (flattened) with `grad` at learning rate `lr`, on step `step` (1-based).
    pub fn update(
        &mut self,
        name: &str,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        lr: f64,
        step: u64,
    ) -> Tensor<B, 1> {
        let Some(slot) = self.slots.get_mut(name) else {
            return param;
        };
        match (&self.spec, slot) {
            (OptimizerSpec::Adamw(a), Slots::Adam { m, v }) => {
                let t = step.min(i32::MAX as u64) as i32;
                let bc1 = 1.0 - a.beta1.powi(t);
                let bc2 = 1.0 - a.beta2.powi(t);
                let new_m = m.clone() * (a.beta1 as f32) + grad.clone() * ((1.0 - a.beta1) as f32);
                let new_v =
                    v.clone() * (a.beta2 as f32) + (grad.clone() * grad) * ((1.0 - a.beta2) as f32);
                let denom = new_v.clone().sqrt() / (bc2.sqrt() as f32) + (a.eps as f32);
                let decayed = param * ((1.0 - lr * a.weight_decay) as f32);
                let updated = decayed - (new_m.clone() / denom) * ((lr / bc1) as f32);
                *m = new_m;
                *v = new_v;
                updated
            }
            (OptimizerSpec::Sgd(sgd), slot) => {
                let mut g = grad;
                if sgd.weight_decay > 0.0 {
                    g = g + param.clone() * (sgd.weight_decay as f32);
                }
                if let Slots::Momentum { buf } = slot {
                    let new_buf = buf.clone() * (sgd.momentum as f32) + g;
                    *buf = new_buf.clone();
                    g = new_buf;
                }
                param - g * (lr as f32)
            }
            // The slots are built from the spec, so the pairs above are the only ones.
            (_, _) => param,
        }
    }
}

/// The largest change one AdamW step `step` (1-based) at learning rate `lr` can make to a
/// parameter element through its gradient, whatever the gradients were: `lr · |m̂ₜ| / √v̂ₜ`
/// is at most `lr · (1−β₁)/√(1−β₂) · √(Σ_{k<t} (β₁²/β₂)ᵏ) · √(1−β₂ᵗ)/(1−β₁ᵗ)` (Cauchy–Schwarz
/// over the moments' sums). Two executions whose gradients differ only by rounding can therefore
/// not drift apart by more than twice the sum of these over their steps, however the
/// normalisation amplifies a gradient that is zero up to rounding. `None` for SGD, whose
/// update has no such bound.
pub fn max_gradient_step(spec: &OptimizerSpec, lr: f64, step: u64) -> Option<f64> {
    let OptimizerSpec::Adamw(a) = spec else {
        return None;
    };
    let t = step.clamp(1, i32::MAX as u64) as i32;
    let r = a.beta1 * a.beta1 / a.beta2;
    let series = if (r - 1.0).abs() < f64::EPSILON {
        f64::from(t)
    } else {
        (1.0 - r.powi(t)) / (1.0 - r)
    };
    let ratio =
        (1.0 - a.beta1) / (1.0 - a.beta2).sqrt() * series.sqrt() * (1.0 - a.beta2.powi(t)).sqrt()
            / (1.0 - a.beta1.powi(t));
    Some(lr * ratio)
}

/// Global L2 norm of the gradients: each gradient's sum of squares by [`sum_of_squares`] on
/// the device, then `sqrt(Σ)` over parameters in the given order, in `f64` on the host.
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> f32 {
    if grads.is_empty() {
        return 0.0;
    }
    let sums: Vec<Tensor<B, 1>> = grads.iter().map(|g| sum_of_squares(g.clone())).collect();
    let host = Tensor::cat(sums, 0).into_data();
    let total: f64 = host.iter::<f32>().fold(0.0f64, |acc, x| acc + f64::from(x));
    total.sqrt() as f32
}

/// The factor gradients are multiplied by when clipping to `max_norm` (PyTorch's rule:
/// `max_norm / (norm + 1e-6)` when that is below 1), or `None` when no clipping applies.
pub fn clip_factor(norm: f32, max_norm: Option<f64>) -> Option<f32> {
    let max = max_norm?;
    let factor = max / (f64::from(norm) + 1e-6);
    (factor < 1.0).then_some(factor as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdamwSpec;

    fn adamw() -> OptimizerSpec {
        OptimizerSpec::Adamw(AdamwSpec {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.0,
            weight_decay: 0.0,
            grad_clip: None,
        })
    }

    #[test]
    fn no_gradient_sequence_moves_adamw_further_than_its_bound() {
        let spec = adamw();
        let OptimizerSpec::Adamw(a) = &spec else {
            unreachable!()
        };
        assert!((max_gradient_step(&spec, 1.0, 1).expect("adamw") - 1.0).abs() < 1e-12);
        // Gradient sequences, among them the worst case for the first moment: a long quiet
        // stretch, then a burst of one sign.
        let sequences: Vec<Vec<f64>> = vec![
            vec![1.0; 200],
            (0..200)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            (0..200)
                .map(|i| (0.77f64 * i as f64).sin() * 1e-9)
                .collect(),
            (0..200).map(|i| if i < 150 { 1e-6 } else { 1.0 }).collect(),
            (0..200).map(|i| 0.9f64.powi(200 - i)).collect(),
        ];
        for g in &sequences {
            let (mut m, mut v) = (0.0f64, 0.0f64);
            for (i, &gi) in g.iter().enumerate() {
                let t = i as u64 + 1;
                m = a.beta1 * m + (1.0 - a.beta1) * gi;
                v = a.beta2 * v + (1.0 - a.beta2) * gi * gi;
                let m_hat = m / (1.0 - a.beta1.powi(t as i32));
                let v_hat = v / (1.0 - a.beta2.powi(t as i32));
                if v_hat == 0.0 {
                    continue; // no gradient yet: no step
                }
                let step = m_hat.abs() / v_hat.sqrt();
                let bound = max_gradient_step(&spec, 1.0, t).expect("adamw");
                assert!(step <= bound * (1.0 + 1e-9), "t {t}: {step} > {bound}");
            }
        }
        let sgd = OptimizerSpec::Sgd(crate::config::SgdSpec {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            grad_clip: None,
        });
        assert_eq!(max_gradient_step(&sgd, 0.1, 3), None);
    }
}
