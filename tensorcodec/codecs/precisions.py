"""Short precision names ("nf4", "bf16", ...) and the codecs they stand for."""

from __future__ import annotations

from collections.abc import Callable

from .base import Codec
from .blockwise8 import Blockwise8
from .cast import Cast
from .entropy import Entropy
from .fp8 import FP8
from .minmax import MinMax
from .quant4 import Quant4

PRECISIONS: dict[str, Callable[[], Codec]] = {
    "fp16": lambda: Cast("float16"),
    "bf16": lambda: Cast("bfloat16"),
    "fp8_e4m3": lambda: FP8("e4m3"),
    "fp8_e5m2": lambda: FP8("e5m2"),
    "blockwise8": lambda: Blockwise8(),
    "nf4": lambda: Quant4("nf4"),
    "fp4": lambda: Quant4("fp4"),
    "minmax8": lambda: MinMax(8),
    "minmax4": lambda: MinMax(4),
    "minmax2": lambda: MinMax(2),
    "minmax1": lambda: MinMax(1),
    "lossless": lambda: Entropy(),
}
"""Short precision names accepted by ``encode(precision=...)`` and policies."""


def precision_codec(precision: str | Codec) -> Codec:
    """The codec for a short name (see PRECISIONS) or a Codec instance."""
    if isinstance(precision, Codec):
        return precision
    make = PRECISIONS.get(precision) if isinstance(precision, str) else None
    if make is None:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)} or pass a Codec")
    return make()
