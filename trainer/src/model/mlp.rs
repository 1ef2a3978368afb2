//! A multi-layer perceptron classifier over numeric features: `layers.0 … layers.N`, ReLU and
//! dropout between layers.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::layers::{Linear, cross_entropy};
use super::{Batch, BatchInput, Dropout, Init, TrainableModel, default_init};
use serde::{Deserialize, Serialize};

use super::kind::{ModelKind, linear_parameters};
use crate::config::fields::{default_init_std, finite_positive, positive, probability};

/// A multi-layer perceptron over numeric features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub input_size: u64,
    pub hidden_sizes: Vec<u64>,
    pub num_labels: u64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

impl ModelKind for MlpConfig {
    fn validate(&self) -> Result<(), String> {
        let m = self;
        positive("model.input_size", m.input_size)?;
        for (i, h) in m.hidden_sizes.iter().enumerate() {
            positive(&format!("model.hidden_sizes[{i}]"), *h)?;
        }
        if m.num_labels < 2 {
            return Err("model.num_labels: must be at least 2".into());
        }
        probability("model.dropout", m.dropout)?;
        finite_positive("model.init_std", m.init_std)
    }

    fn num_labels(&self) -> u64 {
        self.num_labels
    }

    fn input_size(&self) -> Option<u64> {
        Some(self.input_size)
    }

    fn parameter_count(&self) -> Option<u128> {
        let mut widths = vec![self.input_size];
        widths.extend(&self.hidden_sizes);
        widths.push(self.num_labels);
        Some(
            widths
                .windows(2)
                .map(|w| linear_parameters(w[0], w[1]))
                .sum(),
        )
    }
}

/// Linear layers with ReLU and dropout in between.
#[derive(Module, Debug)]
pub struct MlpClassifier<B: Backend> {
    pub layers: Vec<Linear<B>>,
    pub dropout: f64,
}

impl<B: Backend> MlpClassifier<B> {
    /// Logits `[batch, classes]`.
    pub fn logits(&self, mut x: Tensor<B, 2>, dropout: &mut Dropout) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = dropout.apply(activation::relu(x), self.dropout);
            }
        }
        x
    }
}

impl<B: AutodiffBackend> TrainableModel<B> for MlpClassifier<B> {
    type Config = MlpConfig;

    fn build(c: &MlpConfig, device: &B::Device) -> Self {
        let mut sizes = vec![c.input_size as usize];
        sizes.extend(c.hidden_sizes.iter().map(|&h| h as usize));
        sizes.push(c.num_labels as usize);
        MlpClassifier {
            layers: sizes
                .windows(2)
                .map(|w| Linear::zeros(w[0], w[1], device))
                .collect(),
            dropout: c.dropout,
        }
    }

    fn loss(&self, batch: &Batch<B>, dropout: &mut Dropout) -> Tensor<B, 1> {
        match &batch.input {
            BatchInput::Features(x) => {
                cross_entropy(self.logits(x.clone(), dropout), batch.targets.clone())
            }
            BatchInput::Tokens { .. } | BatchInput::Lm { .. } => {
                unreachable!("the configuration check pairs mlp with features")
            }
        }
    }

    fn init_rule(c: &MlpConfig, name: &str) -> Init {
        default_init(name, c.init_std)
    }
}
