//! Starting, continuing and resuming recorded runs.
//!
//! Everything that can be checked is checked before the first write: configuration, dataset
//! rows, the base model's pinned hash, the store's write-once behaviour, and that the output
//! holds no run yet.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use run_store::CheckpointReader;
use run_store::Store;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::delta::Reference;
use snapshot_format::layout::{is_checkpoint_step, segment_ending_at};
use snapshot_format::ledger::{self, StepRecord};
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::{
    Completion, Engine, EnvironmentFingerprint, Recording, RunManifest, spec_hash,
};
use snapshot_format::snapshot::Snapshot;
use snapshot_format::{Hash32, layout};

use crate::backend::{DeviceSpec, Job, dispatch};
use crate::base::BaseWeights;
use crate::config::{DataFormat, RecordingSection, RunConfig, RunSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::record::{RunSigner, RunWriter};
use crate::session::{InitReport, PreparedData, Session};
use run_trust::signature::{self, Signed, Statement, kind};
use snapshot_format::hash::file_hash;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: DeviceSpec,
    /// Run id for a new run (default: `<config name>-<unix seconds>`).
    pub run_id: Option<String>,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Stop after this many steps in this invocation without completing the run (a controlled
    /// interruption; `trainer resume` continues).
    pub max_steps: Option<u64>,
    /// Resume even if this machine is in another environment class (the result will not be
    /// bit-identical to an uninterrupted run).
    pub allow_environment_mismatch: bool,
    /// Sign the run's artefacts with this key (`specs/signatures.md`); for `start`, a key named
    /// in the configuration's `[signing]` section is used when this is `None`.
    pub signing_key: Option<ed25519_dalek::SigningKey>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: DeviceSpec::Cpu,
            run_id: None,
            progress: false,
            max_steps: None,
            allow_environment_mismatch: false,
            signing_key: None,
        }
    }
}

/// What a run invocation did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub location: String,
    pub run_id: String,
    pub steps_done: u64,
    pub final_step: u64,
    pub total_steps: u64,
    pub completed: bool,
    pub ledger_head: Hash32,
    pub state_root: Hash32,
    pub parameters: u64,
    /// Parameters the run trains (fewer than `parameters` when a base is frozen).
    pub trained_parameters: u64,
    pub steps_per_second: f64,
    pub last_loss: f32,
    pub init: InitReport,
    pub bytes_written: u64,
    /// Fingerprint of the key that signed this invocation's artefacts, if any.
    pub signed_by: Option<String>,
}

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

enum Start {
    /// A new run: write its manifest and inputs, then checkpoint 0.
    Fresh {
        base: Option<(BaseWeights, Vec<u8>)>,
        dataset_bytes: Vec<u8>,
        fingerprint: Box<EnvironmentFingerprint>,
        recording: RecordingSection,
    },
    /// The manifest exists but checkpoint 0 does not: rebuild the initial state, which must
    /// hash to the manifest's initial root.
    Scratch {
        base: Option<BaseWeights>,
        manifest: Box<RunManifest>,
    },
    /// Continue from a checkpoint whose root the ledger commits to.
    Resume {
        manifest: Box<RunManifest>,
        snapshot: Box<Snapshot>,
        /// The run's copy of its base model (frozen parameters come from it).
        base: Option<BaseWeights>,
        segment: u64,
        head: Hash32,
    },
}

struct TrainJob {
    spec: RunSpec,
    dataset: Dataset,
    store: Store,
    run_id: String,
    start: Start,
    options: RunOptions,
    /// Signs the run's artefacts, when a key was given.
    signing_key: Option<ed25519_dalek::SigningKey>,
}

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

/// Continue the run at `location` with model type `M` on backend `B`.
pub fn resume_with<B: AutodiffBackend, M: TrainableModel<B>>(
    location: &str,
    options: &RunOptions,
    model_config: M::Config,
    device: B::Device,
) -> Result<RunSummary> {
    match prepare_resume(location, options)? {
        Resumption::Train(job) => job.run::<B, M>(model_config, device),
        Resumption::Complete(summary) => Ok(*summary),
    }
}

/// Check every input, then open the store (only then: bad inputs leave no trace) and check it.
fn prepare_start(
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
            let pinned = Hash32::from_hex(&b.blake3)?;
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
            let tok = crate::chat::ChatTokenizer::from_gguf(weights)?;
            let max_len = config.data.max_len.unwrap_or(u64::MAX) as usize;
            let (rows, conversion) =
                crate::chat::convert(&source_bytes, &data_name, &tok, max_len)?;
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
    let spec = RunSpec::new(config, &dataset, base.as_ref().map(|(w, _)| w), conversion);
    let fingerprint = options.device.fingerprint()?;

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

/// Continue the run of a built-in model at `location` from its latest checkpoint.
pub fn resume(location: &str, options: &RunOptions) -> Result<RunSummary> {
    match prepare_resume(location, options)? {
        Resumption::Train(job) => {
            let model = job.spec.model.clone();
            dispatch(options.device, &model, *job)?
        }
        Resumption::Complete(summary) => Ok(*summary),
    }
}

/// The public keys whose signature of the run's manifest verifies: the keys the run is signed
/// with.
fn manifest_signers(store: &Store, manifest: &RunManifest) -> Result<Vec<[u8; 32]>> {
    let statement = Statement {
        kind: kind::MANIFEST.into(),
        run_id: manifest.run_id.clone(),
        genesis: manifest.genesis,
        step: 0,
        hash: file_hash(&store.get(layout::MANIFEST)?),
    };
    let mut keys = Vec::new();
    for key in store.list(layout::SIGNATURES)? {
        if signature::artefact_of(&key) != Some(layout::MANIFEST) {
            continue;
        }
        if let Ok(signed) = Signed::decode(&store.get(&key)?, &key)
            && signature::key_for(&signed.public_key, layout::MANIFEST) == key
            && signed.verify(&statement, &key).is_ok()
        {
            keys.push(signed.public_key);
        }
    }
    Ok(keys)
}

/// The key that continues a run: the run's own signer when it is signed (resuming without it,
/// or with another key, would leave the rest of its history signed by nobody it trusts).
fn resume_signing_key(
    location: &str,
    store: &Store,
    manifest: &RunManifest,
    options: &RunOptions,
) -> Result<Option<ed25519_dalek::SigningKey>> {
    let signers = manifest_signers(store, manifest)?;
    let names = || {
        signers
            .iter()
            .map(signature::fingerprint)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &options.signing_key {
        None if !signers.is_empty() => Err(Error::Run {
            store: location.to_string(),
            detail: format!(
                "the run is signed by {}; resume it with --signing-key and that private key, so \
                 that the rest of its history is signed too",
                names()
            ),
        }),
        Some(k) if !signers.is_empty() && !signers.contains(&k.verifying_key().to_bytes()) => {
            Err(Error::Run {
                store: location.to_string(),
                detail: format!(
                    "the run is signed by {}, not by the given key {}",
                    names(),
                    signature::fingerprint(&k.verifying_key().to_bytes())
                ),
            })
        }
        other => Ok(other.clone()),
    }
}

/// Sign every artefact of the run that its signer has not signed yet: those written just before
/// an interruption that came between an artefact and its signature. Only what checks out is
/// signed: ledger segments whose chain holds from the genesis, checkpoints whose state root is
/// the one the ledger commits to, a completion record that matches the ledger. Signatures are
/// deterministic, so those already present are written again byte for byte (accepted by the
/// write-once store). Returns the number of artefacts signed.
fn complete_signatures(store: &Store, files: &RunFiles, signer: &RunSigner) -> Result<u64> {
    let manifest = &files.manifest;
    let mut signed = 0u64;
    let manifest_bytes = store.get(layout::MANIFEST)?;
    signer.sign(
        store,
        layout::MANIFEST,
        kind::MANIFEST,
        0,
        file_hash(&manifest_bytes),
    )?;
    signed += 1;
    let segments = store
        .list(layout::LEDGER)?
        .iter()
        .filter_map(|k| layout::parse_segment(k))
        .max()
        .unwrap_or(0);
    let records = read_ledger(store, manifest, segments)?;
    let interval = manifest.recording.checkpoint_interval;
    for seg in records
        .chunk_by(|a, b| segment_ending_at(a.step, interval) == segment_ending_at(b.step, interval))
    {
        let (Some(first), Some(last)) = (seg.first(), seg.last()) else {
            continue;
        };
        let index = segment_ending_at(first.step, interval);
        signer.sign(
            store,
            &layout::segment(index),
            kind::SEGMENT,
            last.step,
            last.hash(),
        )?;
        signed += 1;
    }
    let checkpoints = CheckpointReader::new(store.clone(), ReadLimits::default());
    for step in run_store::ledger::checkpoint_steps(store)? {
        let committed = match step {
            0 => Some(manifest.initial_state_root),
            s => records
                .iter()
                .find(|r| r.step == s)
                .and_then(|r| r.state_root),
        };
        let key = layout::checkpoint(step);
        // The header alone: its state root is what a checkpoint's signature states.
        let header = checkpoints.header(step)?;
        if committed == Some(header.state_root) {
            signer.sign(store, &key, kind::CHECKPOINT, step, header.state_root)?;
            signed += 1;
        }
    }
    if let Some(bytes) = store.get_opt(layout::COMPLETE)? {
        let c = Completion::from_json(&bytes, layout::COMPLETE)?;
        let last = records.last();
        if c.run_id == manifest.run_id
            && c.final_step == files.spec.run.steps
            && last.map(|r| (r.step, r.hash(), r.state_root))
                == Some((c.final_step, c.ledger_head, Some(c.final_state_root)))
        {
            signer.sign(
                store,
                layout::COMPLETE,
                kind::COMPLETION,
                c.final_step,
                file_hash(&bytes),
            )?;
            signed += 1;
        }
    }
    Ok(signed)
}

/// Resume a complete run: nothing to train, but a signing key completes its signatures (a run
/// interrupted between `complete.json` and its signature). Returns what the run ended with.
fn finish_complete(
    location: &str,
    store: &Store,
    files: &RunFiles,
    key: Option<ed25519_dalek::SigningKey>,
) -> Result<RunSummary> {
    let Some(key) = key else {
        return Err(Error::Run {
            store: location.to_string(),
            detail: format!(
                "the run is complete ({} exists); nothing to resume",
                layout::COMPLETE
            ),
        });
    };
    let manifest = &files.manifest;
    let signer = RunSigner::new(key.clone(), &manifest.run_id, manifest.genesis);
    complete_signatures(store, files, &signer)?;
    let c = Completion::from_json(&store.get(layout::COMPLETE)?, layout::COMPLETE)?;
    let header =
        CheckpointReader::new(store.clone(), ReadLimits::default()).header(c.final_step)?;
    let trained = header
        .tensors
        .iter()
        .filter(|t| !t.name.starts_with("optimizer."))
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    Ok(RunSummary {
        location: location.to_string(),
        run_id: manifest.run_id.clone(),
        steps_done: 0,
        final_step: c.final_step,
        total_steps: files.spec.run.steps,
        completed: true,
        ledger_head: c.ledger_head,
        state_root: c.final_state_root,
        // The checkpoint holds the trained parameters only.
        parameters: trained,
        trained_parameters: trained,
        steps_per_second: 0.0,
        // The loss of the ledger's last step, as recorded.
        last_loss: read_ledger(store, manifest, c.segments)?
            .last()
            .map_or(f32::NAN, StepRecord::loss),
        init: InitReport::default(),
        bytes_written: 0,
        signed_by: Some(signature::fingerprint(&key.verifying_key().to_bytes())),
    })
}

fn prepare_resume(location: &str, options: &RunOptions) -> Result<Resumption> {
    let store = Store::create(location)?;
    store.probe_write_once()?;
    let files = RunFiles::load(&store)?;
    let signing_key = resume_signing_key(location, &store, &files.manifest, options)?;
    if store.exists(layout::COMPLETE)? {
        return finish_complete(location, &store, &files, signing_key)
            .map(|s| Resumption::Complete(Box::new(s)));
    }
    if let Some(k) = &signing_key {
        let signer = RunSigner::new(k.clone(), &files.manifest.run_id, files.manifest.genesis);
        complete_signatures(&store, &files, &signer)?;
    }
    let here = options.device.fingerprint()?;
    let differences = files.manifest.environment.class_differences(&here);
    if !differences.is_empty() && !options.allow_environment_mismatch {
        return Err(Error::EnvironmentMismatch {
            differences: differences
                .into_iter()
                .map(|(f, a, b)| (f.to_string(), a, b))
                .collect(),
        });
    }
    let interval = files.manifest.recording.checkpoint_interval;
    let steps = run_store::ledger::checkpoint_steps(&store)?;
    let latest = steps.last().copied();
    let (snapshot, segment, head) = match latest {
        // Interrupted before checkpoint 0 was stored: the manifest is there, so rebuild the
        // initial state (it must hash to the manifest's initial root).
        None => {
            return scratch_job(store, files, options, signing_key)
                .map(|job| Resumption::Train(Box::new(job)));
        }
        Some(step) => {
            let snap = read_checkpoint(&store, step)?;
            let last_segment = segment_ending_at(step, interval);
            let records = read_ledger(&store, &files.manifest, last_segment)?;
            let committed = match records.last() {
                Some(r) => r.state_root,
                None => Some(files.manifest.initial_state_root),
            };
            if committed != Some(snap.header.state_root) {
                return Err(Error::Run {
                    store: location.to_string(),
                    detail: format!(
                        "{}: state root {} is not the one the ledger commits to for step {step}",
                        layout::checkpoint(step),
                        snap.header.state_root
                    ),
                });
            }
            let head = records
                .last()
                .map(StepRecord::hash)
                .unwrap_or(files.manifest.genesis);
            (snap, last_segment + 1, head)
        }
    };
    let base = run_base(&store, &files.spec)?;
    Ok(Resumption::Train(Box::new(TrainJob {
        spec: files.spec,
        dataset: files.dataset,
        store,
        run_id: files.manifest.run_id.clone(),
        start: Start::Resume {
            base,
            manifest: Box::new(files.manifest),
            snapshot: Box::new(snapshot),
            segment,
            head,
        },
        options: options.clone(),
        signing_key,
    })))
}

/// What resuming a run amounts to.
enum Resumption {
    /// Training continues.
    Train(Box<TrainJob>),
    /// The run was already complete (its signatures were completed).
    Complete(Box<RunSummary>),
}

/// The run's copy of the base model its spec pins, checked against the pin.
/// Export the final state of the completed run at `location` into `out` (write-once objects):
/// `model.safetensors`, and for a LoRA run PEFT's adapter files and the merged model
/// ([`crate::peft::export_files`]). The final checkpoint must hash to the completion record's
/// state root. Returns the names written.
pub fn export_final(
    location: &str,
    out: &str,
    keys: &run_trust::attest::ExportKeys,
) -> Result<Vec<String>> {
    let store = Store::open(location)?;
    let files = RunFiles::load(&store)?;
    let c = Completion::from_json(&store.get(layout::COMPLETE)?, layout::COMPLETE)?;
    let snap = read_checkpoint(&store, c.final_step)?;
    if snap.header.state_root != c.final_state_root {
        return Err(Error::Run {
            store: store.location().to_string(),
            detail: format!(
                "the final checkpoint has root {}; the completion record says {}",
                snap.header.state_root, c.final_state_root
            ),
        });
    }
    let params = snap
        .header
        .tensors
        .iter()
        .zip(&snap.data)
        .filter(|(t, _)| !t.name.starts_with("optimizer."))
        .map(|(t, d)| {
            (
                t.name.clone(),
                t.shape.iter().map(|&d| d as usize).collect(),
                d.to_vec(),
            )
        })
        .collect();
    let base = run_base(&store, &files.spec)?;
    let pin = files.spec.base.as_ref().map(|b| b.blake3);
    let target = Store::create(out)?;
    let exported = crate::peft::export_files(&files.spec.model, base.as_ref(), pin, params)?;
    let attestations = run_trust::attest::export_attestations(
        run_trust::attest::model_name(out),
        &exported,
        run_trust::attest::TRAINING_PREDICATE,
        training_predicate(&files, &c),
        keys,
    )?;
    let mut written = Vec::new();
    for (name, bytes) in exported.into_iter().chain(attestations) {
        target.put_once(&name, bytes)?;
        written.push(name);
    }
    Ok(written)
}

/// The predicate of a run's training provenance statement (`specs/signatures.md` §6.2).
pub fn training_predicate(files: &RunFiles, c: &Completion) -> serde_json::Value {
    let m = &files.manifest;
    serde_json::json!({
        "runId": m.run_id,
        "genesis": m.genesis,
        "specBlake3": m.spec_hash,
        "engine": format!("{} {}", m.engine.name, m.engine.version),
        "environmentClass": m.environment.class(),
        "base": files.spec.base.as_ref().map(|b| serde_json::json!({"blake3": b.blake3})),
        "datasetRoot": files.spec.data.dataset_root,
        "seed": files.spec.run.seed,
        "finalStep": c.final_step,
        "segments": c.segments,
        "ledgerHead": c.ledger_head,
        "finalStateRoot": c.final_state_root,
    })
}

fn run_base(store: &Store, spec: &RunSpec) -> Result<Option<BaseWeights>> {
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

fn scratch_job(
    store: Store,
    files: RunFiles,
    options: &RunOptions,
    signing_key: Option<ed25519_dalek::SigningKey>,
) -> Result<TrainJob> {
    let base = run_base(&store, &files.spec)?;
    Ok(TrainJob {
        spec: files.spec,
        dataset: files.dataset,
        store,
        run_id: files.manifest.run_id.clone(),
        start: Start::Scratch {
            base,
            manifest: Box::new(files.manifest),
        },
        options: options.clone(),
        signing_key,
    })
}

impl TrainJob {
    fn signer(&self, genesis: &Hash32) -> Option<RunSigner> {
        self.signing_key
            .clone()
            .map(|k| RunSigner::new(k, &self.run_id, *genesis))
    }
}

impl Job for TrainJob {
    type Output = Result<RunSummary>;

    fn run<B: AutodiffBackend, M: TrainableModel<B>>(
        self,
        config: M::Config,
        device: B::Device,
    ) -> Self::Output {
        match &self.start {
            Start::Fresh {
                base,
                dataset_bytes,
                fingerprint,
                recording,
            } => {
                let (session, report) = Session::<B, M>::initial(
                    self.spec.clone(),
                    config,
                    base.as_ref().map(|(w, _)| w),
                    device,
                )?;
                let state = session.capture();
                let hashes = state.tensor_hashes();
                let root = state.root(&hashes)?;
                let recording = &Recording {
                    checkpoint_interval: recording.checkpoint_interval,
                    state_root_interval: recording
                        .state_root_interval_for(session.parameter_count()),
                    codec: recording.codec,
                };
                let spec_value = self.spec.to_value();
                let spec_hash = spec_hash(&spec_value);
                let manifest = RunManifest {
                    format_version: 1,
                    run_id: self.run_id.clone(),
                    created_unix: unix_now(),
                    engine: Engine {
                        name: "trainer".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                    spec: spec_value,
                    spec_hash,
                    initial_state_root: root,
                    genesis: ledger::genesis(&spec_hash, &root),
                    recording: recording.clone(),
                    environment: (**fingerprint).clone(),
                };
                // Inputs first, the manifest last: a run interrupted before its manifest can
                // be started again (identical objects are accepted), and one interrupted after
                // it is resumed.
                let store = &self.store;
                store.put_once(layout::DATASET_MANIFEST, self.dataset.manifest.encode())?;
                store.put_once(layout::DATASET_DATA, dataset_bytes.clone())?;
                if let Some((w, bytes)) = base {
                    store.put_once(w.format.run_key(), bytes.clone())?;
                }
                let manifest_bytes = manifest.to_json();
                store.put_once(layout::MANIFEST, manifest_bytes.clone())?;
                let signer = self.signer(&manifest.genesis);
                if let Some(s) = &signer {
                    s.sign(
                        store,
                        layout::MANIFEST,
                        kind::MANIFEST,
                        0,
                        file_hash(&manifest_bytes),
                    )?;
                }
                let mut writer =
                    new_writer(store, &self.run_id, manifest.genesis, 1, None, recording)
                        .signed_by(signer);
                writer.checkpoint(state, hashes, root)?;
                train_loop(&self, session, writer, recording, report)
            }
            Start::Scratch { base, manifest } => {
                let (session, report) =
                    Session::<B, M>::initial(self.spec.clone(), config, base.as_ref(), device)?;
                let state = session.capture();
                let hashes = state.tensor_hashes();
                let root = state.root(&hashes)?;
                if root != manifest.initial_state_root {
                    return Err(Error::Run {
                        store: self.store.location().to_string(),
                        detail: format!(
                            "the rebuilt initial state has root {root}; the manifest records {}",
                            manifest.initial_state_root
                        ),
                    });
                }
                let signer = self.signer(&manifest.genesis);
                if let Some(s) = &signer {
                    let bytes = self.store.get(layout::MANIFEST)?;
                    s.sign(
                        &self.store,
                        layout::MANIFEST,
                        kind::MANIFEST,
                        0,
                        file_hash(&bytes),
                    )?;
                }
                let mut writer = new_writer(
                    &self.store,
                    &self.run_id,
                    manifest.genesis,
                    1,
                    None,
                    &manifest.recording,
                )
                .signed_by(signer);
                writer.checkpoint(state, hashes, root)?;
                train_loop(&self, session, writer, &manifest.recording, report)
            }
            Start::Resume {
                manifest,
                snapshot,
                base,
                segment,
                head,
            } => {
                let key = layout::checkpoint(snapshot.header.state.step);
                let session = Session::<B, M>::restore(
                    self.spec.clone(),
                    config,
                    base.as_ref(),
                    snapshot,
                    device,
                    &key,
                )?;
                let writer = new_writer(
                    &self.store,
                    &self.run_id,
                    *head,
                    *segment,
                    Some(snapshot.header.state_root),
                    &manifest.recording,
                )
                .continuing_from(|| Reference::from_snapshot((**snapshot).clone()))
                .signed_by(self.signer(&manifest.genesis));
                train_loop(
                    &self,
                    session,
                    writer,
                    &manifest.recording,
                    InitReport::default(),
                )
            }
        }
    }
}

/// A writer of checkpoints with the run's recorded codec.
fn new_writer(
    store: &Store,
    run_id: &str,
    head: Hash32,
    next_segment: u64,
    parent: Option<Hash32>,
    recording: &Recording,
) -> RunWriter {
    RunWriter::with_options(
        store.clone(),
        run_id,
        head,
        next_segment,
        parent,
        recording.codec.write_options(),
    )
}

fn progress_bar(options: &RunOptions, total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if options.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:28}] step {pos}/{len}  {per_sec}  loss {msg}  ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(done);
    bar.reset_eta();
    bar
}

fn train_loop<B: AutodiffBackend, M: TrainableModel<B>>(
    job: &TrainJob,
    mut session: Session<B, M>,
    writer: RunWriter,
    recording: &Recording,
    init: InitReport,
) -> Result<RunSummary> {
    // Checkpoints are encoded and stored while training goes on.
    let mut writer = writer.in_background()?;
    let spec = &job.spec;
    let total = spec.run.steps;
    let first = session.step();
    let prepared = PreparedData::new(&job.dataset, spec);
    let bar = progress_bar(&job.options, total, first);
    let started = Instant::now();
    let mut last_loss = f32::NAN;
    // The state's root so far: that of the checkpoint the session starts from (a resumed run
    // whose steps are all done completes with it).
    let mut last_root = writer.last_checkpoint_root().unwrap_or(Hash32::ZERO);
    let limit = job
        .options
        .max_steps
        .map(|m| first + m)
        .unwrap_or(total)
        .min(total);
    for step in first + 1..=limit {
        let (epoch, ids) = session.next_batch();
        let batch = prepared.batch::<B>(&ids, session.device());
        let out = session.train_step(&batch);
        let checkpoint = is_checkpoint_step(step, total, recording.checkpoint_interval);
        let captured = if checkpoint || step.is_multiple_of(recording.state_root_interval) {
            let state = session.capture();
            let hashes = state.tensor_hashes();
            let root = state.root(&hashes)?;
            Some((state, hashes, root))
        } else {
            None
        };
        let record = StepRecord {
            step,
            epoch,
            lr_bits: out.lr_bits,
            batch_hash: job.dataset.batch_hash(&ids),
            example_ids: ids,
            loss_bits: out.loss_bits,
            grad_norm_bits: out.grad_norm_bits,
            state_root: captured.as_ref().map(|c| c.2),
            prev_hash: writer.head(),
        };
        writer.record(record);
        if let Some((state, hashes, root)) = captured {
            last_root = root;
            if checkpoint {
                writer.checkpoint(state, hashes, root)?;
            }
        }
        last_loss = f32::from_bits(out.loss_bits);
        bar.set_message(format!("{last_loss:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let final_step = session.step();
    let completed = final_step == total;
    let head = writer.head();
    let signer = writer.signer().cloned();
    // Every checkpoint stored before the completion record names the last one.
    let bytes_written = writer.finish()?;
    if completed {
        let completion = Completion {
            run_id: job.run_id.clone(),
            final_step,
            segments: segment_ending_at(total, recording.checkpoint_interval),
            ledger_head: head,
            final_state_root: last_root,
        };
        let bytes = completion.to_json();
        job.store.put_once(layout::COMPLETE, bytes.clone())?;
        if let Some(s) = &signer {
            s.sign(
                &job.store,
                layout::COMPLETE,
                kind::COMPLETION,
                final_step,
                file_hash(&bytes),
            )?;
        }
    }
    let steps_done = final_step - first;
    Ok(RunSummary {
        location: job.store.location().to_string(),
        run_id: job.run_id.clone(),
        steps_done,
        final_step,
        total_steps: total,
        completed,
        ledger_head: head,
        state_root: last_root,
        parameters: session.parameter_count(),
        trained_parameters: session.trainable_parameter_count(),
        steps_per_second: if elapsed > 0.0 {
            steps_done as f64 / elapsed
        } else {
            0.0
        },
        last_loss,
        init,
        bytes_written,
        signed_by: job
            .signing_key
            .as_ref()
            .map(|k| run_trust::signature::fingerprint(&k.verifying_key().to_bytes())),
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
