//! Property: no reader panics, whatever the bytes. Every parser of an untrusted artefact is fed
//! the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use run_store::testing::read_through_store;
use snapshot_format::dataset::DatasetManifest;
use snapshot_format::ledger::Segment;
use snapshot_format::limits::ReadLimits;
use snapshot_format::manifest::{Completion, RunManifest};
use snapshot_format::parts::PartIndex;
use snapshot_format::snapshot::{self, SnapshotReader};
use snapshot_format::testing::{VectorReferences, reseal};

fuzz_target!(|data: &[u8]| {
    parse(data);
    // The same bytes with the header digest recomputed, as a writer would: mutations of the
    // header get past the digest check and reach the header parser.
    let mut sealed = data.to_vec();
    if reseal(&mut sealed) {
        parse(&sealed);
    }
});

fn parse(data: &[u8]) {
    // Keep the fuzzer's memory bounded: a valid header may declare large tensors.
    let limits = ReadLimits::up_to(1 << 24);
    let _ = snapshot::decode(data, "fuzz", &limits);
    // Delta tensors resolved against the planes vector, as the delta vector's are.
    static REFERENCES: std::sync::OnceLock<VectorReferences> = std::sync::OnceLock::new();
    let references = REFERENCES.get_or_init(VectorReferences::new);
    let _ = snapshot::decode_with(data, "fuzz", &limits, Some(references));
    let _ = snapshot::read_header(data, "fuzz", &limits);
    if let Ok(reader) = SnapshotReader::new(std::io::Cursor::new(data), "fuzz", &limits) {
        let _ = reader.finish();
    }
    // Streamed, each reference handed over: deltas undone in place in a copy of it.
    static HANDED: std::sync::OnceLock<VectorReferences> = std::sync::OnceLock::new();
    let handed = HANDED.get_or_init(VectorReferences::handing_over);
    if let Ok(reader) = SnapshotReader::new(std::io::Cursor::new(data), "fuzz", &limits) {
        let _ = reader.decode_all(Some(handed));
    }
    let _ = Segment::decode(data, "fuzz");
    let _ = DatasetManifest::decode(data, "fuzz");
    let _ = PartIndex::decode(data, "fuzz");
    let _ = RunManifest::from_json(data, "fuzz");
    let _ = Completion::from_json(data, "fuzz");
    // As a run's stored objects: a checkpoint read through its chain (a reference cycle when
    // the input names itself), and an object whose part index may name its parts many times.
    read_through_store(data);
}
