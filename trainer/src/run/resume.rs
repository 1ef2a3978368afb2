//! Resuming a run from its last checkpoint whose root the ledger commits to, or finishing an
//! interrupted completion.

use crate::backend::dispatch;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::model::registry::Job;
use crate::record::RunSigner;
use crate::session::InitReport;
use burn::tensor::backend::AutodiffBackend;
use run_store::CheckpointReader;
use run_store::Store;
use run_trust::signature::{self, Signed, Statement, kind};
use snapshot_format::hash::file_hash;
use snapshot_format::layout;
use snapshot_format::layout::segment_ending_at;
use snapshot_format::ledger::StepRecord;
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::{Completion, RunManifest};

use super::files::*;
use super::options::*;
use super::train::*;

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
/// [`resume`] for a data-parallel worker that does not write the run (every worker but the
/// first, [`crate::dist`]): the run's objects copied into this process's memory and resumed
/// there. `copied` is called once the copy is whole (the workers' barrier: the first worker
/// writes only after it).
pub fn resume_detached(
    location: &str,
    options: &RunOptions,
    copied: impl FnOnce(),
) -> Result<RunSummary> {
    let copy = format!("memory://detached-{}", std::process::id());
    let whole = (|| -> Result<()> {
        let from = Store::open(location)?;
        let to = Store::create(&copy)?;
        for key in from.list("")? {
            to.put_once(&key, from.get(&key)?)?;
        }
        Ok(())
    })();
    copied();
    whole?;
    resume(&copy, options)
}
/// The public keys whose signature of the run's manifest verifies: the keys the run is signed
/// with.
pub(super) fn manifest_signers(store: &Store, manifest: &RunManifest) -> Result<Vec<[u8; 32]>> {
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
pub(super) fn resume_signing_key(
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
pub(super) fn complete_signatures(
    store: &Store,
    files: &RunFiles,
    signer: &RunSigner,
) -> Result<u64> {
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
pub(super) fn finish_complete(
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
        exchange_seconds: 0.0,
        // The loss of the ledger's last step, as recorded.
        last_loss: read_ledger(store, manifest, c.segments)?
            .last()
            .map_or(f32::NAN, StepRecord::loss),
        init: InitReport::default(),
        bytes_written: 0,
        signed_by: Some(signature::fingerprint(&key.verifying_key().to_bytes())),
    })
}
pub(super) fn prepare_resume(location: &str, options: &RunOptions) -> Result<Resumption> {
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
pub(super) enum Resumption {
    /// Training continues.
    Train(Box<TrainJob>),
    /// The run was already complete (its signatures were completed).
    Complete(Box<RunSummary>),
}
pub(super) fn scratch_job(
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
