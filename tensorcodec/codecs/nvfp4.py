"""``nvfp4``: NVIDIA's FP4: E2M1 elements, one E4M3 scale per 16, one fp32 scale per tensor.

Bit-compatible with torchao 0.18's ``nvfp4_quantize`` with a per-tensor scale
(``torchao.prototype.mx_formats.nvfp4_tensor``), all in fp32: t = amax / (448 * 6) (its
``per_tensor_amax_to_scale``), block scale b = e4m3(clamp(block_amax / 6 / t, 2^-6, 448)) (round to
nearest-even), elements e2m1(clamp(x * ((1 / t) / b), -6, 6)); decoding gives e2m1 * (t * b). Two
choices of ours where torchao has none: the tensor amax is taken over finite values and t is at
least 2^-100 (an all-zero, or nearly so, tensor would otherwise give t = 0 and NaN everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from ..dtypes import DType
from .base import (
    EPS32,
    SUB32,
    Codec,
    Encoded,
    float32,
    per_element,
    register_codec,
    restore,
    rounding_factor,
    unsupported_blocks,
)
from .bits import packed_size
from .mx import ELEMENTS, element_error, f32_to_minifloat, pack, unpack

BLOCK = 16
"""Elements per E4M3 block scale."""
TENSOR_MIN = np.float32(2.0**-100)
"""The smallest per-tensor scale (ours): keeps 1 / t and the element scaling finite."""


def tensor_scale(x: np.ndarray[Any, Any]) -> np.float32:
    """amax (over finite values) / 2688 in fp32, at least ``TENSOR_MIN``."""
    finite = np.abs(x[np.isfinite(x)])
    amax = np.float32(finite.max()) if finite.size else np.float32(0.0)
    return max(np.float32(amax / np.float32(2688.0)), TENSOR_MIN)


E4M3_BITS = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32).view(np.uint32)
E4M3_BITS[[0x7F, 0xFF]] = [0x7FF00000, 0xFFF00000]  # NaN as torch widens it: the code's mantissa bits kept
E4M3_BITS.setflags(write=False)


def e4m3_values(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """E4M3 codes as float32, NaN with torch's payload (it decides the E2M1 code a NaN block gets)."""
    return np.asarray(E4M3_BITS[codes].view(np.float32))


def quantize_nvfp4(x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.float32]:
    """float32 values -> (packed E2M1 codes, E4M3 scale bytes, the fp32 tensor scale)."""
    t = tensor_scale(x)
    n = x.size
    padded = np.zeros(-(-n // BLOCK) * BLOCK, dtype=np.float32)
    padded[:n] = x
    blocks = padded.reshape(-1, BLOCK)
    amax = np.max(np.abs(blocks), axis=1) if blocks.size else np.zeros(0, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (amax / np.float32(6.0)) / t
        b = np.clip(scaled, np.float32(2.0**-6), np.float32(448.0)).astype(ml_dtypes.float8_e4m3fn)
        recip = (np.float32(1.0) / t) / e4m3_values(b.view(np.uint8))
        y = np.clip(recip[:, None] * blocks, np.float32(-6.0), np.float32(6.0))
    codes = f32_to_minifloat(y.reshape(-1)[:n].astype(np.float32), 2, 1)
    return pack(codes, 4), b.view(np.uint8), t


def dequantize_nvfp4(packed: np.ndarray[Any, Any], scales: np.ndarray[Any, Any], t: np.float32, count: int) -> Any:
    """Inverse of ``quantize_nvfp4``: e2m1 * (t * b) in fp32."""
    values = ELEMENTS["e2m1"].table[unpack(packed, 4, count)]
    nblocks = scales.size
    full = np.zeros(nblocks * BLOCK, dtype=np.float32)
    full[:count] = values
    with np.errstate(invalid="ignore", over="ignore"):
        scale = t * scales.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        out = full.reshape(nblocks, BLOCK) * scale[:, None]
    return out.reshape(-1)[:count]


@register_codec
class NVFP4(Codec):
    """NVFP4: E2M1 codes two a byte (element 0 in the low nibble), an E4M3 scale per 16, an fp32 per tensor.

    Segments ``codes`` (uint8), ``scales`` (uint8, E4M3 bits, one per block; the last block is
    padded with zeros, not sent) and ``tensor_scale`` (float32, one). Error bound with d = t * b,
    y = |x| / d: |x - x̂| <= d * (max(y / 4, 1/4) + max(y - 6, 0)) (half an E2M1 ulp, half its
    subnormal step, saturation), plus fp32 rounding. Blocks holding NaN/Inf are unsupported (a NaN
    decodes its block to NaN).
    """

    codec_id = "nvfp4"
    contractive = True

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 * (packed_size(count, 4) + -(-count // BLOCK) + 4) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {
            "codes": ("payload", "uint8", [packed_size(count, 4)]),
            "scales": ("meta", "uint8", [-(-count // BLOCK)]),
            "tensor_scale": ("meta", "float32", [1]),
        }

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """d * (max(y / 4, 1/4) + max(y - 6, 0)), y = |x| / d, d = t * b; plus fp32 rounding."""
        seg = encoded.segments
        t = np.float64(seg["tensor_scale"][1][0])
        b = seg["scales"][1].view(ml_dtypes.float8_e4m3fn).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            x64 = x.astype(np.float64)
            x32 = x.astype(np.float32)
            d = per_element(t * b, BLOCK, x.size)
            ax = np.abs(x32.astype(np.float64))
            bound = element_error(ax / d, ELEMENTS["e2m1"]) * d * (1 + 1e-5)
            bound += 8 * EPS32 * ax + 4 * SUB32 + np.abs(x64 - x32)
        bound = bound * rounding_factor(x.dtype)
        return unsupported_blocks(bound, x32, BLOCK)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        with np.errstate(over="ignore"):
            x32 = float32(x)
        packed, scales, t = quantize_nvfp4(x32)
        segments = {"codes": ("payload", packed), "scales": ("meta", scales)}
        return Encoded({**segments, "tensor_scale": ("meta", np.array([t], dtype=np.float32))})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        packed = self.segment(segments, "codes", "uint8", packed_size(count, 4))
        scales = self.segment(segments, "scales", "uint8", -(-count // BLOCK))
        t = self.segment(segments, "tensor_scale", "float32", 1)[0]
        return restore(dequantize_nvfp4(packed, scales, np.float32(t), count), dtype)
