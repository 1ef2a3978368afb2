//! Starting, continuing and resuming recorded runs.
//!
//! Everything that can be checked is checked before the first write: configuration, dataset
//! rows, the base model's pinned hash, the store's write-once behaviour, and that the output
//! holds no run yet.

mod export;
mod files;
mod options;
mod resume;
mod start;
mod train;

pub use export::{export_final, training_predicate};
pub use files::{RunFiles, load_dataset, read_checkpoint, read_ledger};
pub use options::{RunOptions, RunSummary};
pub use resume::{resume, resume_detached, resume_with};
pub use start::{start, start_detached, start_in, start_with};
