"""PyTorch's element-wise functions on the inputs of `benches/benches/elementwise.rs`.

Reads the inputs as little-endian f32 from a file, times each function on one thread (median of
several runs) and prints one JSON document: the torch version and nanoseconds per element.

    python elementwise.py --inputs x.f32 --runs 20
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", required=True)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    x = torch.from_numpy(np.fromfile(args.inputs, dtype="<f4"))
    g = torch.full_like(x, 0.75)
    torch.set_num_threads(1)
    functions = {
        "exp": lambda: torch.exp(x),
        "erf": lambda: torch.erf(x),
        "GELU": lambda: torch.nn.functional.gelu(x),
        "GELU backward": lambda: torch.ops.aten.gelu_backward(g, x),
        "sigmoid": lambda: torch.sigmoid(x),
    }
    ns = {}
    for name, f in functions.items():
        f()
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        ns[name] = statistics.median(times) / x.numel() * 1e9
    print(json.dumps({"torch": torch.__version__, "ns_per_element": ns}))


if __name__ == "__main__":
    main()
