//! The engines behind the commands: re-executing recorded steps and comparing every bit
//! ([`reexecute`]), and reconstructing the exact state after any step ([`reconstruct`]).

pub mod reconstruct;
pub mod reexecute;
