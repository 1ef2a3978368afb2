"""An independent reference for the engine's BERT forward pass: Hugging Face BERT's equations
(BertForSequenceClassification, erf GELU, additive attention mask) in float64 NumPy, applied to
the exact weights `replay rollback` exported, compared with the per-example losses (no dropout)
that `replay counterfactual` computed with the engine.

usage: check_forward.py MODEL_SAFETENSORS TOKENS_JSONL COUNTERFACTUAL_JSON MAX_LEN HEADS EPS
Exits 1 when a loss differs from the reference by more than 1e-4 relative.
"""
import json
import math
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def linear(p, name, x):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def loss(p, ids, label, max_len, heads, eps):
    ids = ids[:max_len] + [0] * (max_len - len(ids[:max_len]))
    mask = np.array([1.0 if t != 0 else 0.0 for t in ids])
    e = "bert.embeddings."
    x = p[e + "word_embeddings.weight"][ids] + p[e + "position_embeddings.weight"][:max_len]
    x = x + p[e + "token_type_embeddings.weight"][0]
    x = layer_norm(x, p[e + "LayerNorm.weight"], p[e + "LayerNorm.bias"], eps)
    h = x.shape[-1]
    dh = h // heads
    additive = (1.0 - mask) * np.finfo(np.float32).min
    layer = 0
    while "bert.encoder.layer.%d.attention.self.query.weight" % layer in p:
        pre = "bert.encoder.layer.%d." % layer
        split = lambda t: t.reshape(max_len, heads, dh).transpose(1, 0, 2)
        q = split(linear(p, pre + "attention.self.query", x))
        k = split(linear(p, pre + "attention.self.key", x))
        v = split(linear(p, pre + "attention.self.value", x))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh) + additive
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(max_len, h)
        attended = linear(p, pre + "attention.output.dense", context)
        x = layer_norm(attended + x, p[pre + "attention.output.LayerNorm.weight"],
                       p[pre + "attention.output.LayerNorm.bias"], eps)
        inner = gelu(linear(p, pre + "intermediate.dense", x))
        out = linear(p, pre + "output.dense", inner)
        x = layer_norm(out + x, p[pre + "output.LayerNorm.weight"], p[pre + "output.LayerNorm.bias"], eps)
        layer += 1
    pooled = np.tanh(linear(p, "bert.pooler.dense", x[0]))
    logits = linear(p, "classifier", pooled)
    top = logits.max()
    return float(top + math.log(np.exp(logits - top).sum()) - logits[label])


def main():
    weights, tokens, report, max_len, heads, eps = sys.argv[1:7]
    p = load_safetensors(weights)
    rows = [json.loads(l) for l in open(tokens) if l.strip()]
    examples = json.load(open(report))["examples"]
    worst = 0.0
    print("example  engine (f32)    reference (f64)  relative difference")
    for e in examples:
        row = rows[e["example"]]
        ref = loss(p, row["tokens"], row["label"], int(max_len), int(heads), float(eps))
        rel = abs(e["loss_factual"] - ref) / max(abs(ref), 1e-12)
        worst = max(worst, rel)
        print("%7d  %.9f  %.9f  %.2e" % (e["example"], e["loss_factual"], ref, rel))
    print("largest relative difference %.2e" % worst)
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
