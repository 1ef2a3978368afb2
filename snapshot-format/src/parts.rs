//! Objects stored in parts (specs/snapshot-format.md §7.1): an object larger than a store
//! accepts in one write is written as content-addressed parts under `.parts/<key>/`, then
//! published by creating a small *part index* at its key. The index is created last and with a
//! conditional create, so the object appears whole or not at all and is never replaced; parts
//! left by an interrupted write are not objects (the store does not list them).

use crate::error::{Error, Result};
use crate::hash::{DomainHasher, Hash32, context};
use crate::{canonical, envelope};

/// The directory (at the run root) that holds parts, and the component by which the store
/// hides them from listings.
pub const PARTS_DIR: &str = ".parts";

/// The most parts one object may have (the index stays far below `MAX_HEADER_BYTES`).
pub const MAX_PARTS: usize = 1 << 20;

/// The smallest part size a store may be configured with.
pub const MIN_PART_BYTES: u64 = 4096;

/// Part indexes.
pub const PART_INDEX: envelope::Kind = envelope::Kind {
    magic: *b"\x89RVPART\n",
    name: "part index",
    versions: &[1],
};

/// One part: its length and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Part {
    pub len: u64,
    pub hash: Hash32,
}

/// The header of a part index: the object's length and its parts in order.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct PartIndex {
    pub len: u64,
    pub parts: Vec<Part>,
}

/// The hash that names a part: BLAKE3 in the part context over its bytes, given as slices.
pub fn part_hash<'a>(slices: impl IntoIterator<Item = &'a [u8]>) -> Hash32 {
    let mut h = DomainHasher::new(context::PART);
    for s in slices {
        h.bytes(s);
    }
    h.finish()
}

/// The key of a part of the object at `key`.
pub fn part_key(key: &str, hash: &Hash32) -> String {
    format!("{PARTS_DIR}/{key}/{hash}")
}

/// Whether a stored key (relative to the run root) is a part rather than an object.
pub fn is_part_key(key: &str) -> bool {
    key.split('/').any(|c| c == PARTS_DIR)
}

/// Whether an object's bytes begin as a part index does (such an object is always written in
/// parts, so that a reader never mistakes it for an index).
pub fn looks_like_index(first: &[u8]) -> bool {
    first.starts_with(&PART_INDEX.magic)
}

impl PartIndex {
    /// The stored index object.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(PART_INDEX, &canonical::encode(self), &[])
    }

    /// Parse and validate an index stored at `key`: a well-formed envelope, at least one part,
    /// at most [`MAX_PARTS`], no empty part, and part lengths that add up to the object's.
    pub fn decode(bytes: &[u8], key: &str) -> Result<PartIndex> {
        let opened = envelope::open(PART_INDEX, bytes, key)?;
        let index: PartIndex = canonical::decode_exact(opened.header, key)?;
        opened.payload(0)?;
        let malformed = |detail: String| Error::MalformedHeader {
            artefact: key.to_string(),
            detail,
        };
        if index.parts.is_empty() || index.parts.len() > MAX_PARTS {
            return Err(malformed(format!(
                "{} parts (1 to {MAX_PARTS} allowed)",
                index.parts.len()
            )));
        }
        let mut sum = 0u64;
        for p in &index.parts {
            if p.len == 0 {
                return Err(malformed(format!("empty part {}", p.hash)));
            }
            sum = sum
                .checked_add(p.len)
                .ok_or_else(|| malformed("part lengths overflow".into()))?;
        }
        if sum != index.len {
            return Err(malformed(format!(
                "parts add up to {sum} bytes, the index declares {}",
                index.len
            )));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> PartIndex {
        PartIndex {
            len: 7,
            parts: vec![
                Part {
                    len: 4,
                    hash: part_hash([b"abcd".as_slice()]),
                },
                Part {
                    len: 3,
                    hash: part_hash([b"e".as_slice(), b"fg"]),
                },
            ],
        }
    }

    #[test]
    fn an_index_round_trips_and_is_recognised() {
        let bytes = index().encode();
        assert!(looks_like_index(&bytes));
        assert_eq!(PartIndex::decode(&bytes, "k").expect("decode"), index());
        assert_eq!(
            part_hash([b"efg".as_slice()]),
            part_hash([b"e".as_slice(), b"fg"]),
            "a part's hash does not depend on how its bytes are sliced"
        );
    }

    #[test]
    fn inconsistent_indexes_are_rejected() {
        let mut wrong_sum = index();
        wrong_sum.len = 8;
        let mut empty_part = index();
        empty_part.parts[1].len = 0;
        empty_part.len = 4;
        let no_parts = PartIndex {
            len: 0,
            parts: vec![],
        };
        for (name, bad) in [
            ("sum", wrong_sum),
            ("empty part", empty_part),
            ("no parts", no_parts),
        ] {
            let e = PartIndex::decode(&bad.encode(), "checkpoints/x.snap").expect_err(name);
            assert!(
                matches!(&e, Error::MalformedHeader { artefact, .. } if artefact == "checkpoints/x.snap"),
                "{name}: {e}"
            );
        }
        let mut truncated = index().encode();
        truncated.pop();
        assert!(PartIndex::decode(&truncated, "k").is_err());
    }

    #[test]
    fn parts_are_hidden_wherever_they_are() {
        assert!(is_part_key(".parts/checkpoints/step-1.snap/ab"));
        assert!(is_part_key("shard/.parts/x/ab"));
        assert!(!is_part_key("checkpoints/step-000000000001.snap"));
        assert!(!is_part_key("a.parts/x"));
    }
}
