"""``mx``: the OCP microscaling formats (MXFP8, MXFP6, MXFP4, MXINT8): 32 elements share one E8M0 scale.

Bit-compatible with torchao 0.18's ``to_mx`` / ``to_dtype`` (``torchao.prototype.mx_formats``) in its
default scale calculation mode, ``ScaleCalculationMode.FLOOR``: per block of 32, amax = max |x| in
fp32 (NaN propagating), e = floor(log2 amax) - emax_elem (the exponent bits of amax's fp32 pattern),
clamped to [-127, 128] and stored biased (+127) as one byte; a block whose amax is NaN gets 0xFF
(E8M0's NaN). Elements are x / max(2^e, 2^-126) (the clamp is torchao's), rounded to nearest-even
and saturated to the element format's largest finite value; decoding multiplies the element by
2^(byte - 127) (NaN for 0xFF), so a block of scale byte 0 decodes at half the scale it was
encoded with, as torchao does. MXINT8 (no torchao reference) uses the same rule with emax = 0 and
codes round(x / scale * 64) saturated to [-127, 127].

The integer arithmetic of the sub-byte casts mirrors torchao's ``_f32_to_floatx_unpacked`` so that
NaN inputs get the very same codes. Pure numpy: torch is only the tests' reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

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

BLOCK = 32
"""Elements per shared scale (the OCP MX block)."""


class Element:
    """One element format: its bit widths, largest finite value, emax and decode table (256 entries)."""

    def __init__(self, name: str, bits: int, ebits: int, mbits: int, emax: int, max_pos: float) -> None:
        self.name, self.bits, self.ebits, self.mbits = name, bits, ebits, mbits
        self.emax, self.max_pos = emax, max_pos
        self.table = np.zeros(256, dtype=np.float32)
        self.table[: 1 << bits] = decode_table(self)
        self.table.setflags(write=False)


def minifloat_values(ebits: int, mbits: int) -> np.ndarray[Any, Any]:
    """Every code of a sign/exponent/mantissa format with no special values, as float32 (code order)."""
    codes = np.arange(1 << (1 + ebits + mbits))
    sign = np.where(codes >> (ebits + mbits), -1.0, 1.0)
    exp = (codes >> mbits) & ((1 << ebits) - 1)
    man = codes & ((1 << mbits) - 1)
    bias = (1 << (ebits - 1)) - 1
    mag = np.where(exp == 0, man / 2.0**mbits * 2.0 ** (1 - bias), (1 + man / 2.0**mbits) * 2.0 ** (exp - bias))
    return (sign * mag).astype(np.float32)


def decode_table(elem: Element) -> np.ndarray[Any, Any]:
    n = 1 << elem.bits
    if elem.name in ("e4m3", "e5m2"):
        fp8 = ml_dtypes.float8_e4m3fn if elem.name == "e4m3" else ml_dtypes.float8_e5m2
        return np.asarray(np.arange(n, dtype=np.uint8).view(fp8).astype(np.float32))
    if elem.name == "int8":
        return (np.arange(n, dtype=np.uint8).view(np.int8).astype(np.float32) / np.float32(64.0)).astype(np.float32)
    return minifloat_values(elem.ebits, elem.mbits)


ELEMENTS: dict[str, Element] = {
    "e4m3": Element("e4m3", 8, 4, 3, 8, 448.0),
    "e5m2": Element("e5m2", 8, 5, 2, 15, 57344.0),
    "e2m3": Element("e2m3", 6, 2, 3, 2, 7.5),
    "e3m2": Element("e3m2", 6, 3, 2, 4, 28.0),
    "e2m1": Element("e2m1", 4, 2, 1, 2, 6.0),
    "int8": Element("int8", 8, 0, 0, 0, 127.0 / 64.0),
}


def f32_to_minifloat(x: np.ndarray[Any, Any], ebits: int, mbits: int) -> np.ndarray[Any, Any]:
    """float32 -> sign/exponent/mantissa codes (RNE, saturating, no specials), in the low bits of uint8.

    The same integer steps as torchao's ``_f32_to_floatx_unpacked`` (int32 wrap-around included), so
    that NaN, which falls through to the normal path, gets the same code.
    """
    bias = (1 << (ebits - 1)) - 1
    max_normal = 2.0 ** ((1 << ebits) - 1 - bias) * ((1 << (mbits + 1)) - 1) / 2.0**mbits
    min_normal = 2.0 ** (1 - bias)
    denorm_int = ((127 - bias) + (23 - mbits) + 1) << 23
    bits = x.view(np.int32)
    sign = bits & np.int32(-0x80000000)
    mag_bits = bits ^ sign
    mag = mag_bits.view(np.float32)
    with np.errstate(invalid="ignore"):
        saturate = mag >= np.float32(max_normal)
        denormal = ~saturate & (mag < np.float32(min_normal))
    denorm_f = np.array(denorm_int, dtype=np.int32).view(np.float32)
    sub = ((mag + denorm_f).view(np.int32) - np.int32(denorm_int)).astype(np.uint8)
    odd = (mag_bits >> (23 - mbits)) & 1
    add = np.int32(((bias - 127) << 23) + (1 << (23 - mbits - 1)) - 1)
    with np.errstate(over="ignore"):
        normal = ((mag_bits + add + odd) >> (23 - mbits)).astype(np.uint8)
    out = np.where(denormal, sub, np.where(saturate, np.uint8((1 << (ebits + mbits)) - 1), normal))
    sign_lp = ((sign >> (31 - ebits - mbits)).astype(np.uint8)) & np.uint8(1 << (ebits + mbits))
    return np.asarray((out | sign_lp).astype(np.uint8))


def e8m0_scales(amax: np.ndarray[Any, Any], emax: int) -> np.ndarray[Any, Any]:
    """torchao's FLOOR scale: biased floor(log2 amax) - emax, clamped to [0, 255]; 0xFF for a NaN amax."""
    exp = ((amax.view(np.int32) >> 23) & 0xFF) - 127
    biased = np.clip(exp - emax, -127, 128) + 127
    return np.where(np.isnan(amax), 255, biased).astype(np.uint8)


def encode_scale(biased: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The scale elements are divided by: the byte as an fp32 exponent, at least 2^-126 (torchao's clamp)."""
    scale = (biased.astype(np.int32) << 23).view(np.float32)
    return np.maximum(scale, np.float32(2.0**-126))


def decode_scale(biased: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """2^(byte - 127) as float32 (2^-127 for byte 0, a subnormal), NaN for 0xFF."""
    scale = np.ldexp(np.float32(1.0), biased.astype(np.int32) - 127).astype(np.float32)
    return np.where(biased == 255, np.float32(np.nan), scale)


def quantize_elements(y: np.ndarray[Any, Any], elem: Element) -> np.ndarray[Any, Any]:
    """Scaled float32 values -> element codes (uint8, one per value), saturating."""
    if elem.name in ("e4m3", "e5m2"):
        fp8 = ml_dtypes.float8_e4m3fn if elem.name == "e4m3" else ml_dtypes.float8_e5m2
        m = np.float32(elem.max_pos)
        codes = np.clip(y, -m, m).astype(fp8).view(np.uint8)
        # NaN as torch casts it: all exponent and mantissa bits set, the sign kept (ml_dtypes gives e5m2 0x7E).
        nan = (np.signbit(y).astype(np.uint8) << 7) | np.uint8(0x7F)
        return np.asarray(np.where(np.isnan(y), nan, codes))
    if elem.name == "int8":
        with np.errstate(invalid="ignore"):
            q = np.clip(np.rint(y * np.float32(64.0)), -127, 127)
        return np.asarray(np.nan_to_num(q, nan=0.0).astype(np.int8).view(np.uint8))
    return f32_to_minifloat(y, elem.ebits, elem.mbits)


def pack(codes: np.ndarray[Any, Any], bits: int) -> np.ndarray[Any, Any]:
    """Codes little-endian: 8 bits as they are, 4 bits two a byte (element 0 low), 6 bits four per 3 bytes."""
    n = codes.size
    if bits == 8:
        return codes
    per = 2 if bits == 4 else 4
    lanes = np.zeros(-(-n // per) * per, dtype=np.uint32)
    lanes[:n] = codes
    grid = lanes.reshape(-1, per)
    if bits == 4:
        return (grid[:, 0] | (grid[:, 1] << 4)).astype(np.uint8)
    word = grid[:, 0] | (grid[:, 1] << 6) | (grid[:, 2] << 12) | (grid[:, 3] << 18)
    out = np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=1).astype(np.uint8)
    return out.reshape(-1)[: packed_size(n, 6)]


def unpack(packed: np.ndarray[Any, Any], bits: int, count: int) -> np.ndarray[Any, Any]:
    """Inverse of ``pack``: ``count`` codes as uint8."""
    if bits == 8:
        return packed
    if bits == 4:
        out = np.empty((packed.size, 2), dtype=np.uint8)
        out[:, 0] = packed & 0xF
        out[:, 1] = packed >> 4
        return out.reshape(-1)[:count]
    buf = np.zeros(-(-count // 4) * 3, dtype=np.uint32)
    buf[: packed.size] = packed
    b = buf.reshape(-1, 3)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    out6 = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=1).astype(np.uint8)
    return out6.reshape(-1)[:count]


def _blocks(x32: np.ndarray[Any, Any], block: int) -> np.ndarray[Any, Any]:
    """x padded with zeros to whole blocks (zeros change no block's amax), shape (nblocks, block)."""
    n = x32.size
    padded = np.zeros(-(-n // block) * block, dtype=np.float32)
    padded[:n] = x32
    return padded.reshape(-1, block)


def quantize_mx(x: np.ndarray[Any, Any], fmt: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """float32 values -> (packed element codes, E8M0 scale bytes), one scale per 32 elements."""
    elem = ELEMENTS[fmt]
    blocks = _blocks(x, BLOCK)
    amax = np.max(np.abs(blocks), axis=1) if blocks.size else np.zeros(0, np.float32)
    biased = e8m0_scales(amax.astype(np.float32), elem.emax)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = (blocks / encode_scale(biased)[:, None]).astype(np.float32)
    codes = quantize_elements(y.reshape(-1)[: x.size], elem)
    return pack(codes, elem.bits), biased


def dequantize_mx(packed: np.ndarray[Any, Any], scales: np.ndarray[Any, Any], fmt: str, count: int) -> Any:
    """Inverse of ``quantize_mx``: float32 values ``table[code] * 2^(scale - 127)``."""
    elem = ELEMENTS[fmt]
    values = elem.table[unpack(packed, elem.bits, count)]
    nblocks = scales.size
    full = np.zeros(nblocks * BLOCK, dtype=np.float32)
    full[:count] = values
    with np.errstate(invalid="ignore", over="ignore"):
        out = full.reshape(nblocks, BLOCK) * decode_scale(scales)[:, None]
    return out.reshape(-1)[:count]


def element_error(y: np.ndarray[Any, Any], elem: Element) -> np.ndarray[Any, Any]:
    """|y - q(y)| bound in element units for |y| (float64): half an ulp (or the subnormal step), saturation."""
    if elem.name == "int8":
        rounding = np.full(y.shape, 0.5 / 64.0)
    else:
        bias = (1 << (elem.ebits - 1)) - 1
        rounding = np.maximum(y * 2.0 ** -(elem.mbits + 1), 2.0 ** (1 - bias - elem.mbits - 1))
    return rounding + np.maximum(y - elem.max_pos, 0.0)


@register_codec
class MX(Codec):
    """OCP MX: one E8M0 scale byte per 32 elements, elements ``e4m3``, ``e5m2``, ``e2m3``, ``e3m2``, ``e2m1``, ``int8``.

    Layout: ``codes`` (uint8: one byte per element for 8-bit formats, 4 per 3 bytes for FP6, 2 per
    byte for FP4, little-endian, element 0 in the low bits) and ``scales`` (uint8, E8M0, one per
    block; the last block is padded with zeros, which are not sent). Error bound, with s the scale
    the block was encoded with: |x - x̂| <= s * (half an ulp of x / s in the element format, or half
    its subnormal step, plus any saturation beyond its largest value), doubled to |x| for blocks of
    scale byte 0; blocks holding NaN/Inf are unsupported (a NaN block decodes to NaN; Inf
    saturates). float64 is quantized from its fp32 values.
    """

    codec_id = "mx"
    contractive = True
    _FORMATS: ClassVar[tuple[str, ...]] = tuple(ELEMENTS)

    def __init__(self, format: str = "e4m3") -> None:
        if format not in ELEMENTS:
            raise ValueError(f"mx format must be one of {sorted(ELEMENTS)}, not {format!r}")
        self.format = format
        self._elem = ELEMENTS[format]

    def get_config(self) -> dict[str, Any]:
        return {"format": self.format}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        n = max(count, 1)
        return 8.0 * (packed_size(count, self._elem.bits) + -(-count // BLOCK)) / n if count else 8.0

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {
            "codes": ("payload", "uint8", [packed_size(count, self._elem.bits)]),
            "scales": ("meta", "uint8", [-(-count // BLOCK)]),
        }

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """s * element_error(|x| / s) with s the encode scale, + |x| for scale byte 0, + fp32 rounding."""
        with np.errstate(over="ignore", invalid="ignore"):
            x64 = x.astype(np.float64)
            x32 = x.astype(np.float32)
            biased = encoded.segments["scales"][1]
            s = per_element(encode_scale(biased).astype(np.float64), BLOCK, x.size)
            halved = per_element(biased == 0, BLOCK, x.size)
            ax = np.abs(x32.astype(np.float64))
            bound = element_error(ax / s, self._elem) * s * (1 + 1e-6) + np.where(halved, ax, 0.0)
            bound += 4 * EPS32 * ax + 4 * SUB32 + np.abs(x64 - x32)
        bound = bound * rounding_factor(x.dtype)
        return unsupported_blocks(bound, x32, BLOCK)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        with np.errstate(over="ignore"):
            x32 = float32(x)
        packed, scales = quantize_mx(x32, self.format)
        return Encoded({"codes": ("payload", packed), "scales": ("meta", scales)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        packed = self.segment(segments, "codes", "uint8", packed_size(count, self._elem.bits))
        scales = self.segment(segments, "scales", "uint8", -(-count // BLOCK))
        return restore(dequantize_mx(packed, scales, self.format, count), dtype)
