"""tensorcodec's exceptions: a shallow tree that subclasses the builtins."""

from __future__ import annotations

__all__ = ["DecodeError", "ChecksumError", "UnknownCodecError"]


class DecodeError(ValueError):
    """A message is malformed, hostile, truncated or over a limit.

    It is the only exception that ``decode`` raises for bad input; the text
    names the field or segment at fault.

    Examples:
        >>> import tensorcodec as tc
        >>> try:
        ...     tc.decode(b"TCDC" + bytes(12))
        ... except tc.DecodeError as e:
        ...     print("refused:", e)
        refused: ...
    """


class ChecksumError(DecodeError):
    """A segment's stored checksum differs from the one computed on arrival.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> message = bytearray(tc.encode({"w": np.zeros(64)}, checksum="crc32c"))
        >>> message[-1] ^= 1
        >>> tc.decode(message)
        Traceback (most recent call last):
            ...
        tensorcodec.errors.ChecksumError: ...
    """

    def __init__(self, what: str, stored: int, computed: int) -> None:
        super().__init__(f"checksum mismatch in {what}: stored {stored:#x}, computed {computed:#x}")
        self.stored = stored
        self.computed = computed


class UnknownCodecError(DecodeError):
    """A message names a codec that is not registered in this process.

    Examples:
        >>> import tensorcodec as tc
        >>> issubclass(tc.UnknownCodecError, tc.DecodeError)
        True
    """

    def __init__(self, codec_id: str, hint: str = "") -> None:
        msg = f"unknown codec {codec_id!r}"
        msg += f": {hint}" if hint else ": register it with tensorcodec.register_codec() before decoding"
        super().__init__(msg)
        self.codec_id = codec_id
