//! The ledger: one hash-chained record per optimizer step, stored in write-once segments.

use crate::canonical;
use crate::envelope::{self, LEDGER_SEGMENT};
use crate::error::{Error, Result};
use crate::hash::{DomainHasher, Hash32, context};
use crate::limits::{MAX_BATCH_EXAMPLES, MAX_RECORDS_PER_SEGMENT};

/// What one optimizer step did, in exact bits.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode, serde::Serialize)]
pub struct StepRecord {
    /// The step this record describes (1-based: step 1 is the first update).
    pub step: u64,
    /// Epoch the batch was drawn from.
    pub epoch: u64,
    /// Learning rate used, as `f64` bits.
    pub lr_bits: u64,
    /// Dataset indices of the batch's examples, in batch order.
    pub example_ids: Vec<u64>,
    /// [`crate::hash::batch_hash`] of the examples' hashes in batch order.
    pub batch_hash: Hash32,
    /// Training loss of the batch, as `f32` bits.
    pub loss_bits: u32,
    /// Global gradient L2 norm before clipping, as `f32` bits.
    pub grad_norm_bits: u32,
    /// State root after the step; `None` on steps the run's state-root interval skips.
    pub state_root: Option<Hash32>,
    /// Hash of the previous record, or the run's genesis hash for step 1.
    pub prev_hash: Hash32,
}

impl StepRecord {
    /// Record hash: `BLAKE3-derive(RECORD, canonical bincode of the record)`.
    pub fn hash(&self) -> Hash32 {
        let mut h = DomainHasher::new(context::RECORD);
        h.bytes(&canonical::encode(self));
        h.finish()
    }

    /// Learning rate as a float.
    pub fn lr(&self) -> f64 {
        f64::from_bits(self.lr_bits)
    }
    /// Loss as a float.
    pub fn loss(&self) -> f32 {
        f32::from_bits(self.loss_bits)
    }
    /// Gradient norm as a float.
    pub fn grad_norm(&self) -> f32 {
        f32::from_bits(self.grad_norm_bits)
    }
}

/// Genesis hash: `BLAKE3-derive(GENESIS, spec_hash ‖ initial_state_root)`. It binds the chain
/// to the run spec and to the state training started from.
pub fn genesis(spec_hash: &Hash32, initial_state_root: &Hash32) -> Hash32 {
    let mut h = DomainHasher::new(context::GENESIS);
    h.bytes(&spec_hash.0).bytes(&initial_state_root.0);
    h.finish()
}

/// A segment: consecutive records, stored as one write-once object.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Segment {
    /// 1-based segment number; segment `i` ends at the run's `i`-th checkpoint after step 0.
    pub index: u64,
    pub records: Vec<StepRecord>,
}

impl Segment {
    /// First step covered.
    pub fn first_step(&self) -> u64 {
        self.records.first().map(|r| r.step).unwrap_or(0)
    }
    /// Last step covered.
    pub fn last_step(&self) -> u64 {
        self.records.last().map(|r| r.step).unwrap_or(0)
    }
    /// Hash of the last record: the chain head after this segment.
    pub fn head(&self) -> Hash32 {
        self.records
            .last()
            .map(StepRecord::hash)
            .unwrap_or(Hash32::ZERO)
    }
    /// The `prev_hash` of the first record: the head this segment continues.
    pub fn continues(&self) -> Hash32 {
        self.records
            .first()
            .map(|r| r.prev_hash)
            .unwrap_or(Hash32::ZERO)
    }

    /// Check this segment's place in a run whose checkpoints are every `interval` steps, as
    /// segment `index` (stored at `artefact`): segment `index` starts at step
    /// `(index − 1) × interval + 1` and continues from `head`, the hash of the record before
    /// it (the genesis for segment 1; `None` when the segment before could not be read, and
    /// only the place is checked). The one rule of the chain, for every reader of a ledger.
    pub fn check_link(
        &self,
        index: u64,
        interval: u64,
        head: Option<Hash32>,
        artefact: &str,
    ) -> Result<()> {
        let first = index
            .saturating_sub(1)
            .saturating_mul(interval)
            .saturating_add(1);
        if self.index != index || self.first_step() != first {
            return Err(Error::SegmentMisplaced {
                artefact: artefact.to_string(),
                index: self.index,
                first_step: self.first_step(),
                expected_index: index,
                expected_first_step: first,
            });
        }
        match head {
            Some(h) if self.continues() != h => Err(Error::ChainBroken {
                artefact: artefact.to_string(),
                step: self.first_step(),
                expected: h,
                found: self.continues(),
            }),
            _ => Ok(()),
        }
    }

    /// Encode as a segment object.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(LEDGER_SEGMENT, &canonical::encode(self), &[])
    }

    /// Decode and check internal consistency: 1..=MAX records, consecutive steps, and each
    /// record's `prev_hash` equal to the hash of the record before it. The link from the first
    /// record to the previous segment is the caller's to check.
    pub fn decode(bytes: &[u8], artefact: &str) -> Result<Segment> {
        let opened = envelope::open(LEDGER_SEGMENT, bytes, artefact)?;
        let segment: Segment = canonical::decode_exact(opened.header, artefact)?;
        opened.payload(0)?;
        let count = segment.records.len() as u64;
        if count == 0 || count > MAX_RECORDS_PER_SEGMENT {
            return Err(Error::BadRecordCount {
                artefact: artefact.to_string(),
                count,
                max: MAX_RECORDS_PER_SEGMENT,
            });
        }
        let first = segment.first_step();
        if first.checked_add(count - 1).is_none() {
            return Err(Error::MalformedHeader {
                artefact: artefact.to_string(),
                detail: format!("{count} records from step {first} run past the last step number"),
            });
        }
        let mut prev: Option<Hash32> = None;
        for (i, r) in segment.records.iter().enumerate() {
            let expected = first + i as u64;
            if r.step != expected || (i == 0 && r.step == 0) {
                return Err(Error::StepOutOfOrder {
                    artefact: artefact.to_string(),
                    index: i as u64,
                    expected: expected.max(1),
                    found: r.step,
                });
            }
            if r.example_ids.len() as u64 > MAX_BATCH_EXAMPLES {
                return Err(Error::MalformedHeader {
                    artefact: artefact.to_string(),
                    detail: format!("step {} lists {} examples", r.step, r.example_ids.len()),
                });
            }
            if let Some(p) = prev
                && p != r.prev_hash
            {
                return Err(Error::ChainBroken {
                    artefact: artefact.to_string(),
                    step: r.step,
                    expected: p,
                    found: r.prev_hash,
                });
            }
            prev = Some(r.hash());
        }
        Ok(segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, prev: Hash32) -> StepRecord {
        StepRecord {
            step,
            epoch: 0,
            lr_bits: 0.001f64.to_bits(),
            example_ids: vec![step, step + 1],
            batch_hash: Hash32([step as u8; 32]),
            loss_bits: 1.5f32.to_bits(),
            grad_norm_bits: 0.5f32.to_bits(),
            state_root: Some(Hash32([9; 32])),
            prev_hash: prev,
        }
    }

    fn chain(first: u64, n: u64, genesis: Hash32) -> Vec<StepRecord> {
        let mut out: Vec<StepRecord> = Vec::new();
        let mut prev = genesis;
        for s in first..first + n {
            let r = record(s, prev);
            prev = r.hash();
            out.push(r);
        }
        out
    }

    /// Segment 2 of a run with a checkpoint every 4 steps: steps 5 to 8, after segment 1's.
    #[test]
    fn a_segment_links_only_in_its_place() {
        let genesis = Hash32([1; 32]);
        let one = Segment {
            index: 1,
            records: chain(1, 4, genesis),
        };
        let two = Segment {
            index: 2,
            records: chain(5, 4, one.head()),
        };
        one.check_link(1, 4, Some(genesis), "s1")
            .expect("segment 1");
        two.check_link(2, 4, Some(one.head()), "s2")
            .expect("segment 2");
        two.check_link(2, 4, None, "s2").expect("its place alone");
        let misplaced = [
            two.check_link(3, 4, Some(one.head()), "s2"),
            two.check_link(2, 5, Some(one.head()), "s2"),
        ];
        for e in misplaced {
            assert!(
                matches!(
                    e,
                    Err(Error::SegmentMisplaced {
                        index: 2,
                        first_step: 5,
                        ..
                    })
                ),
                "{e:?}"
            );
        }
        let e = two.check_link(2, 4, Some(genesis), "s2");
        assert!(
            matches!(e, Err(Error::ChainBroken { step: 5, .. })),
            "{e:?}"
        );
    }

    /// A hostile segment whose first step is the largest step number and which claims a record
    /// after it: an error naming the segment, not an overflow (found by the no-panic property).
    #[test]
    fn steps_past_the_last_number_are_an_error() {
        let mut records = chain(1, 2, Hash32([1; 32]));
        records[0].step = u64::MAX;
        records[1].step = 0;
        let bytes = Segment { index: 1, records }.encode();
        let e = Segment::decode(&bytes, "seg").expect_err("past the last step");
        assert!(
            matches!(&e, Error::MalformedHeader { artefact, detail } if artefact == "seg" && detail.contains("past the last step")),
            "{e:?}"
        );
    }

    #[test]
    fn segment_round_trip() {
        let seg = Segment {
            index: 1,
            records: chain(1, 5, Hash32([1; 32])),
        };
        let bytes = seg.encode();
        let back = Segment::decode(&bytes, "seg").expect("decodes");
        assert_eq!(back, seg);
        assert_eq!(back.head(), seg.records[4].hash());
    }

    #[test]
    fn detects_reordered_and_relinked_records() {
        let mut records = chain(1, 4, Hash32([1; 32]));
        records.swap(1, 2);
        let bytes = Segment { index: 1, records }.encode();
        assert!(matches!(
            Segment::decode(&bytes, "seg"),
            Err(Error::StepOutOfOrder {
                index: 1,
                expected: 2,
                found: 3,
                ..
            })
        ));

        let mut records = chain(1, 4, Hash32([1; 32]));
        records[2].loss_bits ^= 1; // record 3 no longer hashes to record 4's prev_hash
        let bytes = Segment { index: 1, records }.encode();
        assert!(matches!(
            Segment::decode(&bytes, "seg"),
            Err(Error::ChainBroken { step: 4, .. })
        ));
    }

    #[test]
    fn rejects_empty_segment() {
        let bytes = Segment {
            index: 1,
            records: vec![],
        }
        .encode();
        assert!(matches!(
            Segment::decode(&bytes, "seg"),
            Err(Error::BadRecordCount { count: 0, .. })
        ));
    }
}
