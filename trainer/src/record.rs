//! Writing a run: ledger records, segments and checkpoints, in the order the format requires
//! (segment `i` before checkpoint `i`), every object write-once.

use ed25519_dalek::SigningKey;
use snapshot_format::delta::Reference;
use snapshot_format::ledger::{Segment, StepRecord};
use snapshot_format::signature::{self, Statement, kind};
use snapshot_format::snapshot::{Provenance, SnapshotKind, WriteOptions};
use snapshot_format::{Codec, Hash32, Store, layout};

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

/// Accumulates ledger records and writes segments and checkpoints.
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
    bytes_written: u64,
    options: WriteOptions,
    /// With the delta codec: the last checkpoint, which the next is encoded against.
    reference: Option<Reference>,
    signer: Option<RunSigner>,
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
            reference: None,
            options,
            store,
            run_id: run_id.to_string(),
            producer: format!("trainer {}", env!("CARGO_PKG_VERSION")),
            segment: next_segment,
            pending: Vec::new(),
            head,
            parent,
            bytes_written: 0,
        }
    }

    /// Encode the next checkpoint against `reference` (the checkpoint a resumed run continues
    /// from), when the codec stores deltas.
    pub fn continuing_from(mut self, reference: impl FnOnce() -> Reference) -> Self {
        if self.options.codec == Codec::Delta {
            self.reference = Some(reference());
        }
        self
    }

    /// Sign every segment and checkpoint written from now on.
    pub fn signed_by(mut self, signer: Option<RunSigner>) -> Self {
        self.signer = signer;
        self
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

    /// Bytes written to the store so far by this writer.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Append a record (its `prev_hash` must be [`Self::head`]).
    pub fn record(&mut self, record: StepRecord) {
        debug_assert_eq!(record.prev_hash, self.head);
        self.head = record.hash();
        self.pending.push(record);
    }

    /// Write the pending records as the next segment, then the checkpoint of `state`.
    pub fn checkpoint(
        &mut self,
        state: &TrainingState,
        hashes: &[Hash32],
        root: Hash32,
    ) -> Result<()> {
        if !self.pending.is_empty() {
            let segment = Segment {
                index: self.segment,
                records: std::mem::take(&mut self.pending),
            };
            let bytes = segment.encode();
            self.bytes_written += bytes.len() as u64;
            let key = layout::segment(self.segment);
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
            self.segment += 1;
        }
        let provenance = Provenance {
            run_id: self.run_id.clone(),
            kind: SnapshotKind::Checkpoint,
            parent: self.parent,
            producer: self.producer.clone(),
        };
        let encoded = state.encode(hashes, &provenance, self.options, self.reference.as_ref())?;
        let next = (self.options.codec == Codec::Delta)
            .then(|| Reference::new(state.meta.step, root, &state.views(), &encoded.depths));
        self.bytes_written += encoded.len();
        let key = layout::checkpoint(state.meta.step);
        self.store.put_once_parts(&key, encoded.into_parts())?;
        if let Some(s) = &self.signer {
            s.sign(&self.store, &key, kind::CHECKPOINT, state.meta.step, root)?;
        }
        self.parent = Some(root);
        self.reference = next;
        Ok(())
    }
}
