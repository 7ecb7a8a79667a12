"""Precision codecs: the ``Codec`` base class, the registry, the chains and the built-in families.

One module per family (``cast``, ``fp8``, ``minmax``, ``blockwise8``, ``quant4``) holds its
codec class; ``base`` holds ``Codec``, ``Encoded``, the registry and the helpers the families
share; ``bits`` the bit packing; ``chain`` the stage chains and pre-encoded tensors;
``precisions`` the short names. Importing this package registers the built-in codecs, in
this order: cast, fp8, minmax, blockwise8, quant4,
topk, randk, sign (``sparse``).
"""

from __future__ import annotations

from .base import (
    FLOAT_SOURCES,
    Codec,
    DecodeItem,
    Encoded,
    Segments,
    get_codec,
    register_codec,
    registered_codecs,
)
from .bits import pack_bits, packed_size, unpack_bits

# isort: off
# Importing a family registers it: this order is the registry's (and registered_codecs()') order.
from .cast import Cast
from .fp8 import FP8
from .minmax import MinMax
from .blockwise8 import Blockwise8
from .quant4 import Quant4
from .sparse import RandK, ScaledSign, TopK

# isort: on
from .chain import (
    MAX_STAGES,
    BuiltCodecs,
    Quantized,
    build_codec,
    check_coded,
    check_layout,
    decode_batch,
    decode_segments,
    encode_chain,
)
from .precisions import PRECISIONS, precision_codec

"""The registry under its name from when the codecs were one module. Patching this name no longer swaps
the registry (``base.REGISTRY`` is the one the functions read); it only keeps such fixtures working."""

__all__ = [
    "Codec",
    "Encoded",
    "Quantized",
    "register_codec",
    "get_codec",
    "registered_codecs",
    "Cast",
    "FP8",
    "MinMax",
    "Blockwise8",
    "Quant4",
    "TopK",
    "RandK",
    "ScaledSign",
    "PRECISIONS",
    "precision_codec",
    "FLOAT_SOURCES",
    "Segments",
    "DecodeItem",
    "pack_bits",
    "unpack_bits",
    "packed_size",
    "MAX_STAGES",
    "BuiltCodecs",
    "build_codec",
    "decode_segments",
    "check_coded",
    "check_layout",
    "decode_batch",
    "encode_chain",
]
