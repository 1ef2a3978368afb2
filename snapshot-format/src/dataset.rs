//! The dataset manifest: one hash per example, in dataset order, and their Merkle root.

use crate::canonical;
use crate::envelope::{self, DATASET_MANIFEST};
use crate::error::{Error, Result};
use crate::hash::{self, Hash32};

/// Header of a dataset manifest object; the example hashes follow as the payload,
/// `count × 32` bytes.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
struct StoredHeader {
    count: u64,
    root: Hash32,
}

/// Per-example hashes and their Merkle root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetManifest {
    /// [`hash::example_hash`] of each example, indexed by example id.
    pub example_hashes: Vec<Hash32>,
    /// [`hash::merkle_root`] of `example_hashes`.
    pub root: Hash32,
}

impl DatasetManifest {
    /// Build from example hashes in dataset order.
    pub fn new(example_hashes: Vec<Hash32>) -> Self {
        let root = hash::merkle_root(&example_hashes);
        DatasetManifest {
            example_hashes,
            root,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> u64 {
        self.example_hashes.len() as u64
    }

    /// True when the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.example_hashes.is_empty()
    }

    /// Encode as a dataset manifest object.
    pub fn encode(&self) -> Vec<u8> {
        let header = canonical::encode(&StoredHeader {
            count: self.len(),
            root: self.root,
        });
        let payload: Vec<u8> = self.example_hashes.iter().flat_map(|h| h.0).collect();
        envelope::encode(DATASET_MANIFEST, &header, &[&payload])
    }

    /// Decode, recompute the root, and compare it with the stored one.
    pub fn decode(bytes: &[u8], artefact: &str) -> Result<Self> {
        let opened = envelope::open(DATASET_MANIFEST, bytes, artefact)?;
        let header: StoredHeader = canonical::decode_exact(opened.header, artefact)?;
        let payload_len = header
            .count
            .checked_mul(32)
            .ok_or_else(|| Error::Truncated {
                artefact: artefact.to_string(),
                needed: u64::MAX,
                available: bytes.len() as u64,
            })?;
        let payload = opened.payload(payload_len)?;
        let example_hashes: Vec<Hash32> = payload
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                Hash32(h)
            })
            .collect();
        let manifest = DatasetManifest::new(example_hashes);
        if manifest.root != header.root {
            return Err(Error::DatasetRootMismatch {
                artefact: artefact.to_string(),
                stored: header.root,
                computed: manifest.root,
            });
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_root_check() {
        let m = DatasetManifest::new((0..7u8).map(|i| hash::example_hash(&[i])).collect());
        let mut bytes = m.encode();
        assert_eq!(DatasetManifest::decode(&bytes, "ds").expect("decodes"), m);
        // Swap two example hashes in the payload: still well-formed, but the root no longer
        // matches what the header commits to.
        let payload_start = bytes.len() - 8 - 7 * 32;
        let (a, b) = (payload_start, payload_start + 32);
        for i in 0..32 {
            bytes.swap(a + i, b + i);
        }
        assert!(matches!(
            DatasetManifest::decode(&bytes, "ds"),
            Err(Error::DatasetRootMismatch { .. })
        ));
    }
}
