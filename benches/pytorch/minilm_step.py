"""PyTorch + Hugging Face transformers reference for full fine-tuning of all-MiniLM-L6-v2 as a
2-class classifier, for `benches/benches/minilm_versus_pytorch.rs`.

transformers' `BertForSequenceClassification` (its default attention implementation) built from
the model's `config.json`, loaded with the engine's initial weights (the pretrained encoder and
the head the engine drew), trained with dropout 0.1 (the config's), AdamW (lr 5e-5, weight
decay 0.01) and gradient clipping at 1.0, on the rows the engine trains on, in its order, padded
to the same length. Prints one JSON document: ms per step at each thread count, whether the
weights are bit-identical across two runs and across thread counts, the first step's loss, and
the first batch's loss without dropout under the initial weights (the engine computes it too).

    python minilm_step.py config.json model.safetensors ROWS.jsonl --max-len 64 --batch 16
"""

import argparse
import hashlib
import json
import statistics
import time

import torch
import transformers
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification


def batches(rows_path, batch, max_len, longest):
    rows = [json.loads(l) for l in open(rows_path)]
    out = []
    for i in range(0, len(rows) - batch + 1, batch):
        # Every row to max_len, or (--longest) the batch to its longest row; id 0 is padding.
        n = max(len(r["tokens"][:max_len]) for r in rows[i:i + batch]) if longest else max_len
        ids = torch.zeros(batch, n, dtype=torch.long)
        att = torch.zeros(batch, n, dtype=torch.long)
        for j, r in enumerate(rows[i:i + batch]):
            t = r["tokens"][:max_len]
            ids[j, :len(t)] = torch.tensor(t)
            att[j, :len(t)] = 1
        labels = torch.tensor([r["label"] for r in rows[i:i + batch]])
        out.append((ids, att, labels))
    return out


def model_of(config, weights):
    model = BertForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Only buffers (position ids) may be missing; every weight must come from the engine.
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model


def train(config, weights, data, threads, steps):
    torch.set_num_threads(threads)
    torch.manual_seed(7)
    model = model_of(config, weights)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    times, losses = [], []
    for step in range(steps):
        ids, att, labels = data[step % len(data)]
        t = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
        losses.append(loss.item())
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    return times, digest.hexdigest(), losses[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("weights")
    ap.add_argument("rows")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--longest", action="store_true")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=3)
    a = ap.parse_args()
    config = BertConfig.from_json_file(a.config)
    config.num_labels = 2
    weights = load_file(a.weights)
    data = batches(a.rows, a.batch, a.max_len, a.longest)
    with torch.no_grad():
        ids, att, labels = data[0]
        eval_loss = model_of(config, weights).eval()(
            input_ids=ids, attention_mask=att, labels=labels).loss.item()
    ms, runs, digests = {}, {}, {}
    for t in a.threads:
        times, _, first_loss = train(config, weights, data, t, a.warmup + a.steps)
        ms[str(t)] = statistics.median(times[a.warmup:])
        first = train(config, weights, data, t, a.check_steps)[1]
        second = train(config, weights, data, t, a.check_steps)[1]
        runs[str(t)] = first == second
        digests[str(t)] = first
    print(json.dumps({
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ms_per_step": ms,
        "identical_across_runs": runs,
        "identical_across_threads": len(set(digests.values())) == 1,
        "first_loss": first_loss,
        "eval_loss": eval_loss,
    }))


main()
