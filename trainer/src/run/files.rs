//! A run's artefacts read back and cross-checked: manifest, spec, dataset, ledger, checkpoints,
//! base model.

use crate::base::BaseWeights;
use crate::config::RunSpec;
use crate::data::Dataset;
use crate::error::{Error, Result};
use run_store::CheckpointReader;
use run_store::Store;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::layout;
use snapshot_format::ledger::StepRecord;
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::RunManifest;
use snapshot_format::snapshot::Snapshot;

/// The artefacts of a run, read back and cross-checked: manifest (spec hash and genesis),
/// spec, dataset (its copy hashed against the dataset manifest and the spec's root).
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub manifest: RunManifest,
    pub spec: RunSpec,
    pub dataset: Dataset,
}
impl RunFiles {
    /// Read and check the manifest, spec, dataset manifest and dataset of the run in `store`.
    pub fn load(store: &Store) -> Result<Self> {
        let manifest = RunManifest::from_json(&store.get(layout::MANIFEST)?, layout::MANIFEST)?;
        let genesis = manifest.computed_genesis();
        if genesis != manifest.genesis {
            return Err(Error::Run {
                store: store.location().to_string(),
                detail: format!(
                    "{}: genesis {} is not the hash of its spec hash and initial state root ({genesis})",
                    layout::MANIFEST,
                    manifest.genesis
                ),
            });
        }
        let spec = RunSpec::from_value(&manifest.spec, layout::MANIFEST)?;
        let dataset = load_dataset(store, &spec)?;
        Ok(RunFiles {
            manifest,
            spec,
            dataset,
        })
    }
}
/// Read the run's dataset copy and check it against the dataset manifest and the spec.
pub fn load_dataset(store: &Store, spec: &RunSpec) -> Result<Dataset> {
    let stored = DatasetManifest::decode(
        &store.get(layout::DATASET_MANIFEST)?,
        layout::DATASET_MANIFEST,
    )?;
    let bytes = store.get(layout::DATASET_DATA)?;
    let dataset = Dataset::parse(&bytes, layout::DATASET_DATA, spec.data.format, &spec.model)?;
    if stored.root != spec.data.dataset_root {
        return Err(Error::Run {
            store: store.location().to_string(),
            detail: format!(
                "{}: root {} differs from the spec's dataset root {}",
                layout::DATASET_MANIFEST,
                stored.root,
                spec.data.dataset_root
            ),
        });
    }
    if dataset.manifest.root != stored.root {
        return Err(Error::Run {
            store: store.location().to_string(),
            detail: format!(
                "{}: its examples hash to root {}, the dataset manifest commits to {}",
                layout::DATASET_DATA,
                dataset.manifest.root,
                stored.root
            ),
        });
    }
    Ok(dataset)
}
/// Read and decode a checkpoint (through its delta chain).
pub fn read_checkpoint(store: &Store, step: u64) -> Result<Snapshot> {
    Ok(CheckpointReader::new(store.clone(), ReadLimits::default()).take(step)?)
}
/// Read segments `1..=last` of the run of `manifest`, each checked in its place of the chain
/// from the genesis ([`run_store::ledger::walk`]); returns the records.
pub fn read_ledger(store: &Store, manifest: &RunManifest, last: u64) -> Result<Vec<StepRecord>> {
    let interval = manifest.recording.checkpoint_interval;
    Ok(run_store::ledger::read_ledger(
        store,
        manifest.genesis,
        interval,
        last,
    )?)
}
pub(super) fn run_base(store: &Store, spec: &RunSpec) -> Result<Option<BaseWeights>> {
    let Some(b) = &spec.base else {
        return Ok(None);
    };
    let w = BaseWeights::parse(&store.get(b.run_key())?, b.run_key())?;
    if w.hash != b.blake3 {
        return Err(Error::BaseModelHashMismatch {
            path: b.run_key().into(),
            pinned: b.blake3.to_hex(),
            found: w.hash.to_hex(),
        });
    }
    Ok(Some(w))
}
