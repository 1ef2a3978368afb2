//! Round trips for every dtype and shape class, both readers, both codecs; and byte-for-byte
//! agreement between the crate's writer and the spec-derived encoder in `common`.

mod common;

use proptest::prelude::*;
use snapshot_format::limits::ReadLimits;
use snapshot_format::snapshot::{
    self, DataCursor, MetaEntry, MetaValue, Provenance, RngState, SnapshotKind, SnapshotReader,
    StateMeta, StreamPosition, TensorView, WriteOptions,
};
use snapshot_format::{Codec, DType, Hash32};

#[derive(Debug, Clone)]
struct OwnedTensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn shape_class() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        Just(vec![]),                                                    // scalar
        (0u64..40).prop_map(|n| vec![n]),                                // vector, possibly empty
        (1u64..12, 1u64..12).prop_map(|(a, b)| vec![a, b]),              // matrix
        (1u64..5, 0u64..4, 1u64..6).prop_map(|(a, b, c)| vec![a, b, c]), // rank 3, maybe empty
        prop::collection::vec(1u64..3, 4..=6),                           // higher rank
    ]
}

fn tensor(name: String) -> impl Strategy<Value = OwnedTensor> {
    (
        prop::sample::select(DType::ALL.to_vec()),
        shape_class(),
        any::<bool>(),
    )
        .prop_flat_map(move |(dtype, shape, compressible)| {
            let n = (shape.iter().product::<u64>() * dtype.size()) as usize;
            let name = name.clone();
            let bytes: BoxedStrategy<Vec<u8>> = if dtype == DType::Bool {
                prop::collection::vec(0u8..=1, n).boxed()
            } else if compressible {
                prop::collection::vec(0u8..3, n).boxed()
            } else {
                prop::collection::vec(any::<u8>(), n).boxed()
            };
            bytes.prop_map(move |data| OwnedTensor {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

fn tensors() -> impl Strategy<Value = Vec<OwnedTensor>> {
    prop::collection::btree_set("[a-z][a-z0-9_.]{0,12}", 0..8)
        .prop_flat_map(|names| names.into_iter().map(tensor).collect::<Vec<_>>())
}

fn state() -> impl Strategy<Value = StateMeta> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u128>(),
    )
        .prop_map(|(step, epoch, position, seed, word)| StateMeta {
            step,
            data_cursor: DataCursor { epoch, position },
            rng: RngState {
                master_seed: seed,
                streams: vec![StreamPosition {
                    purpose: "order".into(),
                    word_pos: word,
                }],
            },
            extra: vec![
                MetaEntry {
                    key: "lr".into(),
                    value: MetaValue::F64Bits(0.001f64.to_bits()),
                },
                MetaEntry {
                    key: "note".into(),
                    value: MetaValue::Text("é".into()),
                },
            ],
        })
}

fn provenance() -> Provenance {
    Provenance {
        run_id: "run".into(),
        kind: SnapshotKind::Checkpoint,
        parent: Some(Hash32([3; 32])),
        producer: "test".into(),
    }
}

fn views(ts: &[OwnedTensor]) -> Vec<TensorView<'_>> {
    ts.iter()
        .map(|t| TensorView {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &t.data,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn round_trips_through_both_readers(ts in tensors(), st in state(), codec in 0u16..3, chunk in 1u32..64) {
        let codec = Codec::from_id(codec).expect("a known codec");
        let options = WriteOptions { codec, zstd_level: 3, chunk_bytes: chunk, ..WriteOptions::default() };
        // Hand the writer its tensors in reverse order: it must sort them.
        let mut reversed = views(&ts);
        reversed.reverse();
        let enc = snapshot::encode(&st, &provenance(), &reversed, None, options).expect("encode");
        let root = snapshot::state_root(&st, &views(&ts), None).expect("root");
        prop_assert_eq!(enc.state_root, root);

        let s = snapshot::decode(&enc.to_vec(), "x", &ReadLimits::default()).expect("decode");
        prop_assert_eq!(s.header.state_root, root);
        prop_assert_eq!(&s.header.state, &st);
        prop_assert_eq!(&s.header.provenance, &provenance());
        prop_assert_eq!(s.header.tensors.len(), ts.len());
        for (t, (info, data)) in ts.iter().zip(s.header.tensors.iter().zip(&s.data)) {
            prop_assert_eq!(&info.name, &t.name);
            prop_assert_eq!(info.dtype, t.dtype);
            prop_assert_eq!(&info.shape, &t.shape);
            prop_assert_eq!(data, &t.data);
        }

        let mut r = SnapshotReader::new(std::io::Cursor::new(enc.to_vec()), "x", &ReadLimits::default())
            .expect("stream header");
        let mut streamed = Vec::new();
        while let Some((info, data)) = r.next_tensor().expect("stream tensor") {
            streamed.push((info.name.clone(), data));
        }
        r.finish().expect("stream end");
        prop_assert_eq!(streamed.len(), ts.len());
        for ((name, data), t) in streamed.iter().zip(&ts) {
            prop_assert_eq!(name, &t.name);
            prop_assert_eq!(data, &t.data);
        }
    }

    #[test]
    fn hashes_do_not_depend_on_codec_or_level(ts in tensors(), st in state()) {
        let raw = snapshot::encode(&st, &provenance(), &views(&ts), None,
            WriteOptions { codec: Codec::Raw, ..WriteOptions::default() }).expect("raw");
        let z1 = snapshot::encode(&st, &provenance(), &views(&ts), None,
            WriteOptions { codec: Codec::Zstd, zstd_level: 1, ..WriteOptions::default() }).expect("zstd 1");
        let z19 = snapshot::encode(&st, &provenance(), &views(&ts), None,
            WriteOptions { codec: Codec::Zstd, zstd_level: 19, ..WriteOptions::default() }).expect("zstd 19");
        let planes = snapshot::encode(&st, &provenance(), &views(&ts), None,
            WriteOptions { codec: Codec::Planes, zstd_level: 1, chunk_bytes: 8, ..WriteOptions::default() }).expect("planes");
        prop_assert_eq!(raw.state_root, z1.state_root);
        prop_assert_eq!(raw.state_root, z19.state_root);
        prop_assert_eq!(raw.state_root, planes.state_root);
    }
}

#[test]
fn writer_matches_spec_encoder_byte_for_byte() {
    let spec = common::RawSnapshot::valid();
    let a: Vec<u8> = spec.data[..16].to_vec();
    let b: Vec<u8> = spec.data[16..].to_vec();
    let st = StateMeta {
        step: 5,
        data_cursor: DataCursor {
            epoch: 1,
            position: 3,
        },
        rng: RngState {
            master_seed: 42,
            streams: vec![],
        },
        extra: vec![],
    };
    let prov = Provenance {
        run_id: "vector-run".into(),
        kind: SnapshotKind::Checkpoint,
        parent: None,
        producer: "spec-encoder".into(),
    };
    let ts = [
        TensorView {
            name: "b",
            dtype: DType::U8,
            shape: &[3],
            data: &b,
        },
        TensorView {
            name: "a",
            dtype: DType::F32,
            shape: &[2, 2],
            data: &a,
        },
    ];
    let enc = snapshot::encode(
        &st,
        &prov,
        &ts,
        None,
        WriteOptions {
            codec: Codec::Raw,
            ..WriteOptions::default()
        },
    )
    .expect("encode");
    assert_eq!(enc.to_vec(), spec.to_bytes());
    assert_eq!(st.canonical_bytes(), spec.meta);
}

#[test]
fn precomputed_hashes_are_used_as_given() {
    // Passing wrong precomputed hashes must produce a snapshot that readers reject: the writer
    // trusts the caller's hashes (to avoid hashing twice) and the reader catches a caller bug.
    let data = vec![1u8, 2, 3];
    let ts = [TensorView {
        name: "t",
        dtype: DType::U8,
        shape: &[3],
        data: &data,
    }];
    let st = StateMeta::default();
    let good = snapshot::hash_tensors(&ts);
    let enc = snapshot::encode(
        &st,
        &provenance(),
        &ts,
        Some(&good),
        WriteOptions::default(),
    )
    .expect("encode");
    snapshot::decode(&enc.to_vec(), "x", &ReadLimits::default()).expect("good hashes decode");
    let bad = [Hash32([1; 32])];
    let enc = snapshot::encode(&st, &provenance(), &ts, Some(&bad), WriteOptions::default())
        .expect("encode");
    assert!(matches!(
        snapshot::decode(&enc.to_vec(), "x", &ReadLimits::default()),
        Err(snapshot_format::Error::TensorHashMismatch { .. })
    ));
}

#[test]
fn writer_rejects_inconsistent_input() {
    let data = vec![0u8; 4];
    let st = StateMeta::default();
    let dup = [
        TensorView {
            name: "x",
            dtype: DType::U8,
            shape: &[4],
            data: &data,
        },
        TensorView {
            name: "x",
            dtype: DType::U8,
            shape: &[4],
            data: &data,
        },
    ];
    assert!(matches!(
        snapshot::encode(&st, &provenance(), &dup, None, WriteOptions::default()),
        Err(snapshot_format::Error::DuplicateTensorName { .. })
    ));
    let wrong_len = [TensorView {
        name: "x",
        dtype: DType::F32,
        shape: &[2],
        data: &data,
    }];
    assert!(matches!(
        snapshot::encode(
            &st,
            &provenance(),
            &wrong_len,
            None,
            WriteOptions::default()
        ),
        Err(snapshot_format::Error::RawLengthMismatch { .. })
    ));
}
