//! The training loop: a job generic over the backend and the model that trains from where
//! the run starts (fresh, rebuilt step 0, or a checkpoint) and records every step.

use crate::base::BaseWeights;
use crate::config::{RecordingSection, RunSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::TrainableModel;
use crate::model::registry::Job;
use crate::record::{RunSigner, RunWriter};
use crate::session::{InitReport, PreparedData, Session};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use run_store::Store;
use run_trust::signature::kind;
use snapshot_format::hash::file_hash;
use snapshot_format::layout::{is_checkpoint_step, segment_ending_at};
use snapshot_format::ledger::{self, StepRecord};
use snapshot_format::manifest::{
    Completion, Engine, EnvironmentFingerprint, Recording, RunManifest, spec_hash,
};
use snapshot_format::snapshot::Reference;
use snapshot_format::snapshot::Snapshot;
use snapshot_format::{Hash32, layout};
use std::time::Instant;

use super::options::*;

pub(super) enum Start {
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
pub(super) struct TrainJob {
    pub(super) spec: RunSpec,
    pub(super) dataset: Dataset,
    pub(super) store: Store,
    pub(super) run_id: String,
    pub(super) start: Start,
    pub(super) options: RunOptions,
    /// Signs the run's artefacts, when a key was given.
    pub(super) signing_key: Option<ed25519_dalek::SigningKey>,
}
impl TrainJob {
    /// `session`, computing its steps with the run's other workers, if any.
    fn distribute<B: AutodiffBackend, M: TrainableModel<B>>(
        &self,
        session: Session<B, M>,
    ) -> Session<B, M> {
        match &self.options.collective {
            Some(c) => session.with_collective(c.clone()),
            None => session,
        }
    }

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
        self.options.check_workers(&self.spec)?;
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
                let session = self.distribute(session);
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
                let session = self.distribute(session);
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
                let session = self.distribute(session);
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
pub(super) fn new_writer(
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
pub(super) fn progress_bar(options: &RunOptions, total: u64, done: u64) -> ProgressBar {
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
pub(super) fn train_loop<B: AutodiffBackend, M: TrainableModel<B>>(
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
        let parts =
            prepared.step_batches::<B>(&ids, spec.run.micro_batches, |_| true, session.device());
        let out = session.train_step(&parts);
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
        exchange_seconds: session.exchange_time().as_secs_f64(),
        last_loss,
        init,
        bytes_written,
        signed_by: job
            .signing_key
            .as_ref()
            .map(|k| run_trust::signature::fingerprint(&k.verifying_key().to_bytes())),
    })
}
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
