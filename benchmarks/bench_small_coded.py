"""End-to-end speed of many small quantized tensors (run by hand).

    .venv/bin/python benchmarks/bench_small_coded.py [--count 2000] [--repeat 7] [--gc]

The small-fp32 workload (``count`` tensors of 1..1000 elements) cast to bf16, every tensor
quantized (``min_elements=0``): what per-tensor overhead costs, since the kernels themselves take
a few ms for all of them. GB/s counts bf16 source bytes. Each row gives the median and the best
of ``repeat`` timed runs after one warm-up; GC is off inside timed calls, as in run.py (``--gc``
leaves it on: then a full collection of everything the process holds, torch included, lands in
some runs and adds tens of ms).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads

import tensorcodec as tc

PRECISIONS = ("nf4", "fp4", "blockwise8", "minmax8", "fp8_e4m3")


def timed(fn: Callable[[], Any], repeat: int, keep_gc: bool) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        if not keep_gc:
            gc.collect()
            gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--gc", action="store_true", help="leave the garbage collector on in timed calls")
    args = parser.parse_args()

    wl = workloads.build("small-fp32", small_count=args.count)
    tree = {k: workloads.numpy_view(v).astype(ml_dtypes.bfloat16) for k, v in wl.tensors.items()}
    nbytes = sum(v.nbytes for v in tree.values())
    n = len(tree)
    state = "on" if args.gc else "off"
    print(f"{n} bf16 tensors of 1..1000 elements, {nbytes:,} B; median (best) of {args.repeat}, GC {state}")
    for precision in PRECISIONS:
        policy = tc.Policy({"*": precision}, min_elements=0)
        message = tc.encode(tree, policy=policy)
        enc = timed(lambda p=policy: tc.encode(tree, policy=p), args.repeat, args.gc)
        dec = timed(lambda m=message: tc.decode(m), args.repeat, args.gc)

        def cols(times: list[float]) -> str:
            med, low = statistics.median(times), min(times)
            return f"{nbytes / med / 1e9:6.3f} GB/s ({med / n * 1e6:5.1f} us/tensor; best {low / n * 1e6:5.1f})"

        print(f"{precision:10s} encode {cols(enc)}, decode {cols(dec)}, {len(message) / nbytes:.1%} of bf16")


if __name__ == "__main__":
    main()
