"""MX / NVFP4 against nf4 and blockwise8: encode/decode MB/s of the source and relative MSE, bits/element.

Run: PYTHONPATH=. python benchmarks/mx_formats.py (16M elements for speed; 2048x2048 Student-t df=3
with outlier channels, seed 0, for quality).
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np

from tensorcodec.codecs import precision_codec
from tensorcodec.dtypes import from_numpy

NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4", "nf4", "blockwise8"]


def heavy_tailed() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, (2048, 2048)).astype(np.float32)
    x[:, rng.choice(2048, 8, replace=False)] *= 50.0  # a few outlier channels
    return x.reshape(-1)


def main() -> None:
    x = heavy_tailed()
    print("| precision | bits/element | relative MSE |\n|---|---|---|")
    for name in NAMES:
        codec = precision_codec(name)
        enc = codec.encode(x)
        row = from_numpy(x.dtype)
        dec = codec.decode({k: a for k, (_, a) in enc.segments.items()}, enc.params, row, x.size)
        err = float(np.sum((x.astype(np.float64) - dec) ** 2) / np.sum(x.astype(np.float64) ** 2))
        print(f"| {name} | {codec.bits_per_element(row, x.size):.3f} | {err:.3e} |")
    big = np.random.default_rng(1).standard_normal(1 << 24).astype(np.float32)
    print("\n| precision | source | encode MB/s | decode MB/s |\n|---|---|---|---|")
    for name in NAMES[:7]:
        codec = precision_codec(name)
        for src in (big, big.astype(ml_dtypes.bfloat16)):
            row = from_numpy(src.dtype)
            t0 = time.perf_counter()
            enc = codec.encode(src)
            t1 = time.perf_counter()
            codec.decode({k: a for k, (_, a) in enc.segments.items()}, enc.params, row, src.size)
            t2 = time.perf_counter()
            mb = src.nbytes / 1e6
            print(f"| {name} | {row.name} | {mb / (t1 - t0):.0f} | {mb / (t2 - t1):.0f} |")


if __name__ == "__main__":
    main()
