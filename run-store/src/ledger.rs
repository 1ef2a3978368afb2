//! A run's ledger and checkpoints as its store holds them: the one walk of the hash chain
//! that every reader of a whole ledger uses (`trainer resume`, `replay`), and the listing of
//! the checkpoints present.

use snapshot_format::ledger::Segment;
use snapshot_format::{Hash32, Result, layout};

use crate::Store;

/// One segment of a ledger walk.
#[derive(Debug)]
pub struct LedgerEntry {
    /// Its index, 1-based.
    pub index: u64,
    /// Its key in the store.
    pub key: String,
    /// Bytes read for it.
    pub bytes_read: u64,
    /// The segment, read and decoded (its own records checked, specs/snapshot-format.md §4.2).
    pub segment: Result<Segment>,
    /// Its place in the chain ([`Segment::check_link`]): its index and first step, and its first
    /// record continuing the previous segment's head (the genesis for segment 1). When the
    /// previous segment could not be read there is no head to continue, and only the place is
    /// checked.
    pub link: Result<()>,
}

/// Segments `1..=last` of the ledger of a run whose chain starts at `genesis` and whose
/// checkpoints are every `interval` steps, each read and checked in its place of the chain, in
/// order. The walk goes on past a segment that cannot be read or does not link, so that a
/// reader can report every one; [`read_ledger`] stops at the first.
pub fn walk(
    store: &Store,
    genesis: Hash32,
    interval: u64,
    last: u64,
) -> impl Iterator<Item = LedgerEntry> + '_ {
    let mut head = Some(genesis);
    (1..=last).map(move |index| {
        let key = layout::segment(index);
        let bytes = store.get(&key);
        let bytes_read = bytes.as_ref().map_or(0, |b| b.len() as u64);
        let segment = bytes.and_then(|b| Segment::decode(&b, &key));
        let link = match &segment {
            Ok(seg) => seg.check_link(index, interval, head, &key),
            Err(_) => Ok(()),
        };
        head = segment.as_ref().ok().map(Segment::head);
        LedgerEntry {
            index,
            key,
            bytes_read,
            segment,
            link,
        }
    })
}

/// The records of segments `1..=last`, the first segment that cannot be read or does not
/// continue the chain an error.
pub fn read_ledger(
    store: &Store,
    genesis: Hash32,
    interval: u64,
    last: u64,
) -> Result<Vec<snapshot_format::ledger::StepRecord>> {
    let mut records = Vec::new();
    for entry in walk(store, genesis, interval, last) {
        let segment = entry.segment?;
        entry.link?;
        records.extend(segment.records);
    }
    Ok(records)
}

/// Sorted steps of the checkpoints present.
pub fn checkpoint_steps(store: &Store) -> Result<Vec<u64>> {
    let mut steps: Vec<u64> = store
        .list(layout::CHECKPOINTS)?
        .iter()
        .filter_map(|k| layout::parse_checkpoint(k))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}
