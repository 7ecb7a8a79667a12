"""Speed of tensorcodec.kernels against bitsandbytes on CPU, in the same run (run by hand).

    .venv/bin/python benchmarks/bench_kernels.py [--mb 64] [--repeat 3] [--threads N] [--models] [--numpy]

Throughput is GB of *source* tensor per second (a bf16 tensor of 64 MB counts 64 MB for every
operation, dequantization included). The machine's load matters: compare the ratio column, which
is measured in the same run, rather than absolute figures across runs. The kernels run in the C
accelerator when it is built; ``--numpy`` measures the numpy kernels instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

import tensorcodec as tc
from tensorcodec import kernels as K

BF16 = np.dtype(ml_dtypes.bfloat16)


def best(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def to_torch(a: np.ndarray[Any, Any]) -> Any:
    import torch

    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def row(name: str, nbytes: int, ours: float, theirs: float | None) -> None:
    g = nbytes / ours / 1e9
    if theirs is None:
        print(f"  {name:34s} {g:8.3f} GB/s")
    else:
        print(f"  {name:34s} {g:8.3f} GB/s   bnb {nbytes / theirs / 1e9:7.3f} GB/s   x{theirs / ours:6.1f}")


def large(dtype: np.dtype[Any], mb: int, repeat: int, F: Any) -> None:
    n = mb * 2**20 // dtype.itemsize
    x = (np.random.default_rng(0).standard_normal(n) * 0.02).astype(np.float32).astype(dtype)
    t = to_torch(x)
    nbytes = x.nbytes
    print(f"{mb} MiB of {dtype} ({n:,} elements):")

    codes, absmax = K.quantize_blockwise8(x, 4096)
    q8 = best(lambda: K.quantize_blockwise8(x, 4096), repeat)
    dq8 = best(lambda: K.dequantize_blockwise8(codes, absmax, 4096, dtype), repeat)
    bq8 = bdq8 = None
    if F is not None:
        bq, bstate = F.quantize_blockwise(t, blocksize=4096)
        bq8 = best(lambda: F.quantize_blockwise(t, blocksize=4096), max(1, repeat - 1))
        bdq8 = best(lambda: F.dequantize_blockwise(bq, bstate), max(1, repeat - 1))
    row("blockwise8 quantize (4096)", nbytes, q8, bq8)
    row("blockwise8 dequantize", nbytes, dq8, bdq8)

    for quant_type in ("nf4", "fp4"):
        packed, absmax = K.quantize_4bit(x, quant_type, 64)
        q4 = best(lambda qt=quant_type: K.quantize_4bit(x, qt, 64), repeat)
        dq4 = best(lambda qt=quant_type, p=packed, a=absmax: K.dequantize_4bit(p, a, n, qt, 64, dtype), repeat)
        q4c = best(lambda qt=quant_type: K.quantize_absmax(K.quantize_4bit(x, qt, 64)[1]), repeat)
        bq4 = bdq4 = bq4c = None
        if F is not None:
            bp, bstate = F.quantize_4bit(t, blocksize=64, quant_type=quant_type)
            bq4 = best(lambda qt=quant_type: F.quantize_4bit(t, blocksize=64, quant_type=qt), max(1, repeat - 1))
            bdq4 = best(lambda p=bp, s=bstate: F.dequantize_4bit(p, s), max(1, repeat - 1))
            bq4c = best(
                lambda qt=quant_type: F.quantize_4bit(t, blocksize=64, quant_type=qt, compress_statistics=True),
                max(1, repeat - 1),
            )
        row(f"{quant_type} quantize (64)", nbytes, q4, bq4)
        row(f"{quant_type} quantize + double quant", nbytes, q4c, bq4c)
        row(f"{quant_type} dequantize", nbytes, dq4, bdq4)


def small(dtype: np.dtype[Any], repeat: int, F: Any) -> None:
    rng = np.random.default_rng(1)
    xs = [(rng.standard_normal(int(rng.integers(1, 1001))) * 0.02).astype(dtype) for _ in range(2000)]
    ts = [to_torch(x) for x in xs]
    nbytes = sum(x.nbytes for x in xs)
    print(f"2000 tensors of 1..1000 {dtype} elements ({nbytes / 1e6:.2f} MB):")

    def each(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], None]:
        return lambda: [fn(i) for i in items] and None

    q4 = best(each(lambda x: K.quantize_4bit(x, "nf4", 64), xs), repeat)
    q4b = best(lambda: K.quantize_4bit_batch(xs, "nf4", 64), repeat)
    q8 = best(each(lambda x: K.quantize_blockwise8(x, 4096), xs), repeat)
    q8b = best(lambda: K.quantize_blockwise8_batch(xs, 4096), repeat)
    items4 = [(*K.quantize_4bit(x, "nf4", 64), x.size) for x in xs]
    dq4 = best(each(lambda it: K.dequantize_4bit(it[0], it[1], it[2], "nf4", 64, dtype), items4), repeat)
    dq4b = best(lambda: K.dequantize_4bit_batch(items4, "nf4", 64, dtype), repeat)
    bq4 = bq8 = bdq4 = None
    if F is not None:
        bq4 = best(each(lambda t: F.quantize_4bit(t, blocksize=64, quant_type="nf4"), ts), 1)
        bq8 = best(each(lambda t: F.quantize_blockwise(t, blocksize=4096), ts), 1)
        bstates = [F.quantize_4bit(t, blocksize=64, quant_type="nf4") for t in ts]
        bdq4 = best(each(lambda ps: F.dequantize_4bit(*ps), bstates), 1)
    row("nf4 quantize, one call each", nbytes, q4, bq4)
    row("nf4 quantize, one batch call", nbytes, q4b, bq4)
    row("blockwise8 quantize, one call each", nbytes, q8, bq8)
    row("blockwise8 quantize, one batch call", nbytes, q8b, bq8)
    row("nf4 dequantize, one call each", nbytes, dq4, bdq4)
    row("nf4 dequantize, one batch call", nbytes, dq4b, bdq4)
    print(f"  per call: nf4 quantize {q4 / len(xs) * 1e6:.1f} us, blockwise8 {q8 / len(xs) * 1e6:.1f} us")


def models(repeat: int, F: Any, llm_mb: int) -> None:
    """The real MiniLM weights (fp32 and bf16) and the Llama-shaped state dict: throughput and error, tensor by tensor.

    Every floating tensor of >= 4,096 elements (what the default policy quantizes) is quantized and dequantized
    with one call each, by us and by bitsandbytes; codes equal to bitsandbytes' are checked, and the error is that
    of the decoded tensor against the original (the same for both, as the codes are the same).
    """
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import workloads

    cases = {
        "minilm-fp32": workloads.minilm(None),
        "minilm-bf16": workloads.minilm(torch.bfloat16),
        f"llm-bf16 {llm_mb} MB": workloads.llm(llm_mb, seed=0),
    }
    for name, tensors in cases.items():
        ts = [t for t in tensors.values() if t.is_floating_point() and t.numel() >= 4096]
        xs = [workloads.numpy_view(t).reshape(-1) for t in ts]
        nbytes = sum(x.nbytes for x in xs)
        print(f"{name}: {len(xs)} tensors, {nbytes / 1e6:.1f} MB, one call per tensor")
        for fmt in ("blockwise8", "nf4", "fp4"):
            if fmt == "blockwise8":

                def ours_q(x: Any) -> Any:
                    return K.quantize_blockwise8(x, 4096)

                def ours_dq(x: Any, q: Any) -> Any:
                    return K.dequantize_blockwise8(q[0], q[1], 4096, x.dtype)

                def bnb_q(t: Any) -> Any:
                    return F.quantize_blockwise(t.reshape(-1), blocksize=4096)

                def bnb_dq(q: Any) -> Any:
                    return F.dequantize_blockwise(*q)

            else:

                def ours_q(x: Any, f: str = fmt) -> Any:
                    return K.quantize_4bit(x, f, 64)

                def ours_dq(x: Any, q: Any, f: str = fmt) -> Any:
                    return K.dequantize_4bit(q[0], q[1], x.size, f, 64, x.dtype)

                def bnb_q(t: Any, f: str = fmt) -> Any:
                    return F.quantize_4bit(t.reshape(-1), blocksize=64, quant_type=f)

                def bnb_dq(q: Any) -> Any:
                    return F.dequantize_4bit(*q)

            qs = [ours_q(x) for x in xs]
            tq = best(lambda q=ours_q, xs=xs: [q(x) for x in xs] and None, repeat)
            tdq = best(lambda d=ours_dq, xs=xs, qs=qs: [d(x, q) for x, q in zip(xs, qs, strict=True)] and None, repeat)
            err = mse = ref = 0.0
            for x, q in zip(xs, qs, strict=True):
                d = np.asarray(ours_dq(x, q), dtype=np.float64)
                v = x.astype(np.float64)
                err = max(err, float(np.abs(d - v).max()))
                mse += float(((d - v) ** 2).sum())
                ref += float((v**2).sum())
            btq = btdq = None
            same = "bitsandbytes not run"
            if F is not None:
                bqs = [bnb_q(t) for t in ts]
                same = (
                    "codes identical to bitsandbytes"
                    if all(
                        np.array_equal(q[0].reshape(-1), b[0].numpy().reshape(-1)) for q, b in zip(qs, bqs, strict=True)
                    )
                    else "CODES DIFFER from bitsandbytes"
                )
                btq = best(lambda q=bnb_q, ts=ts: [q(t) for t in ts] and None, max(1, repeat - 1))
                btdq = best(lambda d=bnb_dq, bqs=bqs: [d(b) for b in bqs] and None, max(1, repeat - 1))
            row(f"{fmt} quantize", nbytes, tq, btq)
            row(f"{fmt} dequantize", nbytes, tdq, btdq)
            print(f"    {fmt}: rel MSE {mse / ref:.2e}, max abs err {err:.3g}; {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="size of the large tensor in MiB (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, best kept (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: one per CPU)")
    ap.add_argument("--no-bnb", action="store_true", help="skip bitsandbytes")
    ap.add_argument("--numpy", action="store_true", help="the numpy kernels, not the C accelerator")
    ap.add_argument("--models", action="store_true", help="also MiniLM (fp32, bf16) and the Llama-shaped state dict")
    ap.add_argument("--llm-mb", type=int, default=256, help="size of the Llama-shaped state dict (default 256)")
    args = ap.parse_args()
    K.set_num_threads(args.threads)
    if args.numpy:
        tc.set_native(False)
    F = None
    if not args.no_bnb:
        try:
            import bitsandbytes.functional as F
        except ImportError:
            print("bitsandbytes is not installed: our figures only")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    impl = "C accelerator" if tc.native_enabled() else "numpy"
    print(f"kernels: {impl}, threads: {K.get_num_threads()}, CPUs: {os.cpu_count()}, load average: {load:.2f}")
    for dtype in (BF16, np.dtype(np.float32)):
        large(dtype, args.mb, args.repeat, F)
    for dtype in (BF16,):
        small(dtype, args.repeat, F)
    if args.models:
        models(args.repeat, F, args.llm_mb)


if __name__ == "__main__":
    main()
