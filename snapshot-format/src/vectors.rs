//! Reference test vectors: snapshots (codecs 1, 2 and 3), a ledger segment, a dataset manifest
//! and a part index built from fixed inputs, and must-reject vectors (`reject/`): each breaks
//! one rule of the spec, and `vectors.json` names the error a reader must give. `cargo run -p snapshot-format --example gen-vectors` writes them to
//! `specs/vectors/`; tests check that regeneration changes nothing and that an
//! encoder written from the spec alone reproduces their hashes.

use crate::dataset::DatasetManifest;
use crate::delta::Transform;
use crate::hash::{self, Hash32};
use crate::ledger::{self, Segment, StepRecord};
use crate::manifest;
use crate::snapshot::Reference;
use crate::snapshot::{
    self, DataCursor, MetaEntry, MetaValue, Provenance, RngState, SnapshotKind, StateMeta,
    StreamPosition, TensorView, WriteOptions,
};
use crate::{Codec, DType, Result};

/// One generated file.
#[derive(Debug, Clone)]
pub struct VectorFile {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// The spec used for the ledger vector's genesis.
pub fn spec() -> serde_json::Value {
    serde_json::json!({ "seed": 1, "lr": 0.001, "model": { "kind": "vector" } })
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Chunk size of the planes vector: small, so that its tensors span several chunks.
pub const PLANES_CHUNK_BYTES: u32 = 2048;

/// The planes vector's F32 tensor `w`: element `i` is `((i * 37) % 101 - 50) / 1024`.
pub fn planes_f32(i: u64) -> f32 {
    ((i * 37) % 101) as f32 / 1024.0 - 50.0 / 1024.0
}

/// The delta vector's `w`: [`planes_f32`] moved by `((i % 5) - 2) / 65536`.
pub fn delta_f32(i: u64) -> f32 {
    planes_f32(i) + ((i % 5) as f32 - 2.0) / 65536.0
}

/// The planes vector's tensors (`h`, `w`) from `f`: `w` F32 [3000], `h` BF16 [1500] holding the
/// top halves of the first 1,500 values.
fn vector_tensors(f: fn(u64) -> f32) -> (Vec<u8>, Vec<u8>) {
    let w: Vec<u8> = (0..3000).flat_map(|i| f(i).to_le_bytes()).collect();
    let h: Vec<u8> = (0..1500)
        .flat_map(|i| ((f(i).to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    (h, w)
}

fn vector_views<'a>(h: &'a [u8], w: &'a [u8]) -> [TensorView<'a>; 2] {
    [
        TensorView {
            name: "h",
            dtype: DType::BF16,
            shape: &[1500],
            data: h,
        },
        TensorView {
            name: "w",
            dtype: DType::F32,
            shape: &[3000],
            data: w,
        },
    ]
}

/// A snapshot of codec 2 (planes) at step 1: `w`, F32 [3000] from [`planes_f32`] (six chunks,
/// the last short), and `h`, BF16 [1500] holding the top halves of the same values' first
/// 1,500; and a snapshot of codec 3 (delta, transform 1, planes inside) at step 2 against it,
/// of the same tensors from [`delta_f32`].
fn planes_and_delta_snapshots() -> Result<[(Vec<u8>, Hash32); 2]> {
    let (h, w) = vector_tensors(planes_f32);
    let tensors = vector_views(&h, &w);
    let provenance = Provenance {
        run_id: "vector-run".into(),
        kind: SnapshotKind::Checkpoint,
        parent: None,
        producer: "snapshot-format vectors".into(),
    };
    let options = WriteOptions {
        codec: Codec::Planes,
        zstd_level: 3,
        chunk_bytes: PLANES_CHUNK_BYTES,
        ..WriteOptions::default()
    };
    let state = |step| StateMeta {
        step,
        ..StateMeta::default()
    };
    let first = snapshot::encode(&state(1), &provenance, &tensors, None, options)?;
    let reference = Reference::new(1, first.state_root, &tensors, &first.depths);
    let (h2, w2) = vector_tensors(delta_f32);
    let second = snapshot::encode_against(
        &state(2),
        &Provenance {
            parent: Some(first.state_root),
            ..provenance
        },
        &vector_views(&h2, &w2),
        None,
        WriteOptions {
            codec: Codec::Delta,
            delta_transform: Transform::Difference,
            ..options
        },
        Some(&reference),
    )?;
    Ok([
        (first.to_vec(), first.state_root),
        (second.to_vec(), second.state_root),
    ])
}

/// Generate every vector file and `vectors.json`, which lists each file's BLAKE3 and the
/// hashes the files commit to.
/// Length of the object of the part-index vector, and the size of its parts.
pub const PARTED_LEN: u64 = 10_000;
pub const PART_BYTES: u64 = 4096;

/// Byte `i` of the object of the part-index vector.
pub fn parted_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) % 256) as u8
}

/// The index of the object of [`parted_byte`]s stored in parts of [`PART_BYTES`].
fn part_index() -> crate::parts::PartIndex {
    let object: Vec<u8> = (0..PARTED_LEN).map(parted_byte).collect();
    crate::parts::PartIndex {
        len: PARTED_LEN,
        parts: object
            .chunks(PART_BYTES as usize)
            .map(|c| crate::parts::Part {
                len: c.len() as u64,
                hash: crate::parts::part_hash([c]),
            })
            .collect(),
    }
}

pub fn generate() -> Result<Vec<VectorFile>> {
    let embeddings = f32_bytes(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    let bias = f32_bytes(&[0.25, -0.5, f32::MIN_POSITIVE]);
    let step = 3i64.to_le_bytes().to_vec();
    let mask = vec![1u8, 0, 1, 1, 0];
    let tensors = [
        TensorView {
            name: "embeddings.weight",
            dtype: DType::F32,
            shape: &[4, 3],
            data: &embeddings,
        },
        TensorView {
            name: "layer.bias",
            dtype: DType::F32,
            shape: &[3],
            data: &bias,
        },
        TensorView {
            name: "mask",
            dtype: DType::Bool,
            shape: &[5],
            data: &mask,
        },
        TensorView {
            name: "optim/step",
            dtype: DType::I64,
            shape: &[],
            data: &step,
        },
    ];
    let state = StateMeta {
        step: 3,
        data_cursor: DataCursor {
            epoch: 0,
            position: 6,
        },
        rng: RngState {
            master_seed: 1,
            streams: vec![StreamPosition {
                purpose: "order".into(),
                word_pos: 16,
            }],
        },
        extra: vec![MetaEntry {
            key: "optimizer".into(),
            value: MetaValue::Text("adamw".into()),
        }],
    };
    let provenance = Provenance {
        run_id: "vector-run".into(),
        kind: SnapshotKind::Checkpoint,
        parent: None,
        producer: "snapshot-format vectors".into(),
    };
    let snap = snapshot::encode(
        &state,
        &provenance,
        &tensors,
        None,
        WriteOptions {
            codec: Codec::Zstd,
            zstd_level: 3,
            ..WriteOptions::default()
        },
    )?;
    let [(planes, planes_root), (delta, delta_root)] = planes_and_delta_snapshots()?;

    let examples: Vec<Hash32> = (0..5)
        .map(|i| hash::example_hash(format!("example-{i}").as_bytes()))
        .collect();
    let dataset = DatasetManifest::new(examples.clone());

    let spec_hash = manifest::spec_hash(&spec());
    let genesis = ledger::genesis(&spec_hash, &snap.state_root);
    let mut records = Vec::new();
    let mut prev = genesis;
    for s in 1..=3u64 {
        let ids = vec![(s - 1) % 5, s % 5];
        let batch: Vec<Hash32> = ids.iter().map(|&i| examples[i as usize]).collect();
        let r = StepRecord {
            step: s,
            epoch: 0,
            lr_bits: (0.001f64 * s as f64).to_bits(),
            example_ids: ids,
            batch_hash: hash::batch_hash(&batch),
            loss_bits: (1.0f32 / s as f32).to_bits(),
            grad_norm_bits: (0.5f32 * s as f32).to_bits(),
            state_root: if s == 2 {
                None
            } else {
                Some(Hash32([s as u8; 32]))
            },
            prev_hash: prev,
        };
        prev = r.hash();
        records.push(r);
    }
    let segment = Segment { index: 1, records };

    let files = vec![
        VectorFile {
            name: "snapshot-v1.snap",
            bytes: snap.to_vec(),
        },
        VectorFile {
            name: "segment-v1.seg",
            bytes: segment.encode(),
        },
        VectorFile {
            name: "dataset-v1.bin",
            bytes: dataset.encode(),
        },
        VectorFile {
            name: "snapshot-planes-v1.snap",
            bytes: planes,
        },
        VectorFile {
            name: "snapshot-delta-v1.snap",
            bytes: delta,
        },
        VectorFile {
            name: "part-index-v1.bin",
            bytes: part_index().encode(),
        },
    ];
    let (rejects, reject_list) =
        rejects(&files, &segment, &dataset, &tensors, &state, &provenance)?;
    let mut files = files;
    files.extend(rejects);
    let file_hashes: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|f| {
            (
                f.name.to_string(),
                blake3::hash(&f.bytes).to_hex().to_string().into(),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "files_blake3": file_hashes,
        "snapshot": {
            "state_root": snap.state_root,
            "tensor_hashes": tensors.iter().map(|t| (t.name.to_string(), t.hash())).collect::<std::collections::BTreeMap<_, _>>(),
        },
        "snapshot_planes": {
            "state_root": planes_root,
            "chunk_bytes": PLANES_CHUNK_BYTES,
        },
        "snapshot_delta": {
            "state_root": delta_root,
            "reference": "snapshot-planes-v1.snap",
        },
        "ledger": {
            "spec_hash": spec_hash,
            "genesis": genesis,
            "record_hashes": segment.records.iter().map(StepRecord::hash).collect::<Vec<_>>(),
            "head": segment.head(),
        },
        "dataset": {
            "example_hashes": examples,
            "root": dataset.root,
        },
        "part_index": {
            "object_len": PARTED_LEN,
            "part_bytes": PART_BYTES,
        },
        "reject": reject_list,
    });
    let mut json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    json.push(b'\n');
    let mut all = files;
    all.push(VectorFile {
        name: "vectors.json",
        bytes: json,
    });
    Ok(all)
}

/// One must-reject vector: its file, what reads it, the error (the `Error` variant) a reader
/// must give, and the rule it breaks.
fn reject(
    name: &'static str,
    bytes: Vec<u8>,
    reader: &str,
    error: &str,
    rule: &str,
) -> (VectorFile, serde_json::Value) {
    let entry = serde_json::json!({ "file": name, "reader": reader, "error": error, "rule": rule });
    (VectorFile { name, bytes }, entry)
}

/// The must-reject vectors, each one rule broken in one of the valid vectors (specs §2 for the
/// envelope, §3 for snapshots, §4.2 for segments, §5 for datasets).
fn rejects(
    files: &[VectorFile],
    segment: &Segment,
    dataset: &DatasetManifest,
    tensors: &[TensorView<'_>],
    state: &StateMeta,
    provenance: &Provenance,
) -> Result<(Vec<VectorFile>, Vec<serde_json::Value>)> {
    let valid = |name: &str| {
        files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.bytes.clone())
            .unwrap_or_default()
    };
    let snap = valid("snapshot-v1.snap");
    let with = |at: usize, byte: u8| {
        let mut b = snap.clone();
        b[at] = byte;
        b
    };
    let header_len = u32::from_le_bytes([snap[12], snap[13], snap[14], snap[15]]) as usize;
    let last = snap.len() - 1;
    // A snapshot whose tensors are stored raw, one data byte flipped: the bytes decode, and
    // their tensor hash is not the one the header lists.
    let mut raw = snapshot::encode(
        state,
        provenance,
        tensors,
        None,
        WriteOptions {
            codec: Codec::Raw,
            ..WriteOptions::default()
        },
    )?
    .to_vec();
    let end = raw.len() - crate::envelope::END_MARKER.len();
    raw[end - 1] ^= 1;
    // The delta vector naming another state root for its reference (the planes vector).
    let mut delta = valid("snapshot-delta-v1.snap");
    let header = snapshot::read_header(&delta, "delta", &crate::limits::ReadLimits::default())?;
    let data_start = delta.len() - crate::envelope::END_MARKER.len() - header.data_len() as usize;
    if let Some(t) = header.tensors.iter().find(|t| t.codec == Codec::Delta) {
        delta[data_start + t.offset as usize + 8] ^= 1;
    }
    let mut chain = segment.clone();
    chain.records[1].prev_hash = Hash32([0; 32]);
    let mut order = segment.clone();
    order.records[1].step = 3;
    let mut wrong_root = dataset.clone();
    wrong_root.root = Hash32([0; 32]);
    let out = [
        reject(
            "reject/snapshot-short.snap",
            snap[..10].to_vec(),
            "snapshot",
            "Truncated",
            "§2 rule 1: fewer than 16 bytes",
        ),
        reject(
            "reject/snapshot-bad-magic.snap",
            with(1, b'X'),
            "snapshot",
            "BadMagic",
            "§2 rule 2: the magic is not the snapshot's",
        ),
        reject(
            "reject/snapshot-version-2.snap",
            with(8, 2),
            "snapshot",
            "UnsupportedVersion",
            "§2 rule 3: version 2",
        ),
        reject(
            "reject/snapshot-flags.snap",
            with(10, 1),
            "snapshot",
            "ReservedFlags",
            "§2 rule 4: a flag set",
        ),
        reject(
            "reject/snapshot-header-digest.snap",
            with(16 + header_len / 2, snap[16 + header_len / 2] ^ 1),
            "snapshot",
            "HeaderDigestMismatch",
            "§2 rule 7: a header byte changed, the digest not",
        ),
        reject(
            "reject/snapshot-truncated.snap",
            snap[..last].to_vec(),
            "snapshot",
            "Truncated",
            "§2 rule 10: the last byte missing",
        ),
        reject(
            "reject/snapshot-end-marker.snap",
            with(last, b'X'),
            "snapshot",
            "MissingEndMarker",
            "§2 rule 10: the end marker's last byte changed",
        ),
        reject(
            "reject/snapshot-trailing.snap",
            [snap.as_slice(), &[0]].concat(),
            "snapshot",
            "TrailingBytes",
            "§2 rule 10: one byte after the end marker",
        ),
        reject(
            "reject/snapshot-tensor-hash.snap",
            raw,
            "snapshot",
            "TensorHashMismatch",
            "§3.4: a raw tensor's last byte flipped",
        ),
        reject(
            "reject/snapshot-delta-reference.snap",
            delta,
            "snapshot, its references the planes vector",
            "DeltaReferenceMismatch",
            "§3.3.2: a delta names another state root than its reference's",
        ),
        reject(
            "reject/segment-chain-broken.seg",
            chain.encode(),
            "segment",
            "ChainBroken",
            "§4.2: the second record's prev_hash is not the first record's hash",
        ),
        reject(
            "reject/segment-step-order.seg",
            order.encode(),
            "segment",
            "StepOutOfOrder",
            "§4.2: steps 1, 3, 3",
        ),
        reject(
            "reject/dataset-root.bin",
            wrong_root.encode(),
            "dataset",
            "DatasetRootMismatch",
            "§5: the stored root is not the example hashes' root",
        ),
    ];
    Ok(out.into_iter().unzip())
}
