"""Short precision names ("nf4", "bf16", ...) and the codecs they stand for."""

from __future__ import annotations

from collections.abc import Callable

from .base import Codec
from .blockwise8 import Blockwise8
from .cast import Cast
from .fp8 import FP8
from .minmax import MinMax
from .quant4 import Quant4
from .sparse import RandK, ScaledSign, TopK

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
    "topk10%": lambda: TopK(0.1),
    "topk1%": lambda: TopK(0.01),
    "topk0.1%": lambda: TopK(0.001),
    "randk10%": lambda: RandK(0.1),
    "randk1%": lambda: RandK(0.01),
    "sign": lambda: ScaledSign(),
    "sign1": lambda: ScaledSign(4096),
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
