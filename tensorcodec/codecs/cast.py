"""``cast``: a narrower float (float16, bfloat16), finite values clamped to its range."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

from .. import dtypes
from ..dtypes import DType
from .base import Codec, Encoded, register_codec, rounding_factor


@register_codec
class Cast(Codec):
    """Cast to a narrower float: ``float16`` or ``bfloat16``, finite values clamped to the target's range.

    Error bound: round to nearest even, so |x - x̂| <= 2^-11 |x| (fp16) or 2^-8 |x|
    (bf16) for values in the target's normal range, and <= half the smallest
    subnormal (2^-25 fp16, 2^-134 bf16) below it; finite values beyond the
    largest finite value (65504 fp16, about 3.39e38 bf16) become that value with
    their sign, never Inf. NaN and ±Inf are kept.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.full(4096, 1 / 3, np.float32)
        >>> y = tc.decode(tc.encode({"x": x}, precision=tc.Cast("bfloat16")))["x"]
        >>> y.dtype, float(y[0]), bool(np.all(np.abs(x - y) <= 2**-8 * np.abs(x)))
        (dtype('float32'), 0.333984375, True)
    """

    codec_id = "cast"
    contractive = True
    _TARGETS: ClassVar[dict[str, float]] = {
        "float16": 65504.0,
        "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),  # type: ignore[no-untyped-call]
    }
    """Target -> its largest finite value, the clamp for finite inputs."""

    def __init__(self, to: str) -> None:
        if to not in self._TARGETS:
            raise ValueError(f"cast target must be one of {sorted(self._TARGETS)}, not {to!r}")
        self.to = to
        self._target = dtypes.BY_NAME[to]

    def get_config(self) -> dict[str, Any]:
        return {"to": self.to}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 * self._target.itemsize

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"data": ("payload", self.to, [count])}

    def output_dtype(self, dtype: DType) -> DType:
        return self._target

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """2^-11 |x| (fp16) / 2^-8 |x| (bf16) in the normal range, half the smallest subnormal below it;
        finite values beyond the largest become it (never Inf); NaN and ±Inf are kept."""
        x64 = x.astype(np.float64)
        fi: Any = ml_dtypes.finfo(self._target.numpy)  # type: ignore[no-untyped-call]
        rel = 2.0**-11 if self.to == "float16" else 2.0**-8
        with np.errstate(invalid="ignore", over="ignore"):
            # (1 + 2^-14): float64 -> bfloat16 goes through float32 in ml_dtypes, a second rounding of <= 2^-150.
            bound: np.ndarray[Any, Any] = np.maximum(rel * np.abs(x64), float(fi.smallest_subnormal) / 2) * (
                1 + 2.0**-14
            )
            bound *= rounding_factor(x.dtype)
            beyond = np.isfinite(x64) & (np.abs(x64) > float(fi.max))
            clamp = float(np.array(fi.max, dtype=self._target.numpy).astype(x.dtype))
            bound[beyond] = np.abs(x64[beyond] - np.sign(x64[beyond]) * clamp)  # exactly the clamp
        bound[~np.isfinite(x64)] = 0.0
        return bound

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        limit = self._TARGETS[self.to]
        wide = x if x.dtype.itemsize >= 4 else x.astype(np.float32)  # clip where the limit is exact
        out = np.clip(wide, -limit, limit).astype(self._target.numpy)
        infinite = np.isinf(wide)
        if infinite.any():
            out[infinite] = wide[infinite]
        return Encoded({"data": ("payload", out)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        data = self.segment(segments, "data", self.to, count)
        out: np.ndarray[Any, Any] = data.astype(dtype.numpy)
        if dtype.name == "float16" and self.to == "bfloat16":
            # bf16 rounds fp16's largest values up past 65504: clamp them, as encode does, rather than give Inf.
            over = np.isinf(out) & np.isfinite(data)
            if over.any():
                out[over] = np.copysign(np.float16(65504), data[over].astype(np.float32))
        return out
