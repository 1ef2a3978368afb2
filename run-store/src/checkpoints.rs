//! A run's checkpoints read from its store: streamed, with delta chains reconstructed
//! (specs/snapshot-format.md §3.3.2). Each read follows at most `MAX_DELTA_DEPTH + 1`
//! objects, and an object must hold the step its key names.

use std::sync::{Arc, Mutex};

use snapshot_format::limits::{MAX_DELTA_DEPTH, ReadLimits};
use snapshot_format::snapshot::{self, Header, Snapshot};
use snapshot_format::{Error, Result, layout, snapshot::References};

use crate::storage::{ObjectReader, Store};

/// Reads a run's checkpoints from its store, streaming them and reconstructing delta chains.
/// The last checkpoint read is kept: reading checkpoints in step order (as `check`, `verify`
/// and `rollback` do) decodes each one once. While a delta checkpoint is decoded its
/// reference's tensors are freed as they are used, so `check` holds about one state.
#[derive(Debug)]
pub struct CheckpointReader {
    store: Store,
    limits: ReadLimits,
    /// The last checkpoint decoded, for the delta that follows it.
    last: Mutex<Option<(u64, Arc<Snapshot>)>>,
}

impl CheckpointReader {
    /// A reader of the checkpoints in `store`, each decoded under `limits`.
    pub fn new(store: Store, limits: ReadLimits) -> Self {
        CheckpointReader {
            store,
            limits,
            last: Mutex::new(None),
        }
    }

    /// The kept checkpoint if it is the one at `step`; `take` moves it out of the reader.
    fn cached(&self, step: u64, take: bool) -> Option<Arc<Snapshot>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((s, _)) if *s == step && take => last.take().map(|(_, snap)| snap),
            Some((s, snap)) if *s == step => Some(snap.clone()),
            _ => None,
        }
    }

    fn keep(&self, step: u64, snap: &Arc<Snapshot>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((step, snap.clone()));
    }

    /// The checkpoint at `step`, decoded with every tensor hash and the state root verified
    /// (through its whole delta chain).
    pub fn read(&self, step: u64) -> Result<Arc<Snapshot>> {
        if let Some(snap) = self.cached(step, false) {
            return Ok(snap);
        }
        let snap = self.stream(step).0?;
        self.keep(step, &snap);
        Ok(snap)
    }

    /// The checkpoint at `step`, as [`CheckpointReader::read`] gives it, owned: the reader is
    /// dropped first, so that the snapshot is moved out rather than copied.
    pub fn take(self, step: u64) -> Result<Snapshot> {
        let snap = self.read(step)?;
        drop(self);
        Ok(Arc::unwrap_or_clone(snap))
    }

    /// The verified header of the checkpoint stored at `step`, read from the start of the
    /// object alone: its tensors are neither read nor checked.
    pub fn header(&self, step: u64) -> Result<Header> {
        self.with_object(step, |reader| Ok(reader.header().clone()))
            .0
    }

    /// Check the checkpoint stored at `step` as [`CheckpointReader::read`] does, reading it
    /// from the store even when it was read before: the verified header, and the bytes read
    /// (on failure too). With `keep` (a run of delta checkpoints), the decoded checkpoint is
    /// kept for the delta that follows; without, tensors that are not deltas are hashed
    /// without keeping their values. Either way every check is made; `keep` only saves
    /// reading the checkpoint again when a delta names it.
    pub fn check(&self, step: u64, keep: bool) -> (Result<Header>, u64) {
        if keep {
            let (snap, bytes) = self.stream(step);
            let header = snap.map(|snap| {
                self.keep(step, &snap);
                snap.header.clone()
            });
            return (header, bytes);
        }
        let refs = self.references(&layout::checkpoint(step));
        self.with_object(step, |reader| reader.verify_all(Some(&refs)))
    }

    /// The references of the checkpoint `key` (read here, or whole by a caller), resolved
    /// from the store as [`CheckpointReader::read`] resolves them.
    pub fn references(&self, key: &str) -> impl References + '_ {
        Chain {
            reader: self,
            objects: MAX_CHAIN_OBJECTS - 1,
            of: key.to_string(),
        }
    }

    /// Stream checkpoint `step` from the store (the encoded object is never held whole) and
    /// decode and verify it, resolving its references; with the bytes read.
    fn stream(&self, step: u64) -> (Result<Arc<Snapshot>>, u64) {
        self.stream_within(step, MAX_CHAIN_OBJECTS)
    }

    /// [`CheckpointReader::stream`] reading at most `objects` checkpoints for it, this one
    /// included: the references it names are resolved within `objects - 1`.
    fn stream_within(&self, step: u64, objects: u64) -> (Result<Arc<Snapshot>>, u64) {
        let refs = Chain {
            reader: self,
            objects: objects.saturating_sub(1),
            of: layout::checkpoint(step),
        };
        let (snap, bytes) = self.with_object(step, |reader| reader.decode_all(Some(&refs)));
        (snap.map(Arc::new), bytes)
    }

    /// `f` of a streaming reader of checkpoint `step`, and the bytes it read. The object must
    /// hold the checkpoint of `step`: one stored under another step's key is refused before
    /// any of its tensors (or the references they name) is read.
    fn with_object<T>(
        &self,
        step: u64,
        f: impl FnOnce(snapshot::SnapshotReader<&mut ObjectReader>) -> Result<T>,
    ) -> (Result<T>, u64) {
        let key = layout::checkpoint(step);
        let mut object = match self.store.reader(&key) {
            Ok(object) => object,
            Err(e) => return (Err(e), 0),
        };
        let result =
            snapshot::SnapshotReader::new(&mut object, &key, &self.limits).and_then(|reader| {
                match reader.header().state.step {
                    found if found != step => Err(Error::MisplacedCheckpoint {
                        artefact: key.clone(),
                        expected: step,
                        found,
                    }),
                    _ => f(reader),
                }
            });
        (result, object.bytes_read())
    }
}

/// The most checkpoints one read may touch: a tensor of depth `MAX_DELTA_DEPTH` and the
/// checkpoints of its chain down to the keyframe.
const MAX_CHAIN_OBJECTS: u64 = MAX_DELTA_DEPTH as u64 + 1;

/// The references of one checkpoint being read: each is read from its own key (so it holds
/// that step, [`CheckpointReader::with_object`]) within what is left of the chain's budget of
/// objects. Steps strictly decrease along a chain and the budget is fixed, so no data can make
/// a read loop or recurse deeper than [`MAX_CHAIN_OBJECTS`].
struct Chain<'r> {
    reader: &'r CheckpointReader,
    /// Checkpoints the references may still read.
    objects: u64,
    /// The checkpoint whose references these are.
    of: String,
}

/// As a delta's reference, the kept checkpoint is handed over, not shared: the decoder frees
/// each of its tensors once the delta tensor is decoded (deltas name the checkpoint before
/// theirs, which is needed once).
impl References for Chain<'_> {
    fn checkpoint(&self, step: u64) -> Result<Arc<Snapshot>> {
        if let Some(snap) = self.reader.cached(step, true) {
            return Ok(snap);
        }
        if self.objects == 0 {
            return Err(Error::ChainTooDeep {
                artefact: self.of.clone(),
                max: MAX_CHAIN_OBJECTS,
            });
        }
        self.reader.stream_within(step, self.objects).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PutOutcome;
    use snapshot_format::Codec;
    use snapshot_format::delta::{DEFAULT_TRANSFORM, PREFIX_LEN, Transform};
    use snapshot_format::snapshot::{Provenance, SnapshotKind, StateMeta};
    use snapshot_format::testing::{delta_chain, delta_options, delta_state, views};

    fn run_store(objects: &[(Vec<u8>, Vec<u32>)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path().to_str().expect("utf-8")).expect("store");
        for (step, (bytes, _)) in objects.iter().enumerate() {
            store
                .put_new(&layout::checkpoint(step as u64), bytes.clone())
                .expect("put");
        }
        (dir, store)
    }

    /// The error a chain of `DeltaReferenceUnavailable` ends in.
    fn innermost(mut e: &Error) -> &Error {
        while let Error::DeltaReferenceUnavailable { source, .. } = e {
            e = source;
        }
        e
    }

    /// A checkpoint object stored under another step's key holds what it holds, not what its
    /// key says: refused as misplaced before any reference it names is read, so no copy or
    /// swap of checkpoint files can make a read follow a chain back to itself.
    #[test]
    fn a_checkpoint_under_another_steps_key_is_misplaced() {
        let mut objects = delta_chain(5, 8, DEFAULT_TRANSFORM);
        // Checkpoint 3 names checkpoint 2 as its reference; a copy of it at 2's key names 2
        // again: a cycle for a reader that trusts the object's own step.
        objects[2] = objects[3].clone();
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        for e in [
            reader.read(2).expect_err("misplaced"),
            reader.header(2).expect_err("misplaced"),
            reader.check(2, false).0.expect_err("misplaced"),
        ] {
            assert!(
                matches!(
                    e,
                    Error::MisplacedCheckpoint {
                        expected: 2,
                        found: 3,
                        ..
                    }
                ),
                "{e}"
            );
        }
        for step in [3u64, 4] {
            let e = reader.read(step).expect_err("unrecoverable");
            assert!(
                matches!(e, Error::DeltaReferenceUnavailable { .. })
                    && matches!(
                        innermost(&e),
                        Error::MisplacedCheckpoint { expected: 2, .. }
                    ),
                "{step}: {e}"
            );
        }
        assert!(reader.read(1).is_ok(), "the chain below the copy is intact");
    }

    /// However many checkpoints a chain spans and whatever depths its deltas claim, a read
    /// touches at most `MAX_DELTA_DEPTH + 1` of them.
    #[test]
    fn no_read_follows_a_chain_beyond_its_budget() {
        let n = MAX_CHAIN_OBJECTS + 5;
        let mut objects = delta_chain(n, u32::MAX, DEFAULT_TRANSFORM);
        // Each delta claims depth 1: a lie found only where the chain is checked, below.
        for (step, (bytes, _)) in objects.iter_mut().enumerate().skip(1) {
            let key = layout::checkpoint(step as u64);
            // The table alone: a delta's prefix (depth 65 and more here) is not parsed yet.
            let header = snapshot::SnapshotReader::new(
                std::io::Cursor::new(&*bytes),
                &key,
                &ReadLimits::default(),
            )
            .expect("header")
            .header()
            .clone();
            let data: u64 = header.tensors.iter().map(|t| t.encoded_len).sum();
            let start =
                bytes.len() as u64 - snapshot_format::envelope::END_MARKER.len() as u64 - data;
            for t in header.tensors.iter().filter(|t| t.codec == Codec::Delta) {
                let at = (start + t.offset) as usize + 40;
                bytes[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            }
        }
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        let e = reader.read(n - 1).expect_err("too long a chain");
        assert!(
            matches!(innermost(&e), Error::ChainTooDeep { max, .. } if *max == MAX_CHAIN_OBJECTS),
            "{e}"
        );
        // Within the budget, the lie itself is what the read reports.
        let e = reader.read(3).expect_err("a depth that does not fit");
        assert!(
            matches!(innermost(&e), Error::DeltaReferenceMismatch { .. }),
            "{e}"
        );
    }

    #[test]
    fn a_chain_round_trips_with_a_keyframe_every_k() {
        let objects = delta_chain(7, 3, DEFAULT_TRANSFORM);
        let depths: Vec<u32> = objects.iter().map(|(_, d)| d[2]).collect();
        // Tensor "w" (third in name order): keyframe, 1, 2, keyframe, 1, 2, keyframe.
        assert_eq!(depths, [0, 1, 2, 0, 1, 2, 0]);
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        for step in (0..7u64).rev() {
            let snap = reader.read(step).expect("reconstructs");
            let expected = delta_state(step);
            for (name, _, _, data) in &expected {
                assert_eq!(snap.tensor(name).expect("tensor").1, data.as_slice());
            }
            let (checked, bytes) = reader.check(step, true);
            assert_eq!(checked.expect("verifies"), snap.header);
            assert_eq!(bytes, objects[step as usize].0.len() as u64);
        }
        // A delta is smaller than the keyframe it follows.
        assert!(objects[1].0.len() < objects[0].0.len());
    }

    /// A checkpoint written in parts as it is produced reads back as the object encoded
    /// whole; written again it is found identical, and other bytes are a conflict that leaves
    /// it whole.
    #[test]
    fn a_checkpoint_streamed_into_parts_reads_back_whole() {
        let whole = delta_chain(2, 8, DEFAULT_TRANSFORM).remove(1).0;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path().to_str().expect("utf-8"))
            .expect("store")
            .with_max_put_bytes(4096);
        let put = |object: Vec<u8>| {
            store.put_once_streamed("checkpoints/x.snap", |sink| {
                for piece in object[100..].chunks(1000) {
                    sink(piece)?;
                }
                Ok((object[..100].to_vec(), ()))
            })
        };
        assert_eq!(put(whole.clone()).expect("create").0, PutOutcome::Created);
        assert_eq!(store.get("checkpoints/x.snap").expect("get"), whole);
        assert_eq!(
            put(whole.clone()).expect("again").0,
            PutOutcome::AlreadyPresent
        );
        let mut other = whole.clone();
        other[150] ^= 1;
        assert!(matches!(put(other), Err(Error::ObjectConflict { .. })));
        assert_eq!(store.get("checkpoints/x.snap").expect("get"), whole);
    }

    /// A checkpoint's header is read from the start of the object alone: with its last part
    /// gone, the header still reads while the checkpoint does not.
    #[test]
    fn a_header_is_read_from_the_start_of_the_object_alone() {
        let objects = delta_chain(1, 8, DEFAULT_TRANSFORM);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path().to_str().expect("utf-8"))
            .expect("store")
            .with_max_put_bytes(4096);
        let key = layout::checkpoint(0);
        store.put_new(&key, objects[0].0.clone()).expect("put");
        let index = std::fs::read(dir.path().join(&key)).expect("index");
        let index = snapshot_format::parts::PartIndex::decode(&index, &key).expect("index");
        assert!(index.parts.len() > 2, "{index:?}");
        let last = index.parts.last().expect("parts").hash;
        std::fs::remove_file(
            dir.path()
                .join(snapshot_format::parts::part_key(&key, &last)),
        )
        .expect("remove the last part");
        let reader = CheckpointReader::new(store, ReadLimits::default());
        let header = reader.header(0).expect("header");
        assert_eq!(header.state.step, 0);
        assert!(matches!(reader.read(0), Err(Error::PartMissing { .. })));
    }

    #[test]
    fn a_delta_needs_its_reference() {
        let objects = delta_chain(2, 8, DEFAULT_TRANSFORM);
        let key = layout::checkpoint(1);
        for err in [
            snapshot::decode(&objects[1].0, &key, &ReadLimits::default()).map(|_| ()),
            snapshot::verify(&objects[1].0, &key, &ReadLimits::default()).map(|_| ()),
        ] {
            match err {
                Err(Error::DeltaWithoutReferences { reference, .. }) => {
                    assert_eq!(reference, layout::checkpoint(0))
                }
                other => panic!("expected DeltaWithoutReferences, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_lost_reference_makes_every_later_delta_unrecoverable() {
        let objects = delta_chain(4, 8, DEFAULT_TRANSFORM);
        let (dir, store) = run_store(&objects);
        std::fs::remove_file(dir.path().join(layout::checkpoint(1))).expect("remove");
        let reader = CheckpointReader::new(store, ReadLimits::default());
        assert!(reader.read(0).is_ok());
        for step in [2u64, 3] {
            let err = reader.read(step).expect_err("unrecoverable");
            assert!(err.is_integrity_violation(), "{err}");
            let text = err.to_string();
            assert!(text.contains(&layout::checkpoint(step)), "{text}");
            assert!(text.contains(&layout::checkpoint(1)), "{text}");
            assert!(text.contains("missing"), "{text}");
        }
    }

    #[test]
    fn a_reference_with_another_root_is_refused() {
        let objects = delta_chain(2, 8, DEFAULT_TRANSFORM);
        // Step 0 replaced by a checkpoint of other content (state of step 0 with "n" changed).
        let mut forged = delta_state(0);
        forged[2].3 = 99i64.to_le_bytes().to_vec();
        let v = views(&forged);
        let enc = snapshot::encode(
            &StateMeta::default(),
            &Provenance {
                run_id: "delta-test".into(),
                kind: SnapshotKind::Checkpoint,
                parent: None,
                producer: "test".into(),
            },
            &v,
            None,
            delta_options(8),
        )
        .expect("encode");
        assert_ne!(enc.to_vec(), objects[0].0);
        let (_dir, store) = run_store(&[(enc.to_vec(), vec![]), objects[1].clone()]);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        match reader.read(1) {
            Err(Error::DeltaReferenceMismatch { detail, .. }) => {
                assert!(detail.contains("state root"), "{detail}")
            }
            other => panic!("expected DeltaReferenceMismatch, got {other:?}"),
        }
    }

    #[test]
    fn an_xor_chain_decodes_through_the_reader() {
        let objects = delta_chain(4, 8, Transform::Xor);
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        for step in 0..4u64 {
            let snap = reader.read(step).expect("reconstructs");
            for t in &snap.header.tensors {
                if step > 0 {
                    assert_eq!(t.delta.map(|d| d.transform), Some(Transform::Xor));
                }
            }
            for (name, _, _, data) in &delta_state(step) {
                assert_eq!(snap.tensor(name).expect("tensor").1, data.as_slice());
            }
        }
    }

    /// Offset of tensor `name`'s encoding within the object.
    fn tensor_offset(bytes: &[u8], name: &str) -> usize {
        let h = snapshot::read_header(bytes, "t", &ReadLimits::default()).expect("header");
        let t = &h.tensors[h.find(name).expect("tensor")];
        let data_start =
            bytes.len() - snapshot_format::envelope::END_MARKER.len() - h.data_len() as usize;
        data_start + t.offset as usize
    }

    #[test]
    fn damaged_deltas_are_specific_errors() {
        let objects = delta_chain(3, 8, DEFAULT_TRANSFORM);
        let at = tensor_offset(&objects[2].0, "w");
        let cases: [(usize, u8, &str); 4] = [
            // depth 2 -> 3: does not follow the reference's tensor (depth 1).
            (at + 40, 3, "chain depth"),
            // depth 0: outside the allowed range.
            (at + 40, 0, "outside"),
            // transform 7: unknown.
            (at + 44, 7, "transform"),
            // inner codec 3: a delta inside a delta.
            (at + 45, 3, "inner codec"),
        ];
        for (offset, byte, expected) in cases {
            let mut bad = objects.clone();
            bad[2].0[offset] = byte;
            let (_dir, store) = run_store(&bad);
            let reader = CheckpointReader::new(store, ReadLimits::default());
            let err = reader.read(2).expect_err("refused").to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        // A flipped bit in the XOR bytes: the tensor hash no longer matches.
        let mut bad = objects.clone();
        let last = at + PREFIX_LEN + 20;
        bad[2].0[last] ^= 0x10;
        let (_dir, store) = run_store(&bad);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        let err = reader.read(2).expect_err("refused");
        assert!(
            matches!(
                err,
                Error::TensorHashMismatch { .. } | Error::Decompress { .. }
            ),
            "{err:?}"
        );
    }
}
