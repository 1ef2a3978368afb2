//! The verifier of recorded training runs (`specs/replay-cli.md`).
//!
//! - [`cli`]: the `replay` command line: arguments into options, a command's report out as
//!   text or JSON, its verdict as the exit status. Nothing else.
//! - [`commands`]: one file per command; each takes its options, loads the run, and returns a
//!   serialisable report that begins with the one [`report::Header`].
//! - The run model: [`context`] (a run loaded and checked), [`report`] (verdicts, problems,
//!   the header), [`signatures`] and [`attestations`] (who signed what, and what they state),
//!   [`state`] (stored states read against their commitments), [`shard`] (sharded verification).
//! - [`engine`]: re-execution of recorded steps, and reconstruction of the state at any step.
//! - [`render`]: every human-readable output: text, Markdown, HTML and SVG.

pub mod attestations;
pub mod cli;
pub mod commands;
pub mod context;
pub mod engine;
pub mod render;
pub mod report;
pub mod shard;
pub mod signatures;
pub mod state;

pub use report::{CommandError, Problem, Verdict};
