//! Property: no reader panics on mutated artefacts. The cargo-fuzz target in `fuzz/` explores the
//! same property far longer; this test keeps it in every CI run, starting from the real vectors
//! so that mutations reach deep into the parsers.

use proptest::prelude::*;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::ledger::Segment;
use snapshot_format::limits::ReadLimits;
use snapshot_format::parts::PartIndex;
use snapshot_format::snapshot::{self, SnapshotReader};
use snapshot_format::testing::{VectorReferences, reseal};

fn vectors() -> Vec<Vec<u8>> {
    snapshot_format::vectors::generate()
        .expect("vectors")
        .into_iter()
        .map(|f| f.bytes)
        .collect()
}

fn parse_everything(data: &[u8]) {
    static REFERENCES: std::sync::OnceLock<VectorReferences> = std::sync::OnceLock::new();
    let limits = ReadLimits::up_to(1 << 24);
    let _ = snapshot::decode(data, "mutant", &limits);
    let references = REFERENCES.get_or_init(VectorReferences::new);
    let _ = snapshot::decode_with(data, "mutant", &limits, Some(references));
    let _ = snapshot::read_header(data, "mutant", &limits);
    if let Ok(r) = SnapshotReader::new(std::io::Cursor::new(data), "mutant", &limits) {
        let _ = r.finish();
    }
    // Streamed, each reference handed over: deltas undone in place in a copy of it.
    static HANDED: std::sync::OnceLock<VectorReferences> = std::sync::OnceLock::new();
    let handed = HANDED.get_or_init(VectorReferences::handing_over);
    if let Ok(r) = SnapshotReader::new(std::io::Cursor::new(data), "mutant", &limits) {
        let _ = r.decode_all(Some(handed));
    }
    let _ = Segment::decode(data, "mutant");
    let _ = DatasetManifest::decode(data, "mutant");
    let _ = PartIndex::decode(data, "mutant");
    run_store::testing::read_through_store(data);
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Overwrite(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        // Overwrite 8 bytes with an extreme integer: lengths, offsets, counts.
        (
            any::<usize>(),
            prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just(0u64), any::<u64>()]
        )
            .prop_map(|(i, v)| Mutation::Overwrite(i, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            let i = i % n;
            if let Some(x) = bytes.get_mut(i) {
                *x ^= b;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::Insert(i, v) => {
            let i = i % n;
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Overwrite(i, v) => {
            let i = i % n;
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                if let Some(x) = bytes.get_mut(i + k) {
                    *x = *b;
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_vectors_never_panic(which in 0usize..6, ms in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = vectors().swap_remove(which);
        for m in &ms {
            bytes = apply(bytes, m);
        }
        parse_everything(&bytes);
    }

    /// The same mutations with the header digest recomputed, as a writer would: the mutants
    /// get past the digest check and exercise the header parser itself.
    #[test]
    fn mutated_and_resealed_vectors_never_panic(which in 0usize..6, ms in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = vectors().swap_remove(which);
        for m in &ms {
            bytes = apply(bytes, m);
        }
        reseal(&mut bytes);
        parse_everything(&bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&bytes);
    }
}

/// Resealed mutants of the header reach the header parser: none of them fails on the digest.
#[test]
fn resealed_header_mutants_get_past_the_digest_check() {
    let mut reached = 0;
    // The three enveloped vectors (the fourth is the JSON summary).
    for (which, bytes) in vectors().into_iter().take(3).enumerate() {
        let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        for i in 16..16 + header_len {
            let mut m = bytes.clone();
            m[i] ^= 0x5a;
            assert!(reseal(&mut m));
            let digest_failed = [
                snapshot::read_header(&m, "m", &ReadLimits::default()).err(),
                Segment::decode(&m, "m").err(),
                DatasetManifest::decode(&m, "m").err(),
            ]
            .into_iter()
            .flatten()
            .any(|e| matches!(e, snapshot_format::Error::HeaderDigestMismatch { .. }));
            assert!(!digest_failed, "vector {which}, byte {i}");
            reached += 1;
        }
    }
    assert!(reached > 100, "{reached} header bytes mutated");
}
