"""Precision codecs: the ``Codec`` base class, the registry, the chains and the built-in families.

One module per family (``cast``, ``fp8``, ``minmax``, ``blockwise8``, ``quant4``, ``delta``,
``hadamard``, ``nfk``, ``mx``, ``nvfp4``, ``entropy`` with its coder ``huffman``, ``sparse``) holds its codec
class; ``base`` holds ``Codec``, ``Encoded``, the registry and the helpers the families share;
``bits`` the bit packing; ``chain`` the stage chains and pre-encoded tensors; ``precisions`` the
short names. Importing this package registers the built-in codecs, in this order: cast, fp8,
minmax, blockwise8, quant4, delta, hadamard, nfk, mx, nvfp4, entropy, topk, randk, sign.
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
from .delta import Delta
from .hadamard import Hadamard
from .nfk import NFk
from .mx import MX
from .nvfp4 import NVFP4
from .entropy import Entropy
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
from .precisions import CHAINS, PRECISIONS, STAGES, precision_chain, precision_codec

"""The registry under its name from when the codecs were one module. Patching this name no longer swaps
the registry (``base.REGISTRY`` is the one the functions read); it only keeps such fixtures working."""

__all__ = [
    "Blockwise8",
    "build_codec",
    "BuiltCodecs",
    "Cast",
    "CHAINS",
    "check_coded",
    "check_layout",
    "Codec",
    "decode_batch",
    "decode_segments",
    "DecodeItem",
    "Delta",
    "encode_chain",
    "Encoded",
    "Entropy",
    "FLOAT_SOURCES",
    "FP8",
    "get_codec",
    "Hadamard",
    "MAX_STAGES",
    "MinMax",
    "MX",
    "NFk",
    "NVFP4",
    "pack_bits",
    "packed_size",
    "precision_chain",
    "precision_codec",
    "PRECISIONS",
    "Quant4",
    "Quantized",
    "RandK",
    "register_codec",
    "registered_codecs",
    "ScaledSign",
    "Segments",
    "STAGES",
    "TopK",
    "unpack_bits",
]
