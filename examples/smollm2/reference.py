"""Independent float64 reference of the Llama forward pass, checked against the engine.

The weights are read and dequantized by the `gguf` package (llama.cpp's own Python code), not by
the engine. The forward pass follows llama.cpp's layout: the GGUF's query and key rows are kept
as llama.cpp permuted them and rotated in adjacent pairs (llama.cpp's "normal" rope), where the
engine undoes the permutation and rotates Hugging Face's halves; both give the same attention
scores, so agreement also checks the engine's un-permutation.

Usage: reference.py MODEL.gguf GENERATIONS.jsonl LOGITS_DIR [--rope-theta THETA]
where GENERATIONS.jsonl is `trainer generate --json` output and LOGITS_DIR its --logits-dir.
Prints one JSON line per prompt and exits 1 when the logits or the greedy tokens disagree.
`--rope-theta` replaces the model's rotary base, to show that the comparison can tell.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def load(path):
    r = GGUFReader(path)
    meta = {}
    for f in r.fields.values():
        if f.name.startswith("llama."):
            meta[f.name] = f.contents()
    w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    return meta, w


def rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def forward(meta, w, ids, theta=None):
    nh = int(meta["llama.attention.head_count"])
    nkv = int(meta["llama.attention.head_count_kv"])
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    theta = theta or float(meta["llama.rope.freq_base"])
    layers = int(meta["llama.block_count"])
    x = w["token_embd.weight"][ids]
    s, h = x.shape
    d = h // nh
    pos = np.arange(s, dtype=np.float64)[:, None]
    angle = pos * theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [s, d/2]
    cos, sin = np.cos(angle), np.sin(angle)

    def rope(t):  # [heads, s, d], adjacent pairs rotated
        a, b = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    causal = np.triu(np.full((s, s), -np.inf), 1)
    for i in range(layers):
        p = f"blk.{i}."
        n = rms(x, w[p + "attn_norm.weight"], eps)
        q = rope((n @ w[p + "attn_q.weight"].T).reshape(s, nh, d).transpose(1, 0, 2))
        k = rope((n @ w[p + "attn_k.weight"].T).reshape(s, nkv, d).transpose(1, 0, 2))
        v = (n @ w[p + "attn_v.weight"].T).reshape(s, nkv, d).transpose(1, 0, 2)
        group = nh // nkv
        k, v = np.repeat(k, group, 0), np.repeat(v, group, 0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(s, h)
        x = x + ctx @ w[p + "attn_output.weight"].T
        n = rms(x, w[p + "ffn_norm.weight"], eps)
        g = n @ w[p + "ffn_gate.weight"].T
        u = n @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def main():
    model, generations, logits_dir = sys.argv[1:4]
    theta = float(sys.argv[5]) if sys.argv[4:5] == ["--rope-theta"] else None
    meta, w = load(model)
    vocab = w["token_embd.weight"].shape[0]
    ok = True
    for i, line in enumerate(open(generations)):
        g = json.loads(line)["generation"]
        prompt, engine_tokens = g["prompt_tokens"], g["tokens"]
        ref = forward(meta, w, np.array(prompt), theta)
        eng = np.fromfile(f"{logits_dir}/prompt-{i}.f32", dtype="<f4").reshape(len(prompt), vocab)
        diff = np.abs(eng.astype(np.float64) - ref)
        scale = np.abs(ref).max()
        same_argmax = int((eng.argmax(-1) == ref.argmax(-1)).sum())
        # Greedy decoding, recomputing the whole sequence each step (no cache).
        ids = list(prompt)
        ref_tokens = []
        for _ in range(len(engine_tokens)):
            nxt = int(forward(meta, w, np.array(ids), theta)[-1].argmax())
            ref_tokens.append(nxt)
            ids.append(nxt)
        agree = ref_tokens == engine_tokens
        rel = float(diff.max() / scale)
        ok &= agree and rel < 1e-4 and same_argmax == len(prompt)
        print(json.dumps({
            "prompt": i,
            "positions": len(prompt),
            "max_abs_logit": round(float(scale), 4),
            "max_abs_difference": float(diff.max()),
            "relative_to_max_logit": rel,
            "mean_abs_difference": float(diff.mean()),
            "argmax_agrees_at": f"{same_argmax}/{len(prompt)}",
            "greedy_tokens_agree": agree,
            "reference_tokens": ref_tokens,
        }))
    sys.exit(0 if ok else 1)


main()
