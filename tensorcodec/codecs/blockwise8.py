"""``blockwise8``: bitsandbytes' 8-bit blockwise quantization (the signed dynamic map)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import kernels
from ..dtypes import DType
from .base import (
    EPS32,
    SUB32,
    Codec,
    DecodeItem,
    Encoded,
    block_absmax,
    kernel_source,
    kernel_target,
    per_element,
    register_codec,
    restore,
    rounding_factor,
    to_host,
    torch_kernel_source,
    unsupported_blocks,
)

HALF_GAP = 0.0070468
"""The bound per unit of absmax: half the largest gap of bitsandbytes' signed dynamic map (0.0140625 / 2),
plus the slack of its approximate CPU code lookup (``kernels.error_bound("dynamic")``)."""

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes' 8-bit blockwise quantization takes."""


@register_codec
class Blockwise8(Codec):
    """bitsandbytes' 8-bit blockwise quantization with the signed dynamic map; bit-compatible.

    Error bound: |x - x̂| <= absmax_block * ``kernels.error_bound("dynamic")`` (0.0070468: half
    the largest gap of the map, 0.0070313, plus the slack of bitsandbytes' approximate code
    lookup), before the final cast to the source dtype, for blocks whose absmax is at least
    2^-126 (fp32's smallest normal): like bitsandbytes, the kernel scales by 1 / absmax, which
    overflows below that, and such blocks are only within 2 * absmax. NaN/Inf inputs are not
    supported (as in bitsandbytes: a NaN decodes as an arbitrary value, an Inf turns its block
    into ±Inf). The map is referred to by name, never resent. A float64 source is quantized
    from its fp32 values.
    """

    codec_id = "blockwise8"

    def __init__(self, blocksize: int = 4096) -> None:
        if blocksize not in BLOCKSIZES:
            raise ValueError(f"blockwise8 blocksize must be one of {BLOCKSIZES}, not {blocksize!r}")
        self.blocksize = blocksize

    def get_config(self) -> dict[str, Any]:
        return {"blocksize": self.blocksize}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 + 32.0 * max(1, -(-count // self.blocksize)) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", "uint8", [count]), "absmax": ("meta", "float32", [-(-count // self.blocksize)])}

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """absmax_block * (largest gap of the dynamic map) / 2, plus fp32 rounding; 2 * absmax for blocks
        whose absmax is below 2^-126; blocks holding NaN/Inf are unsupported (unconstrained)."""
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32).astype(np.float64)
        absmax = per_element(block_absmax(x32, self.blocksize), self.blocksize, x.size)
        with np.errstate(invalid="ignore"):
            slack = 4 * EPS32 * absmax + 4 * SUB32 + np.abs(x64 - x32)
        bound = (absmax * HALF_GAP * (1 + 1e-5) + slack) * rounding_factor(x.dtype)
        bound = np.where(absmax < 2.0**-126, 2 * absmax + slack, bound)  # 1 / absmax overflows
        return unsupported_blocks(bound, x32, self.blocksize)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        codes, absmax = kernels.quantize_blockwise8(kernel_source(x), self.blocksize)
        return Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)})

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        results = kernels.quantize_blockwise8_batch([kernel_source(x) for x in xs], self.blocksize)
        return [Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)}) for codes, absmax in results]

    def encode_torch(self, t: Any) -> Encoded | None:
        if not torch_kernel_source(t):
            return None
        codes, absmax = kernels.quantize_blockwise8_torch(t, self.blocksize)
        return Encoded({"codes": ("payload", to_host(codes)), "absmax": ("meta", to_host(absmax))})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        codes, absmax = self._read(segments, count)
        values = kernels.dequantize_blockwise8(codes, absmax, self.blocksize, kernel_target(dtype))
        return restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        pairs = [self._read(segments, count) for segments, _, count in items]
        values = kernels.dequantize_blockwise8_batch(pairs, self.blocksize, kernel_target(dtype))
        return [v.astype(dtype.numpy) for v in values]  # each its own copy, in the source dtype

    def _read(self, segments: Mapping[str, np.ndarray[Any, Any]], count: int) -> tuple[Any, Any]:
        """The checked ``(codes, absmax)`` of one tensor."""
        codes = self.segment(segments, "codes", "uint8", count)
        return codes, self.segment(segments, "absmax", "float32", -(-count // self.blocksize))
