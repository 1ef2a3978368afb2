//! Trust in a run's artefacts: ed25519 signatures over its history ([`signature`],
//! `specs/signatures.md` §1–5) and the standard attestations other tools check ([`attest`]:
//! in-toto statements in DSSE envelopes, OpenSSF model-signing bundles, §6).
//!
//! Pure computation over bytes (and bounded reads of key files): what a signature or a
//! statement says is judged by `replay`, in one place, against the run it names.

pub mod attest;
pub mod signature;
