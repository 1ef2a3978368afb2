#!/usr/bin/env bash
# Regenerates the figures in README.md and docs/figures.md from bench-results/*.json (run it
# after scripts/bench.sh); with --check it changes nothing and fails when they differ.
cd "$(dirname "$0")/.." && exec cargo run --quiet -p xtask -- readme "$@"
