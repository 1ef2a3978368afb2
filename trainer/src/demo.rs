//! The embedded demo: a small BERT-style classifier fine-tuned on a shipped dataset of product
//! reviews, from a base model that is generated reproducibly and pinned by hash.
//!
//! The base model stands in for a pretrained checkpoint: it is the initial state of the encoder
//! drawn from the fixed seed [`BASE_SEED`], written as safetensors with Hugging Face names. The
//! fine-tuning run then adds a new `classifier` head, as fine-tuning a real checkpoint would.

use std::path::{Path, PathBuf};

use crate::backend::Cpu;
use crate::base::to_safetensors;
use crate::config::{BertConfig, ModelSpec, RunConfig};
use crate::error::{Error, Result};
use crate::model::bert::BertClassifier;
use crate::model::{TrainableModel, init_values};
use crate::params;

/// The shipped dataset: 2,400 reviews, label 1 positive, 0 negative
/// (`scripts/make-demo-dataset.py` generates it).
pub const DATASET: &[u8] = include_bytes!("../assets/demo/reviews.jsonl");

/// Seed the demo base model is drawn from.
pub const BASE_SEED: u64 = 2024;

/// The pinned hash of the generated base model. A test regenerates the model and compares; a
/// change of the engine's initialisation numerics must update it deliberately.
pub const BASE_BLAKE3: &str = "859abab83770ca047132cd4a39e60520ac2a4ed0168490fcf9bc31845d6b8e0c";

/// Architecture of the demo model.
pub fn model_config() -> BertConfig {
    BertConfig {
        vocab_size: 4096,
        hidden_size: 256,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 1024,
        max_position: 64,
        type_vocab_size: 2,
        num_labels: 2,
        hidden_dropout: 0.1,
        attention_dropout: 0.1,
        layer_norm_eps: 1e-12,
        init_std: 0.02,
    }
}

/// The demo configuration, pinning `base_blake3`, for `steps` steps.
pub fn config_toml(base_blake3: &str, steps: u64) -> Result<String> {
    let model = ModelSpec::Bert(model_config()).toml_section()?;
    Ok(format!(
        r#"# The embedded demo: fine-tune a small BERT-style classifier on product reviews.
[run]
seed = 7
steps = {steps}
batch_size = 32

{model}
[base]
path = "base.safetensors"
blake3 = "{base_blake3}"

[data]
path = "reviews.jsonl"
format = "text"
max_len = 32

[optimizer]
kind = "adamw"
lr = 0.0005
weight_decay = 0.01
grad_clip = 1.0

[schedule]
decay = "cosine"
warmup_steps = {warmup}
min_lr_ratio = 0.1

[recording]
checkpoint_interval = 50
state_root_interval = 1
"#,
        warmup = steps / 10,
    ))
}

/// Generate the base model: every encoder parameter of the demo architecture initialised from
/// [`BASE_SEED`], the classification head left out.
pub fn base_model() -> Result<Vec<u8>> {
    base_model_for(&model_config(), BASE_SEED)
}

/// A stand-in base model for any BERT configuration: every encoder parameter drawn from
/// `seed` by the model's initialisation rules, the `classifier.*` head left out.
pub fn base_model_for(config: &BertConfig, seed: u64) -> Result<Vec<u8>> {
    let device = burn::backend::flex::FlexDevice;
    let model = <BertClassifier<Cpu> as TrainableModel<Cpu>>::build(config, &device);
    let names = params::list::<Cpu, _>(
        &model,
        <BertClassifier<Cpu> as TrainableModel<Cpu>>::canonical_name,
    );
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let rule = <BertClassifier<Cpu> as TrainableModel<Cpu>>::init_rule(config, &name);
            let bytes = init_values(rule, seed, &name, n)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name, shape, bytes)
        })
        .collect();
    to_safetensors(&tensors)
}

/// Write the demo's files (base model, dataset, config) into `dir`; returns the config path.
/// The base model is regenerated and must match [`BASE_BLAKE3`].
pub fn write_assets(dir: &Path, steps: u64) -> Result<PathBuf> {
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let base = base_model()?;
    let files = [
        (dir.join("base.safetensors"), base),
        (dir.join("reviews.jsonl"), DATASET.to_vec()),
        (
            dir.join("demo.toml"),
            config_toml(BASE_BLAKE3, steps)?.into_bytes(),
        ),
    ];
    for (path, bytes) in &files {
        std::fs::write(path, bytes).map_err(|e| io(path, e))?;
    }
    Ok(dir.join("demo.toml"))
}

/// Load the demo configuration written by [`write_assets`].
pub fn load_config(path: &Path) -> Result<RunConfig> {
    RunConfig::from_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_base_model_matches_the_pinned_hash() {
        let bytes = base_model().expect("generate");
        let hash = snapshot_format::hash::file_hash(&bytes);
        assert_eq!(
            hash.to_hex(),
            BASE_BLAKE3,
            "the demo base model changed; if the initialisation numerics changed on purpose, \
             update BASE_BLAKE3 (and NUMERICS_VERSION)"
        );
    }

    #[test]
    fn demo_config_is_valid_and_dataset_parses() {
        let toml = config_toml(BASE_BLAKE3, 300).expect("config");
        let c = RunConfig::from_toml(&toml, "demo.toml", PathBuf::new()).expect("valid");
        assert_eq!(
            c.model,
            ModelSpec::Bert(model_config()),
            "the [model] section round-trips"
        );
        let d = crate::data::Dataset::parse(DATASET, "reviews.jsonl", c.data.format, &c.model)
            .expect("parses");
        assert_eq!(d.len(), 2400);
    }
}
