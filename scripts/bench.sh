#!/usr/bin/env bash
# Runs every benchmark in benches/ and records the results in bench-results/*.json; each
# benchmark also prints a Markdown table. The README's figures come from these files.
# The PyTorch comparison runs torch (CPU) from PyPI in its own venv, target/bench-venv, which
# this script creates once.
set -euo pipefail
cd "$(dirname "$0")/.."

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(snapshot_io training replay versus_pytorch)
fi
for b in "${benches[@]}"; do
  if [ "$b" = versus_pytorch ] && [ -z "${BENCH_PYTHON:-}" ] && [ ! -x target/bench-venv/bin/python ]; then
    echo "setting up target/bench-venv with torch from PyPI for the PyTorch comparison"
    python3 -m venv target/bench-venv
    target/bench-venv/bin/pip install --quiet --disable-pip-version-check 'torch>=2.5' numpy
  fi
  cargo bench --locked -p benchmarks --bench "$b"
done
