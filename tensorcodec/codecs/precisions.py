"""Short precision names ("nf4", "bf16", ...) and the codecs or chains they stand for."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import Codec
from .blockwise8 import Blockwise8
from .cast import Cast
from .entropy import Entropy
from .fp8 import FP8
from .hadamard import Hadamard
from .minmax import MinMax
from .mx import MX
from .nfk import NFk
from .nvfp4 import NVFP4
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
    "nf2": lambda: NFk(2),
    "nf3": lambda: NFk(3),
    "nf5": lambda: NFk(5),
    "nf6": lambda: NFk(6),
    "mxfp8_e4m3": lambda: MX("e4m3"),
    "mxfp8_e5m2": lambda: MX("e5m2"),
    "mxfp6_e2m3": lambda: MX("e2m3"),
    "mxfp6_e3m2": lambda: MX("e3m2"),
    "mxfp4": lambda: MX("e2m1"),
    "mxint8": lambda: MX("int8"),
    "nvfp4": lambda: NVFP4(),
    "lossless": lambda: Entropy(),
    "topk10%": lambda: TopK(0.1),
    "topk1%": lambda: TopK(0.01),
    "topk0.1%": lambda: TopK(0.001),
    "randk10%": lambda: RandK(0.1),
    "randk1%": lambda: RandK(0.01),
    "sign": lambda: ScaledSign(),
    "sign1": lambda: ScaledSign(4096),
}
"""Short precision names accepted by ``encode(precision=...)`` and policies."""

STAGES: dict[str, Callable[[], Codec]] = {
    "hadamard64": lambda: Hadamard(64),
    "hadamard128": lambda: Hadamard(128),
    "hadamard256": lambda: Hadamard(256),
}
"""Short names of stages that only make sense before a quantizer in a chain (``["hadamard128", "nf4"]``)."""

CHAINS: dict[str, Sequence[str]] = {
    "hnf2": ("hadamard128", "nf2"),
    "hnf3": ("hadamard128", "nf3"),
    "hnf4": ("hadamard128", "nf4"),
    "hnf5": ("hadamard128", "nf5"),
    "hnf6": ("hadamard128", "nf6"),
    "hblockwise8": ("hadamard128", "blockwise8"),
}
"""Short names of chains: a rotation before a quantizer (``docs/codecs.md``, "hadamard")."""


def precision_codec(precision: str | Codec) -> Codec:
    """The codec for a short name (see PRECISIONS and STAGES) or a Codec instance."""
    if isinstance(precision, Codec):
        return precision
    make = (PRECISIONS.get(precision) or STAGES.get(precision)) if isinstance(precision, str) else None
    if make is None:
        known = sorted([*PRECISIONS, *CHAINS, *STAGES])
        raise ValueError(f"unknown precision {precision!r}; choose one of {known} or pass a Codec")
    return make()


def precision_chain(precision: str | Codec) -> list[Codec]:
    """The codecs of a short name (a chain name of CHAINS gives several), or ``[codec]`` for a Codec."""
    if isinstance(precision, str) and precision in CHAINS:
        return [precision_codec(name) for name in CHAINS[precision]]
    return [precision_codec(precision)]
