"""PyTorch + PEFT reference for the LoRA training step on SmolLM2-135M-Instruct, for
`benches/benches/lora_versus_pytorch.rs`.

The model is the GGUF's (weights dequantized by the `gguf` package, to f32) as a plain PyTorch
Llama (RMSNorm, rotary embeddings in llama.cpp's adjacent-pair layout on its permuted Q/K rows,
grouped-query attention, SwiGLU, tied head); PEFT injects LoRA (rank 8, alpha 16, dropout 0.05
on q_proj and v_proj) and only the adapters train, with AdamW (lr 1e-3) and gradient clipping at
1.0, on the rows the engine trains on (token ids and loss masks, padded to the same length).
Prints one JSON document: ms per step at each thread count, whether the adapters are
bit-identical across two runs and across thread counts, and the loss of the first step (the
base model's, since LoRA's B starts at zero: it must match the engine's up to rounding).

    python lora_step.py MODEL.gguf ROWS.jsonl --max-len 80 --batch 4 --threads 1 2 --steps 8
"""

import argparse
import hashlib
import json
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
from gguf import GGUFReader
from gguf.quants import dequantize
from peft import LoraConfig, inject_adapter_in_model


def load(path):
    r = GGUFReader(path)
    meta = {f.name: f.contents() for f in r.fields.values() if f.name.startswith("llama.")}
    w = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
         for t in r.tensors}
    return meta, w


class Block(nn.Module):
    def __init__(self, h, nh, nkv, ffn, eps):
        super().__init__()
        d = h // nh
        self.nh, self.nkv, self.d, self.eps = nh, nkv, d, eps
        self.q_proj = nn.Linear(h, nh * d, bias=False)
        self.k_proj = nn.Linear(h, nkv * d, bias=False)
        self.v_proj = nn.Linear(h, nkv * d, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.gate_proj = nn.Linear(h, ffn, bias=False)
        self.up_proj = nn.Linear(h, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, h, bias=False)
        self.attn_norm = nn.Parameter(torch.ones(h))
        self.ffn_norm = nn.Parameter(torch.ones(h))

    def rms(self, x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * g

    def forward(self, x, cos, sin, mask):
        b, s, h = x.shape

        def rope(t):
            a, c = t[..., 0::2], t[..., 1::2]
            return torch.stack((a * cos - c * sin, a * sin + c * cos), -1).flatten(-2)

        n = self.rms(x, self.attn_norm)
        q = rope(self.q_proj(n).view(b, s, self.nh, self.d).transpose(1, 2))
        k = rope(self.k_proj(n).view(b, s, self.nkv, self.d).transpose(1, 2))
        v = self.v_proj(n).view(b, s, self.nkv, self.d).transpose(1, 2)
        g = self.nh // self.nkv
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        att = (q @ k.transpose(-1, -2) / self.d**0.5 + mask).softmax(-1)
        x = x + self.o_proj((att @ v).transpose(1, 2).reshape(b, s, h))
        n = self.rms(x, self.ffn_norm)
        return x + self.down_proj(nn.functional.silu(self.gate_proj(n)) * self.up_proj(n))


class Llama(nn.Module):
    def __init__(self, meta, w):
        super().__init__()
        h = int(meta["llama.embedding_length"])
        nh = int(meta["llama.attention.head_count"])
        self.nkv = int(meta["llama.attention.head_count_kv"])
        ffn = int(meta["llama.feed_forward_length"])
        eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
        self.theta = float(meta["llama.rope.freq_base"])
        self.d, self.eps = h // nh, eps
        self.embed = nn.Parameter(w["token_embd.weight"])
        self.blocks = nn.ModuleList()
        for i in range(int(meta["llama.block_count"])):
            blk = Block(h, nh, self.nkv, ffn, eps)
            p = f"blk.{i}."
            with torch.no_grad():
                for ours, theirs in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
                                     ("o_proj", "attn_output"), ("gate_proj", "ffn_gate"),
                                     ("up_proj", "ffn_up"), ("down_proj", "ffn_down")]:
                    getattr(blk, ours).weight.copy_(w[p + theirs + ".weight"])
                blk.attn_norm.copy_(w[p + "attn_norm.weight"])
                blk.ffn_norm.copy_(w[p + "ffn_norm.weight"])
            self.blocks.append(blk)
        self.norm = nn.Parameter(w["output_norm.weight"])

    def forward(self, ids, attention):
        b, s = ids.shape
        x = self.embed[ids]
        pos = torch.arange(s, dtype=torch.float64)[:, None]
        angle = pos * self.theta ** (-torch.arange(0, self.d, 2, dtype=torch.float64) / self.d)
        cos, sin = angle.cos().float(), angle.sin().float()
        causal = torch.full((s, s), -1e9).triu(1)
        mask = causal[None, None] + (1 - attention[:, None, None, :]) * -1e9
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm
        return x @ self.embed.T


def batches(rows_path, batch, max_len, pad, longest):
    rows = [json.loads(l) for l in open(rows_path)]
    out = []
    for i in range(0, len(rows) - batch + 1, batch):
        # Every row to max_len, or (--longest) the batch to its longest row.
        n = max(len(r["tokens"][:max_len]) for r in rows[i:i + batch]) if longest else max_len
        ids = torch.full((batch, n), pad, dtype=torch.long)
        att = torch.zeros(batch, n)
        loss = torch.zeros(batch, n)
        for j, r in enumerate(rows[i:i + batch]):
            t = r["tokens"][:max_len]
            ids[j, :len(t)] = torch.tensor(t)
            att[j, :len(t)] = 1
            loss[j, :len(t)] = torch.tensor(r["loss_mask"][:max_len], dtype=torch.float32)
        out.append((ids, att, loss))
    return out


def train(meta, w, data, threads, steps):
    torch.set_num_threads(threads)
    torch.manual_seed(7)
    model = Llama(meta, w)
    model = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]), model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    times, losses = [], []
    for step in range(steps):
        ids, att, mask = data[step % len(data)]
        t = time.perf_counter()
        logits = model(ids, att)[:, :-1]
        target, weight = ids[:, 1:], mask[:, 1:]
        nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                          reduction="none")
        loss = (nll * weight.reshape(-1)).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
        losses.append(loss.item())
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().numpy().tobytes())
    return times, digest.hexdigest(), losses[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("--max-len", type=int, default=80)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--longest", action="store_true")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check-steps", type=int, default=3)
    a = ap.parse_args()
    meta, w = load(a.model)
    data = batches(a.rows, a.batch, a.max_len, a.pad, a.longest)
    ms, runs, digests = {}, {}, {}
    for t in a.threads:
        times, _, first_loss = train(meta, w, data, t, a.warmup + a.steps)
        ms[str(t)] = statistics.median(times[a.warmup:])
        first = train(meta, w, data, t, a.check_steps)[1]
        second = train(meta, w, data, t, a.check_steps)[1]
        runs[str(t)] = first == second
        digests[str(t)] = first
    print(json.dumps({
        "torch": torch.__version__,
        "ms_per_step": ms,
        "identical_across_runs": runs,
        "identical_across_threads": len(set(digests.values())) == 1,
        "first_loss": first_loss,
    }))


main()
