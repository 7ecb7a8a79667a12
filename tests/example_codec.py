"""A 1-bit "sign + scale" codec (scaled signSGD): the worked example of docs/codecs.md."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

import tensorcodec as tc
from tensorcodec.codecs import pack_bits, packed_size, unpack_bits
from tensorcodec.dtypes import DType
from tensorcodec.errors import DecodeError


@tc.register_codec
class SignScale(tc.Codec):
    """One bit per element (the sign bit) and one per-tensor scale.

    x̂ = -scale where x has its sign bit set (-0.0 included), else +scale, so
    |x - x̂| = | |x| - scale |. With ``norm="l1"`` the scale is mean(|x|) and
    sum(|x̂|) = sum(|x|); with ``norm="l2"`` it is sqrt(mean(x²)) and
    ||x̂||₂ = ||x||₂ (both before the final cast to the source dtype).
    NaN/Inf inputs are refused with ValueError.
    """

    codec_id = "example.sign_scale"  # prefix a plugin's ids with its package name

    def __init__(self, norm: str = "l1") -> None:
        if norm not in ("l1", "l2"):
            raise ValueError(f"sign_scale norm must be 'l1' or 'l2', not {norm!r}")
        self.norm = norm

    def get_config(self) -> dict[str, Any]:
        return {"norm": self.norm}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 1.0 + 72.0 / max(count, 1)  # the scale travels as a 9-byte msgpack float

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"signs": ("payload", "uint8", [packed_size(count, 1)])}

    def predicted_params(self) -> dict[str, Any]:
        return {"scale": 0.0}  # any float packs to the same 9 bytes

    def error_bound(self, x: np.ndarray[Any, Any], encoded: tc.Encoded) -> np.ndarray[Any, Any]:
        """| |x| - scale | at each element, with the scale as the source dtype holds it."""
        scale = float(np.array(encoded.params["scale"]).astype(x.dtype))
        bound: np.ndarray[Any, Any] = np.abs(np.abs(x.astype(np.float64)) - scale) * (1 + 1e-12)
        return bound

    def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
        x64 = x.astype(np.float64)
        if x.size == 0:
            scale = 0.0
        elif self.norm == "l1":
            scale = float(np.mean(np.abs(x64)))
        else:
            scale = float(np.sqrt(np.mean(np.square(x64))))
        if not math.isfinite(scale):
            raise ValueError("sign_scale cannot encode NaN or Inf values")
        signs = pack_bits(np.signbit(x64).astype(np.uint8), 1)
        return tc.Encoded({"signs": ("payload", signs)}, {"scale": scale})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        # Everything below comes from the wire: check it before use.
        signs = self.segment(segments, "signs", "uint8", packed_size(count, 1))
        scale = self.param(params, "scale", float)
        if not (math.isfinite(scale) and scale >= 0):
            raise DecodeError(f"parameter 'scale' is {scale!r}, expected a finite value >= 0")
        negative = unpack_bits(signs, 1, count).astype(bool)
        values = np.where(negative, -scale, scale)
        return values.astype(dtype.numpy)
