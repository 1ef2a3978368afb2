//! Snapshots: named tensors plus typed metadata, the unit of checkpoints and exports.
//!
//! A snapshot is an envelope ([`crate::envelope`]) whose header is a [`Header`] (state metadata,
//! provenance, the claimed state root and the tensor table) and whose payload is the data
//! section: each tensor's encoding, in table order, with no holes and no overlaps.
//!
//! Writers hash and encode tensors in parallel (rayon). Readers verify everything: the table
//! against the safety limits and the data section's size before decoding, each tensor's hash as
//! it is decoded, and the state root last. [`decode`] reads an in-memory object in parallel;
//! [`SnapshotReader`] streams from any `Read`, holding one tensor at a time.

use std::io::Read;
use std::sync::Arc;

use rayon::prelude::*;

use crate::canonical;
use crate::delta::DeltaRef;
use crate::dtype::{Codec, DType};
use crate::envelope::{self, SNAPSHOT};
use crate::error::{Error, Result};
use crate::hash::{self, Hash32};
use crate::limits::{
    MAX_ELEMENTS, MAX_NAME_BYTES, MAX_RANK, MAX_TENSOR_BYTES, MAX_TENSORS, ReadLimits,
};

/// Position of the data cursor: which epoch, and how many examples of that epoch's order have
/// been consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct DataCursor {
    pub epoch: u64,
    pub position: u64,
}

/// Position of one long-lived random stream.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct StreamPosition {
    pub purpose: String,
    /// ChaCha word position.
    pub word_pos: u128,
}

/// Random-number state: the master seed every stream is derived from, and the positions of
/// long-lived streams (empty when every stream is derived afresh per step, as the trainer does).
#[derive(Debug, Clone, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct RngState {
    pub master_seed: u64,
    /// Sorted by purpose, unique.
    pub streams: Vec<StreamPosition>,
}

/// A typed metadata value.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum MetaValue {
    U64(u64),
    I64(i64),
    /// An `f64` by its IEEE-754 bits, so that equality is bit equality.
    F64Bits(u64),
    Text(String),
    Bytes(Vec<u8>),
    Hash(Hash32),
}

/// One typed metadata entry.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct MetaEntry {
    pub key: String,
    pub value: MetaValue,
}

/// Metadata that is part of the training state and therefore of the state root.
#[derive(Debug, Clone, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct StateMeta {
    /// Optimizer steps completed.
    pub step: u64,
    pub data_cursor: DataCursor,
    pub rng: RngState,
    /// Further typed entries, sorted by key, unique.
    pub extra: Vec<MetaEntry>,
}

impl StateMeta {
    /// The canonical bytes hashed into the state root.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical::encode(self)
    }

    /// Look up an extra entry.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.extra.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    fn validate(&self, artefact: &str) -> Result<()> {
        let malformed = |detail: String| Error::MalformedHeader {
            artefact: artefact.to_string(),
            detail,
        };
        for pair in self.extra.windows(2) {
            if pair[0].key >= pair[1].key {
                return Err(malformed(format!(
                    "metadata keys not strictly sorted: {:?} then {:?}",
                    pair[0].key, pair[1].key
                )));
            }
        }
        for pair in self.rng.streams.windows(2) {
            if pair[0].purpose >= pair[1].purpose {
                return Err(malformed(format!(
                    "rng streams not strictly sorted: {:?} then {:?}",
                    pair[0].purpose, pair[1].purpose
                )));
            }
        }
        Ok(())
    }
}

/// What produced the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum SnapshotKind {
    /// Written by the trainer during a run.
    Checkpoint,
    /// Reconstructed by `replay rollback`.
    Export,
}

/// Provenance: where a snapshot belongs. Not part of the state root (two identical runs have
/// identical states), but covered by the header digest and, when signed, by the signature.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Provenance {
    pub run_id: String,
    pub kind: SnapshotKind,
    /// State root of the snapshot this one was derived from (the previous checkpoint), if any.
    pub parent: Option<Hash32>,
    /// Producing program and version, e.g. `trainer 0.1.0`.
    pub producer: String,
}

/// One row of the tensor table, as stored (codes not yet interpreted).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct TableRow {
    name: String,
    dtype: u8,
    shape: Vec<u64>,
    codec: u16,
    offset: u64,
    encoded_len: u64,
    raw_len: u64,
    hash: Hash32,
}

/// The header as stored.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct StoredHeader {
    state: StateMeta,
    provenance: Provenance,
    state_root: Hash32,
    tensors: Vec<TableRow>,
}

/// One validated row of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub codec: Codec,
    /// Offset within the data section.
    pub offset: u64,
    pub encoded_len: u64,
    pub raw_len: u64,
    /// Tensor hash (see [`hash::tensor_hash`]).
    pub hash: Hash32,
    /// For a delta tensor (codec 3) read with its data section: the reference it names.
    pub delta: Option<DeltaRef>,
}

/// A validated snapshot header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub state: StateMeta,
    pub provenance: Provenance,
    /// Verified: equals the root recomputed from `state` and the table's hashes.
    pub state_root: Hash32,
    /// Sorted by name.
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Length of the data section the table describes.
    pub fn data_len(&self) -> u64 {
        self.tensors
            .last()
            .map(|t| t.offset + t.encoded_len)
            .unwrap_or(0)
    }

    /// Total decoded bytes.
    pub fn raw_len(&self) -> u64 {
        self.tensors.iter().map(|t| t.raw_len).sum()
    }

    /// Index of a tensor by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
    }
}

/// A tensor handed to the writer: name, dtype, shape and raw canonical bytes (little-endian,
/// row-major; bools as 0/1 bytes).
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// The tensor hash of this view.
    pub fn hash(&self) -> Hash32 {
        hash::tensor_hash(self.name, self.dtype, self.shape, self.data)
    }
}

/// Writer settings. Compressed bytes may differ between zstd versions or levels; hashes never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Codec to try for every tensor. With [`Codec::Zstd`] or [`Codec::Planes`], a tensor whose
    /// encoding is not smaller than its raw bytes is stored raw.
    pub codec: Codec,
    /// zstd level of the whole tensor (zstd) or of each plane (planes; a float's exponent plane
    /// is at [`crate::planes::EXPONENT_LEVEL`]).
    pub zstd_level: i32,
    /// Chunk size of [`Codec::Planes`] (and of a delta's planes), in raw bytes.
    pub chunk_bytes: u32,
    /// With [`Codec::Delta`]: every this many checkpoints one is stored whole (a keyframe), so
    /// that reading one reads at most this many objects. 1 stores no deltas.
    pub keyframe_every: u32,
    /// With [`Codec::Delta`]: how a tensor is taken against its reference.
    pub delta_transform: crate::delta::Transform,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            codec: Codec::Zstd,
            zstd_level: 3,
            chunk_bytes: crate::planes::DEFAULT_CHUNK_BYTES,
            keyframe_every: crate::delta::DEFAULT_KEYFRAME_EVERY,
            delta_transform: crate::delta::DEFAULT_TRANSFORM,
        }
    }
}

/// A snapshot encoded by [`encode`], as the parts of one object in order: head (preamble,
/// header, digest), each tensor's encoding, end marker. Keeping the parts apart avoids copying
/// the data section once more; stores accept them as one multi-part payload.
#[derive(Debug, Clone)]
pub struct Encoded<'a> {
    pub parts: Vec<std::borrow::Cow<'a, [u8]>>,
    pub state_root: Hash32,
    /// Chain depth of each tensor in name order: 0 when stored whole, `d` for a delta of
    /// depth `d` (what [`crate::snapshot::Reference::new`] takes for the next checkpoint).
    pub depths: Vec<u32>,
}

impl Encoded<'_> {
    /// Total length of the object.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }
    /// Always false: an object has at least its head and end marker.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
    /// The object as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for p in &self.parts {
            out.extend_from_slice(p);
        }
        out
    }
    /// Owned parts (borrowed raw tensors are copied), e.g. for a store's multi-part payload.
    pub fn into_parts(self) -> Vec<Vec<u8>> {
        self.parts
            .into_iter()
            .map(std::borrow::Cow::into_owned)
            .collect()
    }
}

const WRITER: &str = "snapshot being written";

/// Check names, shapes and lengths of the writer's input; returns the indices of `tensors`
/// in name order.
fn validate_views(tensors: &[TensorView<'_>]) -> Result<Vec<usize>> {
    if tensors.len() as u64 > MAX_TENSORS {
        return Err(Error::TooManyTensors {
            artefact: WRITER.into(),
            count: tensors.len() as u64,
            max: MAX_TENSORS,
        });
    }
    for t in tensors {
        check_name(WRITER, t.name)?;
        let expected = expected_raw_len(WRITER, t.name, t.dtype, t.shape)?;
        if expected != t.data.len() as u64 {
            return Err(Error::RawLengthMismatch {
                artefact: WRITER.into(),
                tensor: t.name.to_string(),
                declared: t.data.len() as u64,
                expected,
            });
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].name.cmp(tensors[b].name));
    for pair in order.windows(2) {
        if tensors[pair[0]].name == tensors[pair[1]].name {
            return Err(Error::DuplicateTensorName {
                artefact: WRITER.into(),
                name: tensors[pair[0]].name.to_string(),
            });
        }
    }
    Ok(order)
}

/// Hash every tensor in parallel; the result is in the order of `tensors`.
pub fn hash_tensors(tensors: &[TensorView<'_>]) -> Vec<Hash32> {
    tensors.par_iter().map(TensorView::hash).collect()
}

/// The state root of `state` and `tensors` (in any order; they are sorted by name here).
/// `hashes`, when given, are the tensor hashes in the order of `tensors`, already computed.
pub fn state_root(
    state: &StateMeta,
    tensors: &[TensorView<'_>],
    hashes: Option<&[Hash32]>,
) -> Result<Hash32> {
    let order = validate_views(tensors)?;
    state.validate(WRITER)?;
    let computed;
    let hashes = match hashes {
        Some(h) => h,
        None => {
            computed = hash_tensors(tensors);
            &computed
        }
    };
    let sorted: Vec<Hash32> = order.iter().map(|&i| hashes[i]).collect();
    Ok(hash::state_root(&state.canonical_bytes(), &sorted))
}

/// Encode a snapshot. `hashes`, when given, are the tensor hashes in the order of `tensors`
/// (computed once per step by the caller and reused here).
pub fn encode<'a>(
    state: &StateMeta,
    provenance: &Provenance,
    tensors: &[TensorView<'a>],
    hashes: Option<&[Hash32]>,
    options: WriteOptions,
) -> Result<Encoded<'a>> {
    encode_against(state, provenance, tensors, hashes, options, None)
}

/// [`encode`], storing tensors as deltas against `reference` (an earlier checkpoint of the
/// run) when `options.codec` is [`Codec::Delta`], the reference's chain is shorter than
/// `options.keyframe_every - 1` and the reference holds a tensor of the same name, dtype and
/// shape. Other tensors, and all of a keyframe, are stored as planes.
pub fn encode_against<'a>(
    state: &StateMeta,
    provenance: &Provenance,
    tensors: &[TensorView<'a>],
    hashes: Option<&[Hash32]>,
    options: WriteOptions,
    reference: Option<&Reference>,
) -> Result<Encoded<'a>> {
    let plan = Plan::new(state, tensors, hashes, options, reference)?;
    let encoded: Vec<EncodedTensor<'a>> = plan.order.par_iter().map(|&i| plan.tensor(i)).collect();
    let (head, state_root, depths) = plan.head(provenance, &encoded)?;
    let mut parts = Vec::with_capacity(encoded.len() + 2);
    parts.push(std::borrow::Cow::Owned(head));
    parts.extend(encoded.into_iter().map(|e| e.bytes));
    parts.push(std::borrow::Cow::Borrowed(&envelope::END_MARKER[..]));
    Ok(Encoded {
        parts,
        state_root,
        depths,
    })
}

/// Raw bytes [`encode_streaming`] encodes at once (in parallel) before handing them on.
pub const STREAM_ENCODE_BYTES: u64 = 64 << 20;

/// A snapshot encoded by [`encode_streaming`]: everything but its data section, which went to
/// the sink.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Preamble, header and digest: the object's first bytes, known last.
    pub head: Vec<u8>,
    pub state_root: Hash32,
    /// As [`Encoded::depths`].
    pub depths: Vec<u32>,
}

/// [`encode_against`] without holding the encoded snapshot: tensors are encoded in name order,
/// [`STREAM_ENCODE_BYTES`] of raw bytes at a time in parallel, and their encodings, then the
/// end marker, are handed to `sink` in object order as they are made. The head, which
/// precedes them in the object but depends on all of them, is returned last. The object's
/// bytes are those [`encode_against`] gives.
pub fn encode_streaming(
    state: &StateMeta,
    provenance: &Provenance,
    tensors: &[TensorView<'_>],
    hashes: Option<&[Hash32]>,
    options: WriteOptions,
    reference: Option<&Reference>,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<Streamed> {
    let plan = Plan::new(state, tensors, hashes, options, reference)?;
    plan.stream(provenance, STREAM_ENCODE_BYTES, sink)
}

impl Plan<'_, '_> {
    /// [`encode_streaming`] with windows of `window_bytes` raw bytes.
    pub(crate) fn stream(
        &self,
        provenance: &Provenance,
        window_bytes: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Streamed> {
        let (plan, tensors) = (self, self.tensors);
        let mut done: Vec<EncodedTensor<'_>> = Vec::with_capacity(plan.order.len());
        let mut rest = plan.order.as_slice();
        while !rest.is_empty() {
            let mut raw = 0;
            let n = rest
                .iter()
                .take_while(|&&i| {
                    let go = raw == 0 || raw < window_bytes;
                    raw += tensors[i].data.len() as u64;
                    go
                })
                .count();
            let (window, after) = rest.split_at(n);
            rest = after;
            let encoded: Vec<EncodedTensor<'_>> =
                window.par_iter().map(|&i| plan.tensor(i)).collect();
            for mut e in encoded {
                sink(&e.bytes)?;
                // Only lengths, hashes and codecs are needed from here on.
                e.len = e.bytes.len() as u64;
                e.bytes = std::borrow::Cow::Borrowed(&[]);
                done.push(e);
            }
        }
        sink(&envelope::END_MARKER)?;
        let (head, state_root, depths) = plan.head(provenance, &done)?;
        Ok(Streamed {
            head,
            state_root,
            depths,
        })
    }
}

/// One tensor as the writer encoded it.
struct EncodedTensor<'a> {
    hash: Hash32,
    codec: Codec,
    bytes: std::borrow::Cow<'a, [u8]>,
    /// The encoding's length (kept when the bytes have been handed on).
    len: u64,
    depth: u32,
}

/// What a writer encodes: the tensors in name order, and against what.
pub(crate) struct Plan<'p, 'a> {
    state: &'p StateMeta,
    tensors: &'p [TensorView<'a>],
    hashes: Option<&'p [Hash32]>,
    options: WriteOptions,
    reference: Option<&'p Reference>,
    order: Vec<usize>,
}

impl<'p, 'a> Plan<'p, 'a> {
    pub(crate) fn new(
        state: &'p StateMeta,
        tensors: &'p [TensorView<'a>],
        hashes: Option<&'p [Hash32]>,
        options: WriteOptions,
        reference: Option<&'p Reference>,
    ) -> Result<Self> {
        let order = validate_views(tensors)?;
        state.validate(WRITER)?;
        let reference = reference.filter(|r| {
            options.codec == Codec::Delta
                && r.step() < state.step
                && r.max_depth().saturating_add(1) < options.keyframe_every
        });
        Ok(Plan {
            state,
            tensors,
            hashes,
            options,
            reference,
            order,
        })
    }

    /// Encode tensor `i`: as a delta when the reference holds a tensor of its name, dtype and
    /// shape, otherwise with the codec of the options.
    fn tensor(&self, i: usize) -> EncodedTensor<'a> {
        let t = &self.tensors[i];
        let hash = match self.hashes {
            Some(h) => h[i],
            None => t.hash(),
        };
        let base = self.reference.and_then(|r| {
            r.find(t.name)
                .filter(|b| b.dtype == t.dtype && b.shape == t.shape)
                .map(|b| (r, b))
        });
        let (codec, bytes, depth) = match base {
            Some((r, b)) => {
                let bytes = crate::delta::encode(
                    self.options.delta_transform,
                    (r.step(), r.root()),
                    (&b.data, b.depth),
                    t.dtype,
                    t.data,
                    self.options.chunk_bytes,
                    self.options.zstd_level,
                );
                (Codec::Delta, std::borrow::Cow::Owned(bytes), b.depth + 1)
            }
            None => {
                let (codec, bytes) = encode_data(t.dtype, t.data, self.options);
                (codec, bytes, 0)
            }
        };
        EncodedTensor {
            hash,
            codec,
            len: bytes.len() as u64,
            bytes,
            depth,
        }
    }

    /// The head (preamble, header, digest) for `encoded`, the tensors in name order; with the
    /// state root and the chain depths.
    fn head(
        &self,
        provenance: &Provenance,
        encoded: &[EncodedTensor<'_>],
    ) -> Result<(Vec<u8>, Hash32, Vec<u32>)> {
        let mut offset = 0u64;
        let mut rows = Vec::with_capacity(self.order.len());
        for (&i, e) in self.order.iter().zip(encoded) {
            let t = &self.tensors[i];
            rows.push(TableRow {
                name: t.name.to_string(),
                dtype: t.dtype.code(),
                shape: t.shape.to_vec(),
                codec: e.codec.id(),
                offset,
                encoded_len: e.len,
                raw_len: t.data.len() as u64,
                hash: e.hash,
            });
            offset += e.len;
        }
        let sorted: Vec<Hash32> = encoded.iter().map(|e| e.hash).collect();
        let depths = encoded.iter().map(|e| e.depth).collect();
        let state_root = hash::state_root(&self.state.canonical_bytes(), &sorted);
        let header = StoredHeader {
            state: self.state.clone(),
            provenance: provenance.clone(),
            state_root,
            tensors: rows,
        };
        let header_bytes = canonical::encode(&header);
        if header_bytes.len() > crate::limits::MAX_HEADER_BYTES {
            return Err(Error::HeaderTooLarge {
                artefact: WRITER.into(),
                declared: header_bytes.len() as u64,
                max: crate::limits::MAX_HEADER_BYTES as u64,
            });
        }
        Ok((envelope::head(SNAPSHOT, &header_bytes), state_root, depths))
    }
}

fn encode_data(
    dtype: DType,
    data: &[u8],
    options: WriteOptions,
) -> (Codec, std::borrow::Cow<'_, [u8]>) {
    let encoded = match options.codec {
        Codec::Raw => None,
        // A zstd failure cannot lose data: the tensor is stored raw.
        Codec::Zstd => zstd::bulk::compress(data, options.zstd_level).ok(),
        // A tensor without a reference (a keyframe, or new since the reference) as planes.
        Codec::Planes | Codec::Delta => Some(crate::planes::encode(
            dtype,
            data,
            options.chunk_bytes,
            options.zstd_level,
        )),
    };
    let codec = match options.codec {
        Codec::Delta => Codec::Planes,
        c => c,
    };
    match encoded {
        Some(c) if c.len() < data.len() => (codec, std::borrow::Cow::Owned(c)),
        // Incompressible: stored raw.
        _ => (Codec::Raw, std::borrow::Cow::Borrowed(data)),
    }
}

fn check_name(artefact: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("longer than MAX_NAME_BYTES")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTensorName {
            artefact: artefact.to_string(),
            name: name.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

fn expected_raw_len(artefact: &str, name: &str, dtype: DType, shape: &[u64]) -> Result<u64> {
    if shape.len() as u64 > MAX_RANK {
        return Err(Error::RankTooLarge {
            artefact: artefact.to_string(),
            tensor: name.to_string(),
            rank: shape.len() as u64,
            max: MAX_RANK,
        });
    }
    let overflow = |what, max| Error::LengthOverflow {
        artefact: artefact.to_string(),
        tensor: name.to_string(),
        what,
        max,
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| overflow("element count", MAX_ELEMENTS))?;
    elements
        .checked_mul(dtype.size())
        .filter(|&n| n <= MAX_TENSOR_BYTES)
        .ok_or_else(|| overflow("raw byte length", MAX_TENSOR_BYTES))
}

/// Validate the stored header: metadata canonical, table within limits, names strictly
/// sorted, lengths consistent, tensors contiguous from offset 0, state root consistent.
fn validate_header(
    version: u16,
    stored: StoredHeader,
    artefact: &str,
    limits: &ReadLimits,
) -> Result<Header> {
    let a = || artefact.to_string();
    stored.state.validate(artefact)?;
    if stored.tensors.len() as u64 > MAX_TENSORS {
        return Err(Error::TooManyTensors {
            artefact: a(),
            count: stored.tensors.len() as u64,
            max: MAX_TENSORS,
        });
    }
    let mut tensors = Vec::with_capacity(stored.tensors.len());
    let mut expected_offset = 0u64;
    let mut total_raw = 0u64;
    let mut previous: Option<&str> = None;
    for row in &stored.tensors {
        check_name(artefact, &row.name)?;
        if let Some(prev) = previous {
            match prev.cmp(row.name.as_str()) {
                std::cmp::Ordering::Equal => {
                    return Err(Error::DuplicateTensorName {
                        artefact: a(),
                        name: row.name.clone(),
                    });
                }
                std::cmp::Ordering::Greater => {
                    return Err(Error::UnsortedTensorNames {
                        artefact: a(),
                        previous: prev.to_string(),
                        name: row.name.clone(),
                    });
                }
                std::cmp::Ordering::Less => {}
            }
        }
        previous = Some(&row.name);
        let dtype = DType::from_code(row.dtype).ok_or_else(|| Error::UnknownDType {
            artefact: a(),
            tensor: row.name.clone(),
            code: row.dtype,
        })?;
        let codec = Codec::from_id(row.codec).ok_or_else(|| Error::UnknownCodec {
            artefact: a(),
            tensor: row.name.clone(),
            id: row.codec,
        })?;
        let expected_raw = expected_raw_len(artefact, &row.name, dtype, &row.shape)?;
        if row.raw_len != expected_raw {
            return Err(Error::RawLengthMismatch {
                artefact: a(),
                tensor: row.name.clone(),
                declared: row.raw_len,
                expected: expected_raw,
            });
        }
        if codec == Codec::Raw && row.encoded_len != row.raw_len {
            return Err(Error::RawCodecLengthMismatch {
                artefact: a(),
                tensor: row.name.clone(),
                encoded: row.encoded_len,
                raw: row.raw_len,
            });
        }
        // No encoding is longer than the raw bytes (writers store a tensor raw when a codec
        // does not make it smaller), but for a delta's reference prefix: a header cannot make
        // a reader gather more encoded bytes than the decoded limit allows.
        let max_encoded = match codec {
            Codec::Delta => row.raw_len.saturating_add(crate::delta::PREFIX_LEN as u64),
            _ => row.raw_len,
        };
        if row.encoded_len > max_encoded {
            return Err(Error::EncodedTooLarge {
                artefact: a(),
                tensor: row.name.clone(),
                encoded: row.encoded_len,
                max: max_encoded,
            });
        }
        if row.offset < expected_offset {
            return Err(Error::OverlappingTensors {
                artefact: a(),
                tensor: row.name.clone(),
                offset: row.offset,
                expected: expected_offset,
            });
        }
        if row.offset > expected_offset {
            return Err(Error::HoleBeforeTensor {
                artefact: a(),
                tensor: row.name.clone(),
                offset: row.offset,
                expected: expected_offset,
            });
        }
        expected_offset =
            row.offset
                .checked_add(row.encoded_len)
                .ok_or_else(|| Error::LengthOverflow {
                    artefact: a(),
                    tensor: row.name.clone(),
                    what: "offset + encoded length",
                    max: u64::MAX,
                })?;
        total_raw = total_raw.saturating_add(row.raw_len);
        tensors.push(TensorInfo {
            name: row.name.clone(),
            dtype,
            shape: row.shape.clone(),
            codec,
            offset: row.offset,
            encoded_len: row.encoded_len,
            raw_len: row.raw_len,
            hash: row.hash,
            delta: None,
        });
    }
    if total_raw > limits.max_decoded_bytes {
        return Err(Error::DecodedTooLarge {
            artefact: a(),
            declared: total_raw,
            max: limits.max_decoded_bytes,
        });
    }
    let hashes: Vec<Hash32> = tensors.iter().map(|t| t.hash).collect();
    let computed = hash::state_root(&stored.state.canonical_bytes(), &hashes);
    if computed != stored.state_root {
        return Err(Error::StateRootMismatch {
            artefact: a(),
            stored: stored.state_root,
            computed,
        });
    }
    Ok(Header {
        version,
        state: stored.state,
        provenance: stored.provenance,
        state_root: stored.state_root,
        tensors,
    })
}

fn parse_header(version: u16, bytes: &[u8], artefact: &str, limits: &ReadLimits) -> Result<Header> {
    let stored: StoredHeader = canonical::decode_exact(bytes, artefact)?;
    validate_header(version, stored, artefact, limits)
}

/// Parse the header of an opened envelope and locate the data section: a tensor reaching past
/// the data present (with the end marker intact) is out of range; otherwise length problems
/// are truncation or trailing bytes.
fn parse_and_locate<'a>(
    opened: &envelope::Opened<'a>,
    artefact: &str,
    limits: &ReadLimits,
) -> Result<(Header, &'a [u8])> {
    let mut header = parse_header(opened.version, opened.header, artefact, limits)?;
    if let Some(data_len) = opened.marked_payload_len()
        && let Some(t) = header
            .tensors
            .iter()
            .find(|t| t.offset + t.encoded_len > data_len)
    {
        return Err(Error::TensorOutOfRange {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            end: t.offset + t.encoded_len,
            data_len,
        });
    }
    let data = opened.payload(header.data_len())?;
    for t in &mut header.tensors {
        if t.codec == Codec::Delta {
            let enc = &data[t.offset as usize..(t.offset + t.encoded_len) as usize];
            t.delta = Some(DeltaRef::parse(enc, artefact, &t.name)?.0);
        }
    }
    Ok((header, data))
}

/// Read and validate the header of an in-memory snapshot, and check that the data section and
/// end marker are exactly where the table says. Tensor data is not decoded.
pub fn read_header(bytes: &[u8], artefact: &str, limits: &ReadLimits) -> Result<Header> {
    let opened = envelope::open(SNAPSHOT, bytes, artefact)?;
    Ok(parse_and_locate(&opened, artefact, limits)?.0)
}

/// A fully decoded and verified snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub header: Header,
    /// Raw bytes of each tensor, in the order of `header.tensors`.
    pub data: Vec<Vec<u8>>,
}

impl Snapshot {
    /// Views of all tensors, in name order.
    pub fn views(&self) -> Vec<TensorView<'_>> {
        self.header
            .tensors
            .iter()
            .zip(&self.data)
            .map(|(t, d)| TensorView {
                name: &t.name,
                dtype: t.dtype,
                shape: &t.shape,
                data: d,
            })
            .collect()
    }

    /// Raw bytes of the named tensor.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        self.header
            .find(name)
            .map(|i| (&self.header.tensors[i], self.data[i].as_slice()))
    }
}

/// Decode and verify a whole snapshot held in memory; tensors are decoded and hashed in
/// parallel. On several bad tensors, the first in table order is reported. A delta tensor is
/// an error here ([`Error::DeltaWithoutReferences`]); see [`decode_with`].
pub fn decode(bytes: &[u8], artefact: &str, limits: &ReadLimits) -> Result<Snapshot> {
    decode_with(bytes, artefact, limits, None)
}

/// [`decode`], resolving delta tensors through `refs` (each reference read once).
pub fn decode_with(
    bytes: &[u8],
    artefact: &str,
    limits: &ReadLimits,
    refs: Option<&dyn References>,
) -> Result<Snapshot> {
    locate(bytes, artefact, limits)?.decode(refs)
}

/// Verify a whole snapshot held in memory without keeping its tensors: every check [`decode`]
/// makes (table, sizes, decompression limits, canonical bools, every tensor hash, state root),
/// with each tensor's decoded bytes streamed through a small buffer into its hash. For
/// integrity checks that do not need the values. A delta tensor is an error here
/// ([`Error::DeltaWithoutReferences`]); `run_store::CheckpointReader::check` resolves it.
pub fn verify(bytes: &[u8], artefact: &str, limits: &ReadLimits) -> Result<Header> {
    locate(bytes, artefact, limits)?.verify()
}

/// An in-memory snapshot whose envelope and header are checked and whose data section is
/// located, not yet decoded: [`locate`] parses once, then the caller decodes or verifies.
#[derive(Debug)]
pub struct Located<'a> {
    /// The validated header (delta references parsed).
    pub header: Header,
    data: &'a [u8],
    artefact: &'a str,
}

/// Open `bytes`, validate the header and locate the data section, as [`read_header`] does.
pub fn locate<'a>(bytes: &'a [u8], artefact: &'a str, limits: &ReadLimits) -> Result<Located<'a>> {
    let opened = envelope::open(SNAPSHOT, bytes, artefact)?;
    let (header, data) = parse_and_locate(&opened, artefact, limits)?;
    Ok(Located {
        header,
        data,
        artefact,
    })
}

impl Located<'_> {
    fn encoded(&self, t: &TensorInfo) -> &[u8] {
        &self.data[t.offset as usize..(t.offset + t.encoded_len) as usize]
    }

    /// Decode and verify every tensor in parallel, resolving delta tensors through `refs`.
    pub fn decode(self, refs: Option<&dyn References>) -> Result<Snapshot> {
        let artefact = self.artefact;
        let mut bases = Bases::new(refs);
        let bases = self
            .header
            .tensors
            .iter()
            .map(|t| bases.base(&self.header, t, artefact, false))
            .collect::<Result<Vec<_>>>()?;
        let decoded: Vec<Result<Vec<u8>>> = self
            .header
            .tensors
            .par_iter()
            .zip(bases)
            .map(|(t, base)| decode_tensor(t, self.encoded(t).into(), base, artefact))
            .collect();
        let data = decoded.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            header: self.header,
            data,
        })
    }

    /// Verify every tensor without keeping its values (see [`verify`]).
    pub fn verify(self) -> Result<Header> {
        let mut bases = Bases::new(None);
        for t in &self.header.tensors {
            bases.base(&self.header, t, self.artefact, false)?;
        }
        let results: Vec<Result<()>> = self
            .header
            .tensors
            .par_iter()
            .map(|t| verify_data(t, self.encoded(t), self.artefact))
            .collect();
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(self.header)
    }
}

/// A delta tensor's reference: the checkpoint and the index of the tensor in it.
type Base = (Arc<Snapshot>, usize);

/// A delta tensor's reference as its decoder gets it: shared, or handed over (moved out of a
/// reference checkpoint that nobody else holds) to become the decoded tensor in place.
enum BaseData {
    Shared(Base),
    Owned(Vec<u8>),
}

/// The references of one snapshot's delta tensors, each reference checkpoint read once
/// through `refs`.
struct Bases<'r> {
    refs: Option<&'r dyn References>,
    read: Vec<(u64, Arc<Snapshot>)>,
}

impl<'r> Bases<'r> {
    fn new(refs: Option<&'r dyn References>) -> Self {
        Bases {
            refs,
            read: Vec::new(),
        }
    }

    /// The reference tensor of `t`, a tensor of the snapshot with `header` (`None` when it is
    /// not a delta), checked against what the delta names: an earlier step, the state root, a
    /// tensor of the same name, dtype and shape, and a chain depth one more than that
    /// tensor's. With `hand_over`, the tensor is moved out of a reference checkpoint nobody
    /// else holds: a streaming read of a delta checkpoint then holds about one state, not two,
    /// and allocates no buffer for its delta tensors. Each reference tensor serves one delta
    /// tensor (names are unique), so none is needed again.
    fn base(
        &mut self,
        header: &Header,
        t: &TensorInfo,
        artefact: &str,
        hand_over: bool,
    ) -> Result<Option<BaseData>> {
        let Some(d) = t.delta else {
            return Ok(None);
        };
        let mismatch = |detail: String| Error::DeltaReferenceMismatch {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            reference: crate::layout::checkpoint(d.step),
            detail,
        };
        if d.step >= header.state.step {
            return Err(mismatch(format!(
                "the reference's step {} is not before this checkpoint's step {}",
                d.step, header.state.step
            )));
        }
        let Some(refs) = self.refs else {
            return Err(Error::DeltaWithoutReferences {
                artefact: artefact.to_string(),
                tensor: t.name.clone(),
                reference: crate::layout::checkpoint(d.step),
            });
        };
        let at = match self.read.iter().position(|(s, _)| *s == d.step) {
            Some(at) => at,
            None => {
                let snap =
                    refs.checkpoint(d.step)
                        .map_err(|e| Error::DeltaReferenceUnavailable {
                            artefact: artefact.to_string(),
                            reference: crate::layout::checkpoint(d.step),
                            source: Box::new(e),
                        })?;
                self.read.push((d.step, snap));
                self.read.len() - 1
            }
        };
        let snap = &mut self.read[at].1;
        if snap.header.state_root != d.root {
            return Err(mismatch(format!(
                "its state root is {}, the delta names {}",
                snap.header.state_root, d.root
            )));
        }
        let Some(index) = snap.header.find(&t.name) else {
            return Err(mismatch("it has no tensor of this name".into()));
        };
        let base = &snap.header.tensors[index];
        if base.dtype != t.dtype || base.shape != t.shape {
            return Err(mismatch(format!(
                "its tensor is {:?} {:?}, this one {:?} {:?}",
                base.dtype, base.shape, t.dtype, t.shape
            )));
        }
        let expected = base.delta.map(|b| b.depth).unwrap_or(0) + 1;
        if d.depth != expected {
            return Err(mismatch(format!(
                "chain depth {} where the reference's tensor makes it {expected}",
                d.depth
            )));
        }
        if hand_over && let Some(held) = Arc::get_mut(snap) {
            return Ok(Some(BaseData::Owned(std::mem::take(&mut held.data[index]))));
        }
        Ok(Some(BaseData::Shared((snap.clone(), index))))
    }
}

/// Decode one tensor's `encoded` bytes (against `base` when it is a delta) and verify them.
fn decode_tensor(
    t: &TensorInfo,
    encoded: std::borrow::Cow<'_, [u8]>,
    base: Option<BaseData>,
    artefact: &str,
) -> Result<Vec<u8>> {
    let raw = match base {
        Some(base) => decode_delta(t, &encoded, base, artefact)?,
        // Raw bytes already read are the tensor: moved, not copied.
        None if t.codec == Codec::Raw => encoded.into_owned(),
        None => decode_data(t.codec, t, &encoded, artefact)?,
    };
    verify_tensor(t, &raw, artefact)?;
    Ok(raw)
}

/// Decode a delta tensor: its inner encoding, with the transform undone against the reference
/// tensor's raw bytes; a reference handed over becomes the tensor, in place.
fn decode_delta(t: &TensorInfo, encoded: &[u8], base: BaseData, artefact: &str) -> Result<Vec<u8>> {
    let (delta, inner) = DeltaRef::parse(encoded, artefact, &t.name)?;
    if delta.inner == Codec::Raw && inner.len() as u64 != t.raw_len {
        return Err(Error::Decompress {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            detail: format!(
                "delta: {} raw inner bytes for a tensor of {}",
                inner.len(),
                t.raw_len
            ),
        });
    }
    let mut as_inner = t.clone();
    as_inner.dtype = delta.transform.inner_dtype(t.dtype);
    let size = t.dtype.size() as usize;
    match base {
        BaseData::Shared((snap, index)) => {
            let mut raw = decode_data(delta.inner, &as_inner, inner, artefact)?;
            delta.transform.inverse(&mut raw, &snap.data[index], size);
            Ok(raw)
        }
        BaseData::Owned(mut raw) if delta.inner == Codec::Planes => {
            let target = crate::planes::Target {
                artefact,
                tensor: &t.name,
                dtype: as_inner.dtype,
                raw_len: t.raw_len,
            };
            let undo = |b: &mut [u8], d: &[u8]| delta.transform.inverse_into_base(b, d, size);
            crate::planes::decode_into(&target, inner, &mut raw, Some(&undo))?;
            Ok(raw)
        }
        BaseData::Owned(mut raw) => {
            let decoded;
            let moved = if delta.inner == Codec::Raw {
                inner
            } else {
                decoded = decode_data(delta.inner, &as_inner, inner, artefact)?;
                &decoded
            };
            delta.transform.inverse_into_base(&mut raw, moved, size);
            Ok(raw)
        }
    }
}

/// Checks raw bytes of one tensor as they arrive: length within the declared raw length,
/// booleans canonical, hash equal to the table's.
struct RawSink<'a> {
    t: &'a TensorInfo,
    artefact: &'a str,
    hasher: hash::TensorHasher,
    seen: u64,
}

impl<'a> RawSink<'a> {
    fn new(t: &'a TensorInfo, artefact: &'a str) -> Self {
        RawSink {
            t,
            artefact,
            hasher: hash::TensorHasher::new(&t.name, t.dtype, &t.shape, t.raw_len),
            seen: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8], parallel: bool) -> Result<()> {
        let t = self.t;
        if self.seen + chunk.len() as u64 > t.raw_len {
            return Err(Error::DecodedSizeExceeded {
                artefact: self.artefact.to_string(),
                tensor: t.name.clone(),
                declared: t.raw_len,
            });
        }
        if t.dtype == DType::Bool
            && let Some(index) = chunk.iter().position(|&b| b > 1)
        {
            return Err(Error::NonCanonicalBool {
                artefact: self.artefact.to_string(),
                tensor: t.name.clone(),
                index: self.seen + index as u64,
                byte: chunk[index],
            });
        }
        if parallel {
            self.hasher.update_parallel(chunk);
        } else {
            self.hasher.update(chunk);
        }
        self.seen += chunk.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let t = self.t;
        if self.seen < t.raw_len {
            return Err(Error::DecodedSizeShort {
                artefact: self.artefact.to_string(),
                tensor: t.name.clone(),
                declared: t.raw_len,
                found: self.seen,
            });
        }
        let found = self.hasher.finish();
        if found != t.hash {
            return Err(Error::TensorHashMismatch {
                artefact: self.artefact.to_string(),
                tensor: t.name.clone(),
                expected: t.hash,
                found,
            });
        }
        Ok(())
    }
}

thread_local! {
    /// A decompressor and an output buffer per thread, reused across the tensors [`verify`]
    /// decodes: no window or buffer is allocated (and faulted in) per tensor.
    static SCRATCH: std::cell::RefCell<Option<(zstd::bulk::Decompressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

fn verify_data(t: &TensorInfo, encoded: &[u8], artefact: &str) -> Result<()> {
    let mut sink = RawSink::new(t, artefact);
    match t.codec {
        Codec::Raw => sink.feed(encoded, true)?,
        // Refused when its reference is looked up, before it is verified; refused here too.
        Codec::Delta => {
            return Err(Error::DeltaWithoutReferences {
                artefact: artefact.to_string(),
                tensor: t.name.clone(),
                reference: t
                    .delta
                    .map(|d| crate::layout::checkpoint(d.step))
                    .unwrap_or_default(),
            });
        }
        Codec::Planes => sink.feed(&decode_planes(t, encoded, artefact)?, true)?,
        Codec::Zstd => {
            let corrupt = |detail: String| Error::Decompress {
                artefact: artefact.to_string(),
                tensor: t.name.clone(),
                detail,
            };
            let exceeded = || Error::DecodedSizeExceeded {
                artefact: artefact.to_string(),
                tensor: t.name.clone(),
                declared: t.raw_len,
            };
            if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(encoded)
                && declared > t.raw_len
            {
                return Err(exceeded());
            }
            match zstd::zstd_safe::find_frame_compressed_size(encoded) {
                Ok(n) if n == encoded.len() => {}
                Ok(_) => return Err(corrupt("bytes follow the zstd frame".into())),
                Err(code) => return Err(corrupt(zstd::zstd_safe::get_error_name(code).into())),
            }
            // Decode into exactly raw_len + 1 bytes: a frame producing more is a bomb, whatever
            // size its header declares.
            let limit = t.raw_len as usize + 1;
            SCRATCH.with(|cell| -> Result<()> {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    let d = zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?;
                    *slot = Some((d, Vec::new()));
                }
                let Some((decompressor, buf)) = slot.as_mut() else {
                    unreachable!("initialised above")
                };
                if buf.len() < limit {
                    buf.resize(limit, 0);
                }
                let out = &mut buf[..limit];
                let n = match decompressor.decompress_to_buffer(encoded, out) {
                    Ok(n) => n,
                    Err(e) if e.to_string().contains("Destination buffer is too small") => {
                        return Err(exceeded());
                    }
                    Err(e) => return Err(corrupt(e.to_string())),
                };
                sink.feed(&out[..n], true)
            })?;
        }
    }
    sink.finish()
}

fn decode_planes(t: &TensorInfo, encoded: &[u8], artefact: &str) -> Result<Vec<u8>> {
    let target = crate::planes::Target {
        artefact,
        tensor: &t.name,
        dtype: t.dtype,
        raw_len: t.raw_len,
    };
    crate::planes::decode(&target, encoded)
}

/// Decode `encoded`, stored with `codec` (the tensor's own, or a delta's inner codec).
fn decode_data(codec: Codec, t: &TensorInfo, encoded: &[u8], artefact: &str) -> Result<Vec<u8>> {
    match codec {
        Codec::Raw => Ok(encoded.to_vec()),
        Codec::Planes => decode_planes(t, encoded, artefact),
        Codec::Delta => Err(Error::Decompress {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            detail: "delta: a delta cannot be the inner codec of a delta".into(),
        }),
        Codec::Zstd => match zstd::zstd_safe::get_frame_content_size(encoded) {
            Ok(Some(declared)) if declared > t.raw_len => Err(Error::DecodedSizeExceeded {
                artefact: artefact.to_string(),
                tensor: t.name.clone(),
                declared: t.raw_len,
            }),
            // The frame declares exactly the expected size: one bulk call into a buffer of that
            // size, which zstd cannot overrun and which it checks against the declared size.
            Ok(Some(declared)) if declared == t.raw_len => decode_zstd_bulk(t, encoded, artefact),
            // Undeclared or smaller: the bounded streaming decoder gives the exact error.
            _ => decode_zstd(t, encoded, artefact),
        },
    }
}

fn decode_zstd_bulk(t: &TensorInfo, encoded: &[u8], artefact: &str) -> Result<Vec<u8>> {
    let corrupt = |detail: String| Error::Decompress {
        artefact: artefact.to_string(),
        tensor: t.name.clone(),
        detail,
    };
    match zstd::zstd_safe::find_frame_compressed_size(encoded) {
        Ok(n) if n == encoded.len() => {}
        Ok(_) => return Err(corrupt("bytes follow the zstd frame".into())),
        Err(code) => return Err(corrupt(zstd::zstd_safe::get_error_name(code).into())),
    }
    let mut out = Vec::with_capacity(t.raw_len as usize);
    // The decompressor writes into the Vec's spare capacity (the free function
    // `zstd::bulk::decompress_to_buffer` takes a slice, and would see an empty one).
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(encoded, &mut out))
        .map_err(|e| corrupt(e.to_string()))?;
    if n as u64 != t.raw_len {
        return Err(Error::DecodedSizeShort {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            declared: t.raw_len,
            found: n as u64,
        });
    }
    Ok(out)
}

/// Decode one zstd frame, refusing to produce more than the declared raw length and
/// requiring the frame to span the tensor's encoded bytes exactly.
fn decode_zstd<R: std::io::BufRead>(t: &TensorInfo, input: R, artefact: &str) -> Result<Vec<u8>> {
    let corrupt = |detail: String| Error::Decompress {
        artefact: artefact.to_string(),
        tensor: t.name.clone(),
        detail,
    };
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|e| corrupt(e.to_string()))?
        .single_frame();
    // Allocation is bounded: raw_len passed the table's limits.
    let mut out = Vec::with_capacity(t.raw_len as usize);
    (&mut decoder)
        .take(t.raw_len + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(e.to_string()))?;
    if out.len() as u64 > t.raw_len {
        return Err(Error::DecodedSizeExceeded {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            declared: t.raw_len,
        });
    }
    if (out.len() as u64) < t.raw_len {
        return Err(Error::DecodedSizeShort {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            declared: t.raw_len,
            found: out.len() as u64,
        });
    }
    let mut rest = decoder.finish();
    let mut leftover = [0u8; 1];
    match rest.read(&mut leftover) {
        Ok(0) => Ok(out),
        Ok(_) => Err(corrupt("bytes follow the zstd frame".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

fn verify_tensor(t: &TensorInfo, raw: &[u8], artefact: &str) -> Result<()> {
    if t.dtype == DType::Bool
        && let Some(index) = raw.iter().position(|&b| b > 1)
    {
        return Err(Error::NonCanonicalBool {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            index: index as u64,
            byte: raw[index],
        });
    }
    let found = hash::tensor_hash(&t.name, t.dtype, &t.shape, raw);
    if found != t.hash {
        return Err(Error::TensorHashMismatch {
            artefact: artefact.to_string(),
            tensor: t.name.clone(),
            expected: t.hash,
            found,
        });
    }
    Ok(())
}

/// Encoded bytes [`SnapshotReader::decode_all`] gathers before decoding them in parallel (at
/// least one tensor).
pub const STREAM_WINDOW_BYTES: u64 = 16 << 20;

/// Streaming reader: verifies the header on construction, then yields one verified tensor at
/// a time (memory: one tensor plus the header), or decodes the whole snapshot in windows.
#[derive(Debug)]
pub struct SnapshotReader<R: Read> {
    inner: R,
    header: Header,
    next: usize,
    offset: u64,
    artefact: String,
}

impl<R: Read> SnapshotReader<R> {
    /// Read and verify preamble, header and digest.
    pub fn new(mut inner: R, artefact: &str, limits: &ReadLimits) -> Result<Self> {
        let (version, header_bytes) = envelope::read_open(SNAPSHOT, &mut inner, artefact)?;
        let header = parse_header(version, &header_bytes, artefact, limits)?;
        let offset = (envelope::PREAMBLE_LEN + header_bytes.len() + envelope::DIGEST_LEN) as u64;
        Ok(SnapshotReader {
            inner,
            header,
            next: 0,
            offset,
            artefact: artefact.to_string(),
        })
    }

    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Read the next tensor's encoded bytes, a delta's reference parsed into the table;
    /// `None` after the last.
    fn read_encoded(&mut self) -> Result<Option<(usize, Vec<u8>)>> {
        let index = self.next;
        let Some(t) = self.header.tensors.get(index) else {
            return Ok(None);
        };
        self.next += 1;
        let artefact = &self.artefact;
        let mut encoded = Vec::with_capacity(t.encoded_len.min(STREAM_WINDOW_BYTES) as usize);
        read_region(
            &mut (&mut self.inner).take(t.encoded_len),
            &mut encoded,
            artefact,
        )?;
        if (encoded.len() as u64) < t.encoded_len {
            return Err(Error::Truncated {
                artefact: artefact.clone(),
                needed: self.offset + t.encoded_len,
                available: self.offset + encoded.len() as u64,
            });
        }
        self.offset += t.encoded_len;
        if t.codec == Codec::Delta {
            let delta = DeltaRef::parse(&encoded, artefact, &t.name)?.0;
            self.header.tensors[index].delta = Some(delta);
        }
        Ok(Some((index, encoded)))
    }

    /// Decode and verify the next tensor; `None` after the last. A delta tensor is an error
    /// ([`Error::DeltaWithoutReferences`]); [`SnapshotReader::decode_all`] resolves it.
    pub fn next_tensor(&mut self) -> Result<Option<(&TensorInfo, Vec<u8>)>> {
        let Some((index, encoded)) = self.read_encoded()? else {
            return Ok(None);
        };
        let t = &self.header.tensors[index];
        let base = Bases::new(None).base(&self.header, t, &self.artefact, false)?;
        let raw = decode_tensor(t, encoded.into(), base, &self.artefact)?;
        Ok(Some((t, raw)))
    }

    /// Read, decode and verify the whole snapshot, resolving delta tensors through `refs`,
    /// then check the end marker. Tensors are gathered into windows of about
    /// [`STREAM_WINDOW_BYTES`] encoded bytes and each window is decoded in parallel: the
    /// encoded snapshot is never held whole.
    pub fn decode_all(self, refs: Option<&dyn References>) -> Result<Snapshot> {
        self.decode_in_windows(refs, STREAM_WINDOW_BYTES)
    }

    /// [`SnapshotReader::decode_all`] without keeping the tensors' values: each tensor that is
    /// not a delta is hashed as it decodes, through a small buffer ([`verify`]'s checks).
    pub fn verify_all(self, refs: Option<&dyn References>) -> Result<Header> {
        Ok(self.windows(refs, STREAM_WINDOW_BYTES, false)?.0)
    }

    /// [`SnapshotReader::decode_all`] with windows of about `window_bytes`.
    pub(crate) fn decode_in_windows(
        self,
        refs: Option<&dyn References>,
        window_bytes: u64,
    ) -> Result<Snapshot> {
        let (header, data) = self.windows(refs, window_bytes, true)?;
        Ok(Snapshot { header, data })
    }

    /// Read and verify every tensor, window by window, and the end marker; with `keep`, the
    /// decoded values of every tensor, in table order.
    fn windows(
        mut self,
        refs: Option<&dyn References>,
        window_bytes: u64,
        keep: bool,
    ) -> Result<(Header, Vec<Vec<u8>>)> {
        let mut bases = Bases::new(refs);
        let mut data = Vec::with_capacity(if keep { self.header.tensors.len() } else { 0 });
        loop {
            let mut window = Vec::new();
            let mut gathered = 0;
            while gathered < window_bytes {
                let Some((index, encoded)) = self.read_encoded()? else {
                    break;
                };
                gathered += encoded.len() as u64;
                let t = &self.header.tensors[index];
                let base = bases.base(&self.header, t, &self.artefact, true)?;
                window.push((index, encoded, base));
            }
            if window.is_empty() {
                break;
            }
            let (tensors, artefact) = (&self.header.tensors, &self.artefact);
            let decoded: Vec<Result<Vec<u8>>> = window
                .into_par_iter()
                .map(|(i, encoded, base)| {
                    let t = &tensors[i];
                    if !keep && base.is_none() {
                        return verify_data(t, &encoded, artefact).map(|()| Vec::new());
                    }
                    decode_tensor(t, encoded.into(), base, artefact)
                })
                .collect();
            for raw in decoded {
                let raw = raw?;
                if keep {
                    data.push(raw);
                }
            }
        }
        envelope::read_close(&mut self.inner, &self.artefact, self.offset)?;
        Ok((self.header, data))
    }

    /// After the last tensor: check the end marker and that nothing follows.
    pub fn finish(mut self) -> Result<Header> {
        while self.next_tensor()?.is_some() {}
        envelope::read_close(&mut self.inner, &self.artefact, self.offset)?;
        Ok(self.header)
    }
}

fn read_region<R: Read>(r: &mut R, out: &mut Vec<u8>, artefact: &str) -> Result<()> {
    r.read_to_end(out)
        .map(|_| ())
        .map_err(|source| Error::from_io(artefact, source))
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
    /// `depths` the chain depth of each tensor in name order, as [`Encoded::depths`]
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
/// Where a reader finds the checkpoints that delta tensors name.
pub trait References {
    /// The decoded and verified checkpoint stored at `step` (its state root is checked by the
    /// caller against the one the delta names). A checkpoint handed over unshared may be
    /// emptied tensor by tensor as its deltas are decoded.
    fn checkpoint(&self, step: u64) -> Result<Arc<Snapshot>>;
}
