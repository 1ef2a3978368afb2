//! A multi-layer perceptron classifier over numeric features: `layers.0 … layers.N`, ReLU and
//! dropout between layers.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::layers::{Linear, cross_entropy};
use super::{Batch, BatchInput, Dropout, Init, TrainableModel, default_init};
use crate::config::MlpConfig;

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
