"""bitsandbytes' double quantization of the 4-bit statistics: torch's CPU mean, emulated, then 8-bit.

``offset = mean(absmax)`` exactly as torch's CPU float32 mean computes it (a cascade sum whose order
depends on vector width and thread count, emulated by :func:`absmax_mean`), then ``absmax - offset``
quantized 8-bit in blocks of 256 with the dynamic map (:mod:`tensorcodec.codecs.blockwise8`). A
finite input never decodes to NaN, with one exception: if the block absmax values sum past the
float32 limit (values near 3e38), the mean overflows and the statistics become NaN. Double
quantization can also push a float16 block at the 65504 limit to inf.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from .blocks import (
    F32,
    F32Array,
    U8Array,
    default_threads,
    flat,
    torch_module,
)
from .blockwise8 import (
    dequantize_blockwise8_batch,
    dequantize_blockwise8_torch,
    quantize_blockwise8_batch,
    quantize_blockwise8_torch,
)

if TYPE_CHECKING:
    from torch import Tensor
else:
    Tensor = Any


# ================================================================================================ absmax statistics
# bitsandbytes double quantization of the 4-bit statistics: torch's CPU mean, emulated, then 8-bit.


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else (x - 1).bit_length()


def _seq_sum(rows: F32Array) -> F32Array:
    """Sum along axis 0 one row after another, in float32 (not numpy's pairwise order)."""
    acc: F32Array = np.zeros(rows.shape[1:], dtype=np.float32)
    for r in rows:
        acc += r
    return acc


def _grouped_seq_sum(rows: F32Array, step: int) -> tuple[F32Array, F32Array]:
    """Sequential sums of consecutive groups of ``step`` rows, and of the leftover rows."""
    ng = rows.shape[0] // step
    grouped = rows[: ng * step].reshape(ng, step, *rows.shape[1:])
    sums = np.zeros((ng, *rows.shape[1:]), dtype=np.float32)
    for j in range(step if ng else 0):  # (no group: nothing to add, and short inputs are the common case)
        sums += grouped[:, j]
    return sums, _seq_sum(rows[ng * step :])


def _multi_row_sum(data: F32Array) -> F32Array:
    """torch's cascade ``multi_row_sum``: four levels of accumulators, flushed every 2**level_power rows."""
    size = data.shape[0]
    step = 1 << max(4, _ceil_log2(size) // 4)
    level0, acc0 = _grouped_seq_sum(data, step)
    level1, acc1 = _grouped_seq_sum(level0, step)
    level2, acc2 = _grouped_seq_sum(level1, step)
    acc3 = _seq_sum(level2)
    return acc0 + acc1 + acc2 + acc3  # left to right, as torch folds them


def _row_sum(rows: F32Array) -> F32Array:
    """torch's ``row_sum``: four interleaved accumulators (ilp), their cascade, then the leftovers."""
    size = rows.shape[0]
    groups = size // 4
    part = _multi_row_sum(rows[: groups * 4].reshape(groups, 4, *rows.shape[1:]))
    acc: F32Array = part[0].copy()
    for i in range(groups * 4, size):
        acc += rows[i]
    for k in (1, 2, 3):
        acc += part[k]
    return acc


def _chunk_sum(x: F32Array, width: int) -> np.float32:
    return np.float32(_chunk_sums(x[:, None], width)[0])


def _chunk_sums(cols: F32Array, width: int) -> F32Array:
    """torch's sum of one chunk, for every column of ``cols`` (n, k) at once: each column is added in its own order."""
    n = cols.shape[0]
    total: F32Array = np.zeros(cols.shape[1:], dtype=np.float32)
    if n < width:
        return total + _row_sum(cols)
    nvec = n // width
    lanes = _row_sum(cols[: nvec * width].reshape(nvec, width, *cols.shape[1:]))
    for t in cols[nvec * width :]:
        total += t
    for t in lanes:
        total += t
    return np.float32(0.0) + total


_GRAIN = 32768  # torch's at::internal::GRAIN_SIZE


def _torch_threads() -> int:
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None:
        return int(torch_mod.get_num_threads())
    return default_threads()


def absmax_mean(absmax: Any, *, vector_width: int = 8, num_threads: int | None = None) -> np.float32:
    """``torch.mean`` of a flat float32 array on CPU, bit for bit, without torch.

    bitsandbytes' double quantization subtracts this mean, so the offset it stores depends on the
    order torch adds in: a cascade of per-lane sums over ``vector_width`` lanes (8 for x86 builds
    of torch 2.x), split between threads when there are more than 32768 values. ``num_threads``
    defaults to torch's own setting when torch is imported, else to the available CPUs.
    """
    x = np.ascontiguousarray(np.asarray(absmax, dtype=np.float32).reshape(-1))
    n = x.size
    if n == 0:
        return np.float32(np.nan)
    threads = _torch_threads() if num_threads is None else max(1, int(num_threads))
    with np.errstate(all="ignore"):
        return _torch_mean(x, vector_width, threads)


def _torch_mean(x: F32Array, vector_width: int, threads: int) -> np.float32:
    n = x.size
    if n < _GRAIN or threads == 1:
        total = _chunk_sum(x, vector_width)
    else:
        tasks = min(threads, -(-n // _GRAIN)) if n > _GRAIN else 1
        size = -(-n // tasks)
        total = np.float32(0.0)
        for i in range(tasks):
            if i * size < n:
                total = np.float32(total + _chunk_sum(x[i * size : (i + 1) * size], vector_width))
        total = np.float32(np.float32(0.0) + total)
    return np.float32(total / np.float32(n))


def quantize_absmax_batch(absmaxes: Sequence[Any], blocksize: int = 256) -> list[tuple[np.float32, U8Array, F32Array]]:
    """:func:`quantize_absmax` of many statistics arrays at once; the same bits.

    The mean emulation costs dozens of numpy calls per array, so arrays of one length (below
    torch's grain, where the thread count plays no part) are stacked and summed column by column
    together; the deviations then go through one :func:`quantize_blockwise8_batch`.
    """
    ams = [flat(a, F32) for a in absmaxes]
    by_size: dict[int, list[int]] = {}
    for i, am in enumerate(ams):
        by_size.setdefault(am.size, []).append(i)
    offsets: list[np.float32] = [np.float32(0.0)] * len(ams)
    devs = list(ams)  # each replaced by its deviations below
    for n, members in by_size.items():
        if n == 0 or n >= _GRAIN or len(members) == 1:
            for i in members:
                offsets[i] = absmax_mean(ams[i])
                with np.errstate(invalid="ignore"):
                    devs[i] = ams[i] - offsets[i]
            continue
        rows = np.stack([ams[i] for i in members])  # (k, n): each array's deviations stay a contiguous row
        with np.errstate(all="ignore"):
            means = _chunk_sums(rows.T, 8) / np.float32(n)
        with np.errstate(invalid="ignore"):
            dev = rows - means[:, None]
        for i, mean, row in zip(members, means, dev, strict=True):
            offsets[i], devs[i] = mean, row
    quantized = quantize_blockwise8_batch(devs, blocksize)
    return [(offset, codes, nested) for offset, (codes, nested) in zip(offsets, quantized, strict=True)]


def quantize_absmax(absmax: Any, blocksize: int = 256) -> tuple[np.float32, U8Array, F32Array]:
    """bitsandbytes' double quantization of 4-bit statistics: ``(offset, codes, nested_absmax)``.

    ``offset`` is :func:`absmax_mean`; ``absmax - offset`` is quantized 8-bit in blocks of 256 with
    the dynamic map. Decoded statistics are within ``nested_absmax * error_bound("dynamic")`` of the
    originals (plus float32 rounding of the offset addition), so a decoded value moves by at most
    that times its table entry. If the statistics sum past the float32 limit the mean is inf and
    the decoded statistics NaN, as in bitsandbytes.
    """
    return quantize_absmax_batch([absmax], blocksize)[0]


def dequantize_absmax_batch(items: Sequence[tuple[Any, Any, Any]], blocksize: int = 256) -> list[F32Array]:
    """:func:`dequantize_absmax` of many ``(offset, codes, nested_absmax)``; same results (views into one buffer)."""
    devs = dequantize_blockwise8_batch([(codes, nested) for _, codes, nested in items], blocksize, np.float32)
    if not devs:
        return []
    sizes = [d.size for d in devs]
    offsets = np.repeat(np.array([offset for offset, _, _ in items], dtype=np.float32), sizes)
    with np.errstate(invalid="ignore", over="ignore"):
        flat_sum = np.concatenate(devs) + offsets
    return [flat_sum[o:e] for o, e in pairwise(accumulate(sizes, initial=0))]


def dequantize_absmax(offset: Any, codes: Any, nested_absmax: Any, blocksize: int = 256) -> F32Array:
    """Statistics back from :func:`quantize_absmax`: ``dynamic[q] * nested_absmax + offset`` in float32."""
    return dequantize_absmax_batch([(offset, codes, nested_absmax)], blocksize)[0]


def quantize_absmax_torch(absmax: Tensor, blocksize: int = 256, *, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """:func:`quantize_absmax` for a tensor on any device (the mean is always the CPU emulation)."""
    torch = torch_module()
    am = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    offset = absmax_mean(am.cpu().numpy())
    off_t = torch.tensor(float(offset), dtype=torch.float32, device=am.device)
    codes, nested = quantize_blockwise8_torch(am - off_t, blocksize, impl=impl)
    return off_t, codes, nested


def dequantize_absmax_torch(
    offset: Any, codes: Tensor, nested_absmax: Tensor, blocksize: int = 256, *, impl: str = "auto"
) -> Tensor:
    """:func:`dequantize_absmax` for tensors on any device."""
    torch = torch_module()
    dev = dequantize_blockwise8_torch(codes, nested_absmax, blocksize, torch.float32, impl=impl)
    off = torch.as_tensor(offset, dtype=torch.float32, device=dev.device)
    out: Tensor = dev + off
    return out
