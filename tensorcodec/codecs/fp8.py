"""``fp8``: scaled float8 (e4m3, e5m2) with one fp32 scale per tensor or per block."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

from .. import dtypes
from ..dtypes import DType
from .base import (
    EPS32,
    SUB32,
    Codec,
    Encoded,
    block_span,
    float32,
    per_element,
    register_codec,
    restore,
    rounding_factor,
)


@register_codec
class FP8(Codec):
    """Scaled fp8 (``e4m3`` = float8_e4m3fn, ``e5m2``): one fp32 scale per ``block`` elements (0: per tensor).

    scale = absmax / fp8_max (at least 2^-126, the smallest normal fp32, so that
    x / scale cannot overflow; 1 for an all-zero block), codes =
    round_to_nearest_even(x / scale). Error bound: |x - x̂| <= scale * 2^-4 *
    |x / scale| (e4m3, 3 mantissa bits) or 2^-3 (e5m2), plus the subnormal step
    near zero (scale * 2^-9 for e4m3, scale * 2^-16 for e5m2). NaN stays NaN;
    ±Inf stays ±Inf in e5m2 and becomes NaN in e4m3, which has no infinity;
    absmax is taken over finite values. Values are cast to fp32 first, so
    float64 magnitudes beyond the fp32 range count as ±Inf.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.linspace(-3, 3, 4096, dtype=np.float32)
        >>> y = tc.decode(tc.encode({"x": x}, precision=tc.FP8("e4m3", block=128)))["x"]
        >>> float(np.max(np.abs(x - y))) < 3 * 2**-4
        True
    """

    codec_id = "fp8"
    contractive = True
    _FORMATS: ClassVar[dict[str, str]] = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}

    def __init__(self, format: str = "e4m3", block: int = 0) -> None:
        if format not in self._FORMATS:
            raise ValueError(f"fp8 format must be one of {sorted(self._FORMATS)}, not {format!r}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or block > 1 << 24:
            raise ValueError(f"fp8 block must be 0 (per tensor) or a positive block size, not {block!r}")
        self.format = format
        self.block = block
        self._dtype = dtypes.BY_NAME[self._FORMATS[format]]
        self._max = float(ml_dtypes.finfo(self._dtype.numpy).max)  # type: ignore[no-untyped-call]

    def get_config(self) -> dict[str, Any]:
        return {"format": self.format, "block": self.block}

    def _blocks(self, count: int) -> int:
        return 1 if self.block == 0 else max(1, -(-count // self.block))

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 + 32.0 * self._blocks(count) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", self._dtype.name, [count]), "scale": ("meta", "float32", [self._blocks(count)])}

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """scale * 2^-4 * |x/scale| (e4m3) or 2^-3 (e5m2), plus scale * 2^-9 (e4m3) / 2^-16 (e5m2)
        near zero, plus fp32 rounding; NaN stays NaN, ±Inf stays ±Inf (e5m2) or becomes NaN (e4m3)."""
        x64 = x.astype(np.float64)
        rel, sub = (2.0**-4, 2.0**-9) if self.format == "e4m3" else (2.0**-3, 2.0**-16)
        scale = per_element(encoded.segments["scale"][1].astype(np.float64), self.block, x.size)
        with np.errstate(invalid="ignore", over="ignore"):
            to_fp32 = np.abs(x64 - x.astype(np.float32))  # the values are cast to fp32 first
            bound: np.ndarray[Any, Any] = (
                rel * np.abs(x64) + scale * sub + 4 * EPS32 * np.abs(x64) + 4 * SUB32 + to_fp32
            )
        bound *= rounding_factor(x.dtype)
        bound[np.isnan(x64)] = 0.0
        with np.errstate(over="ignore"):
            infinite = np.isinf(x.astype(np.float32))  # float64 beyond the fp32 range counts as ±Inf
        if self.format == "e5m2":
            bound[np.isinf(x64)] = 0.0
        else:
            bound[infinite] = np.nan  # e4m3 has no Inf: ±Inf becomes NaN, as documented
        return bound

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        x32 = float32(x)
        n = x32.size
        nblocks = self._blocks(n)
        size = block_span(self.block, n)
        padded = np.zeros(nblocks * size, dtype=np.float32)
        padded[:n] = x32
        blocks = padded.reshape(nblocks, size)
        finite = np.where(np.isfinite(blocks), np.abs(blocks), 0.0)
        absmax = finite.max(axis=1) if n else np.zeros(nblocks, np.float32)
        # A subnormal scale is too coarse: x / scale could exceed the fp8 range and become NaN/Inf.
        scale = np.maximum(absmax / self._max, np.float32(2.0**-126)).astype(np.float32)
        scale[absmax == 0] = 1.0
        codes = (blocks / scale[:, None]).astype(self._dtype.numpy).reshape(-1)[:n]
        return Encoded({"codes": ("payload", codes), "scale": ("meta", scale)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        codes = self.segment(segments, "codes", self._dtype.name, count)
        nblocks = self._blocks(count)
        scale = self.segment(segments, "scale", "float32", nblocks)
        size = block_span(self.block, count)
        values = codes.astype(np.float32)
        if count:
            full = np.zeros(nblocks * size, dtype=np.float32)
            full[:count] = values
            values = (full.reshape(nblocks, size) * scale[:, None]).reshape(-1)[:count]
        return restore(values, dtype)
