//! The deterministic fine-tuning engine: a training session whose every step is bit-exact on a
//! given environment class, and a recorder that writes the run (manifest, dataset manifest,
//! ledger, checkpoints) to a write-once store.

pub mod alloc;
pub mod backend;
pub mod base;
pub mod chat;
pub mod cli;
pub mod config;
pub mod data;
pub mod demo;
pub mod dist;
pub mod error;
pub mod fingerprint;
pub mod fixtures;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod model;
pub mod optim;
pub mod params;
pub mod peft;
pub mod probe;
pub mod record;
pub mod rng;
pub mod run;
pub mod session;

pub use error::{Error, Result};
