"""``delta``: the first stage of a tensor sent as its difference from a reference the receiver holds.

Two modes. ``xor`` (the only stage) sends the bit patterns of the tensor XOR those of the
reference, in the tensor's dtype: exact for every dtype. ``sub`` (followed by the stages that
quantize it) hands on ``x - reference`` in float32 (float64 for float64 tensors) and rebuilds
``reference + decoded difference``, rounded once to the tensor's dtype. Each tensor's params name
the reference tensor (its dotted path) and the xxh3_64 digest of its bytes, so that a receiver
holding another reference is refused, not handed a wrong tensor. The stage itself only describes
the layout: ``tensorcodec.reference`` computes the differences and adds the reference back, since
a codec sees one flat array and the reference is not in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .. import dtypes
from ..dtypes import DType
from ..errors import DecodeError
from .base import FLOAT_SOURCES, Codec, Encoded, register_codec

MODES = ("xor", "sub")


@register_codec
class Delta(Codec):
    """The difference from a reference tensor: ``xor`` of bit patterns (exact) or ``sub`` before quantizing.

    Use it through ``encode(..., reference=model)`` and ``decode(..., reference=model)``; decoding
    a delta without the reference raises DecodeError saying so. Error bound: ``xor`` is exact;
    ``sub`` has the bound of the stages after it, taken on ``x - reference``, plus one rounding to
    the tensor's dtype.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> model = {"w": np.linspace(-1, 1, 8192, dtype=np.float32)}
        >>> update = {"w": model["w"] + np.float32(1e-3)}
        >>> message = tc.encode(update, reference=model, precision="nf4")
        >>> back = tc.decode(message, reference=model)["w"]
        >>> float(np.max(np.abs(back - update["w"]))) < 1e-4
        True
    """

    codec_id = "delta"
    lossless = False
    sources: ClassVar[frozenset[str]] = frozenset(row.name for row in dtypes.DTYPES)

    def __init__(self, mode: str = "sub") -> None:
        if mode not in MODES:
            raise ValueError(f"delta mode must be one of {MODES}, not {mode!r}")
        self.mode = mode

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 * dtype.itemsize

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]] | None:
        return {"data": ("payload", dtype.name, [count])} if self.mode == "xor" else None

    def output_dtype(self, dtype: DType) -> DType | None:
        if self.mode == "xor" or dtype.name not in FLOAT_SOURCES:
            return None
        return dtypes.BY_NAME["float64" if dtype.name == "float64" else "float32"]

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any] | None:
        return np.zeros(x.shape) if self.mode == "xor" else None

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        raise TypeError("a delta needs its reference: encode(tree, reference=model) computes it")

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        name = params.get("name")
        raise DecodeError(
            f"tensor {name!r} was sent as a difference from a reference model: "
            "decode(message, reference=<the model it was encoded against>)"
        )
