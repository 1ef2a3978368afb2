//! Writing a run: ledger records, segments and checkpoints, in the order the format requires
//! (segment `i` before checkpoint `i`), every object write-once.

use ed25519_dalek::SigningKey;
use run_store::Store;
use run_trust::signature::{self, Statement, kind};
use snapshot_format::ledger::{Segment, StepRecord};
use snapshot_format::snapshot::Reference;
use snapshot_format::snapshot::{self, Provenance, SnapshotKind, WriteOptions};
use snapshot_format::{Codec, Hash32, layout};

use crate::error::Result;
use crate::session::TrainingState;

/// Signs a run's artefacts as they are written (`specs/signatures.md`).
#[derive(Debug, Clone)]
pub struct RunSigner {
    key: SigningKey,
    run_id: String,
    genesis: Hash32,
}

impl RunSigner {
    /// A signer of the run with `run_id` and `genesis`.
    pub fn new(key: SigningKey, run_id: &str, genesis: Hash32) -> Self {
        RunSigner {
            key,
            run_id: run_id.to_string(),
            genesis,
        }
    }

    /// Sign the artefact at `artefact` (of `kind`, committing to `hash` at `step`) and store the
    /// signature write-once next to the signer's other signatures.
    pub fn sign(
        &self,
        store: &Store,
        artefact: &str,
        kind: &str,
        step: u64,
        hash: Hash32,
    ) -> Result<()> {
        let signed = signature::sign(
            Statement {
                kind: kind.to_string(),
                run_id: self.run_id.clone(),
                genesis: self.genesis,
                step,
                hash,
            },
            &self.key,
        );
        let key = signature::key_for(&signed.public_key, artefact);
        store.put_once(&key, signed.encode())?;
        Ok(())
    }
}

/// Accumulates ledger records and writes segments and checkpoints, on the caller's thread or,
/// after [`RunWriter::in_background`], on a writer thread that encodes and stores each
/// checkpoint while training goes on.
#[derive(Debug)]
pub struct RunWriter {
    store: Store,
    run_id: String,
    producer: String,
    /// Index of the segment being filled (1-based).
    segment: u64,
    pending: Vec<StepRecord>,
    head: Hash32,
    /// State root of the last checkpoint written.
    parent: Option<Hash32>,
    signer: Option<RunSigner>,
    sink: Sink,
}

/// Where segments and checkpoints are written.
#[derive(Debug)]
enum Sink {
    Here(Box<Writes>),
    /// `None` once the thread has stopped on an error (already returned).
    Background(Option<Worker>),
}

/// A writer thread and the channel that hands it one checkpoint at a time: a send waits until
/// the thread has finished the previous checkpoint, so at most one is in flight (memory stays
/// bounded by the state in flight, plus the delta reference).
#[derive(Debug)]
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
    thread: std::thread::JoinHandle<Result<Writes>>,
}

/// A segment (if records are pending) and the checkpoint that ends it, written in this order.
struct Job {
    segment: Option<Segment>,
    state: TrainingState,
    hashes: Vec<Hash32>,
    root: Hash32,
    provenance: Provenance,
}

/// What writing needs: the store, the codec settings, the signer, and for deltas the last
/// checkpoint.
#[derive(Debug)]
struct Writes {
    store: Store,
    options: WriteOptions,
    /// With the delta codec: the last checkpoint, which the next is encoded against.
    reference: Option<Reference>,
    signer: Option<RunSigner>,
    bytes_written: u64,
}

impl Writes {
    fn write(&mut self, job: Job) -> Result<()> {
        if let Some(segment) = job.segment {
            let bytes = segment.encode();
            self.bytes_written += bytes.len() as u64;
            let key = layout::segment(segment.index);
            self.store.put_once(&key, bytes)?;
            if let Some(s) = &self.signer {
                s.sign(
                    &self.store,
                    &key,
                    kind::SEGMENT,
                    segment.last_step(),
                    segment.head(),
                )?;
            }
        }
        let state = &job.state;
        let key = layout::checkpoint(state.meta.step);
        let raw: u64 = state.tensors.iter().map(|t| t.bytes().len() as u64).sum();
        let depths = if raw > self.store.streams_above() {
            // A large checkpoint goes up in parts as it is encoded, never whole in memory.
            let (views, reference) = (state.views(), self.reference.as_ref());
            let mut written = 0u64;
            let (_, streamed) = self.store.put_once_streamed(&key, |sink| {
                let streamed = snapshot::encode_streaming(
                    &state.meta,
                    &job.provenance,
                    &views,
                    Some(&job.hashes),
                    self.options,
                    reference,
                    &mut |bytes| {
                        written += bytes.len() as u64;
                        sink(bytes)
                    },
                )?;
                Ok((streamed.head.clone(), streamed))
            })?;
            self.bytes_written += written + streamed.head.len() as u64;
            streamed.depths
        } else {
            let encoded = state.encode(
                &job.hashes,
                &job.provenance,
                self.options,
                self.reference.as_ref(),
            )?;
            self.bytes_written += encoded.len();
            let depths = encoded.depths.clone();
            self.store.put_once_parts(&key, encoded.into_parts())?;
            depths
        };
        let next = (self.options.codec == Codec::Delta)
            .then(|| Reference::new(state.meta.step, job.root, &state.views(), &depths));
        if let Some(s) = &self.signer {
            s.sign(
                &self.store,
                &key,
                kind::CHECKPOINT,
                state.meta.step,
                job.root,
            )?;
        }
        self.reference = next;
        Ok(())
    }
}

impl Worker {
    /// Stop taking checkpoints and wait for the one in flight; the thread's result.
    fn join(self) -> Result<Writes> {
        drop(self.jobs);
        self.thread.join().unwrap_or_else(|_| {
            Err(crate::error::Error::Run {
                store: String::new(),
                detail: "the checkpoint writer thread panicked".into(),
            })
        })
    }
}

impl RunWriter {
    /// A writer continuing after `head` (the genesis for a new run), whose next segment is
    /// `next_segment`, after a checkpoint with root `parent` (if any).
    pub fn new(
        store: Store,
        run_id: &str,
        head: Hash32,
        next_segment: u64,
        parent: Option<Hash32>,
    ) -> Self {
        Self::with_options(
            store,
            run_id,
            head,
            next_segment,
            parent,
            WriteOptions::default(),
        )
    }

    /// [`Self::new`] writing checkpoints with `options`.
    pub fn with_options(
        store: Store,
        run_id: &str,
        head: Hash32,
        next_segment: u64,
        parent: Option<Hash32>,
        options: WriteOptions,
    ) -> Self {
        RunWriter {
            signer: None,
            sink: Sink::Here(Box::new(Writes {
                store: store.clone(),
                options,
                reference: None,
                signer: None,
                bytes_written: 0,
            })),
            store,
            run_id: run_id.to_string(),
            producer: format!("trainer {}", env!("CARGO_PKG_VERSION")),
            segment: next_segment,
            pending: Vec::new(),
            head,
            parent,
        }
    }

    /// Encode the next checkpoint against `reference` (the checkpoint a resumed run continues
    /// from), when the codec stores deltas. Before [`Self::in_background`].
    pub fn continuing_from(mut self, reference: impl FnOnce() -> Reference) -> Self {
        if let Sink::Here(w) = &mut self.sink
            && w.options.codec == Codec::Delta
        {
            w.reference = Some(reference());
        }
        self
    }

    /// Sign every segment and checkpoint written from now on. Before [`Self::in_background`].
    pub fn signed_by(mut self, signer: Option<RunSigner>) -> Self {
        if let Sink::Here(w) = &mut self.sink {
            w.signer = signer.clone();
        }
        self.signer = signer;
        self
    }

    /// Write segments and checkpoints from now on on a thread of their own: [`Self::checkpoint`]
    /// hands the state over and returns, waiting only while the previous checkpoint
    /// is still being written. Call [`Self::finish`] before anything that names the last
    /// checkpoint (the completion record).
    pub fn in_background(mut self) -> Result<Self> {
        if let Sink::Here(w) = std::mem::replace(&mut self.sink, Sink::Background(None)) {
            let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(0);
            let mut writes = *w;
            let thread = std::thread::Builder::new()
                .name("checkpoint-writer".into())
                .spawn(move || {
                    for job in rx {
                        writes.write(job)?;
                    }
                    Ok(writes)
                })
                .map_err(|e| crate::error::Error::Run {
                    store: self.store.location().to_string(),
                    detail: format!("cannot start the checkpoint writer thread: {e}"),
                })?;
            self.sink = Sink::Background(Some(Worker { jobs, thread }));
        }
        Ok(self)
    }

    /// The signer, if the run is signed.
    pub fn signer(&self) -> Option<&RunSigner> {
        self.signer.as_ref()
    }

    /// The ledger head: hash of the last record (or the genesis).
    pub fn head(&self) -> Hash32 {
        self.head
    }

    /// State root of the last checkpoint written (or continued from), if any.
    pub fn last_checkpoint_root(&self) -> Option<Hash32> {
        self.parent
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wait until every segment and checkpoint handed over is stored; the bytes written.
    pub fn finish(mut self) -> Result<u64> {
        match std::mem::replace(&mut self.sink, Sink::Background(None)) {
            Sink::Here(w) => Ok(w.bytes_written),
            Sink::Background(Some(worker)) => Ok(worker.join()?.bytes_written),
            Sink::Background(None) => Err(Self::stopped(&self.store)),
        }
    }

    fn stopped(store: &Store) -> crate::error::Error {
        crate::error::Error::Run {
            store: store.location().to_string(),
            detail: "the checkpoint writer stopped on an earlier error".into(),
        }
    }

    /// Append a record (its `prev_hash` must be [`Self::head`]).
    pub fn record(&mut self, record: StepRecord) {
        debug_assert_eq!(record.prev_hash, self.head);
        self.head = record.hash();
        self.pending.push(record);
    }

    /// Write the pending records as the next segment, then the checkpoint of `state` (in the
    /// background after [`Self::in_background`]); `hashes` are its tensor hashes and `root` its
    /// state root.
    pub fn checkpoint(
        &mut self,
        state: TrainingState,
        hashes: Vec<Hash32>,
        root: Hash32,
    ) -> Result<()> {
        let segment = (!self.pending.is_empty()).then(|| {
            let segment = Segment {
                index: self.segment,
                records: std::mem::take(&mut self.pending),
            };
            self.segment += 1;
            segment
        });
        let provenance = Provenance {
            run_id: self.run_id.clone(),
            kind: SnapshotKind::Checkpoint,
            parent: self.parent,
            producer: self.producer.clone(),
        };
        self.parent = Some(root);
        let job = Job {
            segment,
            state,
            hashes,
            root,
            provenance,
        };
        match &mut self.sink {
            Sink::Here(w) => w.write(job),
            Sink::Background(slot) => {
                let Some(worker) = slot.as_ref() else {
                    return Err(Self::stopped(&self.store));
                };
                if worker.jobs.send(job).is_ok() {
                    return Ok(());
                }
                // The thread stopped on an error: that error is the answer.
                match slot.take().map(Worker::join) {
                    Some(Err(e)) => Err(e),
                    _ => Err(Self::stopped(&self.store)),
                }
            }
        }
    }
}

impl Drop for RunWriter {
    /// A writer dropped without [`Self::finish`] (an error elsewhere) still lets the checkpoint
    /// in flight complete: no object is left half-written by the process itself.
    fn drop(&mut self) {
        if let Sink::Background(slot) = &mut self.sink
            && let Some(worker) = slot.take()
        {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::HostTensor;
    use burn::tensor::TensorData;
    use snapshot_format::snapshot::StateMeta;

    /// The state after `step`: two tensors drifting with the step.
    fn state(step: u64) -> TrainingState {
        let tensor = |name: &str, n: usize, scale: f32| {
            let values: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * scale + step as f32 * 1e-4)
                .collect();
            HostTensor {
                name: name.into(),
                shape: vec![n as u64],
                data: TensorData::new(values, [n]),
            }
        };
        TrainingState {
            meta: StateMeta {
                step,
                ..StateMeta::default()
            },
            tensors: vec![tensor("a", 3000, 0.02), tensor("b", 40, 1.0)],
        }
    }

    /// Write checkpoints 0, 5, 10 and 15 (records in between) with `writer`; the bytes written.
    fn write_run(mut writer: RunWriter) -> Result<u64> {
        for step in 0..=15u64 {
            if step > 0 {
                writer.record(StepRecord {
                    step,
                    epoch: 0,
                    lr_bits: 0,
                    example_ids: vec![step],
                    batch_hash: Hash32::ZERO,
                    loss_bits: 0,
                    grad_norm_bits: 0,
                    state_root: None,
                    prev_hash: writer.head(),
                });
            }
            if step % 5 == 0 {
                let s = state(step);
                let hashes = s.tensor_hashes();
                let root = s.root(&hashes)?;
                writer.checkpoint(s, hashes, root)?;
            }
        }
        writer.finish()
    }

    fn writer(dir: &std::path::Path) -> RunWriter {
        let store = Store::create(dir.to_str().expect("utf-8")).expect("store");
        RunWriter::with_options(
            store,
            "t",
            Hash32::ZERO,
            1,
            None,
            snapshot_format::manifest::CheckpointCodec::default().write_options(),
        )
    }

    #[test]
    fn background_and_foreground_writers_store_the_same_objects() {
        let t = tempfile::tempdir().expect("tmp");
        let (here, away) = (t.path().join("here"), t.path().join("away"));
        let a = write_run(writer(&here)).expect("foreground");
        let b = write_run(writer(&away).in_background().expect("thread")).expect("background");
        assert_eq!(a, b);
        for dir in [layout::CHECKPOINTS, layout::LEDGER] {
            let (x, y) = (
                run_store::testing::objects(&here.join(dir)),
                run_store::testing::objects(&away.join(dir)),
            );
            assert_eq!(x.len(), if dir == layout::LEDGER { 3 } else { 4 });
            assert!(x == y, "{dir} differ");
        }
    }

    /// A write that fails on the writer thread (here: a checkpoint already stored with other
    /// content) is returned by the next call, and nothing is overwritten.
    #[test]
    fn a_failed_background_write_is_returned() {
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("run");
        let key = layout::checkpoint(5);
        std::fs::create_dir_all(dir.join(layout::CHECKPOINTS)).expect("dir");
        std::fs::write(dir.join(&key), b"someone else's").expect("write");
        let err = write_run(writer(&dir).in_background().expect("thread"))
            .expect_err("the conflict is reported");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            std::fs::read(dir.join(&key)).expect("read"),
            b"someone else's"
        );
    }
}
