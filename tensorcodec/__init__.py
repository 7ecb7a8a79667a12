"""tensorcodec: messages of tensors to compact bytes and back, safely."""

from __future__ import annotations

from ._c import native_enabled, set_native
from ._version import __version__
from .codecs import (
    FP8,
    PRECISIONS,
    Blockwise8,
    Cast,
    Codec,
    Encoded,
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
from .policy import DEFAULT_MIN_ELEMENTS, Policy
from .stream import DEFAULT_MAX_FRAME_BYTES, StreamDecoder, StreamTensor, decode_stream, dump, encode_stream, load
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
