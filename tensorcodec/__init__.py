"""tensorcodec: messages of tensors to compact bytes and back, safely."""

from __future__ import annotations

from ._c import native_enabled, set_native
from ._version import __version__
from .aggregation import Aggregator, aggregate
from .budget import BudgetPolicy, budget_policy
from .codecs import (
    FP8,
    PRECISIONS,
    Blockwise8,
    Cast,
    Codec,
    Encoded,
    Entropy,
    MinMax,
    Quant4,
    Quantized,
    RandK,
    ScaledSign,
    TopK,
    get_codec,
    register_codec,
    registered_codecs,
)
from .core import decode, encode, encode_frames, encode_into
from .dtypes import DTYPES, DType
from .errors import ChecksumError, DecodeError, UnknownCodecError
from .feedback import ErrorFeedback
from .files import dump, load
from .policy import DEFAULT_MIN_ELEMENTS, Policy
from .stream import DEFAULT_MAX_FRAME_BYTES, StreamDecoder, StreamTensor, decode_stream, encode_stream
from .wire.header import Limits

__all__ = [
    "__version__",
    "encode",
    "encode_frames",
    "encode_into",
    "decode",
    "encode_stream",
    "decode_stream",
    "StreamDecoder",
    "StreamTensor",
    "DEFAULT_MAX_FRAME_BYTES",
    "dump",
    "load",
    "Limits",
    "Policy",
    "ErrorFeedback",
    "Aggregator",
    "aggregate",
    "budget_policy",
    "BudgetPolicy",
    "DEFAULT_MIN_ELEMENTS",
    "PRECISIONS",
    "Codec",
    "Encoded",
    "register_codec",
    "get_codec",
    "registered_codecs",
    "Cast",
    "FP8",
    "MinMax",
    "Blockwise8",
    "Quant4",
    "Entropy",
    "TopK",
    "RandK",
    "ScaledSign",
    "Quantized",
    "DecodeError",
    "ChecksumError",
    "UnknownCodecError",
    "DType",
    "DTYPES",
    "set_native",
    "native_enabled",
]
