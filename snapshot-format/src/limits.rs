//! Safety limits: public maximums every reader enforces before allocating.
//!
//! A reader that meets a value above one of these limits rejects the object with a specific
//! error ([`crate::Error::HeaderTooLarge`], [`crate::Error::TooManyTensors`],
//! [`crate::Error::RankTooLarge`], [`crate::Error::LengthOverflow`],
//! [`crate::Error::DecodedTooLarge`], [`crate::Error::EncodedTooLarge`],
//! [`crate::Error::ObjectTooLarge`]) and allocates nothing on the strength of the bad value.
//!
//! Whole objects are bounded too: the store refuses to read an object larger than its class
//! allows ([`crate::layout::max_bytes`]) before reading any of it, whatever its parts or its
//! file system claim.

/// Largest header (snapshot header, ledger segment, dataset manifest) a reader accepts.
pub const MAX_HEADER_BYTES: usize = 64 << 20;
/// Most tensors in one snapshot.
pub const MAX_TENSORS: u64 = 1 << 18;
/// Longest tensor name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Highest tensor rank.
pub const MAX_RANK: u64 = 16;
/// Most elements in one tensor (2^40).
pub const MAX_ELEMENTS: u64 = 1 << 40;
/// Most raw bytes in one tensor (1 TiB): any larger tensor is rejected as an overflow.
pub const MAX_TENSOR_BYTES: u64 = 1 << 40;
/// Default cap on the total decoded size of one snapshot (64 GiB); see [`ReadLimits`].
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 64 << 30;
/// Longest XOR-delta chain: a delta tensor's depth (1 against a keyframe) is at most this, so
/// reconstructing it reads at most `MAX_DELTA_DEPTH + 1` checkpoints.
pub const MAX_DELTA_DEPTH: u32 = 64;
/// Most records in one ledger segment.
pub const MAX_RECORDS_PER_SEGMENT: u64 = 1 << 20;
/// Most examples in one batch record.
pub const MAX_BATCH_EXAMPLES: u64 = 1 << 20;

/// Most examples a dataset manifest may list (its payload is 32 bytes per example).
pub const MAX_EXAMPLES: u64 = 1 << 26;
/// Largest JSON artefact of a run: the manifest (which holds the spec) and the completion
/// record.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Largest signature object (`signatures/…`, a shard report's `.sig`).
pub const MAX_SIGNATURE_BYTES: u64 = 64 << 10;
/// Largest document a verifier reads whole: in-toto statements, shard reports, replay's own
/// JSON reports.
pub const MAX_DOCUMENT_BYTES: u64 = 256 << 20;
/// Limits a caller may tighten for one read (a verifier on a small machine, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Total decoded bytes of all tensors of one snapshot.
    pub max_decoded_bytes: u64,
    /// Largest object of a class without a bound of its own (a dataset, a base model, an
    /// exported model file): the most bytes a reader holds for one artefact.
    pub max_object_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
            max_object_bytes: DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

impl ReadLimits {
    /// Limits whose snapshots and objects are both bounded by `max` bytes.
    pub fn up_to(max: u64) -> Self {
        ReadLimits {
            max_decoded_bytes: max,
            max_object_bytes: max,
        }
    }
}
