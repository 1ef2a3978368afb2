#!/usr/bin/env bash
# Runs every benchmark in benches/ and records the results in bench-results/*.json; each
# benchmark also prints a Markdown table. The README's figures come from these files.
# The PyTorch comparisons run torch (CPU), PEFT, transformers and gguf from PyPI in their own venv,
# target/bench-venv, which this script creates once; checkpoint_codecs runs ZipNN 0.5.4 there.
# CODEC_BENCH_RUNS=dir1:dir2 adds runs' last checkpoints to checkpoint_codecs (MiniLM, LoRA). lora_versus_pytorch needs SmolLM2's GGUF,
# which examples/smollm2/run.sh fetches (without it, the benchmark says so and measures nothing);
# minilm_versus_pytorch needs the model and tokenized reviews examples/minilm/run.sh writes.
# data_parallel runs the trainer under mpirun (Open MPI). attribution measures the demo's backdoor
# only after examples/backdoor/run.sh classifier and attribute have made its run and inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(snapshot_io checkpoint_codecs training replay matmul elementwise versus_pytorch lora_versus_pytorch
    minilm_versus_pytorch data_parallel attribution)
fi
for b in "${benches[@]}"; do
  if [[ $b == *versus_pytorch || $b == checkpoint_codecs || $b == matmul || $b == elementwise ]] && [ -z "${BENCH_PYTHON:-}" ] &&
    ! target/bench-venv/bin/python -c 'import torch, peft, transformers, gguf, zipnn' 2>/dev/null; then
    echo "setting up target/bench-venv with torch, PEFT, transformers, gguf and ZipNN from PyPI for the comparisons"
    python3 -m venv target/bench-venv
    target/bench-venv/bin/pip install --quiet --disable-pip-version-check 'torch>=2.5' numpy \
      'peft>=0.13' 'transformers>=4.40' 'gguf==0.19.0' safetensors zstandard
    # ZipNN 0.5.4 is a source package with a C extension, built against the torch above.
    target/bench-venv/bin/pip install --quiet --disable-pip-version-check --no-build-isolation \
      'zipnn==0.5.4'
  fi
  if [ "$b" = data_parallel ]; then
    # It runs the release trainer with MPI (Open MPI and libclang: scripts/setup-test-env.sh).
    cargo build --release --locked --features trainer/mpi --bin trainer
  fi
  cargo bench --locked -p benchmarks --bench "$b"
done
