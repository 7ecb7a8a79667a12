"""``nfk``: k-bit normal-float codes (NF2, NF3, NF5, NF6; NF4's table for k = 4), bit-packed, block absmax.

The construction generalizes bitsandbytes' ``create_normal_map`` for NF4: with ``m = 2^k`` codes and
``offset = (1 - 1 / (2 (m - 1)) + 1 - 1 / (2 m)) / 2`` (0.9677 for NF4), the ``m / 2`` positive
values are the N(0, 1) quantiles at ``linspace(offset, 0.5, m / 2 + 1)[:-1]``, the ``m / 2 - 1``
negative ones minus the quantiles at ``linspace(offset, 0.5, m / 2)[:-1]``, plus an exact 0; all
divided by the largest, so the table spans [-1, 1] asymmetrically (one more positive value). The
float32 tables are written out below (``TABLE_BITS``, float32 bit patterns; k = 4 is bitsandbytes'
NF4 table itself) and pinned by the tests, which recompute them with ``statistics.NormalDist``.

Per block of ``blocksize`` elements: ``absmax = max |x|`` (float32), ``c = x / absmax`` (0 for an
all-zero block), the code is the index of the nearest table entry (ties to the lower one), packed
``k`` bits a code, little-endian (:func:`tensorcodec.codecs.bits.pack_bits`). Decoding:
``table[q] * absmax`` in float32, then the source dtype. With ``double_quant`` the absmax values
travel as bitsandbytes' double-quantized statistics (:mod:`tensorcodec.codecs.absmax`), as in
``quant4``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from ..dtypes import DType
from .absmax import dequantize_absmax, quantize_absmax
from .base import (
    EPS32,
    SUB32,
    Codec,
    Encoded,
    Segments,
    block_absmax,
    per_element,
    register_codec,
    restore,
    rounding_factor,
)
from .bits import pack_bits, packed_size, unpack_bits
from .blocks import F32Array, readonly
from .quant4 import NF4_TABLE

TABLE_BITS = {
    2: "bf800000 00000000 3edf238f 3f800000",
    3: "bf800000 bf08f740 be7cdb98 00000000 3e3bbcd2 3ec394b6 3f1f7bfe 3f800000",
    5: (
        "bf800000 bf463fd4 bf2727c4 bf1083d8 befc4ca1 bedcbfa4 bec0a83b bea70434 be8f2d63 be716243 be46777e "
        "be1d1a3a bde9c77d bd9afc44 bd1a797f 00000000 3d10ccfe 3d913897 3ddae654 3e12f490 3e3964e2 3e61142f "
        "3e8531df 3e9ae737 3eb1faec 3ecadc3c 3ee62cbc 3f0273c9 3f145c3d 3f2a70bd 3f48b186 3f800000"
    ),
    6: (
        "bf800000 bf521bf7 bf3a1176 bf28f68d bf1b6225 bf0ff5f7 bf060054 befa3410 beea0305 bedb14b7 becd2a06 "
        "bec01458 beb3b031 bea7e1df be9c9345 be91b26c be873078 be7a01ea be66329a be52e0c6 be3ffc91 be2d7804 "
        "be1b46b2 be095d6e bdef642a bdcc76aa bda9e119 bd879349 bd4afbd1 bd07249c bc87092c 00000000 3c82d057 "
        "3d02e948 3d449c89 3d834dd5 3da4809c 3dc5f46d 3de7b7d7 3e04ed2b 3e163643 3e27c035 3e3994df 3e4bbf23 "
        "3e5e4b2b 3e7146ab 3e82609e 3e8c6669 3e96bf29 3ea1772d 3eac9d24 3eb842d8 3ec47e2b 3ed16a8d 3edf2b23 "
        "3eedee16 3efdf1e9 3f07c742 3f11a2d0 3f1cf19b 3f2a62f6 3f3b4f9e 3f530e9f 3f800000"
    ),
}
"""The NF-k tables as float32 bit patterns (hex), sorted: code q is the q-th smallest value."""


def _table(bits: int) -> F32Array:
    if bits == 4:
        return NF4_TABLE
    words = np.array([int(w, 16) for w in TABLE_BITS[bits].split()], dtype=np.uint32)
    return readonly(words.view(np.float32))


TABLES: dict[int, F32Array] = {k: _table(k) for k in (2, 3, 4, 5, 6)}
MIDPOINTS: dict[int, F32Array] = {
    k: readonly(((t[:-1].astype(np.float64) + t[1:]) / 2).astype(np.float32)) for k, t in TABLES.items()
}
HALF_GAPS: dict[int, float] = {k: float(np.max(np.diff(t.astype(np.float64)))) / 2 for k, t in TABLES.items()}
"""The bound per unit of absmax: half the largest gap of each table (NF2 0.5, NF3 0.2325, NF4 0.1519,
NF5 0.1128, NF6 0.0896)."""

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def quantize_nf(x: np.ndarray[Any, Any], bits: int, blocksize: int) -> tuple[np.ndarray[Any, Any], F32Array]:
    """``(packed codes, absmax)`` of a flat finite array; see the module docstring for the arithmetic."""
    n = x.size
    nb = -(-n // blocksize)
    v = np.zeros(nb * blocksize, dtype=np.float32)
    v[:n] = x
    blocks = v.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1)
    inv = np.where(absmax > 0, absmax, np.float32(1.0))
    c = np.clip(blocks / inv[:, None], np.float32(-1.0), np.float32(1.0)).reshape(-1)[:n]
    codes = np.searchsorted(MIDPOINTS[bits], c, side="left").astype(np.uint8)
    return pack_bits(codes, bits), absmax


def dequantize_nf(packed: np.ndarray[Any, Any], absmax: F32Array, bits: int, blocksize: int, n: int) -> F32Array:
    """``table[q] * absmax`` in float32 for ``n`` packed codes."""
    codes = unpack_bits(packed, bits, n)
    values = np.take(TABLES[bits], codes)
    nb = -(-n // blocksize)
    out = np.zeros(nb * blocksize, dtype=np.float32)
    out[:n] = values
    blocks = out.reshape(nb, blocksize)
    blocks *= absmax[:, None]
    return out[:n]


@register_codec
class NFk(Codec):
    """k-bit normal-float codes (k = 2..6) in blocks scaled by their absmax, optionally double-quantized.

    Error bound: |x - x̂| <= absmax_block * (largest gap of the table) / 2 (``HALF_GAPS``: NF2 0.5,
    NF3 0.2325, NF5 0.1128, NF6 0.0896) plus the error of the quantized absmax with ``double_quant``,
    plus float32 rounding; the final cast to a 16-bit source doubles it (and clamps to its range).
    NaN/Inf inputs (and float64 beyond float32) are refused with ValueError, as are magnitudes whose
    double-quantized statistics overflow the float32 mean.
    """

    codec_id = "nfk"
    contractive = True

    def __init__(self, bits: int = 3, blocksize: int = 64, double_quant: bool = True) -> None:
        if type(bits) is not int or bits not in TABLES:
            raise ValueError(f"nfk bits must be one of {sorted(TABLES)}, not {bits!r}")
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise ValueError(f"nfk blocksize must be one of {BLOCKSIZES}, not {blocksize!r}")
        if not isinstance(double_quant, bool):
            raise TypeError(f"nfk double_quant must be True or False, not {double_quant!r}")
        self.bits = bits
        self.blocksize = blocksize
        self.double_quant = double_quant

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "blocksize": self.blocksize, "double_quant": self.double_quant}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        nblocks = max(1, -(-count // self.blocksize))
        stats = 8.0 * nblocks + 32.0 * -(-nblocks // 256) + 32.0 if self.double_quant else 32.0 * nblocks
        return (8.0 * packed_size(count, self.bits) + stats) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        nblocks = -(-count // self.blocksize)
        layout = {"codes": ("payload", "uint8", [packed_size(count, self.bits)])}
        if self.double_quant:
            layout["absmax_codes"] = ("meta", "uint8", [nblocks])
            layout["absmax_scale"] = ("meta", "float32", [-(-nblocks // 256)])
        else:
            layout["absmax"] = ("meta", "float32", [nblocks])
        return layout

    def predicted_params(self) -> dict[str, Any]:
        return {"offset": 0.0} if self.double_quant else {}

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x if x.dtype == np.float32 else x.astype(np.float32)
        if not np.isfinite(x32).all():
            raise ValueError("nfk cannot encode NaN or Inf values (or float64 beyond float32); send them losslessly")
        packed, absmax = quantize_nf(x32, self.bits, self.blocksize)
        segments: Segments = {"codes": ("payload", packed)}
        if not self.double_quant:
            return Encoded({**segments, "absmax": ("meta", absmax)})
        if absmax.size == 0:
            none8, none32 = np.zeros(0, np.uint8), np.zeros(0, np.float32)
            return Encoded(
                {**segments, "absmax_codes": ("meta", none8), "absmax_scale": ("meta", none32)}, {"offset": 0.0}
            )
        offset, codes, nested = quantize_absmax(absmax)
        if not math.isfinite(float(offset)):
            raise ValueError(
                "nfk double_quant: the fp32 mean of the block absmax values overflows; use double_quant=False"
            )
        segments["absmax_codes"] = ("meta", codes)
        segments["absmax_scale"] = ("meta", nested)
        return Encoded(segments, {"offset": float(offset)})

    def _absmax(self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], count: int) -> Any:
        nblocks = -(-count // self.blocksize)
        if not self.double_quant:
            return self.segment(segments, "absmax", "float32", nblocks)
        codes = self.segment(segments, "absmax_codes", "uint8", nblocks)
        nested = self.segment(segments, "absmax_scale", "float32", -(-nblocks // 256))
        offset = np.float32(self.param(params, "offset", float))
        return np.asarray(dequantize_absmax(offset, codes, nested), dtype=np.float32) if nblocks else codes[:0]

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        packed = self.segment(segments, "codes", "uint8", packed_size(count, self.bits))
        absmax = self._absmax(segments, params, count).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            v = dequantize_nf(packed, absmax, self.bits, self.blocksize, count)
            if dtype.itemsize == 2:  # a double-quantized absmax may exceed a 16-bit source's largest value
                top = float(ml_dtypes.finfo(dtype.numpy).max)  # type: ignore[no-untyped-call]
                np.clip(v, -top, top, out=v)
            return restore(v, dtype)

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """absmax_block * half the largest gap, plus the absmax error of double_quant, plus fp32 rounding."""
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32).astype(np.float64)
        true = block_absmax(x32, self.blocksize)
        arrays = {k: a for k, (_, a) in encoded.segments.items()}
        sent = self._absmax(arrays, encoded.params, x.size).astype(np.float64).reshape(-1)
        if sent.size < true.size:  # an empty tensor sends no statistics
            sent = np.concatenate([sent, np.zeros(true.size - sent.size)])
        absmax = per_element(true, self.blocksize, x.size)
        absmax_err = per_element(np.abs(sent - true), self.blocksize, x.size)
        slack = 4 * EPS32 * absmax + 4 * SUB32 + np.abs(x64 - x32)
        bound: np.ndarray[Any, Any] = (
            absmax * HALF_GAPS[self.bits] * (1 + 1e-5) + absmax_err + slack
        ) * rounding_factor(x.dtype)
        return bound
