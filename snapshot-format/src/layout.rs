//! Where each artefact of a run lives inside its store, and which objects are write-once.
//!
//! Every object of a run is write-once: it is created with a conditional put and never
//! replaced. Keys are relative to the run's root (a directory, or a prefix in a bucket).

use crate::limits::{
    MAX_DOCUMENT_BYTES, MAX_EXAMPLES, MAX_HEADER_BYTES, MAX_JSON_BYTES, MAX_SIGNATURE_BYTES,
    MAX_TENSORS, ReadLimits,
};

/// The run manifest (JSON).
pub const MANIFEST: &str = "manifest.json";
/// The dataset manifest (per-example hashes and Merkle root).
pub const DATASET_MANIFEST: &str = "dataset/manifest.bin";
/// A copy of the training dataset (JSON Lines), so that the run can be replayed on its own.
pub const DATASET_DATA: &str = "dataset/examples.jsonl";
/// A copy of the base model, when the run started from one (safetensors).
pub const BASE_MODEL: &str = "base/model.safetensors";
/// A copy of the base model given as a GGUF file.
pub const BASE_MODEL_GGUF: &str = "base/model.gguf";
/// The completion record, written once at the end of a run.
pub const COMPLETE: &str = "complete.json";
/// Prefix of checkpoint snapshots.
pub const CHECKPOINTS: &str = "checkpoints/";
/// Prefix of ledger segments.
pub const LEDGER: &str = "ledger/";
/// Prefix of signatures.
pub const SIGNATURES: &str = "signatures/";
/// Key prefix of the start-up write-once probe object (at the run root; removed after).
pub const PROBE: &str = ".write-once-probe-";

/// Index (1-based) of the segment that holds `step` (and ends at the checkpoint after it), for
/// a checkpoint interval (§4.2).
pub fn segment_ending_at(step: u64, interval: u64) -> u64 {
    step.div_ceil(interval)
}

/// Whether a run of `total` steps with checkpoints every `interval` steps writes a checkpoint
/// at `step`: step 0, every multiple of the interval, and the last step (§7).
pub fn is_checkpoint_step(step: u64, total: u64, interval: u64) -> bool {
    step == 0 || step == total || step.is_multiple_of(interval)
}

/// Key of the checkpoint after `step` steps.
pub fn checkpoint(step: u64) -> String {
    format!("{CHECKPOINTS}step-{step:012}.snap")
}

/// Key of ledger segment `index` (1-based).
pub fn segment(index: u64) -> String {
    format!("{LEDGER}segment-{index:06}.seg")
}

/// Key of the signature over the artefact at `key`.
pub fn signature(key: &str) -> String {
    format!("{SIGNATURES}{key}.sig")
}

/// Largest enveloped object without payload (ledger segments, part indexes): a header of at
/// most [`MAX_HEADER_BYTES`] and the envelope's fixed bytes.
pub const MAX_ENVELOPE_BYTES: u64 = MAX_HEADER_BYTES as u64 + crate::envelope::OVERHEAD;
/// Largest dataset manifest: an envelope whose payload holds [`MAX_EXAMPLES`] hashes.
pub const MAX_DATASET_MANIFEST_BYTES: u64 = MAX_ENVELOPE_BYTES + 32 * MAX_EXAMPLES;
/// Most bytes a delta tensor's encoding may have beyond its raw length: the reference prefix
/// (the inner encoding is never longer than the raw bytes).
pub const MAX_DELTA_OVERHEAD: u64 = crate::delta::PREFIX_LEN as u64;

/// Largest snapshot object `limits` admit: a header of at most [`MAX_HEADER_BYTES`], tensors
/// whose raw bytes add up to at most `max_decoded_bytes`, each encoding no longer than its raw
/// bytes (a delta's by its reference prefix), and the envelope's fixed bytes.
pub fn max_snapshot_bytes(limits: &ReadLimits) -> u64 {
    MAX_ENVELOPE_BYTES
        .saturating_add(limits.max_decoded_bytes)
        .saturating_add(MAX_DELTA_OVERHEAD.saturating_mul(MAX_TENSORS))
}

/// The most bytes the object at `key` may hold (`specs/snapshot-format.md` §8): a store reads
/// no object beyond its class's bound, and refuses it before reading any of it. The class is
/// the key's: JSON artefacts, signatures, ledger segments, the dataset manifest and snapshots
/// have bounds from the format; a snapshot's follows from the decoded bytes `limits` admit;
/// anything else (the dataset's data, a base model, an exported model file) is bounded by
/// `limits.max_object_bytes`. Part indexes are bounded by the object they publish.
pub fn max_bytes(key: &str, limits: &ReadLimits) -> u64 {
    let name = key.rsplit('/').next().unwrap_or(key);
    if key == MANIFEST || key == COMPLETE {
        MAX_JSON_BYTES
    } else if key == DATASET_MANIFEST {
        MAX_DATASET_MANIFEST_BYTES
    } else if name.ends_with(".sig") {
        MAX_SIGNATURE_BYTES
    } else if name.ends_with(".seg") {
        MAX_ENVELOPE_BYTES
    } else if name.ends_with(".snap") {
        max_snapshot_bytes(limits)
    } else if name.ends_with(".json") {
        MAX_DOCUMENT_BYTES
    } else {
        limits.max_object_bytes
    }
}

/// The step of a checkpoint key, if `key` is one.
pub fn parse_checkpoint(key: &str) -> Option<u64> {
    parse_numbered(key, CHECKPOINTS, "step-", ".snap", 12)
}

/// The index of a segment key, if `key` is one.
pub fn parse_segment(key: &str) -> Option<u64> {
    parse_numbered(key, LEDGER, "segment-", ".seg", 6)
}

fn parse_numbered(key: &str, dir: &str, stem: &str, ext: &str, width: usize) -> Option<u64> {
    let digits = key
        .strip_prefix(dir)?
        .strip_prefix(stem)?
        .strip_suffix(ext)?;
    if digits.len() != width || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_checkpoint(&checkpoint(50)), Some(50));
        assert_eq!(parse_segment(&segment(3)), Some(3));
        assert_eq!(parse_checkpoint("checkpoints/step-50.snap"), None);
        assert_eq!(parse_segment("ledger/segment-00000x.seg"), None);
        assert_eq!(signature(MANIFEST), "signatures/manifest.json.sig");
    }

    #[test]
    fn every_class_of_object_has_its_bound() {
        use crate::limits::*;
        let limits = ReadLimits::up_to(1 << 20);
        let cases = [
            (MANIFEST.to_string(), MAX_JSON_BYTES),
            (COMPLETE.to_string(), MAX_JSON_BYTES),
            (DATASET_MANIFEST.to_string(), MAX_DATASET_MANIFEST_BYTES),
            (signature(&checkpoint(4)), MAX_SIGNATURE_BYTES),
            (segment(2), MAX_ENVELOPE_BYTES),
            (checkpoint(4), max_snapshot_bytes(&limits)),
            (
                "verifications/x/shard-0-of-2.json".into(),
                MAX_DOCUMENT_BYTES,
            ),
            (DATASET_DATA.to_string(), 1 << 20),
            (BASE_MODEL_GGUF.to_string(), 1 << 20),
        ];
        for (key, max) in cases {
            assert_eq!(max_bytes(&key, &limits), max, "{key}");
        }
        assert!(max_snapshot_bytes(&limits) > 1 << 20);
    }
}
