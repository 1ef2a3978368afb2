//! The checked-in test vectors: regeneration must not change a byte, and the hashes they
//! commit to must match an encoder written from the spec alone.

mod common;

use std::path::PathBuf;

use common::{h, put_str, put_u64};
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::ledger::Segment;
use snapshot_format::limits::ReadLimits;
use snapshot_format::snapshot;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs/vectors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn summary() -> serde_json::Value {
    serde_json::from_slice(&read("vectors.json")).expect("vectors.json parses")
}

fn hex_of(v: &serde_json::Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(v.as_str().expect("hex string"), &mut out).expect("hex");
    out
}

#[test]
fn vectors_are_stable() {
    for f in snapshot_format::vectors::generate().expect("generate") {
        assert!(
            read(f.name) == f.bytes,
            "regenerating {} changes it: the format or its writer changed. If intended, bump the \
             format version or document why, then run `cargo run -p snapshot-format --example gen-vectors`",
            f.name
        );
    }
}

#[test]
fn vector_files_hash_as_listed() {
    let s = summary();
    for (name, expected) in s["files_blake3"].as_object().expect("map") {
        assert_eq!(
            blake3::hash(&read(name)).to_hex().as_str(),
            expected.as_str().expect("hex")
        );
    }
}

#[test]
fn snapshot_vector_matches_spec() {
    let s = summary();
    let snap = snapshot::decode(&read("snapshot-v1.snap"), "vector", &ReadLimits::default())
        .expect("decodes");
    let mut hashes = Vec::new();
    for (info, data) in snap.header.tensors.iter().zip(&snap.data) {
        let by_spec = common::tensor_hash(&info.name, info.dtype.code(), &info.shape, data);
        assert_eq!(
            by_spec,
            hex_of(&s["snapshot"]["tensor_hashes"][&info.name]),
            "{}",
            info.name
        );
        hashes.push(by_spec);
    }
    // StateMeta per spec 3.1: step 3, epoch 0, position 6, seed 1, one stream ("order", 16),
    // one extra entry ("optimizer" = Text "adamw", variant index 3).
    let mut meta = Vec::new();
    for v in [3u64, 0, 6, 1, 1] {
        put_u64(&mut meta, v);
    }
    put_str(&mut meta, "order");
    meta.extend_from_slice(&16u128.to_le_bytes());
    put_u64(&mut meta, 1);
    put_str(&mut meta, "optimizer");
    meta.extend_from_slice(&3u32.to_le_bytes());
    put_str(&mut meta, "adamw");
    assert_eq!(meta, snap.header.state.canonical_bytes());
    let root = common::state_root(&meta, &hashes);
    assert_eq!(root, hex_of(&s["snapshot"]["state_root"]));
    assert_eq!(root, snap.header.state_root.0);
}

#[test]
fn ledger_vector_matches_spec() {
    let s = summary();
    // RFC 8785 form of the vector spec, written out by hand.
    let jcs = br#"{"lr":0.001,"model":{"kind":"vector"},"seed":1}"#;
    let spec_hash = h("training-replay-verifier v1 run spec", jcs);
    assert_eq!(spec_hash, hex_of(&s["ledger"]["spec_hash"]));
    let initial = hex_of(&s["snapshot"]["state_root"]);
    let genesis = h(
        "training-replay-verifier v1 ledger genesis",
        &[spec_hash, initial].concat(),
    );
    assert_eq!(genesis, hex_of(&s["ledger"]["genesis"]));

    let seg = Segment::decode(&read("segment-v1.seg"), "vector").expect("decodes");
    let mut prev = genesis;
    for (i, r) in seg.records.iter().enumerate() {
        let mut b = Vec::new();
        for v in [r.step, r.epoch, r.lr_bits] {
            put_u64(&mut b, v);
        }
        put_u64(&mut b, r.example_ids.len() as u64);
        for id in &r.example_ids {
            put_u64(&mut b, *id);
        }
        b.extend_from_slice(&r.batch_hash.0);
        b.extend_from_slice(&r.loss_bits.to_le_bytes());
        b.extend_from_slice(&r.grad_norm_bits.to_le_bytes());
        match r.state_root {
            None => b.push(0),
            Some(root) => {
                b.push(1);
                b.extend_from_slice(&root.0);
            }
        }
        assert_eq!(r.prev_hash.0, prev, "record {i} links to its predecessor");
        b.extend_from_slice(&prev);
        let hash = h("training-replay-verifier v1 ledger record", &b);
        assert_eq!(hash, hex_of(&s["ledger"]["record_hashes"][i]));
        prev = hash;
    }
    assert_eq!(prev, hex_of(&s["ledger"]["head"]));
}

#[test]
fn dataset_vector_matches_spec() {
    let s = summary();
    let leaves: Vec<[u8; 32]> = (0..5)
        .map(|i| {
            let c = format!("example-{i}");
            let mut b = Vec::new();
            put_str(&mut b, &c);
            h("training-replay-verifier v1 example", &b)
        })
        .collect();
    for (i, l) in leaves.iter().enumerate() {
        assert_eq!(*l, hex_of(&s["dataset"]["example_hashes"][i]));
    }
    let node = |l: &[u8; 32], r: &[u8; 32]| {
        h(
            "training-replay-verifier v1 merkle node",
            &[*l, *r].concat(),
        )
    };
    // Five leaves: ((0 1) (2 3)) then 4 carried up twice.
    let top = node(
        &node(&node(&leaves[0], &leaves[1]), &node(&leaves[2], &leaves[3])),
        &leaves[4],
    );
    let mut b = Vec::new();
    put_u64(&mut b, 5);
    b.extend_from_slice(&top);
    let root = h("training-replay-verifier v1 dataset root", &b);
    assert_eq!(root, hex_of(&s["dataset"]["root"]));
    let m = DatasetManifest::decode(&read("dataset-v1.bin"), "vector").expect("decodes");
    assert_eq!(m.root.0, root);
}

/// Codec 2 decoded as specs/snapshot-format.md §3.3.1 describes it, written apart from the
/// crate's decoder: chunk size, index, streams, planes interleaved, the sign bit rotated back
/// (for a float dtype, `rotated`).
fn planes_by_spec(enc: &[u8], size: usize, raw_len: usize, rotated: bool) -> Vec<u8> {
    let chunk = u32::from_le_bytes(enc[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(chunk % size, 0);
    let n_chunks = raw_len.div_ceil(chunk);
    let index = &enc[4..4 + n_chunks * size * 5];
    let mut at = 4 + index.len();
    let mut raw = Vec::with_capacity(raw_len);
    for c in 0..n_chunks {
        let m = (raw_len - c * chunk).min(chunk) / size;
        let planes: Vec<Vec<u8>> = (0..size)
            .map(|p| {
                let e = &index[(c * size + p) * 5..][..5];
                let len = u32::from_le_bytes(e[1..5].try_into().expect("4 bytes")) as usize;
                let stream = &enc[at..at + len];
                at += len;
                match e[0] {
                    0 => stream.to_vec(),
                    1 => zstd::stream::decode_all(stream).expect("zstd frame"),
                    other => panic!("method {other}"),
                }
            })
            .collect();
        for i in 0..m {
            let mut v = 0u64;
            for (p, plane) in planes.iter().enumerate() {
                assert_eq!(plane.len(), m);
                v |= (plane[i] as u64) << (8 * p);
            }
            let width = 8 * size as u32;
            let v = if rotated {
                (v >> 1) | ((v & 1) << (width - 1))
            } else {
                v
            };
            raw.extend_from_slice(&v.to_le_bytes()[..size]);
        }
    }
    assert_eq!(at, enc.len(), "the streams end the encoding");
    raw
}

#[test]
fn planes_vector_matches_spec() {
    let s = summary();
    let bytes = read("snapshot-planes-v1.snap");
    let header =
        snapshot::read_header(&bytes, "vector", &ReadLimits::default()).expect("header reads");
    let data = &bytes
        [bytes.len() - snapshot_format::envelope::END_MARKER.len() - header.data_len() as usize..];
    let w: Vec<u8> = (0..3000u64)
        .flat_map(|i| snapshot_format::vectors::planes_f32(i).to_le_bytes())
        .collect();
    let h16: Vec<u8> = w
        .chunks_exact(4)
        .take(1500)
        .flat_map(|f| [f[2], f[3]])
        .collect();
    let mut hashes = Vec::new();
    for (t, expected) in header.tensors.iter().zip([&h16, &w]) {
        assert_eq!(t.codec, snapshot_format::Codec::Planes, "{}", t.name);
        let enc = &data[t.offset as usize..][..t.encoded_len as usize];
        assert_eq!(
            u32::from_le_bytes(enc[..4].try_into().expect("4 bytes")) as u64,
            s["snapshot_planes"]["chunk_bytes"]
                .as_u64()
                .expect("chunk size")
        );
        let raw = planes_by_spec(enc, t.dtype.size() as usize, t.raw_len as usize, true);
        assert!(
            &raw == expected,
            "{} decodes by the spec to its values",
            t.name
        );
        hashes.push(common::tensor_hash(&t.name, t.dtype.code(), &t.shape, &raw));
    }
    let root = common::state_root(&common::state_meta(1, 0, 0, 0), &hashes);
    assert_eq!(root, hex_of(&s["snapshot_planes"]["state_root"]));
    // And the crate's own decoder agrees.
    let snap = snapshot::decode(&bytes, "vector", &ReadLimits::default()).expect("decodes");
    assert_eq!(snap.header.state_root.0, root);
}

/// The F32 `w` and BF16 `h` of the planes (`f` = `planes_f32`) or delta (`delta_f32`) vector.
fn vector_values(f: fn(u64) -> f32) -> (Vec<u8>, Vec<u8>) {
    let w: Vec<u8> = (0..3000u64).flat_map(|i| f(i).to_le_bytes()).collect();
    let h: Vec<u8> = w
        .chunks_exact(4)
        .take(1500)
        .flat_map(|v| [v[2], v[3]])
        .collect();
    (h, w)
}

/// The delta vector (codec 3, §3.3.2) decoded from the spec alone against the planes vector:
/// its 47-byte reference (step 1, the planes vector's root, depth 1, transform 1, inner planes),
/// planes read as unsigned integers (not rotated), the zigzag difference added back.
#[test]
fn delta_vector_matches_spec() {
    let s = summary();
    let bytes = read("snapshot-delta-v1.snap");
    let header =
        snapshot::read_header(&bytes, "vector", &ReadLimits::default()).expect("header reads");
    let data = &bytes
        [bytes.len() - snapshot_format::envelope::END_MARKER.len() - header.data_len() as usize..];
    let (h1, w1) = vector_values(snapshot_format::vectors::planes_f32);
    let (h2, w2) = vector_values(snapshot_format::vectors::delta_f32);
    let planes_root = hex_of(&s["snapshot_planes"]["state_root"]);
    let mut hashes = Vec::new();
    for (t, (base, expected)) in header.tensors.iter().zip([(&h1, &h2), (&w1, &w2)]) {
        assert_eq!(t.codec, snapshot_format::Codec::Delta, "{}", t.name);
        let enc = &data[t.offset as usize..][..t.encoded_len as usize];
        assert_eq!(u64::from_le_bytes(enc[..8].try_into().expect("8")), 1);
        assert_eq!(enc[8..40], planes_root);
        assert_eq!(u32::from_le_bytes(enc[40..44].try_into().expect("4")), 1);
        assert_eq!(enc[44], 1, "transform 1, difference");
        assert_eq!(u16::from_le_bytes(enc[45..47].try_into().expect("2")), 2);
        let size = t.dtype.size() as usize;
        let x = planes_by_spec(&enc[47..], size, t.raw_len as usize, false);
        let mut raw = Vec::with_capacity(x.len());
        for (xe, be) in x.chunks_exact(size).zip(base.chunks_exact(size)) {
            let mut xb = [0u8; 8];
            xb[..size].copy_from_slice(xe);
            let mut bb = [0u8; 8];
            bb[..size].copy_from_slice(be);
            let (xv, bv) = (u64::from_le_bytes(xb), u64::from_le_bytes(bb));
            let mask = if size == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * size)) - 1
            };
            // d = (x >> 1) XOR -(x AND 1), modulo 2^(8s); r = b + d modulo 2^(8s).
            let d = ((xv >> 1) ^ (xv & 1).wrapping_neg()) & mask;
            let r = bv.wrapping_add(d) & mask;
            raw.extend_from_slice(&r.to_le_bytes()[..size]);
        }
        assert!(
            &raw == expected,
            "{} decodes by the spec to its values",
            t.name
        );
        hashes.push(common::tensor_hash(&t.name, t.dtype.code(), &t.shape, &raw));
    }
    let root = common::state_root(&common::state_meta(2, 0, 0, 0), &hashes);
    assert_eq!(root, hex_of(&s["snapshot_delta"]["state_root"]));
    // And the crate's own decoder agrees, given the planes vector as checkpoint 1, and refuses
    // without it.
    // `One(reference, true)` hands over an unshared copy, which a streaming read undoes each
    // delta into, in place.
    struct One(std::sync::Arc<snapshot::Snapshot>, bool);
    impl snapshot_format::snapshot::References for One {
        fn checkpoint(
            &self,
            step: u64,
        ) -> snapshot_format::Result<std::sync::Arc<snapshot::Snapshot>> {
            assert_eq!(step, 1);
            Ok(if self.1 {
                std::sync::Arc::new((*self.0).clone())
            } else {
                self.0.clone()
            })
        }
    }
    let reference = snapshot::decode(
        &read("snapshot-planes-v1.snap"),
        "vector",
        &ReadLimits::default(),
    )
    .expect("decodes");
    let snap = snapshot::decode_with(
        &bytes,
        "vector",
        &ReadLimits::default(),
        Some(&One(std::sync::Arc::new(reference.clone()), false)),
    )
    .expect("decodes");
    assert_eq!(snap.header.state_root.0, root);
    assert!(snapshot::decode(&bytes, "vector", &ReadLimits::default()).is_err());
    // Streamed with the reference handed over (each delta undone in place in it): the same.
    let streamed = snapshot::SnapshotReader::new(
        std::io::Cursor::new(&bytes),
        "vector",
        &ReadLimits::default(),
    )
    .and_then(|r| r.decode_all(Some(&One(std::sync::Arc::new(reference), true))))
    .expect("decodes streamed");
    assert_eq!(streamed.header.state_root.0, root);
    assert_eq!(streamed.data, snap.data);
}

/// The part index (§7.1) of 10,000 bytes `(7i + 3) mod 256` in parts of 4,096 bytes, encoded
/// from the spec alone: the vector is exactly those bytes, and the crate reads it back.
#[test]
fn part_index_vector_matches_spec() {
    let s = summary();
    let len = s["part_index"]["object_len"].as_u64().expect("len");
    let part = s["part_index"]["part_bytes"].as_u64().expect("part") as usize;
    let object: Vec<u8> = (0..len).map(|i| ((7 * i + 3) % 256) as u8).collect();
    let mut header = Vec::new();
    put_u64(&mut header, len);
    put_u64(&mut header, object.chunks(part).count() as u64);
    for c in object.chunks(part) {
        put_u64(&mut header, c.len() as u64);
        header.extend_from_slice(&h("training-replay-verifier v1 object part", c));
    }
    let mut expected = b"\x89RVPART\n".to_vec();
    expected.extend_from_slice(&1u16.to_le_bytes());
    expected.extend_from_slice(&0u16.to_le_bytes());
    expected.extend_from_slice(&(header.len() as u32).to_le_bytes());
    expected.extend_from_slice(&header);
    let digest = h(common::CTX_ENVELOPE, &expected);
    expected.extend_from_slice(&digest);
    expected.extend_from_slice(&common::END_MARKER);
    let stored = read("part-index-v1.bin");
    assert_eq!(stored, expected);
    let index = snapshot_format::parts::PartIndex::decode(&stored, "vector").expect("decodes");
    assert_eq!(index.parts.len(), 3);
    assert_eq!(index.len, len);
}

/// Every must-reject vector is refused by its reader with the error `vectors.json` names, and
/// every reader and error there is one this test knows (so that a new vector cannot be skipped).
#[test]
fn reject_vectors_are_refused_as_listed() {
    let s = summary();
    let rejects = s["reject"].as_array().expect("reject list");
    assert!(rejects.len() >= 10, "{}", rejects.len());
    let limits = ReadLimits::default();
    let planes = std::sync::Arc::new(
        snapshot::decode(&read("snapshot-planes-v1.snap"), "vector", &limits).expect("decodes"),
    );
    struct Planes(std::sync::Arc<snapshot::Snapshot>);
    impl snapshot_format::snapshot::References for Planes {
        fn checkpoint(
            &self,
            _step: u64,
        ) -> snapshot_format::Result<std::sync::Arc<snapshot::Snapshot>> {
            Ok(self.0.clone())
        }
    }
    for r in rejects {
        let file = r["file"].as_str().expect("file");
        let bytes = read(file);
        let result = match r["reader"].as_str().expect("reader") {
            "snapshot" => snapshot::decode(&bytes, file, &limits).map(|_| ()),
            "snapshot, its references the planes vector" => {
                snapshot::decode_with(&bytes, file, &limits, Some(&Planes(planes.clone())))
                    .map(|_| ())
            }
            "segment" => Segment::decode(&bytes, file).map(|_| ()),
            "dataset" => DatasetManifest::decode(&bytes, file).map(|_| ()),
            other => panic!("{file}: unknown reader {other}"),
        };
        let e = result.expect_err(file);
        let debug = format!("{e:?}");
        let variant = debug.split([' ', '(', '{']).next().unwrap_or_default();
        assert_eq!(variant, r["error"].as_str().expect("error"), "{file}: {e}");
        assert!(
            e.to_string().contains(file),
            "{file}: the error names it: {e}"
        );
    }
}
