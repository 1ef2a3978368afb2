#!/usr/bin/env bash
# Runs every benchmark in benches/ and records the results in bench-results/*.json; each
# benchmark also prints a Markdown table. The README's figures come from these files.
set -euo pipefail
cd "$(dirname "$0")/.."

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(snapshot_io training replay)
fi
for b in "${benches[@]}"; do
  cargo bench --locked -p benchmarks --bench "$b"
done
