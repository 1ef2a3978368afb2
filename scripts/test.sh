#!/usr/bin/env bash
# The project's test command (README, and `.ci/run`): set-up, formatting and lint checks, then
# every test of the workspace. Works on a fresh clone with no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CUDA path compiles and passes the lints too (checked, not linked: no GPU here; its tests
# run on a GPU machine with scripts/gpu-check.sh).
cargo clippy --workspace --all-targets --locked --features trainer/cuda,replay/cuda,e2e-tests/cuda \
  -- -D warnings
# The API documentation builds without a broken or private link (crates and modules move; the
# links in their docs must follow).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The fuzz target (its own workspace, built by cargo-fuzz) still compiles against the crates.
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet \
  --target-dir "${CARGO_TARGET_DIR:-target}/fuzz-check"
scripts/check-no-autotune.sh
for s in scripts/*.sh examples/*/*.sh examples/*/*.sbatch; do bash -n "$s"; done
python3 -m py_compile examples/minilm/tokenize_reviews.py examples/minilm/check_forward.py
cargo test --workspace --locked "$@"
