//! Canonical hashing: every hash the format commits to, each under its own BLAKE3 context.
//!
//! All hashes are BLAKE3 in `derive_key` mode with a context string from [`context`], so a
//! hash of one kind can never be mistaken for a hash of another kind. Inputs are length-prefixed
//! with little-endian `u64`s wherever a field has variable length, so no two distinct inputs
//! encode to the same byte string. The rules here are normative: `specs/snapshot-format.md`
//! repeats them byte for byte.

use std::fmt;

use crate::dtype::DType;

/// BLAKE3 context strings (the domain separators). Never change one: it would change every
/// hash of its kind.
pub mod context {
    /// Tensor hash: name, dtype, shape and raw little-endian bytes.
    pub const TENSOR: &str = "training-replay-verifier v1 tensor";
    /// State root: state metadata and the sorted tensor hashes.
    pub const STATE_ROOT: &str = "training-replay-verifier v1 state root";
    /// Digest over an envelope's preamble and header.
    pub const ENVELOPE: &str = "training-replay-verifier v1 envelope digest";
    /// Ledger record hash (the hash chain).
    pub const RECORD: &str = "training-replay-verifier v1 ledger record";
    /// Ledger genesis: the `prev_hash` of the first record.
    pub const GENESIS: &str = "training-replay-verifier v1 ledger genesis";
    /// One dataset example, over its canonical bytes.
    pub const EXAMPLE: &str = "training-replay-verifier v1 example";
    /// One batch: the ordered hashes of its examples.
    pub const BATCH: &str = "training-replay-verifier v1 batch";
    /// Inner node of the dataset Merkle tree.
    pub const MERKLE_NODE: &str = "training-replay-verifier v1 merkle node";
    /// Dataset root: example count and the Merkle tree's top node.
    pub const DATASET_ROOT: &str = "training-replay-verifier v1 dataset root";
    /// Run spec: RFC 8785 canonical JSON of the manifest's `spec` object.
    pub const SPEC: &str = "training-replay-verifier v1 run spec";
    /// Environment class of a fingerprint.
    pub const ENVIRONMENT_CLASS: &str = "training-replay-verifier v1 environment class";
    /// Any file hashed as opaque bytes (a base model's safetensors, a dataset file).
    pub const FILE: &str = "training-replay-verifier v1 file";
    /// One part of an object stored in parts, over its bytes.
    pub const PART: &str = "training-replay-verifier v1 object part";
}

/// A 32-byte BLAKE3 output. Displayed and serialised to JSON as 64 lowercase hex digits;
/// encoded by bincode as 32 raw bytes.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, bincode::Encode, bincode::Decode,
)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The all-zero hash, used only as a placeholder that never equals a real hash.
    pub const ZERO: Hash32 = Hash32([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 bytes in hex: enough to tell hashes apart in a human report.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// Parse 64 hex digits; `None` for anything else (the caller names the artefact:
    /// `Error::InvalidHash`).
    pub fn from_hex(value: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(value, &mut out).ok()?;
        Some(Hash32(out))
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

impl From<blake3::Hash> for Hash32 {
    fn from(h: blake3::Hash) -> Self {
        Hash32(*h.as_bytes())
    }
}

impl serde::Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash32::from_hex(&s).ok_or_else(|| {
            let value: String = s.chars().take(80).collect();
            serde::de::Error::custom(format!("invalid hash {value:?}: expected 64 hex digits"))
        })
    }
}

/// A BLAKE3 hasher in derive-key mode for `context`, with helpers for the length-prefixed
/// encoding used by every rule.
#[derive(Debug, Clone)]
pub struct DomainHasher(blake3::Hasher);

impl DomainHasher {
    /// A hasher for one of the [`context`] strings.
    pub fn new(context: &str) -> Self {
        DomainHasher(blake3::Hasher::new_derive_key(context))
    }
    /// Append bytes as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }
    /// Append bytes, using all cores when the input is large.
    pub fn bytes_parallel(&mut self, bytes: &[u8]) -> &mut Self {
        if bytes.len() >= PARALLEL_HASH_THRESHOLD {
            self.0.update_rayon(bytes);
        } else {
            self.0.update(bytes);
        }
        self
    }
    /// Append a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }
    /// Append a length-prefixed byte string.
    pub fn prefixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.u64(bytes.len() as u64).bytes(bytes)
    }
    /// Finish.
    pub fn finish(&self) -> Hash32 {
        self.0.finalize().into()
    }
}

/// Tensors at least this large are hashed with BLAKE3's multi-threaded tree mode. The result is
/// identical to the single-threaded hash; only the speed differs.
pub const PARALLEL_HASH_THRESHOLD: usize = 1 << 20;

/// Tensor hash: `BLAKE3-derive(TENSOR, u64 len(name) ‖ name ‖ u8 dtype ‖ u64 rank ‖ u64 dims… ‖
/// u64 len(raw) ‖ raw)`.
pub fn tensor_hash(name: &str, dtype: DType, shape: &[u64], raw: &[u8]) -> Hash32 {
    let mut h = TensorHasher::new(name, dtype, shape, raw.len() as u64);
    h.update_parallel(raw);
    h.finish()
}

/// [`tensor_hash`] computed incrementally: the raw bytes may arrive in pieces (a decoder's
/// output), as long as they total the declared length.
#[derive(Debug, Clone)]
pub struct TensorHasher(DomainHasher);

impl TensorHasher {
    /// Start the hash of a tensor whose raw bytes will total `raw_len`.
    pub fn new(name: &str, dtype: DType, shape: &[u64], raw_len: u64) -> Self {
        let mut h = DomainHasher::new(context::TENSOR);
        h.prefixed(name.as_bytes())
            .bytes(&[dtype.code()])
            .u64(shape.len() as u64);
        for d in shape {
            h.u64(*d);
        }
        h.u64(raw_len);
        TensorHasher(h)
    }
    /// Append raw bytes.
    pub fn update(&mut self, raw: &[u8]) {
        self.0.bytes(raw);
    }
    /// Append raw bytes, using all cores when they are many.
    pub fn update_parallel(&mut self, raw: &[u8]) {
        self.0.bytes_parallel(raw);
    }
    /// The tensor hash.
    pub fn finish(&self) -> Hash32 {
        self.0.finish()
    }
}

/// State root: `BLAKE3-derive(STATE_ROOT, u64 len(meta) ‖ meta ‖ u64 n ‖ tensor_hash…)`, where
/// `meta` is the canonical bincode encoding of the state metadata and the tensor hashes are in
/// the (strictly increasing) name order of the tensors.
pub fn state_root(canonical_meta: &[u8], sorted_tensor_hashes: &[Hash32]) -> Hash32 {
    let mut h = DomainHasher::new(context::STATE_ROOT);
    h.prefixed(canonical_meta)
        .u64(sorted_tensor_hashes.len() as u64);
    for t in sorted_tensor_hashes {
        h.bytes(&t.0);
    }
    h.finish()
}

/// Example hash over the example's canonical bytes (defined by the producer of the dataset
/// manifest; the trainer's are in `specs/determinism.md`).
pub fn example_hash(canonical: &[u8]) -> Hash32 {
    let mut h = DomainHasher::new(context::EXAMPLE);
    h.prefixed(canonical);
    h.finish()
}

/// Batch hash: `BLAKE3-derive(BATCH, u64 n ‖ example_hash…)` in batch order.
pub fn batch_hash(example_hashes: &[Hash32]) -> Hash32 {
    let mut h = DomainHasher::new(context::BATCH);
    h.u64(example_hashes.len() as u64);
    for e in example_hashes {
        h.bytes(&e.0);
    }
    h.finish()
}

/// Hash of a whole file as opaque bytes: `BLAKE3-derive(FILE, u64 len ‖ bytes)`.
pub fn file_hash(bytes: &[u8]) -> Hash32 {
    let mut h = DomainHasher::new(context::FILE);
    h.u64(bytes.len() as u64).bytes_parallel(bytes);
    h.finish()
}

/// Merkle root of a dataset: leaves are the example hashes in dataset order; an inner node is
/// `BLAKE3-derive(MERKLE_NODE, left ‖ right)`; a level with an odd count carries its last node up
/// unchanged; the root is `BLAKE3-derive(DATASET_ROOT, u64 n ‖ top)` (for n = 0, `top` is 32
/// zero bytes).
pub fn merkle_root(leaves: &[Hash32]) -> Hash32 {
    let top = if leaves.is_empty() {
        Hash32::ZERO
    } else {
        let mut level: Vec<Hash32> = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => merkle_node(l, r),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
        }
        level[0]
    };
    let mut h = DomainHasher::new(context::DATASET_ROOT);
    h.u64(leaves.len() as u64).bytes(&top.0);
    h.finish()
}

fn merkle_node(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = DomainHasher::new(context::MERKLE_NODE);
    h.bytes(&left.0).bytes(&right.0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let h = file_hash(b"abc");
        assert_eq!(Hash32::from_hex(&h.to_hex()).expect("valid hex"), h);
        assert_eq!(Hash32::from_hex("zz"), None);
        assert_eq!(Hash32::from_hex(&"0".repeat(63)), None);
        let e = serde_json::from_str::<Hash32>("\"zz\"").expect_err("not a hash");
        assert!(e.to_string().contains("invalid hash"), "{e}");
    }

    #[test]
    fn domains_separate_identical_inputs() {
        // The same 0-byte input under two contexts must differ.
        assert_ne!(example_hash(b""), file_hash(b""));
        assert_ne!(batch_hash(&[]), merkle_root(&[]));
    }

    #[test]
    fn tensor_hash_binds_every_field() {
        let base = tensor_hash("w", DType::F32, &[2], &[0; 8]);
        assert_ne!(base, tensor_hash("v", DType::F32, &[2], &[0; 8]));
        assert_ne!(base, tensor_hash("w", DType::I32, &[2], &[0; 8]));
        assert_ne!(base, tensor_hash("w", DType::F32, &[1, 2], &[0; 8]));
        assert_ne!(
            base,
            tensor_hash("w", DType::F32, &[2], &[0, 0, 0, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn parallel_hashing_equals_serial() {
        let big = vec![7u8; PARALLEL_HASH_THRESHOLD * 3 + 5];
        let mut serial = DomainHasher::new(context::FILE);
        serial.bytes(&big);
        let mut parallel = DomainHasher::new(context::FILE);
        parallel.bytes_parallel(&big);
        assert_eq!(serial.finish(), parallel.finish());
    }

    #[test]
    fn merkle_root_matches_manual_tree() {
        let leaves: Vec<Hash32> = (0..5u8).map(|i| example_hash(&[i])).collect();
        let n01 = merkle_node(&leaves[0], &leaves[1]);
        let n23 = merkle_node(&leaves[2], &leaves[3]);
        let n0123 = merkle_node(&n01, &n23);
        let top = merkle_node(&n0123, &leaves[4]);
        let mut h = DomainHasher::new(context::DATASET_ROOT);
        h.u64(5).bytes(&top.0);
        assert_eq!(merkle_root(&leaves), h.finish());
        // Order matters.
        let mut swapped = leaves.clone();
        swapped.swap(0, 1);
        assert_ne!(merkle_root(&swapped), merkle_root(&leaves));
    }
}
