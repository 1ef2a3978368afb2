"""ZipNN 0.5.4 on the same bytes as `benches/benches/checkpoint_codecs.rs`.

Each argument names a case: `LABEL=FILE` compresses FILE (f32 values, little-endian) on its
own; `LABEL=FILE:REF` compresses it as an XOR delta against REF (ZipNN's delta_compressed_type
"byte"). Every case is decompressed and compared with its input: ZipNN's output is measured,
never trusted. Prints one JSON document: versions, and per case bytes in and out, encode and
decode seconds (median of --runs) at each thread count, and whether the round trip returned the
input.

ZipNN 0.5.4 rewrites the buffer it is given to compress in place (even a `bytes` object), so a
second compression of the same object compresses different bytes and its round trip fails.
Every call here gets a fresh copy of its input, made outside the timed region.

    python zipnn_codec.py --threads 1 2 --runs 3 full=a.bin delta=b.bin:a.bin
"""

import argparse
import json
import statistics
import time
from importlib.metadata import version

import torch
from zipnn import ZipNN


def median_time(runs, f, arg):
    """Median seconds of `f(copy of arg)` over `runs` calls after a warm-up; and its last result."""
    f(bytes(bytearray(arg)))
    times = []
    out = None
    for _ in range(runs):
        fresh = bytes(bytearray(arg))
        t = time.perf_counter()
        out = f(fresh)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("cases", nargs="+")
    a = p.parse_args()
    result = {"torch": torch.__version__, "zipnn": version("zipnn"), "cases": {}}
    for case in a.cases:
        label, files = case.split("=", 1)
        path, _, ref_path = files.partition(":")
        data = open(path, "rb").read()
        ref = open(ref_path, "rb").read() if ref_path else None
        row = {"bytes_in": len(data), "threads": {}}
        for threads in a.threads:
            kw = dict(input_format="byte", bytearray_dtype="float32", threads=threads)
            if ref is not None:
                kw["delta_compressed_type"] = "byte"
            z = ZipNN(**kw)
            enc_s, packed = median_time(
                a.runs, lambda d: z.compress(d, delta_second_data=ref), data
            )
            packed = bytes(packed)
            dec_s, back = median_time(
                a.runs, lambda c: z.decompress(c, delta_second_data=ref), packed
            )
            row["bytes_out"] = len(packed)
            row["round_trip"] = bytes(back) == data
            row["threads"][str(threads)] = {"encode_s": enc_s, "decode_s": dec_s}
        result["cases"][label] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
