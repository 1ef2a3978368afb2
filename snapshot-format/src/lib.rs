//! On-disk formats and storage of the training-replay verifier.
//!
//! This crate knows no ML framework. It defines, and is the reference implementation of,
//! `specs/snapshot-format.md`:
//! - [`snapshot`]: checkpoint and export snapshots (named tensors plus typed metadata);
//! - [`planes`]: the byte-grouped codec of snapshot tensors;
//! - [`delta`]: the delta codec and the reading of delta chains from a store;
//! - [`hash`]: canonical, domain-separated hashing (tensor hashes, state roots, batches,
//!   Merkle roots);
//! - [`ledger`]: hash-chained step records in write-once segments;
//! - [`dataset`]: per-example hashes and their Merkle root;
//! - [`manifest`]: the run manifest, environment fingerprint and completion record (JSON);
//! - [`layout`]: where each artefact lives in a run;
//! - [`storage`]: write-once object storage on `object_store`;
//! - [`parts`]: objects larger than one write, stored as parts published by an index;
//! - [`attest`]: in-toto statements in DSSE envelopes and OpenSSF model-signing bundles.
//!
//! Every reader treats its input as hostile: lengths are checked against [`limits`] before any
//! allocation, every structural rule has its own [`Error`] variant, and nothing panics on bad
//! bytes.

pub mod attest;
pub mod canonical;
pub mod dataset;
pub mod delta;
pub mod dtype;
pub mod envelope;
pub mod error;
pub mod hash;
pub mod layout;
pub mod ledger;
pub mod limits;
pub mod manifest;
pub mod parts;
pub mod planes;
pub mod signature;
pub mod snapshot;
pub mod storage;
pub mod testing;
pub mod vectors;

pub use dtype::{Codec, DType};
pub use error::{Error, Result};
pub use hash::Hash32;
pub use storage::{PutOutcome, Store};
