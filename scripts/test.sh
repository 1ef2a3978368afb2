#!/usr/bin/env bash
# The project's test command (README, and `.ci/run`): set-up, formatting and lint checks, then
# every test of the workspace. Works on a fresh clone with no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-no-autotune.sh
cargo test --workspace --locked "$@"
