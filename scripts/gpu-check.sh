#!/usr/bin/env bash
# GPU verification in two halves, because GPU machines here cannot reach the package registries:
#
#   scripts/gpu-check.sh build   on a build machine (no GPU needed): release binaries of trainer
#                                and replay with CUDA, and the GPU test suite, stripped and packed
#                                into gpu-bundle.tar.gz
#   scripts/gpu-check.sh run     on a machine with an NVIDIA GPU, from the repository root, with
#                                gpu-bundle.tar.gz (or gpu-bundle/) present: the GPU suite
#                                (tests/tests/cuda.rs), then the demo model's training throughput
#                                on CPU and CUDA and a CUDA replay, printed as a table and written
#                                to ${OUT:-gpu-results}/
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=gpu-bundle
STEPS=${GPU_CHECK_STEPS:-60}

case "${1:-}" in
build)
  cargo build --release --locked -p trainer -p replay --features trainer/cuda,replay/cuda
  suite=$(cargo test --release --locked -p e2e-tests --features cuda --test cuda --no-run \
            --message-format=json 2>/dev/null \
          | grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')
  [ -x "$suite" ] || { echo "the GPU suite did not build" >&2; exit 1; }
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  release="${CARGO_TARGET_DIR:-target}/release"
  cp "$release/trainer" "$release/replay" "$BUNDLE/"
  cp "$suite" "$BUNDLE/cuda-suite"
  strip "$BUNDLE"/* 2>/dev/null || true
  tar czf "$BUNDLE.tar.gz" "$BUNDLE"
  ls -l "$BUNDLE" "$BUNDLE.tar.gz"
  ;;
run)
  [ -d "$BUNDLE" ] || tar xzf "$BUNDLE.tar.gz"
  out=${OUT:-gpu-results}
  mkdir -p "$out"
  work=$(mktemp -d)
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
  fi
  # Every step runs and the summary is printed whatever fails; the exit status is the suite's.
  "$BUNDLE/trainer" fingerprint --device cuda | tee "$out/fingerprint-cuda.json" || true
  echo "== GPU suite"
  suite_status=0
  E2E_BIN_DIR="$PWD/$BUNDLE" "$BUNDLE/cuda-suite" --ignored --test-threads 1 --nocapture 2>&1 \
    | tee "$out/suite.log" || suite_status=${PIPESTATUS[0]}
  echo "== demo model, $STEPS steps per device"
  declare -A sps
  for dev in cpu cuda; do
    if "$BUNDLE/trainer" demo --steps "$STEPS" --device "$dev" --assets "$work/assets" \
      --out "$work/demo-$dev" --json > "$out/demo-$dev.json"; then
      sps[$dev]=$(grep -o '"steps_per_second":[0-9.e+-]*' "$out/demo-$dev.json" | cut -d: -f2)
    else
      sps[$dev]="failed (exit $?)"
    fi
  done
  "$BUNDLE/replay" verify "$work/demo-cuda" --all --device cuda --json --quiet > "$out/verify-cuda.json" \
    && verify="verified" || verify="NOT verified (exit $?)"
  "$BUNDLE/replay" verify "$work/demo-cuda" --all --json --quiet \
    > "$out/verify-cuda-run-on-cpu.json" || true
  {
    echo
    echo "| device | demo steps/s | replay of the CUDA run |"
    echo "|---|---|---|"
    echo "| CPU (burn-flex, $(nproc) cores) | ${sps[cpu]} | replayed across classes (see verify-cuda-run-on-cpu.json) |"
    echo "| CUDA | ${sps[cuda]} | $verify on the same GPU |"
    echo
    echo "GPU suite exit status: $suite_status"
  } | tee "$out/summary.md"
  rm -rf "$work"
  exit "$suite_status"
  ;;
*)
  echo "usage: scripts/gpu-check.sh build|run" >&2
  exit 3
  ;;
esac
