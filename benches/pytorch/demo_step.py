"""PyTorch reference for the demo's training step, for `benches/benches/pytorch.rs`.

The same architecture as the engine's demo model (`trainer/src/demo.rs`): a BERT-style encoder
(vocabulary 4096, hidden 256, 2 layers, 4 heads, intermediate 1024, positions 64, GELU,
LayerNorm eps 1e-12, dropout 0.1 on hidden states and attention) with a pooler and a 2-class
head; batches of 32 sequences of 32 tokens; AdamW (lr 5e-4, weight decay 0.01), gradient
clipping at 1.0. Prints one JSON document: parameter count, ms per step at each thread count,
and whether the final parameters are bit-identical across two runs and across thread counts.

    python demo_step.py --threads 1 2 --steps 30 --check-steps 10
"""

import argparse
import hashlib
import json
import statistics
import time

import torch
import torch.nn as nn

VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS, LABELS = 4096, 256, 2, 4, 1024, 64, 2
BATCH, SEQ, DROPOUT = 32, 32, 0.1


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.attn_out = nn.Linear(HIDDEN, HIDDEN)
        self.attn_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.output = nn.Linear(FFN, HIDDEN)
        self.out_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x, mask):
        b, s, _ = x.shape
        d = HIDDEN // HEADS
        split = lambda t: t.view(b, s, HEADS, d).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / d**0.5 + mask
        probs = self.dropout(scores.softmax(-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, HIDDEN)
        x = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        h = nn.functional.gelu(self.intermediate(x))
        return self.out_norm(x + self.dropout(self.output(h)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(POSITIONS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.pooler = nn.Linear(HIDDEN, HIDDEN)
        self.classifier = nn.Linear(HIDDEN, LABELS)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, ids, attention):
        pos = torch.arange(ids.shape[1])
        x = self.word(ids) + self.position(pos)[None] + self.token_type(torch.zeros_like(ids))
        x = self.dropout(self.norm(x))
        mask = (1.0 - attention[:, None, None, :]) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(self.dropout(pooled))


def train(threads, steps, seed=7):
    """Train `steps` steps with `threads` threads: per-step seconds and a hash of the weights."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    data = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=data)
        labels = torch.randint(0, LABELS, (BATCH,), generator=data)
        attention = torch.ones(BATCH, SEQ)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(ids, attention), labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    digest = hashlib.blake2b()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    return times, digest.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=10)
    a = ap.parse_args()
    out = {
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in Model().parameters()),
        "batch": BATCH,
        "sequence": SEQ,
        "ms_per_step": {},
    }
    for t in a.threads:
        times, _ = train(t, a.warmup + a.steps)
        out["ms_per_step"][str(t)] = 1e3 * statistics.median(times[a.warmup :])
    hashes = {t: [train(t, a.check_steps)[1] for _ in range(2)] for t in a.threads}
    out["identical_across_runs"] = {str(t): h[0] == h[1] for t, h in hashes.items()}
    out["identical_across_threads"] = len({h[0] for h in hashes.values()}) == 1
    print(json.dumps(out))


if __name__ == "__main__":
    main()
