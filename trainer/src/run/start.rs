//! Starting a new run: everything checked before the first write.

use crate::backend::dispatch;
use crate::base::BaseWeights;
use crate::config::{DataFormat, RunConfig, RunSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::model::registry::Job;
use burn::tensor::backend::AutodiffBackend;
use run_store::Store;
use snapshot_format::{Hash32, layout};

use super::options::*;
use super::train::*;

/// Start a new run of a built-in model from a configuration, writing it to `out`.
pub fn start(config: &RunConfig, out: &str, options: &RunOptions) -> Result<RunSummary> {
    let job = prepare_start(config, || Store::create(out), options)?;
    let model = job.spec.model.clone();
    dispatch(options.device, &model, job)?
}
/// [`start`] into a store opened by the caller (any `object_store` backend or decorator).
pub fn start_in(config: &RunConfig, store: Store, options: &RunOptions) -> Result<RunSummary> {
    let job = prepare_start(config, || Ok(store), options)?;
    let model = job.spec.model.clone();
    dispatch(options.device, &model, job)?
}
/// [`start`] for a data-parallel worker that does not write the run (every worker but the first,
/// [`crate::dist`]): the same run, kept in this process's memory.
pub fn start_detached(config: &RunConfig, options: &RunOptions) -> Result<RunSummary> {
    let store = Store::create(&format!("memory://detached-{}", std::process::id()))?;
    start_in(config, store, options)
}
/// Start a new run of model type `M` (any [`TrainableModel`], e.g. a `custom` model) on
/// backend `B`; `options.device` names the device for the fingerprint.
pub fn start_with<B: AutodiffBackend, M: TrainableModel<B>>(
    config: &RunConfig,
    out: &str,
    options: &RunOptions,
    model_config: M::Config,
    device: B::Device,
) -> Result<RunSummary> {
    prepare_start(config, || Store::create(out), options)?.run::<B, M>(model_config, device)
}
/// Check every input, then open the store (only then: bad inputs leave no trace) and check it.
pub(super) fn prepare_start(
    config: &RunConfig,
    open_store: impl FnOnce() -> Result<Store, snapshot_format::Error>,
    options: &RunOptions,
) -> Result<TrainJob> {
    // Inputs first: nothing is written until all of them check out.
    let base = match &config.base {
        None => None,
        Some(b) => {
            let path = config.resolve(&b.path);
            let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
            let pinned =
                Hash32::from_hex(&b.blake3).ok_or_else(|| snapshot_format::Error::InvalidHash {
                    value: b.blake3.chars().take(80).collect(),
                })?;
            let weights = BaseWeights::parse(&bytes, &path.display().to_string())?;
            if weights.hash != pinned {
                return Err(Error::BaseModelHashMismatch {
                    path: path.display().to_string(),
                    pinned: pinned.to_hex(),
                    found: weights.hash.to_hex(),
                });
            }
            Some((weights, bytes))
        }
    };
    let data_path = config.resolve(&config.data.path);
    let data_name = data_path.display().to_string();
    let source_bytes = std::fs::read(&data_path).map_err(|source| Error::Io {
        path: data_name.clone(),
        source,
    })?;
    // Chat data becomes language-model rows: the run commits to the token ids.
    let (dataset_bytes, format, conversion) = match config.data.format {
        DataFormat::Chat => {
            let Some((weights, _)) = &base else {
                return Err(Error::config(
                    &config.source,
                    "data.format = \"chat\" needs a GGUF base model, whose tokenizer and chat \
                     template it uses",
                ));
            };
            let (rows, conversion) = crate::chat::convert_with_base(
                &source_bytes,
                &data_name,
                weights,
                config.data.max_len,
            )?;
            (rows, DataFormat::Lm, Some(conversion))
        }
        other => (source_bytes, other, None),
    };
    let dataset = Dataset::parse(&dataset_bytes, &data_name, format, &config.model)?;
    if dataset.len() < config.run.batch_size {
        return Err(Error::Dataset {
            path: data_name,
            detail: format!(
                "{} examples, fewer than run.batch_size = {}",
                dataset.len(),
                config.run.batch_size
            ),
        });
    }
    let spec = RunSpec::new(
        config,
        &dataset.manifest,
        base.as_ref().map(|(w, _)| w),
        conversion,
    );
    options.check_workers(&spec)?;
    let mut fingerprint = options.device.fingerprint()?;
    if let Some(c) = &options.collective {
        fingerprint.workers = c.size() as u64;
    }

    let signing_key = match (&options.signing_key, &config.signing) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(s)) => Some(run_trust::signature::read_signing_key(
            &config.resolve(&s.key),
        )?),
        (None, None) => None,
    };
    let store = open_store()?;
    store.probe_write_once()?;
    if store.exists(layout::MANIFEST)? {
        return Err(Error::RunExists {
            store: store.location().to_string(),
            key: layout::MANIFEST.into(),
        });
    }
    let run_id = options.run_id.clone().unwrap_or_else(|| {
        let stem = std::path::Path::new(&config.source)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        format!("{stem}-{}", unix_now())
    });
    Ok(TrainJob {
        spec,
        dataset,
        store,
        run_id,
        start: Start::Fresh {
            base,
            dataset_bytes,
            fingerprint: Box::new(fingerprint),
            recording: config.recording,
        },
        options: options.clone(),
        signing_key,
    })
}
