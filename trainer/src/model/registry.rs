//! The one place that maps a model kind of the spec to its type: a [`Job`], generic over the
//! backend and the model, runs with the built-in model a [`ModelSpec`] names.

use burn::tensor::backend::AutodiffBackend;

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::model::bert::BertClassifier;
use crate::model::llama::Llama;
use crate::model::mlp::MlpClassifier;

/// Work generic over the backend and the model type.
pub trait Job {
    type Output;
    /// Run with backend `B`, model type `M` configured by `config`, on `device`.
    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output;
}
/// Run `job` with backend `B` and the built-in model of `model`.
pub(crate) fn with_model<B: AutodiffBackend, J: Job>(
    model: &ModelSpec,
    device: B::Device,
    job: J,
) -> Result<J::Output> {
    match model {
        ModelSpec::Bert(c) => Ok(job.run::<B, BertClassifier<B>>(c.clone(), device)),
        ModelSpec::Mlp(c) => Ok(job.run::<B, MlpClassifier<B>>(c.clone(), device)),
        ModelSpec::Llama(c) => Ok(job.run::<B, Llama<B>>(c.clone(), device)),
        ModelSpec::Custom(c) => Err(Error::config(
            "model",
            format!(
                "custom model {:?} is not built into this program; run it through the library \
                 (trainer::run::start_with), as trainer/examples/custom_model.rs does",
                c.name
            ),
        )),
    }
}
