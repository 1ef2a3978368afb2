//! The verifier of recorded training runs. Each command is a library function returning a
//! serialisable report with a [`report::Verdict`]; the `replay` binary prints them and maps
//! verdicts to exit codes (`specs/replay-cli.md`).

pub mod attestations;
pub mod check;
pub mod commands;
pub mod compare;
pub mod context;
pub mod counterfactual;
pub mod evaluate;
pub mod human;
pub mod inspect;
pub mod investigate;
pub mod provenance;
pub mod report;
pub mod rollback;
pub mod shard;
pub mod signatures;
pub mod state;
pub mod verify;

pub use report::{CommandError, Problem, Verdict};
