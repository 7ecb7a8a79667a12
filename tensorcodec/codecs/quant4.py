"""``quant4``: bitsandbytes' 4-bit nf4 / fp4, optionally with double-quantized statistics."""

from __future__ import annotations

import math
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
    Segments,
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
from .bits import packed_size

HALF_GAPS = {"nf4": 0.3038072 / 2, "fp4": (1 - 0.6666667) / 2}
"""The bound per unit of absmax: half the largest gap of bitsandbytes' 16-entry nf4 and fp4 tables
(both include -1 and 1; ``kernels.error_bound``)."""

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes' 4-bit quantization takes."""


@register_codec
class Quant4(Codec):
    """bitsandbytes' 4-bit ``nf4`` / ``fp4``, two codes per byte (element 0 in the high nibble).

    With ``double_quant`` the fp32 absmax statistics are themselves quantized
    (offset = their mean, the rest 8-bit blockwise in blocks of 256), as
    bitsandbytes' ``compress_statistics=True``. Error bound: |x - x̂| <=
    absmax_block * (largest gap of the 16-entry table) / 2 (``kernels.error_bound``:
    0.1519 nf4, 0.1667 fp4) (+ the error of the quantized absmax when ``double_quant``), for
    blocks whose absmax is at least 2^-126; below that (fp32 subnormals) only within 2 *
    absmax, as in bitsandbytes. Tables are referred to by name. A float64 source is quantized
    from its fp32 values. NaN/Inf inputs are not supported: the block holding one decodes as
    NaN; with ``double_quant`` encoding refuses them (ValueError), as it refuses magnitudes
    whose block statistics overflow the fp32 mean (near 3.4e38).
    """

    codec_id = "quant4"

    def __init__(self, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True) -> None:
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant4 quant_type must be 'nf4' or 'fp4', not {quant_type!r}")
        if blocksize not in BLOCKSIZES:
            raise ValueError(f"quant4 blocksize must be one of {BLOCKSIZES}, not {blocksize!r}")
        self.quant_type = quant_type
        self.blocksize = blocksize
        self.double_quant = bool(double_quant)

    def get_config(self) -> dict[str, Any]:
        return {"quant_type": self.quant_type, "blocksize": self.blocksize, "double_quant": self.double_quant}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        nblocks = max(1, -(-count // self.blocksize))
        stats = 8.0 * nblocks + 32.0 * -(-nblocks // 256) + 32.0 if self.double_quant else 32.0 * nblocks
        return (8.0 * packed_size(count, 4) + stats) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        nblocks = -(-count // self.blocksize)
        layout = {"codes": ("payload", "uint8", [packed_size(count, 4)])}
        if self.double_quant:
            layout["absmax_codes"] = ("meta", "uint8", [nblocks])
            layout["absmax_scale"] = ("meta", "float32", [-(-nblocks // 256)])
        else:
            layout["absmax"] = ("meta", "float32", [nblocks])
        return layout

    def predicted_params(self) -> dict[str, Any]:
        return {"offset": 0.0} if self.double_quant else {}

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """absmax_block * (largest gap of the table) / 2, plus the error of the quantized absmax, plus fp32
        rounding; 2 * absmax for blocks whose absmax is below 2^-126; blocks holding NaN/Inf are
        unsupported (unconstrained)."""
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32).astype(np.float64)
        true = block_absmax(x32, self.blocksize)
        seg = encoded.segments
        if self.double_quant:
            offset = np.float32(encoded.params["offset"])
            sent: np.ndarray[Any, Any] = np.asarray(
                kernels.dequantize_absmax(offset, seg["absmax_codes"][1], seg["absmax_scale"][1])
            )
        else:
            sent = seg["absmax"][1]
        sent = sent.astype(np.float64).reshape(-1)[: true.size]
        if sent.size < true.size:  # an empty tensor sends no statistics
            sent = np.concatenate([sent, np.zeros(true.size - sent.size)])
        absmax = per_element(true, self.blocksize, x.size)
        absmax_err = per_element(np.abs(sent - true), self.blocksize, x.size)
        with np.errstate(invalid="ignore"):
            slack = 4 * EPS32 * absmax + 4 * SUB32 + np.abs(x64 - x32)
        bound = (absmax * HALF_GAPS[self.quant_type] * (1 + 1e-5) + absmax_err + slack) * rounding_factor(x.dtype)
        bound = np.where(absmax < 2.0**-126, 2 * absmax + absmax_err + slack, bound)  # 1 / absmax overflows
        return unsupported_blocks(bound, x32, self.blocksize)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        if x.size == 0:  # nothing to quantize (the kernels need a block); the layout of an empty tensor
            none8, none32 = np.zeros(0, np.uint8), np.zeros(0, np.float32)
            if not self.double_quant:
                return Encoded({"codes": ("payload", none8), "absmax": ("meta", none32)})
            segments: Segments = {"codes": ("payload", none8), "absmax_codes": ("meta", none8)}
            return Encoded({**segments, "absmax_scale": ("meta", none32)}, {"offset": 0.0})
        packed, absmax = kernels.quantize_4bit(kernel_source(x), self.quant_type, self.blocksize)
        return self._with_statistics(packed, absmax, kernels.quantize_absmax(absmax) if self.double_quant else None)

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        sources = [kernel_source(x) for x in xs if x.size]  # an empty tensor has a layout of its own
        quantized = kernels.quantize_4bit_batch(sources, self.quant_type, self.blocksize)
        stats: list[Any] = [None] * len(quantized)
        if self.double_quant:
            stats = kernels.quantize_absmax_batch([absmax for _, absmax in quantized])
        done = iter([self._with_statistics(p, a, s) for (p, a), s in zip(quantized, stats, strict=True)])
        return [next(done) if x.size else self.encode(x) for x in xs]

    def encode_torch(self, t: Any) -> Encoded | None:
        if t.numel() == 0 or not torch_kernel_source(t):
            return None
        packed, absmax = kernels.quantize_4bit_torch(t, self.quant_type, self.blocksize)
        if not self.double_quant:
            return self._with_statistics(to_host(packed), to_host(absmax), None)
        offset, codes, nested = kernels.quantize_absmax_torch(absmax)
        return self._with_statistics(
            to_host(packed), None, (np.float32(offset.item()), to_host(codes), to_host(nested))
        )

    def _with_statistics(self, packed: Any, absmax: Any, stats: tuple[Any, Any, Any] | None) -> Encoded:
        """The segments of quantized codes and block statistics: ``absmax``, or with ``double_quant`` its
        ``(offset, codes, nested)`` from ``quantize_absmax``."""
        if stats is None:
            return Encoded({"codes": ("payload", packed), "absmax": ("meta", absmax)})
        offset, codes, nested = stats
        if not math.isfinite(float(offset)):
            # The fp32 mean of the statistics overflowed (Inf/NaN inputs, or magnitudes near 3.4e38):
            # every block would decode as NaN, silently.
            raise ValueError(
                "quant4 double_quant: the fp32 mean of the block absmax values is not finite (NaN/Inf values or "
                "magnitudes near the fp32 maximum); use double_quant=False or send this tensor losslessly"
            )
        return Encoded(
            {"codes": ("payload", packed), "absmax_codes": ("meta", codes), "absmax_scale": ("meta", nested)},
            {"offset": float(offset)},
        )

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        packed, stats = self._read(segments, params, count)
        if count == 0:
            return np.zeros(0, dtype.numpy)
        absmax = kernels.dequantize_absmax(*stats) if self.double_quant else stats
        values = kernels.dequantize_4bit(packed, absmax, count, self.quant_type, self.blocksize, kernel_target(dtype))
        return restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        read = [self._read(segments, params, count) for segments, params, count in items]
        stats = [s for _, s in read]
        absmaxes = kernels.dequantize_absmax_batch(stats) if self.double_quant else stats
        work = [(packed, absmax, n) for (packed, _), absmax, (_, _, n) in zip(read, absmaxes, items, strict=True)]
        values = kernels.dequantize_4bit_batch(work, self.quant_type, self.blocksize, kernel_target(dtype))
        return [v.astype(dtype.numpy) for v in values]  # each its own copy, in the source dtype

    def _read(self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], count: int) -> Any:
        """The checked packed codes of one tensor and its statistics: ``absmax``, or with ``double_quant``
        ``(offset, codes, nested)``."""
        nblocks = -(-count // self.blocksize)
        packed = self.segment(segments, "codes", "uint8", packed_size(count, 4))
        if not self.double_quant:
            return packed, self.segment(segments, "absmax", "float32", nblocks)
        codes = self.segment(segments, "absmax_codes", "uint8", nblocks)
        nested = self.segment(segments, "absmax_scale", "float32", -(-nblocks // 256))
        return packed, (np.float32(self.param(params, "offset", float)), codes, nested)
