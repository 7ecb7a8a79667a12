"""``hadamard``: a random-sign Walsh-Hadamard rotation over blocks, a stage before a quantizer.

Heavy tails and outlier channels make a block's absmax large against its typical value, so a
quantizer scaled by the absmax wastes its codes. An orthonormal rotation spreads every block's
energy evenly over its elements (the rotated values are close to Gaussian, whatever the input),
which the normal-float tables fit, and it is undone exactly after dequantization. It is an
array-to-array stage (like ``cast``): ``["hadamard128", "nf4"]`` rotates, hands the float32
values on as "data" to nf4, and decoding inverts the rotation after nf4 decodes.

The transform of a piece of ``p = 2^L`` elements at position ``o`` of its block is
``y = H_p (d * x)`` with ``d_j = sign(o + j) * s_p``, ``s_p = 1/sqrt(p)`` in float32 and ``H_p``
the unnormalized Sylvester matrix computed by ``L`` butterfly stages (h = 1, 2, ..., p/2: the pair
(i, i + h) with i & h == 0 becomes (v_i + v_{i+h}, v_i - v_{i+h})), all in float32. The inverse is
the same butterflies, then the multiplication by ``d``. Full blocks are pieces of ``block``
elements; the last, partial block of ``r`` elements is not padded (a stage hands on exactly ``n``
values) but split into pieces by the binary expansion of ``r``, largest first (300 = 2 x 128 + 32
+ 8 + 4 for block 128); a piece of one element is only its sign. Signs: bit ``j mod 64`` of
``splitmix64`` output ``j // 64`` seeded by ``seed`` (1 is negative), the same for every block.
The C kernel ``_native.hadamard`` does the same float32 operations in the same order (float32 and
bfloat16 sources; float16 and float64 ones take the numpy passes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import ml_dtypes
import numpy as np

from .. import _c, dtypes
from ..dtypes import DType
from .base import SUB32, Codec, Encoded, register_codec, restore, rounding_factor
from .blocks import BF16, F32, BlockLayout, F32Array, readonly, run_blocks, scratch

MAX_BLOCK = 1 << 16
"""Largest rotation block a decoder accepts."""

_GOLDEN = 0x9E3779B97F4A7C15
_EPS32 = 2.0**-24


@lru_cache(maxsize=32)
def signs(block: int, seed: int) -> F32Array:
    """+1.0 / -1.0 for each position of a block: bit j % 64 of splitmix64 word j // 64 (1: -1.0)."""
    words = -(-block // 64)
    with np.errstate(over="ignore"):
        state = np.uint64(seed) + np.arange(1, words + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
        z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    bits = (z[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return readonly(np.where(bits.reshape(-1)[:block] == 1, np.float32(-1.0), np.float32(1.0)))


def scale_of(p: int) -> np.float32:
    """1/sqrt(p) in float32: a power of two for even log2(p), else float32(sqrt(1/2)) times one."""
    half = (p.bit_length() - 1) // 2
    odd = (p.bit_length() - 1) % 2
    return np.float32((np.float32(math.sqrt(0.5)) if odd else np.float32(1.0)) * np.float32(2.0**-half))


def pieces(n: int, block: int) -> list[tuple[int, int, int]]:
    """``(start, size, count)`` runs of equal pieces covering ``n`` elements: full blocks, then the tail."""
    full = n // block
    runs = [(0, block, full)] if full else []
    pos = full * block
    rest = n - pos
    while rest:
        p = 1 << (rest.bit_length() - 1)
        runs.append((pos, p, 1))
        pos += p
        rest -= p
    return runs


def _butterflies(v: F32Array, p: int) -> F32Array:
    """``H_p`` on each run of ``p`` elements of flat ``v`` (float32, in stage order h = 1, 2, ...); may reuse ``v``."""
    w = scratch("hadamard", v.size, np.float32)
    h = 1
    while h < p:
        a = v.reshape(-1, 2, h)
        o = w.reshape(-1, 2, h)
        np.add(a[:, 0], a[:, 1], out=o[:, 0])
        np.subtract(a[:, 0], a[:, 1], out=o[:, 1])
        v, w = w, v
        h *= 2
    return v


CHUNK = 1 << 15
"""Elements per numpy pass: two float32 buffers of a chunk stay in L2."""


def rotate(x: np.ndarray[Any, Any], block: int, seed: int, *, inverse: bool = False) -> F32Array:
    """The rotation (or its inverse) of a flat float array, as a new float32 array of ``x.size`` elements."""
    n = x.size
    out = np.empty(n, dtype=np.float32)
    sg = signs(block, seed)
    native = _c.kernels()
    kind = {F32: 0, BF16: 2}.get(x.dtype) if native is not None else None
    for start, p, count in pieces(n, block):
        o = start % block if p < block else 0
        d = (sg[o : o + p] * scale_of(p)).astype(np.float32)
        if native is not None and kind is not None:
            span = slice(start, start + p * count)
            run = functools.partial(_native_run, np.ascontiguousarray(x[span]), kind, out[span], p, d, inverse)
            run_blocks(BlockLayout([p * count], p, False), run, None)
            continue
        per = max(1, CHUNK // p)
        for c0 in range(0, count, per):
            c1 = min(count, c0 + per)
            lo, hi = start + c0 * p, start + c1 * p
            v = scratch("hadamard_in", hi - lo, np.float32)
            _to_f32(x[lo:hi], v)
            if not inverse:
                np.multiply(v.reshape(-1, p), d, out=v.reshape(-1, p))
            r = _butterflies(v, p)
            if inverse:
                np.multiply(r.reshape(-1, p), d, out=out[lo:hi].reshape(-1, p))
            else:
                out[lo:hi] = r
    return out


def _native_run(
    src: np.ndarray[Any, Any], kind: int, dst: F32Array, p: int, d: F32Array, inverse: bool, b0: int, b1: int
) -> None:
    """Pieces [b0, b1) of a run by the C kernel (bit for bit the numpy passes above)."""
    native = _c.kernels()
    assert native is not None
    native.hadamard(src[b0 * p : b1 * p], kind, dst[b0 * p : b1 * p], p, d, inverse)


def _to_f32(x: np.ndarray[Any, Any], out: F32Array) -> None:
    if x.dtype == BF16:  # bf16 is the top half of float32: a shift, not ml_dtypes' cast
        np.left_shift(x.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, x, casting="unsafe")


@register_codec
class Hadamard(Codec):
    """Random-sign Walsh-Hadamard rotation over blocks of ``block`` (a power of two) elements, to float32.

    An array-to-array stage (``output_dtype`` float32) for a quantizer after it:
    ``policy={"*": ["hadamard128", "nf4"]}``. Orthonormal: it keeps every block's 2-norm, and its
    inverse is exact up to float32 rounding. Error bound of the stage alone, per element of a
    piece of ``p = 2^L`` elements: ``(2 L + 4) 2^-24 ||x_piece||_2`` plus float32 underflow, plus
    the float32 rounding of a float64 source, doubled by the final cast to a 16-bit source. NaN/Inf
    inputs, and finite ones whose rotation overflows float32 (beyond about 3e38 / sqrt(block)), are
    refused with ValueError: send such tensors losslessly.
    """

    codec_id = "hadamard"
    contractive = True

    def __init__(self, block: int = 128, seed: int = 0) -> None:
        if type(block) is not int or not 2 <= block <= MAX_BLOCK or block & (block - 1):
            raise ValueError(f"hadamard block must be a power of two in 2..{MAX_BLOCK}, not {block!r}")
        if type(seed) is not int or not 0 <= seed < 1 << 64:
            raise ValueError(f"hadamard seed must be an unsigned 64-bit integer, not {seed!r}")
        self.block = block
        self.seed = seed

    def get_config(self) -> dict[str, Any]:
        return {"block": self.block, "seed": self.seed}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 32.0

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"data": ("payload", "float32", [count])}

    def output_dtype(self, dtype: DType) -> DType | None:
        return dtypes.BY_NAME["float32"]

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        with np.errstate(over="ignore", invalid="ignore"):
            y = rotate(x, self.block, self.seed)
        if not np.isfinite(y).all():
            raise ValueError(
                "hadamard cannot rotate NaN or Inf values, nor magnitudes whose rotation overflows float32;"
                " send this tensor losslessly (policy None)"
            )
        return Encoded({"data": ("payload", y)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        data = self.segment(segments, "data", "float32", count)
        with np.errstate(over="ignore", invalid="ignore"):
            v = rotate(data, self.block, self.seed, inverse=True)
            if dtype.itemsize == 2:  # the rounding of the rotations must not carry 65504 past float16's range
                top = float(ml_dtypes.finfo(dtype.numpy).max)  # type: ignore[no-untyped-call]
                np.clip(v, -top, top, out=v)
            return restore(v, dtype)

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """(2 L + 4) 2^-24 ||x_piece||_2 per element (float32 rounding of both transforms), see the class."""
        return self.bound_after(x, np.zeros(x.size))

    def bound_after(self, x: np.ndarray[Any, Any], inner: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The bound on |x - x̂| when the rotated values come back within ``inner`` (per element, NaN: none).

        The inverse rotation of an error e gives ``s_p * |sum over the piece of ±e_j|``, at most
        ``s_p * sum(inner)`` at each element of the piece; to it come the float32 rounding of both
        transforms and of the source, and the final cast.
        """
        x64 = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32).astype(np.float64)
            inner = np.asarray(inner, dtype=np.float64)
            bound = np.empty(x.size)
            for start, p, count in pieces(x.size, self.block):
                span = slice(start, start + p * count)
                xs, es = x32[span].reshape(count, p), inner[span].reshape(count, p)
                level = p.bit_length() - 1
                spread = float(scale_of(p)) * es.sum(axis=1) * (1 + 1e-6)
                norm = np.sqrt((xs * xs).sum(axis=1)) + np.sqrt((es * es).sum(axis=1))
                rounding = (2 * level + 4) * _EPS32 * norm + (2 * level + 2) * p * SUB32
                bound[span] = np.repeat(spread + rounding, p)
            bound = (bound + np.abs(x64 - x32)) * rounding_factor(x.dtype)
        return bound
