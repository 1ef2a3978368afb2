//! Bringing your own model: a bag-of-embeddings text classifier, defined here as an ordinary
//! burn module, trained and recorded by the engine exactly like the built-in models.
//!
//! What a model provides (`trainer::model::TrainableModel`):
//! - `build`: the module with placeholder parameters (the engine sets every value itself);
//! - `loss`: the mean loss of a batch, drawing any randomness from the given `Dropout`;
//! - `init_rule`: how each parameter is initialised when the base weights lack it.
//!
//! The run's config names the model `kind = "custom"`; its own settings go in `[model.config]`
//! and are recorded in the spec. Run with `cargo run --release -p trainer --example custom_model`.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::Deserialize;
use trainer::backend::{Cpu, DeviceSpec};
use trainer::config::RunConfig;
use trainer::model::layers::{Embedding, Linear, cross_entropy};
use trainer::model::{Batch, BatchInput, Dropout, Init, TrainableModel, default_init};
use trainer::run::{self, RunOptions, RunSummary};

/// The model's own configuration, read from `[model.config]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BowConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub num_labels: usize,
    pub dropout: f64,
}

/// Mean of the token embeddings (padding excluded), dropout, linear head.
#[derive(Module, Debug)]
pub struct BagOfEmbeddings<B: Backend> {
    pub embeddings: Embedding<B>,
    pub head: Linear<B>,
    pub dropout: f64,
}

impl<B: AutodiffBackend> TrainableModel<B> for BagOfEmbeddings<B> {
    type Config = BowConfig;

    fn build(c: &BowConfig, device: &B::Device) -> Self {
        BagOfEmbeddings {
            embeddings: Embedding::zeros(c.vocab_size, c.dim, device),
            head: Linear::zeros(c.dim, c.num_labels, device),
            dropout: c.dropout,
        }
    }

    fn loss(&self, batch: &Batch<B>, dropout: &mut Dropout) -> Tensor<B, 1> {
        let BatchInput::Tokens { ids, mask } = &batch.input else {
            unreachable!("this model is configured for text data")
        };
        let [b, s] = ids.dims();
        let mask3: Tensor<B, 3> = mask.clone().reshape([b, s, 1]);
        let summed = (self.embeddings.forward(ids.clone()) * mask3).sum_dim(1); // [b, 1, dim]
        let count = mask.clone().sum_dim(1).reshape([b, 1, 1]);
        let pooled = (summed / count).reshape([b, self.embeddings.weight.dims()[1]]);
        let pooled = dropout.apply(pooled, self.dropout);
        cross_entropy(self.head.forward(pooled), batch.targets.clone())
    }

    fn init_rule(_: &BowConfig, name: &str) -> Init {
        default_init(name, 0.1)
    }
}

/// Write a config and data for the example into `dir` and record the run twice; returns both
/// summaries.
pub fn run_twice(dir: &Path) -> Result<(RunSummary, RunSummary), trainer::Error> {
    std::fs::create_dir_all(dir).map_err(|source| trainer::Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let data: Vec<&str> = std::str::from_utf8(trainer::demo::DATASET)
        .unwrap_or_default()
        .lines()
        .take(400)
        .collect();
    std::fs::write(dir.join("data.jsonl"), data.join("\n")).map_err(|source| {
        trainer::Error::Io {
            path: "data.jsonl".into(),
            source,
        }
    })?;
    let toml = r#"
[run]
seed = 3
steps = 40
batch_size = 16

[model]
kind = "custom"
name = "bag-of-embeddings"
num_labels = 2
vocab_size = 1024

[model.config]
vocab_size = 1024
dim = 32
num_labels = 2
dropout = 0.1

[data]
path = "data.jsonl"
format = "text"
max_len = 24

[optimizer]
kind = "adamw"
lr = 0.01

[recording]
checkpoint_interval = 10
"#;
    let config = RunConfig::from_toml(toml, "custom.toml", dir.to_path_buf())?;
    let trainer::config::ModelSpec::Custom(custom) = &config.model else {
        unreachable!("the config above is custom")
    };
    let model_config: BowConfig = serde_json::from_value(custom.config.clone())
        .map_err(|e| trainer::Error::config("custom.toml", format!("model.config: {e}")))?;
    let options = RunOptions {
        device: DeviceSpec::Cpu,
        run_id: Some("custom".into()),
        ..RunOptions::default()
    };
    let device = burn::backend::flex::FlexDevice;
    let mut runs = Vec::new();
    for name in ["run-a", "run-b"] {
        let out = dir.join(name);
        runs.push(run::start_with::<Cpu, BagOfEmbeddings<Cpu>>(
            &config,
            out.to_str().unwrap_or_default(),
            &options,
            model_config.clone(),
            device,
        )?);
    }
    let b = runs.pop().unwrap_or_else(|| unreachable!());
    let a = runs.pop().unwrap_or_else(|| unreachable!());
    Ok((a, b))
}

#[allow(dead_code)]
fn main() -> Result<(), trainer::Error> {
    let dir = std::env::temp_dir().join(format!("custom-model-{}", std::process::id()));
    let (a, b) = run_twice(&dir)?;
    for s in [&a, &b] {
        println!(
            "{}: {} steps, loss {:.4}, ledger head {}",
            s.location, s.final_step, s.last_loss, s.ledger_head
        );
    }
    println!(
        "identical: {}",
        a.ledger_head == b.ledger_head && a.state_root == b.state_root
    );
    Ok(())
}
