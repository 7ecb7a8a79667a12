"""``minmax``: n-bit scalar quantization between the minimum and the maximum, per tensor or block."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import DecodeError
from .base import (
    EPS32,
    SUB32,
    Codec,
    Encoded,
    Segments,
    block_span,
    finite_range,
    float32,
    per_element,
    register_codec,
    restore,
    rounding_factor,
)
from .bits import pack_bits, packed_size, unpack_bits


@register_codec
class MinMax(Codec):
    """n-bit (1..16) scalar quantization between the minimum and maximum, per tensor or per block.

    q = round((x - min) / (max - min) * (2^bits - 1)), bit-packed; x̂ = q / (2^bits - 1) *
    (max - min) + min computed in fp32. Error bound: |x - x̂| <= (max - min) / (2^bits - 1) / 2
    (round to nearest) or < (max - min) / (2^bits - 1) (stochastic), plus fp32 rounding.
    A constant tensor (or block) sends no codes. Stochastic rounding is unbiased and
    reproducible: uniform noise from a Philox generator keyed by ``seed`` and the
    tensor's ``stream`` id. Refused with ValueError: NaN/Inf inputs (float64 values beyond the fp32
    range count as Inf) and ranges whose max - min overflows fp32 (beyond 3.4e38).

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.linspace(0, 1, 4096, dtype=np.float32)
        >>> y = tc.decode(tc.encode({"x": x}, precision=tc.MinMax(4)))["x"]
        >>> float(np.max(np.abs(x - y))) <= 1 / 15 / 2 + 1e-7
        True
    """

    codec_id = "minmax"

    def __init__(self, bits: int = 8, block: int = 0, stochastic: bool = False, seed: int = 0) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise ValueError(f"minmax bits must be an integer in 1..16, not {bits!r}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or block > 1 << 24:
            raise ValueError(f"minmax block must be 0 (per tensor) or a positive block size, not {block!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
            raise ValueError(f"minmax seed must be an unsigned 64-bit integer, not {seed!r}")
        self.bits = bits
        self.block = block
        if not isinstance(stochastic, bool):
            raise TypeError(f"minmax stochastic must be True or False, not {stochastic!r}")
        self.stochastic = stochastic
        self.seed = seed
        self._stream_hint = 0

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "block": self.block, "stochastic": self.stochastic, "seed": self.seed}

    def _blocks(self, count: int) -> int:
        return 1 if self.block == 0 else max(1, -(-count // self.block))

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return self.bits + 64.0 * self._blocks(count) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        """The layout of a non-constant tensor (a constant one sends no codes)."""
        return {
            "range": ("meta", "float32", [2 * self._blocks(count)]),
            "codes": ("payload", "uint8", [packed_size(count, self.bits)]),
        }

    def predicted_params(self) -> dict[str, Any]:
        return {"stream": self._stream_hint} if self.stochastic else {}  # with_stream(name) set it, as for encode

    def with_stream(self, name: str) -> MinMax:
        """A copy whose stochastic noise is keyed by a tensor name, so every tensor gets its own stream."""
        twin = MinMax(self.bits, self.block, self.stochastic, self.seed)
        twin._stream_hint = zlib.crc32(name.encode())
        return twin

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """(max - min) / (2^bits - 1) / 2 (nearest) or < (max - min) / (2^bits - 1) (stochastic),
        plus fp32 rounding, with the range each block sent; NaN/Inf are refused by encode."""
        n = x.size
        x64 = x.astype(np.float64)
        ranges = encoded.segments["range"][1].astype(np.float64).reshape(-1, 2)
        lo = per_element(ranges[:, 0], self.block, n)
        hi = per_element(ranges[:, 1], self.block, n)
        step = (hi - lo) / ((1 << self.bits) - 1)
        slack = 8 * EPS32 * (np.abs(lo) + np.abs(hi)) + 4 * SUB32 + np.abs(x64 - x.astype(np.float32))
        bound: np.ndarray[Any, Any] = (step * (1.0 if self.stochastic else 0.5) + slack) * rounding_factor(x.dtype)
        return bound

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        x32 = float32(x)
        n = x32.size
        nblocks = self._blocks(n)
        size = block_span(self.block, n)
        levels = (1 << self.bits) - 1
        if n == 0:
            lo = hi = np.zeros(1, np.float32)
        elif self.block == 0:
            a, b = finite_range(x32, "minmax")
            lo, hi = np.array([a], np.float32), np.array([b], np.float32)
        else:
            padded = np.empty(nblocks * size, dtype=np.float32)
            padded[:n] = x32
            padded[n:] = x32[-1]
            blocks = padded.reshape(nblocks, size)
            lo, hi = blocks.min(axis=1), blocks.max(axis=1)
            finite_range(np.concatenate([lo, hi]), "minmax")
        if n and float(np.max(hi.astype(np.float64) - lo)) > float(np.finfo(np.float32).max):
            raise ValueError("minmax cannot encode a range whose max - min overflows float32; send it losslessly")
        params: dict[str, Any] = {}
        ranges = np.stack([lo, hi], axis=1).reshape(-1)
        segments: Segments = {"range": ("meta", ranges)}
        if n and bool(np.any(hi > lo)):
            span = (hi - lo).astype(np.float32)
            span[span == 0] = 1.0
            per_elem_lo = np.repeat(lo, size)[:n] if self.block else lo[0]
            per_elem_span = np.repeat(span, size)[:n] if self.block else span[0]
            scaled = (x32 - per_elem_lo) / per_elem_span * np.float32(levels)
            if self.stochastic:
                params["stream"] = self._stream_hint
                rng = np.random.Generator(np.random.Philox(key=[self.seed, self._stream_hint]))
                scaled += rng.random(n, dtype=np.float32)
                q = np.floor(scaled)
            else:
                q = np.rint(scaled)
            q = np.clip(q, 0, levels).astype(np.uint32)
            segments["codes"] = ("payload", pack_bits(q, self.bits))
        return Encoded(segments, params)

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        nblocks = self._blocks(count)
        size = block_span(self.block, count)
        ranges = self.segment(segments, "range", "float32", 2 * nblocks).reshape(nblocks, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
        if "codes" not in segments:
            if count and bool(np.any(hi != lo)):
                raise DecodeError("segment 'codes' is missing for a tensor that is not constant")
            return restore(np.repeat(lo, size)[:count], dtype)
        packed = self.segment(segments, "codes", "uint8", packed_size(count, self.bits))
        q = unpack_bits(packed, self.bits, count).astype(np.float32)
        levels = np.float32((1 << self.bits) - 1)
        span = (hi - lo).astype(np.float32)
        if self.block == 0:
            values = q / levels * span[0] + lo[0]
        else:
            values = q / levels * np.repeat(span, size)[:count] + np.repeat(lo, size)[:count]
        return restore(values.astype(np.float32, copy=False), dtype)
