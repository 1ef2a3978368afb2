//! Where a run lives: write-once storage of its objects on `object_store` ([`storage`]), and
//! the reading of its checkpoints through their delta chains ([`checkpoints`]) and of its
//! ledger as one hash chain ([`ledger`]).
//!
//! The formats themselves are `snapshot-format`'s; this crate adds the I/O (object stores,
//! a tokio runtime driving them, streaming reads and writes in parts). Every read is bounded
//! by the store's `ReadLimits` before it allocates.

pub mod checkpoints;
pub mod ledger;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use checkpoints::CheckpointReader;
pub use storage::{PutOutcome, Store};
