"""A user's codec: one sign bit per element and one scale per tensor (scaled signSGD).

x̂ = scale · sign(x) with scale = mean(|x|), so |x - x̂| = | |x| - scale |: the error bound it states.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tensorcodec as tc
from tensorcodec.codecs import pack_bits, packed_size, unpack_bits
from tensorcodec.dtypes import DType


@tc.register_codec
class SignCodec(tc.Codec):
    codec_id = "halfsign.sign"  # a plugin's ids carry its package name

    def get_config(self) -> dict[str, Any]:
        return {}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 1.0 + 72.0 / max(count, 1)

    def encode(self, x: np.ndarray) -> tc.Encoded:
        values = x.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("halfsign.sign takes finite values only")
        scale = float(np.float32(np.abs(values, dtype=np.float64).mean())) if values.size else 0.0
        negative = (values.view(np.uint32) >> 31).astype(np.uint8)  # the sign bit, -0.0 included
        return tc.Encoded({"signs": ("payload", pack_bits(negative, 1))}, {"scale": scale})

    def decode(self, segments: dict[str, np.ndarray], params: dict[str, Any], dtype: DType, count: int) -> np.ndarray:
        signs = self.segment(segments, "signs", "uint8", packed_size(count, 1))
        scale = np.float32(self.param(params, "scale", float))
        if not np.isfinite(scale) or scale < 0:
            raise tc.DecodeError(f"halfsign.sign: scale {scale} is not a finite non-negative number")
        negative = unpack_bits(signs, 1, count).astype(bool)
        return np.where(negative, -scale, scale).astype(dtype.numpy)

    def error_bound(self, x: np.ndarray, encoded: tc.Encoded) -> np.ndarray:
        scale = np.float32(encoded.params["scale"])
        values = x.astype(np.float64)
        tiny = float(np.finfo(x.dtype).smallest_subnormal)  # rounding x̂ to a subnormal of x.dtype
        return np.abs(np.abs(values) - float(scale)) * (1 + 2**-20) + 2.0 * np.finfo(x.dtype).eps * float(scale) + tiny
