"""tensorcodec: messages of tensors to compact bytes and back, safely."""

from __future__ import annotations

from .core import decode, encode, encode_frames, encode_into
from .dtypes import DTYPES, DType
from .errors import ChecksumError, DecodeError, UnknownCodecError
from .wire import Limits

from ._version import __version__

__all__ = [
    "__version__",
    "encode",
    "encode_frames",
    "encode_into",
    "decode",
    "Limits",
    "DecodeError",
    "ChecksumError",
    "UnknownCodecError",
    "DType",
    "DTYPES",
]
