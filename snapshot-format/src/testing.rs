//! Helpers for tests and fuzzing of the formats (feature `testing`): resealing a mutated
//! header, delta references taken from the test vectors, and a small chain of delta
//! checkpoints.

use crate::delta::{DEFAULT_TRANSFORM, Transform};
use crate::snapshot::{
    self, Provenance, Reference, SnapshotKind, StateMeta, TensorView, WriteOptions,
};
use crate::{Codec, DType};

/// A named tensor as tests build it: name, dtype, shape, little-endian bytes.
pub type TestTensor = (String, DType, Vec<u64>, Vec<u8>);

/// Recompute the header digest of an enveloped object in place, as a writer would have, so that
/// a mutated header gets past the digest check and reaches the header parser (for fuzzing and
/// property tests). Returns false, changing nothing, when the bytes are too short for the
/// header length they declare.
pub fn reseal(bytes: &mut [u8]) -> bool {
    use crate::envelope::{DIGEST_LEN, PREAMBLE_LEN};
    let Some(len) = bytes.get(12..16) else {
        return false;
    };
    let header_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(end) = PREAMBLE_LEN
        .checked_add(header_len)
        .filter(|e| e.saturating_add(DIGEST_LEN) <= bytes.len())
    else {
        return false;
    };
    let digest = crate::envelope::digest(&bytes[..end]);
    bytes[end..end + DIGEST_LEN].copy_from_slice(&digest.0);
    true
}

/// Delta references for fuzzing the delta decoder: every step resolves to the planes test
/// vector (the reference of the delta vector), so that mutants of the delta vector reach its
/// whole decoder. Shared by default; [`VectorReferences::handing_over`] gives a fresh unshared
/// copy each time, which the streaming decoder undoes deltas into, in place.
#[derive(Debug)]
pub struct VectorReferences {
    planes: std::sync::Arc<crate::snapshot::Snapshot>,
    hand_over: bool,
}

impl VectorReferences {
    /// The planes vector, decoded. Panics if it does not decode (for tests and fuzzing).
    pub fn new() -> Self {
        let planes = crate::vectors::generate()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|f| f.name == "snapshot-planes-v1.snap")
            .unwrap_or_else(|| panic!("no planes vector"));
        let snap = crate::snapshot::decode(&planes.bytes, planes.name, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        VectorReferences {
            planes: std::sync::Arc::new(snap),
            hand_over: false,
        }
    }

    /// References that hand over a copy of the planes vector nobody else holds.
    pub fn handing_over() -> Self {
        VectorReferences {
            hand_over: true,
            ..Self::new()
        }
    }
}

impl Default for VectorReferences {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::snapshot::References for VectorReferences {
    fn checkpoint(&self, _step: u64) -> crate::Result<std::sync::Arc<crate::snapshot::Snapshot>> {
        Ok(if self.hand_over {
            std::sync::Arc::new((*self.planes).clone())
        } else {
            self.planes.clone()
        })
    }
}

/// The state after `step`: two F32 tensors drifting a little each step, and a counter.
pub fn delta_state(step: u64) -> Vec<TestTensor> {
    let w: Vec<u8> = (0..5000u32)
        .flat_map(|i| ((i as f32).sin() * 0.02 + step as f32 * 1e-5 * (i % 7) as f32).to_le_bytes())
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

/// Views of `s`, for the encoders.
pub fn views(s: &[TestTensor]) -> Vec<TensorView<'_>> {
    s.iter()
        .map(|(n, d, sh, data)| TensorView {
            name: n,
            dtype: *d,
            shape: sh,
            data,
        })
        .collect()
}

/// Delta checkpoints with small chunks and a keyframe every `keyframe_every`.
pub fn delta_options(keyframe_every: u32) -> WriteOptions {
    WriteOptions {
        codec: Codec::Delta,
        zstd_level: 1,
        chunk_bytes: 4096,
        keyframe_every,
        delta_transform: DEFAULT_TRANSFORM,
    }
}

/// Checkpoints 0..n of [`delta_state`] written as a chain with `transform`, as (bytes,
/// depths) by step.
pub fn delta_chain(n: u64, keyframe_every: u32, transform: Transform) -> Vec<(Vec<u8>, Vec<u32>)> {
    let mut reference: Option<Reference> = None;
    let mut out = Vec::new();
    for step in 0..n {
        let s = delta_state(step);
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
                ..delta_options(keyframe_every)
            },
            reference.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        reference = Some(Reference::new(step, enc.state_root, &v, &enc.depths));
        out.push((enc.to_vec(), enc.depths.clone()));
    }
    out
}
