//! On-disk formats of the training-replay verifier.
//!
//! This crate knows no ML framework and does no I/O beyond `std::io` streams and bounded reads
//! of files a user names ([`file`](mod@file)): storage is `run-store`'s, signatures `run-trust`'s. It
//! defines, and is the reference implementation of, `specs/snapshot-format.md`:
//! - [`snapshot`]: checkpoint and export snapshots (named tensors plus typed metadata);
//! - [`planes`]: the byte-grouped codec of snapshot tensors;
//! - [`delta`]: the delta codec, against references a reader resolves;
//! - [`hash`]: canonical, domain-separated hashing (tensor hashes, state roots, batches,
//!   Merkle roots);
//! - [`ledger`]: hash-chained step records in write-once segments;
//! - [`dataset`]: per-example hashes and their Merkle root;
//! - [`manifest`]: the run manifest, environment fingerprint and completion record (JSON);
//! - [`layout`]: where each artefact lives in a run;
//! - [`parts`]: objects larger than one write, stored as parts published by an index;
//! - [`envelope`]: the framing shared by every binary artefact.
//!
//! With the feature `testing`, `vectors` generates the spec's test vectors (in
//! `specs/vectors/`) and `testing` holds helpers for fuzzing and property tests.
//!
//! Every reader treats its input as hostile: lengths are checked against [`limits`] before any
//! allocation, every structural rule has its own [`Error`] variant, and nothing panics on bad
//! bytes.

pub mod canonical;
pub mod dataset;
pub mod delta;
pub mod dtype;
pub mod envelope;
pub mod error;
pub mod file;
pub mod hash;
pub mod layout;
pub mod ledger;
pub mod limits;
pub mod manifest;
pub mod parts;
pub mod planes;
pub mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod vectors;

pub use dtype::{Codec, DType};
pub use error::{Error, Result};
pub use hash::Hash32;
