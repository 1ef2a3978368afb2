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
//! neither loop nor grow without bound. Readers resolve references through
//! [`crate::snapshot::References`] (`run_store::checkpoints::CheckpointReader` resolves them
//! from a run's store).

use rayon::prelude::*;

use crate::dtype::{Codec, DType};
use crate::error::{Error, Result};
use crate::hash::Hash32;
use crate::limits::MAX_DELTA_DEPTH;

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

/// The transform the reference writer uses (the `checkpoint_codecs` benchmark).
pub const DEFAULT_TRANSFORM: Transform = Transform::Difference;

/// Encode `data` (a tensor of `dtype`) as a delta against `base` (the reference tensor, of the
/// same dtype and length, and its chain depth) of the checkpoint `(step, state root)`, the
/// transform stored as planes at `level` in chunks of `chunk_bytes`, or raw when that is not
/// smaller.
pub(crate) fn encode(
    transform: Transform,
    (reference_step, reference_root): (u64, Hash32),
    base: (&[u8], u32),
    dtype: DType,
    data: &[u8],
    chunk_bytes: u32,
    level: i32,
) -> Vec<u8> {
    let (base, base_depth) = base;
    let moved = transform.forward(data, base, dtype.size() as usize);
    let planes = crate::planes::encode(transform.inner_dtype(dtype), &moved, chunk_bytes, level);
    let (inner, body) = if planes.len() < moved.len() {
        (Codec::Planes, planes)
    } else {
        (Codec::Raw, moved)
    };
    let delta = DeltaRef {
        step: reference_step,
        root: reference_root,
        depth: base_depth + 1,
        transform,
        inner,
    };
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(&delta.prefix());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use crate::limits::ReadLimits;
    use crate::snapshot::{self, Provenance, SnapshotKind, StateMeta, WriteOptions};
    use crate::snapshot::{Reference, References, Snapshot, TensorView};
    use crate::testing::{delta_chain, delta_options, delta_state, views};
    use std::sync::Arc;

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

    /// A checkpoint encoded as a stream, in windows of any size, is the object encoded whole.
    #[test]
    fn a_streamed_encoding_is_the_whole_encoding() {
        let (s0, s1) = (delta_state(0), delta_state(1));
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
        let v = views(&s1);
        let whole =
            snapshot::encode_against(&meta, &prov, &v, None, delta_options(8), Some(&reference))
                .expect("encode");
        for window in [1, 100, u64::MAX] {
            let mut data = Vec::new();
            let plan = snapshot::Plan::new(&meta, &v, None, delta_options(8), Some(&reference))
                .expect("plan");
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
    }

    /// Decoded in windows of one byte (every tensor a window of its own), a chain's
    /// checkpoints are what a whole read decodes.
    #[test]
    fn a_streamed_read_in_small_windows_decodes_what_a_whole_read_does() {
        let objects = delta_chain(5, 8, DEFAULT_TRANSFORM);
        let mut held = Held(Vec::new());
        for (step, (bytes, _)) in objects.iter().enumerate() {
            let key = layout::checkpoint(step as u64);
            let whole = snapshot::decode_with(bytes, &key, &ReadLimits::default(), Some(&held))
                .expect("whole");
            let streamed = snapshot::SnapshotReader::new(
                std::io::Cursor::new(bytes),
                &key,
                &ReadLimits::default(),
            )
            .and_then(|r| r.decode_in_windows(Some(&held), 1))
            .expect("streamed");
            assert_eq!(streamed.header, whole.header);
            assert_eq!(streamed.data, whole.data);
            held.0.push(Arc::new(whole));
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
            let transform = if xor { Transform::Xor } else { Transform::Difference };
            let options = WriteOptions { codec: Codec::Delta, zstd_level: 1, chunk_bytes: chunk, keyframe_every: 8, delta_transform: transform };
            let first = snapshot::encode(&meta(1), &prov, &old_view, None, options).expect("encode");
            let reference = Reference::new(1, first.state_root, &old_view, &first.depths);
            let mut back = transform.forward(&new, &old, size);
            transform.inverse(&mut back, &old, size);
            proptest::prop_assert_eq!(&back, &new);
            // Through the writer and the reader, as a snapshot whose tensor is this delta.
            let new_view = [TensorView { name: "t", dtype, shape: &shape, data: &new }];
            let second = snapshot::encode_against(&meta(2), &prov, &new_view, None, options, Some(&reference)).expect("encode");
            let header = snapshot::read_header(&second.to_vec(), "2", &ReadLimits::default()).expect("header");
            if n > 0 {
                proptest::prop_assert_eq!(header.tensors[0].delta.map(|d| d.transform), Some(transform));
            }
            let held = Held(vec![Arc::new(snapshot::decode(&first.to_vec(), "1", &ReadLimits::default()).expect("decode"))]);
            let snap = snapshot::decode_with(&second.to_vec(), "2", &ReadLimits::default(), Some(&held)).expect("decode");
            proptest::prop_assert_eq!(&snap.data[0], &new);
        }
    }
}
