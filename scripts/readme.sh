#!/usr/bin/env bash
# Regenerates the generated blocks of README.md and docs/*.md: the figures from
# bench-results/*.json (run it after scripts/bench.sh) and the transcripts from
# docs/transcripts/*.txt (scripts/transcripts.sh runs it after regenerating them); with --check
# it changes nothing and fails when a document differs.
cd "$(dirname "$0")/.." && exec cargo run --quiet -p xtask -- readme "$@"
