//! Codec 3, delta: a checkpoint's tensor stored against the tensor of the same name in an
//! earlier checkpoint of the run (its *reference*), as the XOR of the two or as the difference
//! of their elements read as integers (zigzag-encoded), itself stored with an inner codec
//! (planes, or raw when planes do not make it smaller).
//!
//! Consecutive checkpoints of a fine-tuning run share their signs, exponents and high mantissa
//! bits, so either transform is mostly zero bytes and compresses far below either checkpoint.
//! The difference beats the XOR where a small change carries across a mantissa byte (the
//! `checkpoint_codecs` benchmark), and the reference writer uses it.
//!
//! Layout (specs/snapshot-format.md §3.3.2), integers little-endian:
//!
//! ```text
//! u64 ref_step ‖ [u8; 32] ref_state_root ‖ u32 depth ‖ u8 transform ‖ u16 inner codec ‖ inner
//! ```
//!
//! The reference is the checkpoint at `ref_step` (`ref_step` before this snapshot's step) whose
//! state root is `ref_state_root`. `depth` is 1 when the reference's tensor is stored without
//! delta (a keyframe), and one more than the reference tensor's depth otherwise, at most
//! [`MAX_DELTA_DEPTH`]: reconstruction reads at most `depth + 1` objects, and a chain can
//! neither loop nor grow without bound. Readers resolve references through [`References`];
//! [`CheckpointReader`] resolves them from a run's store.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::dtype::{Codec, DType};
use crate::error::{Error, Result};
use crate::hash::Hash32;
use crate::layout;
use crate::limits::{MAX_DELTA_DEPTH, ReadLimits};
use crate::snapshot::{self, Header, Snapshot, TensorView};
use crate::storage::{ObjectReader, Store};

/// Bytes before the inner encoding.
pub const PREFIX_LEN: usize = 8 + 32 + 4 + 1 + 2;

/// How a delta tensor's bytes relate to its reference's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// 0: the XOR of the raw bytes; the inner codec sees the tensor's own dtype.
    Xor,
    /// 1: for each element, its raw bits minus the reference element's, as integers of the
    /// element's width (wrapping), zigzag-encoded so that small changes of either sign are
    /// small numbers; the inner codec sees them as unsigned integers of that width.
    Difference,
}

impl Transform {
    fn id(self) -> u8 {
        match self {
            Transform::Xor => 0,
            Transform::Difference => 1,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Transform::Xor),
            1 => Some(Transform::Difference),
            _ => None,
        }
    }

    /// The dtype the inner codec encodes for a tensor of `dtype`.
    pub fn inner_dtype(self, dtype: DType) -> DType {
        match (self, dtype.size()) {
            (Transform::Xor, _) => dtype,
            (Transform::Difference, 8) => DType::U64,
            (Transform::Difference, 4) => DType::U32,
            (Transform::Difference, 2) => DType::U16,
            (Transform::Difference, _) => DType::U8,
        }
    }

    /// The transform of `data` against `base` (same length, elements of `size` bytes).
    pub fn forward(self, data: &[u8], base: &[u8], size: usize) -> Vec<u8> {
        let mut out = data.to_vec();
        in_blocks(&mut out, base, size, |d, b| match self {
            Transform::Xor => xor_into(d, b),
            Transform::Difference => per_width(d, b, size, Op::Difference),
        });
        out
    }

    /// Undo [`Self::forward`] in place: `data` holds the transform, `base` the reference.
    pub fn inverse(self, data: &mut [u8], base: &[u8], size: usize) {
        in_blocks(data, base, size, |d, b| match self {
            Transform::Xor => xor_into(d, b),
            Transform::Difference => per_width(d, b, size, Op::Undo),
        });
    }

    /// Undo [`Self::forward`] into the reference: `base` holds the reference and becomes the
    /// tensor, `data` holds the transform.
    pub fn inverse_into_base(self, base: &mut [u8], data: &[u8], size: usize) {
        in_blocks(base, data, size, |b, d| match self {
            Transform::Xor => xor_into(b, d),
            Transform::Difference => per_width(b, d, size, Op::UndoIntoBase),
        });
    }
}

/// `f` over `target` and `other` (equal lengths) in parallel blocks of whole elements.
fn in_blocks(target: &mut [u8], other: &[u8], size: usize, f: impl Fn(&mut [u8], &[u8]) + Sync) {
    let block = size.max(1) << 14;
    target
        .par_chunks_mut(block)
        .zip(other.par_chunks(block))
        .for_each(|(t, o)| f(t, o));
}

/// What [`per_width`] computes into its target, element by element.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// target = zigzag(target - other)
    Difference,
    /// target = other + unzigzag(target)
    Undo,
    /// target = target + unzigzag(other)
    UndoIntoBase,
}

/// Zigzag difference or its inverse ([`Op`]) over elements of `size` bytes. Slices whose bytes
/// are aligned for the element type (the usual case: allocations are) are read as words, which
/// vectorises; others element by element from their bytes.
fn per_width(target: &mut [u8], other: &[u8], size: usize, op: Op) {
    macro_rules! run {
        ($u:ty, $i:ty) => {{
            const W: usize = std::mem::size_of::<$u>();
            let diff = |x: $u, y: $u| -> $u {
                let d = x.wrapping_sub(y) as $i;
                ((d << 1) ^ (d >> (W * 8 - 1))) as $u
            };
            let undo = |x: $u, y: $u| -> $u {
                let d = ((x >> 1) as $i) ^ -((x & 1) as $i);
                y.wrapping_add(d as $u)
            };
            let f = |t: $u, o: $u| -> $u {
                match op {
                    Op::Difference => diff(t, o),
                    Op::Undo => undo(t, o),
                    Op::UndoIntoBase => undo(o, t),
                }
            };
            macro_rules! words {
                ($f:expr) => {
                    if let (Ok(tw), Ok(ow)) = (
                        bytemuck::try_cast_slice_mut::<u8, $u>(target),
                        bytemuck::try_cast_slice::<u8, $u>(other),
                    ) {
                        for (x, y) in tw.iter_mut().zip(ow) {
                            *x = $f(<$u>::from_le(*x), <$u>::from_le(*y)).to_le();
                        }
                        return;
                    }
                };
            }
            // One loop per operation, so that each vectorises.
            match op {
                Op::Difference => words!(diff),
                Op::Undo => words!(undo),
                Op::UndoIntoBase => words!(|t, o| undo(o, t)),
            }
            for (x, y) in target.chunks_exact_mut(W).zip(other.chunks_exact(W)) {
                let mut xb = [0u8; W];
                xb.copy_from_slice(x);
                let mut yb = [0u8; W];
                yb.copy_from_slice(y);
                let v = f(<$u>::from_le_bytes(xb), <$u>::from_le_bytes(yb));
                x.copy_from_slice(&v.to_le_bytes());
            }
        }};
    }
    match size {
        8 => run!(u64, i64),
        4 => run!(u32, i32),
        2 => run!(u16, i16),
        _ => run!(u8, i8),
    }
}

/// Keyframe interval of the reference writer: every 8th checkpoint is stored whole, so that
/// reading any checkpoint reads at most 8 objects (the `checkpoint_codecs` benchmark: the
/// average checkpoint is within a few percent of an endless chain's).
pub const DEFAULT_KEYFRAME_EVERY: u32 = 8;

/// The reference a delta tensor names, and how its XOR is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaRef {
    /// Step of the reference checkpoint.
    pub step: u64,
    /// State root of the reference checkpoint.
    pub root: Hash32,
    /// Position in the chain: 1 against a keyframe tensor.
    pub depth: u32,
    /// How the stored bytes relate to the reference's.
    pub transform: Transform,
    /// Codec of the transformed bytes: raw, zstd or planes.
    pub inner: Codec,
}

impl DeltaRef {
    /// Store key of the reference checkpoint.
    pub fn key(&self) -> String {
        layout::checkpoint(self.step)
    }

    fn prefix(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        out[..8].copy_from_slice(&self.step.to_le_bytes());
        out[8..40].copy_from_slice(&self.root.0);
        out[40..44].copy_from_slice(&self.depth.to_le_bytes());
        out[44] = self.transform.id();
        out[45..47].copy_from_slice(&self.inner.id().to_le_bytes());
        out
    }

    /// Split a codec-3 encoding into its reference and inner encoding, rejecting a prefix that
    /// is short, a depth outside `1..=MAX_DELTA_DEPTH`, an unknown transform, or an inner codec
    /// that is not raw, zstd or planes.
    pub fn parse<'a>(
        encoded: &'a [u8],
        artefact: &str,
        tensor: &str,
    ) -> Result<(DeltaRef, &'a [u8])> {
        let corrupt = |detail: String| Error::Decompress {
            artefact: artefact.to_string(),
            tensor: tensor.to_string(),
            detail: format!("delta: {detail}"),
        };
        let Some((prefix, inner)) = encoded.split_first_chunk::<PREFIX_LEN>() else {
            return Err(corrupt(format!(
                "{} bytes, shorter than the {PREFIX_LEN}-byte reference",
                encoded.len()
            )));
        };
        let word = |range: std::ops::Range<usize>| &prefix[range];
        let step = u64::from_le_bytes(word(0..8).try_into().unwrap_or_default());
        let mut root = [0u8; 32];
        root.copy_from_slice(word(8..40));
        let depth = u32::from_le_bytes(word(40..44).try_into().unwrap_or_default());
        let transform_id = prefix[44];
        let inner_id = u16::from_le_bytes(word(45..47).try_into().unwrap_or_default());
        if depth == 0 || depth > MAX_DELTA_DEPTH {
            return Err(corrupt(format!(
                "chain depth {depth} is outside 1..={MAX_DELTA_DEPTH}"
            )));
        }
        let transform = Transform::from_id(transform_id)
            .ok_or_else(|| corrupt(format!("transform {transform_id} is not 0 or 1")))?;
        let inner_codec = match Codec::from_id(inner_id) {
            Some(c @ (Codec::Raw | Codec::Zstd | Codec::Planes)) => c,
            _ => return Err(corrupt(format!("inner codec {inner_id} is not 0, 1 or 2"))),
        };
        Ok((
            DeltaRef {
                step,
                root: Hash32(root),
                depth,
                transform,
                inner: inner_codec,
            },
            inner,
        ))
    }
}

/// XOR `other` into `data` (equal lengths).
fn xor_into(data: &mut [u8], other: &[u8]) {
    data.iter_mut().zip(other).for_each(|(x, y)| *x ^= y);
}

/// One tensor of a [`Reference`].
#[derive(Debug, Clone)]
pub struct RefTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
    /// 0 when stored without delta.
    pub depth: u32,
}

/// The checkpoint a writer encodes the next one against: its step, state root and raw tensors
/// with their chain depths.
#[derive(Debug, Clone)]
pub struct Reference {
    step: u64,
    root: Hash32,
    /// Sorted by name.
    tensors: Vec<RefTensor>,
}

impl Reference {
    /// The state just written as checkpoint `step` with root `root`: `views` in any order,
    /// `depths` the chain depth of each tensor in name order, as [`snapshot::Encoded::depths`]
    /// reports them. The tensors are copied.
    pub fn new(step: u64, root: Hash32, views: &[TensorView<'_>], depths: &[u32]) -> Self {
        let mut sorted: Vec<&TensorView<'_>> = views.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(b.name));
        let tensors = sorted
            .into_iter()
            .zip(depths.iter().copied().chain(std::iter::repeat(0)))
            .map(|(v, depth)| RefTensor {
                name: v.name.to_string(),
                dtype: v.dtype,
                shape: v.shape.to_vec(),
                data: v.data.to_vec(),
                depth,
            })
            .collect();
        Reference {
            step,
            root,
            tensors,
        }
    }

    /// A decoded checkpoint (its tensors are moved, not copied).
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let Snapshot { header, data } = snapshot;
        let tensors = header
            .tensors
            .into_iter()
            .zip(data)
            .map(|(t, data)| RefTensor {
                depth: t.delta.map(|d| d.depth).unwrap_or(0),
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                data,
            })
            .collect();
        Reference {
            step: header.state.step,
            root: header.state_root,
            tensors,
        }
    }

    /// Step of the reference checkpoint.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// State root of the reference checkpoint.
    pub fn root(&self) -> Hash32 {
        self.root
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<&RefTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// Deepest chain among the tensors (0 for a keyframe).
    pub fn max_depth(&self) -> u32 {
        self.tensors.iter().map(|t| t.depth).max().unwrap_or(0)
    }
}

/// The transform the reference writer uses (the `checkpoint_codecs` benchmark).
pub const DEFAULT_TRANSFORM: Transform = Transform::Difference;

/// Encode `data` (a tensor of `dtype`) as a delta against `base` (same dtype and length), the
/// transform stored as planes at `level` in chunks of `chunk_bytes`, or raw when that is not
/// smaller.
pub(crate) fn encode(
    transform: Transform,
    reference: &Reference,
    base: &RefTensor,
    dtype: DType,
    data: &[u8],
    chunk_bytes: u32,
    level: i32,
) -> Vec<u8> {
    let moved = transform.forward(data, &base.data, dtype.size() as usize);
    let planes = crate::planes::encode(transform.inner_dtype(dtype), &moved, chunk_bytes, level);
    let (inner, body) = if planes.len() < moved.len() {
        (Codec::Planes, planes)
    } else {
        (Codec::Raw, moved)
    };
    let delta = DeltaRef {
        step: reference.step,
        root: reference.root,
        depth: base.depth + 1,
        transform,
        inner,
    };
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(&delta.prefix());
    out.extend_from_slice(&body);
    out
}

/// Where a reader finds the checkpoints that delta tensors name.
pub trait References {
    /// The decoded and verified checkpoint stored at `step` (its state root is checked by the
    /// caller against the one the delta names). A checkpoint handed over unshared may be
    /// emptied tensor by tensor as its deltas are decoded.
    fn checkpoint(&self, step: u64) -> Result<Arc<Snapshot>>;
}

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
    use crate::snapshot::{Provenance, SnapshotKind, StateMeta, WriteOptions};
    use crate::storage::PutOutcome;

    /// The state after `step`: two F32 tensors drifting a little each step, and a counter.
    fn state(step: u64) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
        let w: Vec<u8> = (0..5000u32)
            .flat_map(|i| {
                ((i as f32).sin() * 0.02 + step as f32 * 1e-5 * (i % 7) as f32).to_le_bytes()
            })
            .collect();
        let b: Vec<u8> = (0..40u32)
            .flat_map(|i| (i as f32 * 0.5 - step as f32 * 1e-3).to_le_bytes())
            .collect();
        vec![
            ("w".into(), DType::F32, vec![50, 100], w),
            ("b".into(), DType::F32, vec![40], b),
            (
                "n".into(),
                DType::I64,
                vec![],
                (step as i64).to_le_bytes().to_vec(),
            ),
        ]
    }

    fn views(s: &[(String, DType, Vec<u64>, Vec<u8>)]) -> Vec<TensorView<'_>> {
        s.iter()
            .map(|(n, d, sh, data)| TensorView {
                name: n,
                dtype: *d,
                shape: sh,
                data,
            })
            .collect()
    }

    fn options(keyframe_every: u32) -> WriteOptions {
        WriteOptions {
            codec: Codec::Delta,
            zstd_level: 1,
            chunk_bytes: 4096,
            keyframe_every,
            delta_transform: DEFAULT_TRANSFORM,
        }
    }

    /// Checkpoints 0..n written as a chain, as (bytes, depths) by step.
    fn chain(n: u64, keyframe_every: u32) -> Vec<(Vec<u8>, Vec<u32>)> {
        chain_with(n, keyframe_every, DEFAULT_TRANSFORM)
    }

    fn chain_with(n: u64, keyframe_every: u32, transform: Transform) -> Vec<(Vec<u8>, Vec<u32>)> {
        let mut reference: Option<Reference> = None;
        let mut out = Vec::new();
        for step in 0..n {
            let s = state(step);
            let v = views(&s);
            let meta = StateMeta {
                step,
                ..StateMeta::default()
            };
            let prov = Provenance {
                run_id: "delta-test".into(),
                kind: SnapshotKind::Checkpoint,
                parent: reference.as_ref().map(Reference::root),
                producer: "test".into(),
            };
            let enc = snapshot::encode_against(
                &meta,
                &prov,
                &v,
                None,
                WriteOptions {
                    delta_transform: transform,
                    ..options(keyframe_every)
                },
                reference.as_ref(),
            )
            .expect("encode");
            reference = Some(Reference::new(step, enc.state_root, &v, &enc.depths));
            out.push((enc.to_vec(), enc.depths.clone()));
        }
        out
    }

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
        let mut objects = chain(5, 8);
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
        let mut objects = chain(n, u32::MAX);
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
            let start = bytes.len() as u64 - crate::envelope::END_MARKER.len() as u64 - data;
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

    /// A checkpoint encoded as a stream (in windows of any size) is the object encoded whole,
    /// and written in parts as it is produced it reads back as that object; written again it
    /// is found identical, and other bytes are a conflict that leaves it whole.
    #[test]
    fn a_streamed_encoding_is_the_whole_encoding() {
        let (s0, s1) = (state(0), state(1));
        let meta = StateMeta {
            step: 1,
            ..StateMeta::default()
        };
        let prov = Provenance {
            run_id: "delta-test".into(),
            kind: SnapshotKind::Checkpoint,
            parent: None,
            producer: "test".into(),
        };
        let reference = Reference::new(0, Hash32([7; 32]), &views(&s0), &[0, 0, 0]);
        let whole = snapshot::encode_against(
            &meta,
            &prov,
            &views(&s1),
            None,
            options(8),
            Some(&reference),
        )
        .expect("encode");
        for window in [1, 100, u64::MAX] {
            let mut data = Vec::new();
            let v = views(&s1);
            let plan =
                snapshot::Plan::new(&meta, &v, None, options(8), Some(&reference)).expect("plan");
            let streamed = plan
                .stream(&prov, window, &mut |b| {
                    data.extend_from_slice(b);
                    Ok(())
                })
                .expect("stream");
            assert_eq!(
                [streamed.head.clone(), data].concat(),
                whole.to_vec(),
                "window {window}"
            );
            assert_eq!(streamed.depths, whole.depths);
            assert_eq!(streamed.state_root, whole.state_root);
        }
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
        assert_eq!(put(whole.to_vec()).expect("create").0, PutOutcome::Created);
        assert_eq!(
            store.get("checkpoints/x.snap").expect("get"),
            whole.to_vec()
        );
        assert_eq!(
            put(whole.to_vec()).expect("again").0,
            PutOutcome::AlreadyPresent
        );
        let mut other = whole.to_vec();
        other[150] ^= 1;
        assert!(matches!(put(other), Err(Error::ObjectConflict { .. })));
        assert_eq!(
            store.get("checkpoints/x.snap").expect("get"),
            whole.to_vec()
        );
    }

    #[test]
    fn a_chain_round_trips_with_a_keyframe_every_k() {
        let objects = chain(7, 3);
        let depths: Vec<u32> = objects.iter().map(|(_, d)| d[2]).collect();
        // Tensor "w" (third in name order): keyframe, 1, 2, keyframe, 1, 2, keyframe.
        assert_eq!(depths, [0, 1, 2, 0, 1, 2, 0]);
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        for step in (0..7u64).rev() {
            let snap = reader.read(step).expect("reconstructs");
            let expected = state(step);
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

    #[test]
    fn a_streamed_read_in_small_windows_decodes_what_a_whole_read_does() {
        let objects = chain(5, 8);
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store.clone(), ReadLimits::default());
        for step in 0..5u64 {
            let key = layout::checkpoint(step);
            let whole = snapshot::decode_with(
                &objects[step as usize].0,
                &key,
                &ReadLimits::default(),
                Some(&reader.references(&key)),
            )
            .expect("whole");
            // One byte per window: every tensor is a window of its own.
            let streamed = snapshot::SnapshotReader::new(
                store.reader(&key).expect("reader"),
                &key,
                &ReadLimits::default(),
            )
            .and_then(|r| r.decode_in_windows(Some(&reader.references(&key)), 1))
            .expect("streamed");
            assert_eq!(streamed.header, whole.header);
            assert_eq!(streamed.data, whole.data);
        }
    }

    /// A checkpoint's header is read from the start of the object alone: with its last part
    /// gone, the header still reads while the checkpoint does not.
    #[test]
    fn a_header_is_read_from_the_start_of_the_object_alone() {
        let objects = chain(1, 8);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::create(dir.path().to_str().expect("utf-8"))
            .expect("store")
            .with_max_put_bytes(4096);
        let key = layout::checkpoint(0);
        store.put_new(&key, objects[0].0.clone()).expect("put");
        let index = std::fs::read(dir.path().join(&key)).expect("index");
        let index = crate::parts::PartIndex::decode(&index, &key).expect("index");
        assert!(index.parts.len() > 2, "{index:?}");
        let last = index.parts.last().expect("parts").hash;
        std::fs::remove_file(dir.path().join(crate::parts::part_key(&key, &last)))
            .expect("remove the last part");
        let reader = CheckpointReader::new(store, ReadLimits::default());
        let header = reader.header(0).expect("header");
        assert_eq!(header.state.step, 0);
        assert!(matches!(reader.read(0), Err(Error::PartMissing { .. })));
    }

    #[test]
    fn a_delta_needs_its_reference() {
        let objects = chain(2, 8);
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
        let objects = chain(4, 8);
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
        let objects = chain(2, 8);
        // Step 0 replaced by a checkpoint of other content (state of step 0 with "n" changed).
        let mut forged = state(0);
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
            options(8),
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

    /// Bytes that are not aligned for their element type take the byte-wise path, with the
    /// same result as the word path.
    #[test]
    fn the_difference_is_the_same_aligned_or_not() {
        let old: Vec<u8> = (0..4099u32).map(|i| (i * 7 % 251) as u8).collect();
        let new: Vec<u8> = (0..4099u32).map(|i| (i * 13 % 241) as u8).collect();
        for size in [2usize, 4, 8] {
            let n = 4096 / size * size;
            let aligned = Transform::Difference.forward(&new[..n], &old[..n], size);
            let mut shifted_new = vec![0u8; n + 1];
            shifted_new[1..].copy_from_slice(&new[..n]);
            let mut shifted_old = vec![0u8; n + 1];
            shifted_old[1..].copy_from_slice(&old[..n]);
            let mut data = shifted_new.clone();
            per_width(&mut data[1..], &shifted_old[1..], size, Op::Difference);
            assert_eq!(&data[1..], aligned.as_slice(), "size {size}");
            // Undone into the reference, unaligned then aligned: the new bytes.
            let mut base = shifted_old.clone();
            per_width(&mut base[1..], &data[1..], size, Op::UndoIntoBase);
            assert_eq!(&base[1..], &new[..n], "size {size}");
            let mut base = old[..n].to_vec();
            Transform::Difference.inverse_into_base(&mut base, &aligned, size);
            assert_eq!(base, &new[..n], "size {size}");
            per_width(&mut data[1..], &shifted_old[1..], size, Op::Undo);
            assert_eq!(&data[1..], &new[..n], "size {size}");
        }
        let xor = Transform::Xor.forward(&new, &old, 1);
        let mut base = old.clone();
        Transform::Xor.inverse_into_base(&mut base, &xor, 1);
        assert_eq!(base, new);
    }

    /// References held in memory, by step.
    struct Held(Vec<Arc<Snapshot>>);

    impl References for Held {
        fn checkpoint(&self, step: u64) -> Result<Arc<Snapshot>> {
            self.0
                .iter()
                .find(|s| s.header.state.step == step)
                .cloned()
                .ok_or_else(|| Error::ObjectMissing {
                    store: "memory".into(),
                    key: layout::checkpoint(step),
                })
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Both transforms, every element width, any bytes (changed or not), any chunk size:
        /// the delta decodes to exactly the tensor, against exactly its reference.
        #[test]
        fn both_transforms_round_trip(
            dtype in proptest::sample::select(vec![DType::F64, DType::F32, DType::BF16, DType::I16, DType::U8, DType::I64]),
            pairs in proptest::collection::vec((proptest::num::u8::ANY, proptest::num::u8::ANY, proptest::bool::ANY), 0..600),
            xor in proptest::bool::ANY,
            chunk in 1u32..200,
        ) {
            let size = dtype.size() as usize;
            let n = pairs.len() / size * size;
            let old: Vec<u8> = pairs[..n].iter().map(|p| p.0).collect();
            // Some bytes unchanged, others arbitrary.
            let new: Vec<u8> = pairs[..n].iter().map(|p| if p.2 { p.0 } else { p.1 }).collect();
            let shape = [(n / size) as u64];
            let meta = |step| StateMeta { step, ..StateMeta::default() };
            let prov = Provenance {
                run_id: "p".into(),
                kind: SnapshotKind::Checkpoint,
                parent: None,
                producer: "test".into(),
            };
            let old_view = [TensorView { name: "t", dtype, shape: &shape, data: &old }];
            let first = snapshot::encode(&meta(1), &prov, &old_view, None, options(8)).expect("encode");
            let reference = Reference::new(1, first.state_root, &old_view, &first.depths);
            let transform = if xor { Transform::Xor } else { Transform::Difference };
            let mut back = transform.forward(&new, &old, size);
            transform.inverse(&mut back, &old, size);
            proptest::prop_assert_eq!(&back, &new);
            // Through the writer and the reader, as a snapshot whose tensor is this delta.
            let new_view = [TensorView { name: "t", dtype, shape: &shape, data: &new }];
            let o = WriteOptions { chunk_bytes: chunk, delta_transform: transform, ..options(8) };
            let second = snapshot::encode_against(&meta(2), &prov, &new_view, None, o, Some(&reference)).expect("encode");
            let header = snapshot::read_header(&second.to_vec(), "2", &ReadLimits::default()).expect("header");
            if n > 0 {
                proptest::prop_assert_eq!(header.tensors[0].delta.map(|d| d.transform), Some(transform));
            }
            let held = Held(vec![Arc::new(snapshot::decode(&first.to_vec(), "1", &ReadLimits::default()).expect("decode"))]);
            let snap = snapshot::decode_with(&second.to_vec(), "2", &ReadLimits::default(), Some(&held)).expect("decode");
            proptest::prop_assert_eq!(&snap.data[0], &new);
        }
    }

    #[test]
    fn an_xor_chain_decodes_through_the_reader() {
        let objects = chain_with(4, 8, Transform::Xor);
        let (_dir, store) = run_store(&objects);
        let reader = CheckpointReader::new(store, ReadLimits::default());
        for step in 0..4u64 {
            let snap = reader.read(step).expect("reconstructs");
            for t in &snap.header.tensors {
                if step > 0 {
                    assert_eq!(t.delta.map(|d| d.transform), Some(Transform::Xor));
                }
            }
            for (name, _, _, data) in &state(step) {
                assert_eq!(snap.tensor(name).expect("tensor").1, data.as_slice());
            }
        }
    }

    /// Offset of tensor `name`'s encoding within the object.
    fn tensor_offset(bytes: &[u8], name: &str) -> usize {
        let h = snapshot::read_header(bytes, "t", &ReadLimits::default()).expect("header");
        let t = &h.tensors[h.find(name).expect("tensor")];
        let data_start = bytes.len() - crate::envelope::END_MARKER.len() - h.data_len() as usize;
        data_start + t.offset as usize
    }

    #[test]
    fn damaged_deltas_are_specific_errors() {
        let objects = chain(3, 8);
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
