"""tensorcodec's exceptions: a shallow tree that subclasses the builtins."""

from __future__ import annotations

__all__ = ["DecodeError", "ChecksumError", "UnknownCodecError"]


class DecodeError(ValueError):
    """A message is malformed, hostile, truncated or over a limit.

    It is the only exception that ``decode`` raises for bad input; the text
    names the field or segment at fault.
    """


class ChecksumError(DecodeError):
    """A segment's stored checksum differs from the one computed on arrival."""

    def __init__(self, what: str, stored: int, computed: int) -> None:
        super().__init__(f"checksum mismatch in {what}: stored {stored:#x}, computed {computed:#x}")
        self.stored = stored
        self.computed = computed


class UnknownCodecError(DecodeError):
    """A message names a codec that is not registered in this process."""

    def __init__(self, codec_id: str, hint: str = "") -> None:
        msg = f"unknown codec {codec_id!r}"
        msg += f": {hint}" if hint else ": register it with tensorcodec.register_codec() before decoding"
        super().__init__(msg)
        self.codec_id = codec_id
