//! `replay`: verify recorded training runs (`specs/replay-cli.md`).

use std::process::ExitCode;

/// mimalloc keeps freed blocks for reuse: the training step allocates and frees the same large
/// tensors every step, which glibc's allocator returns to the system and faults in again (a
/// quarter of a step's time on the demo, measured). Allocation changes no bit. `main` also turns
/// its purging of freed pages off ([`trainer::alloc`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    replay::cli::main()
}
