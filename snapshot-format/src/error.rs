//! The one error type of the crate: every variant names the artefact it concerns.

use crate::hash::Hash32;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or storing an artefact.
///
/// `artefact` fields name the object as the user knows it (a store key such as
/// `checkpoints/step-000000000050.snap`, or a file path), so that a message always says
/// *which* file is bad. Variants are specific: a test exists for each one that can be produced
/// from bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- framing -------------------------------------------------------------------------
    /// The object is shorter than its fixed-size parts or than the lengths it declares.
    #[error("{artefact}: truncated: needs at least {needed} bytes, has {available}")]
    Truncated {
        artefact: String,
        needed: u64,
        available: u64,
    },
    /// The first eight bytes are not the magic of the expected kind of object.
    #[error("{artefact}: not a {expected} (magic bytes {found})")]
    BadMagic {
        artefact: String,
        expected: &'static str,
        found: String,
    },
    /// Written by a newer (or unknown) version of the format.
    #[error(
        "{artefact}: format version {found} is not supported (this reader supports {supported:?})"
    )]
    UnsupportedVersion {
        artefact: String,
        found: u16,
        supported: &'static [u16],
    },
    /// Reserved flag bits are set; version 1 requires them to be zero.
    #[error("{artefact}: reserved flags {flags:#06x} are set")]
    ReservedFlags { artefact: String, flags: u16 },
    /// The declared header length is above [`crate::limits::MAX_HEADER_BYTES`].
    #[error("{artefact}: header length {declared} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        artefact: String,
        declared: u64,
        max: u64,
    },
    /// The header digest does not match the header bytes: the header was corrupted.
    #[error("{artefact}: header digest mismatch (stored {stored}, computed {computed})")]
    HeaderDigestMismatch {
        artefact: String,
        stored: Hash32,
        computed: Hash32,
    },
    /// The header bytes are not a valid encoding of the header structure.
    #[error("{artefact}: malformed header: {detail}")]
    MalformedHeader { artefact: String, detail: String },
    /// The end marker is missing: the object was cut short or has garbage at its end.
    #[error("{artefact}: end marker missing (object incomplete or corrupted at its end)")]
    MissingEndMarker { artefact: String },
    /// Bytes follow the end marker.
    #[error("{artefact}: {extra} trailing bytes after the end of the object")]
    TrailingBytes { artefact: String, extra: u64 },

    // ---- tensor table ----------------------------------------------------------------------
    /// More tensors than [`crate::limits::MAX_TENSORS`].
    #[error("{artefact}: {count} tensors exceeds the limit of {max}")]
    TooManyTensors {
        artefact: String,
        count: u64,
        max: u64,
    },
    /// A tensor name is empty, too long, or contains a control character.
    #[error("{artefact}: invalid tensor name {name:?}: {reason}")]
    InvalidTensorName {
        artefact: String,
        name: String,
        reason: &'static str,
    },
    /// Two tensors share a name.
    #[error("{artefact}: duplicate tensor name {name:?}")]
    DuplicateTensorName { artefact: String, name: String },
    /// Tensor names are not in strictly increasing byte order.
    #[error("{artefact}: tensor {name:?} is listed after {previous:?}; names must be sorted")]
    UnsortedTensorNames {
        artefact: String,
        previous: String,
        name: String,
    },
    /// Unknown dtype code.
    #[error("{artefact}: tensor {tensor:?} has unknown dtype code {code}")]
    UnknownDType {
        artefact: String,
        tensor: String,
        code: u8,
    },
    /// Unknown codec id.
    #[error("{artefact}: tensor {tensor:?} uses unknown codec id {id}")]
    UnknownCodec {
        artefact: String,
        tensor: String,
        id: u16,
    },
    /// Rank above [`crate::limits::MAX_RANK`].
    #[error("{artefact}: tensor {tensor:?} has rank {rank}, above the limit of {max}")]
    RankTooLarge {
        artefact: String,
        tensor: String,
        rank: u64,
        max: u64,
    },
    /// Element count or byte length overflows, or exceeds a safety limit.
    #[error("{artefact}: tensor {tensor:?}: {what} overflows or exceeds the limit of {max}")]
    LengthOverflow {
        artefact: String,
        tensor: String,
        what: &'static str,
        max: u64,
    },
    /// The declared raw length disagrees with dtype and shape.
    #[error(
        "{artefact}: tensor {tensor:?} declares {declared} raw bytes; dtype and shape give {expected}"
    )]
    RawLengthMismatch {
        artefact: String,
        tensor: String,
        declared: u64,
        expected: u64,
    },
    /// A raw-codec tensor whose encoded length differs from its raw length.
    #[error(
        "{artefact}: tensor {tensor:?} is stored raw but its encoded length {encoded} differs from its raw length {raw}"
    )]
    RawCodecLengthMismatch {
        artefact: String,
        tensor: String,
        encoded: u64,
        raw: u64,
    },
    /// A tensor starts before the end of the previous one.
    #[error(
        "{artefact}: tensor {tensor:?} at offset {offset} overlaps the previous tensor (which ends at {expected})"
    )]
    OverlappingTensors {
        artefact: String,
        tensor: String,
        offset: u64,
        expected: u64,
    },
    /// Unused bytes between two tensors.
    #[error(
        "{artefact}: hole before tensor {tensor:?}: it starts at {offset}, the previous tensor ends at {expected}"
    )]
    HoleBeforeTensor {
        artefact: String,
        tensor: String,
        offset: u64,
        expected: u64,
    },
    /// A tensor extends past the data section.
    #[error(
        "{artefact}: tensor {tensor:?} ends at {end}, past the data section of {data_len} bytes"
    )]
    TensorOutOfRange {
        artefact: String,
        tensor: String,
        end: u64,
        data_len: u64,
    },
    /// A tensor's encoding is longer than its codec allows (codecs 1 and 2: its raw length;
    /// codec 3: its raw length and the reference prefix).
    #[error(
        "{artefact}: tensor {tensor:?}: encoded length {encoded} exceeds the {max} bytes its codec allows"
    )]
    EncodedTooLarge {
        artefact: String,
        tensor: String,
        encoded: u64,
        max: u64,
    },
    /// The total decoded size of a snapshot exceeds the reader's limit.
    #[error("{artefact}: decoded size {declared} exceeds the reader's limit of {max} bytes")]
    DecodedTooLarge {
        artefact: String,
        declared: u64,
        max: u64,
    },

    // ---- tensor data ------------------------------------------------------------------------
    /// Decompression produced more bytes than declared (a decompression bomb or a lie).
    #[error("{artefact}: tensor {tensor:?} decodes to more than its declared {declared} bytes")]
    DecodedSizeExceeded {
        artefact: String,
        tensor: String,
        declared: u64,
    },
    /// Decompression produced fewer bytes than declared.
    #[error("{artefact}: tensor {tensor:?} decodes to {found} bytes, {declared} declared")]
    DecodedSizeShort {
        artefact: String,
        tensor: String,
        declared: u64,
        found: u64,
    },
    /// The compressed stream is corrupt.
    #[error("{artefact}: tensor {tensor:?} cannot be decompressed: {detail}")]
    Decompress {
        artefact: String,
        tensor: String,
        detail: String,
    },
    /// A delta tensor (codec 3) was read without access to the run's other checkpoints.
    #[error(
        "{artefact}: tensor {tensor:?} is a delta against {reference}, which this read cannot reach"
    )]
    DeltaWithoutReferences {
        artefact: String,
        tensor: String,
        reference: String,
    },
    /// The checkpoint a delta is stored against could not be read or verified: this checkpoint
    /// cannot be reconstructed.
    #[error(
        "{artefact}: cannot be reconstructed: its delta reference {reference} failed: {source}"
    )]
    DeltaReferenceUnavailable {
        artefact: String,
        reference: String,
        #[source]
        source: Box<Error>,
    },
    /// The reference a delta names does not fit it (another state root, a missing tensor, a
    /// different dtype or shape, an inconsistent chain depth, a step that is not earlier).
    #[error("{artefact}: tensor {tensor:?}: delta reference {reference} does not fit: {detail}")]
    DeltaReferenceMismatch {
        artefact: String,
        tensor: String,
        reference: String,
        detail: String,
    },
    /// A checkpoint object holds the state after another step than the one its key names: a
    /// checkpoint copied or moved under another key.
    #[error(
        "{artefact}: holds the checkpoint of step {found}, not of step {expected} as its key says"
    )]
    MisplacedCheckpoint {
        artefact: String,
        expected: u64,
        found: u64,
    },
    /// Reconstructing a checkpoint would read more checkpoints than a delta chain may span.
    #[error("{artefact}: its delta chain is longer than {max} checkpoints (MAX_DELTA_DEPTH + 1)")]
    ChainTooDeep { artefact: String, max: u64 },
    /// A boolean tensor holds a byte other than 0 or 1.
    #[error(
        "{artefact}: bool tensor {tensor:?} holds the non-canonical byte {byte} at element {index}"
    )]
    NonCanonicalBool {
        artefact: String,
        tensor: String,
        index: u64,
        byte: u8,
    },
    /// The decoded bytes of one tensor do not hash to the hash in the table.
    #[error("{artefact}: tensor {tensor:?} hash mismatch (table {expected}, data {found})")]
    TensorHashMismatch {
        artefact: String,
        tensor: String,
        expected: Hash32,
        found: Hash32,
    },
    /// The state root recomputed from the table and metadata differs from the stored one.
    #[error("{artefact}: state root mismatch (stored {stored}, recomputed {computed})")]
    StateRootMismatch {
        artefact: String,
        stored: Hash32,
        computed: Hash32,
    },

    // ---- ledger ------------------------------------------------------------------------------
    /// Records in a segment are not consecutive steps, or do not start where the segment says.
    #[error("{artefact}: record {index} has step {found}, expected {expected}")]
    StepOutOfOrder {
        artefact: String,
        index: u64,
        expected: u64,
        found: u64,
    },
    /// A record's `prev_hash` does not equal the hash of the record before it.
    #[error(
        "{artefact}: hash chain broken at step {step} (prev_hash {found}, expected {expected})"
    )]
    ChainBroken {
        artefact: String,
        step: u64,
        expected: Hash32,
        found: Hash32,
    },
    /// A segment is not where the run's layout puts it: another index, or another first step
    /// than `(index − 1) × checkpoint_interval + 1`.
    #[error(
        "{artefact}: holds segment {index} from step {first_step}; expected segment {expected_index} from step {expected_first_step}"
    )]
    SegmentMisplaced {
        artefact: String,
        index: u64,
        first_step: u64,
        expected_index: u64,
        expected_first_step: u64,
    },
    /// A segment holds no records, or too many.
    #[error("{artefact}: segment holds {count} records (allowed 1..={max})")]
    BadRecordCount {
        artefact: String,
        count: u64,
        max: u64,
    },
    /// A dataset manifest's stored Merkle root or count disagrees with its example hashes.
    #[error("{artefact}: dataset root mismatch (stored {stored}, recomputed {computed})")]
    DatasetRootMismatch {
        artefact: String,
        stored: Hash32,
        computed: Hash32,
    },

    // ---- signatures and keys --------------------------------------------------------------------
    /// A signature does not verify, or does not sign the artefact it is stored for.
    #[error("{artefact}: bad signature: {detail}")]
    BadSignature { artefact: String, detail: String },
    /// A key file or key string cannot be used.
    #[error("{source_name}: invalid key: {detail}")]
    InvalidKey { source_name: String, detail: String },

    // ---- manifests (JSON) ----------------------------------------------------------------------
    /// A JSON artefact does not parse or lacks a field.
    #[error("{artefact}: invalid JSON: {detail}")]
    Json { artefact: String, detail: String },
    /// The run spec does not hash to the spec hash recorded beside it.
    #[error("{artefact}: spec hash mismatch (stored {stored}, recomputed {computed})")]
    SpecHashMismatch {
        artefact: String,
        stored: Hash32,
        computed: Hash32,
    },
    /// A hex-encoded hash is malformed.
    #[error("invalid hash {value:?}: expected 64 hexadecimal digits")]
    InvalidHash { value: String },

    // ---- storage -------------------------------------------------------------------------------
    /// A store location could not be understood.
    #[error("cannot open store {location:?}: {detail}")]
    InvalidLocation { location: String, detail: String },
    /// The object does not exist.
    #[error("{store}: object {key:?} is missing")]
    ObjectMissing { store: String, key: String },
    /// A write-once object already exists with different content.
    #[error("{store}: object {key:?} already exists with different content; refusing to overwrite")]
    ObjectConflict { store: String, key: String },
    /// A part of an object stored in parts is missing.
    #[error("{store}: object {key:?} is incomplete: its part {part} is missing")]
    PartMissing {
        store: String,
        key: String,
        part: String,
    },
    /// A part of an object stored in parts is not what its index names.
    #[error("{store}: object {key:?}: part {part} {detail}")]
    PartMismatch {
        store: String,
        key: String,
        part: String,
        detail: String,
    },
    /// The object is larger than its class allows ([`crate::layout::max_bytes`]): refused
    /// before any of it is read.
    #[error("{store}: object {key:?} holds {size} bytes, above the {max} its kind allows")]
    ObjectTooLarge {
        store: String,
        key: String,
        size: u64,
        max: u64,
    },
    /// The object is not a regular file of the store's directory (a symbolic link, a FIFO, a
    /// device, a socket, or a path through one): never opened.
    #[error(
        "{store}: object {key:?} is {what}, not a regular file; a run is read from regular files only"
    )]
    NotRegularFile {
        store: String,
        key: String,
        what: String,
    },
    /// A write-once object already exists.
    #[error("{store}: object {key:?} already exists; write-once objects are never replaced")]
    ObjectExists { store: String, key: String },
    /// The store accepted a second create of the same object: it does not honour write-once.
    #[error("{store}: the store does not honour write-once puts ({detail}); refusing to use it")]
    WriteOnceNotHonoured { store: String, detail: String },
    /// Access was denied.
    #[error("{store}: permission denied for {op} of {key:?}: {detail}")]
    PermissionDenied {
        store: String,
        key: String,
        op: &'static str,
        detail: String,
    },
    /// Any other failure of the store for an operation on a key.
    #[error("{store}: {op} of {key:?} failed: {detail}")]
    Store {
        store: String,
        key: String,
        op: &'static str,
        detail: String,
    },
    /// A local I/O failure outside any store.
    #[error("{artefact}: {source}")]
    Io {
        artefact: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error while reading `artefact`. An error of this crate carried through `Read`
    /// (by a streaming store read: a missing part, a failed fetch) is given back as it was.
    pub fn from_io(artefact: &str, source: std::io::Error) -> Error {
        if !source.get_ref().is_some_and(|e| e.is::<Error>()) {
            return Error::Io {
                artefact: artefact.to_string(),
                source,
            };
        }
        match source.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(e)) => *e,
            // Not reached: the check above saw an error of this crate.
            Some(Err(other)) => Error::Io {
                artefact: artefact.to_string(),
                source: std::io::Error::other(other),
            },
            None => Error::Io {
                artefact: artefact.to_string(),
                source: std::io::Error::other("an I/O error without its cause"),
            },
        }
    }

    /// The artefact or store key the error concerns, where it names one.
    pub fn artefact(&self) -> Option<&str> {
        use Error::*;
        match self {
            Truncated { artefact, .. }
            | BadMagic { artefact, .. }
            | UnsupportedVersion { artefact, .. }
            | ReservedFlags { artefact, .. }
            | HeaderTooLarge { artefact, .. }
            | HeaderDigestMismatch { artefact, .. }
            | MalformedHeader { artefact, .. }
            | MissingEndMarker { artefact }
            | TrailingBytes { artefact, .. }
            | TooManyTensors { artefact, .. }
            | InvalidTensorName { artefact, .. }
            | DuplicateTensorName { artefact, .. }
            | UnsortedTensorNames { artefact, .. }
            | UnknownDType { artefact, .. }
            | UnknownCodec { artefact, .. }
            | RankTooLarge { artefact, .. }
            | LengthOverflow { artefact, .. }
            | RawLengthMismatch { artefact, .. }
            | RawCodecLengthMismatch { artefact, .. }
            | OverlappingTensors { artefact, .. }
            | HoleBeforeTensor { artefact, .. }
            | TensorOutOfRange { artefact, .. }
            | DecodedTooLarge { artefact, .. }
            | EncodedTooLarge { artefact, .. }
            | MisplacedCheckpoint { artefact, .. }
            | ChainTooDeep { artefact, .. }
            | DecodedSizeExceeded { artefact, .. }
            | DecodedSizeShort { artefact, .. }
            | Decompress { artefact, .. }
            | DeltaWithoutReferences { artefact, .. }
            | DeltaReferenceUnavailable { artefact, .. }
            | DeltaReferenceMismatch { artefact, .. }
            | NonCanonicalBool { artefact, .. }
            | TensorHashMismatch { artefact, .. }
            | StateRootMismatch { artefact, .. }
            | StepOutOfOrder { artefact, .. }
            | ChainBroken { artefact, .. }
            | SegmentMisplaced { artefact, .. }
            | BadRecordCount { artefact, .. }
            | DatasetRootMismatch { artefact, .. }
            | Json { artefact, .. }
            | SpecHashMismatch { artefact, .. }
            | BadSignature { artefact, .. }
            | Io { artefact, .. } => Some(artefact),
            ObjectMissing { key, .. }
            | PartMissing { key, .. }
            | PartMismatch { key, .. }
            | ObjectTooLarge { key, .. }
            | NotRegularFile { key, .. }
            | ObjectConflict { key, .. }
            | ObjectExists { key, .. }
            | PermissionDenied { key, .. }
            | Store { key, .. } => Some(key),
            InvalidHash { .. }
            | InvalidKey { .. }
            | InvalidLocation { .. }
            | WriteOnceNotHonoured { .. } => None,
        }
    }

    /// True when the error means the artefact's bytes are damaged or were altered (as opposed
    /// to an operational failure such as a missing permission or an unreachable store).
    pub fn is_integrity_violation(&self) -> bool {
        if let Error::DeltaReferenceUnavailable { source, .. } = self {
            // Damaged if the reference is; an unreachable store is not damage.
            return source.is_integrity_violation();
        }
        !matches!(
            self,
            Error::InvalidLocation { .. }
                | Error::PermissionDenied { .. }
                | Error::Store { .. }
                | Error::Io { .. }
                | Error::WriteOnceNotHonoured { .. }
                | Error::ObjectExists { .. }
                | Error::InvalidHash { .. }
                | Error::InvalidKey { .. }
                | Error::DeltaWithoutReferences { .. }
        )
    }
}
