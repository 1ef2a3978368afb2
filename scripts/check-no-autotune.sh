#!/usr/bin/env bash
# Proves that burn's `autotune` (kernel choice by timing, a source of nondeterminism) is not
# compiled into the engine, with or without the CUDA feature: no crate in the feature graph
# enables a feature named autotune.
set -euo pipefail
cd "$(dirname "$0")/.."

for features in "" "cuda"; do
  args=(tree -p trainer -p replay -e features --locked)
  [ -n "$features" ] && args+=(--features "trainer/$features,replay/$features")
  tree=$(cargo "${args[@]}" --offline 2>/dev/null || cargo "${args[@]}")
  if grep -q 'feature "autotune' <<<"$tree"; then
    echo "autotune is enabled (features: ${features:-default}):" >&2
    grep 'feature "autotune' <<<"$tree" | sort -u >&2
    exit 1
  fi
  if [ -n "$features" ] && ! grep -q 'burn-cuda' <<<"$tree"; then
    echo "the cuda feature does not reach burn-cuda" >&2
    exit 1
  fi
  echo "no autotune in the feature graph (features: ${features:-default})"
done
