"""PyTorch's matrix product on the shapes of `benches/benches/matmul.rs`, for comparison.

Each shape is `[label, m, k, n, a_transposed, b_transposed]`; a transposed operand is stored as
its transpose and used through `.t()` (a view, as the engine's kernel reads it). Prints one JSON
document: the torch version and GFLOP/s (median of several runs) per shape and thread count.

    python matmul.py --threads 1 2 --shapes '[["square", 512, 512, 512, false, false]]'
"""

import argparse
import json
import statistics
import time

import torch


def operand(rows, cols, transposed):
    return torch.rand(cols, rows).t() if transposed else torch.rand(rows, cols)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", required=True)
    p.add_argument("--shapes", required=True)
    args = p.parse_args()
    shapes = json.loads(args.shapes)
    gflops = {}
    for label, m, k, n, at, bt in shapes:
        a, b = operand(m, k, at), operand(k, n, bt)
        flops = 2 * m * k * n
        runs = min(max(int(4e9 / flops), 3), 50)
        gflops[label] = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch.matmul(a, b)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                torch.matmul(a, b)
                times.append(time.perf_counter() - t)
            gflops[label][str(threads)] = flops / statistics.median(times) / 1e9
    print(json.dumps({"torch": torch.__version__, "gflops": gflops}))


if __name__ == "__main__":
    main()
