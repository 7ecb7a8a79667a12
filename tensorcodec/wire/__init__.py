"""The byte format in one place: the message header, the tree packing and the stream records.

``header``: a message's preamble, msgpack header and segment layout (``docs/format.md``); the
whole message is validated in one pass (limits, entries, layout, padding, checksums) before any
tensor is built. ``tree``: the tree of containers and scalars as msgpack with tensor
references, ``flatten`` on encode and ``unflatten`` on decode. ``stream``: the frames and
records of a stream (``docs/format.md`` section 9), each validated before anything is
allocated for it.

The header's names are re-exported here, so ``tensorcodec.wire.parse_message`` reads as before.
"""

from __future__ import annotations

from .header import (
    ALIGN,
    CHECKSUMS,
    DEFAULT_LIMITS,
    EXPANSION_ALLOWANCE,
    MAGIC,
    MAX_VALUE_DEPTH,
    PREAMBLE_SIZE,
    ROLES,
    VERSION,
    ZEROS,
    Budget,
    Entry,
    Header,
    Limits,
    Segment,
    aligned,
    check_depth,
    check_values,
    copy_frames,
    pack_header,
    packb,
    parse_entry,
    parse_message,
    read_entry,
    read_msgpack,
)
from .rope import Rope

__all__ = [
    "ALIGN",
    "CHECKSUMS",
    "DEFAULT_LIMITS",
    "EXPANSION_ALLOWANCE",
    "MAGIC",
    "MAX_VALUE_DEPTH",
    "PREAMBLE_SIZE",
    "ROLES",
    "VERSION",
    "ZEROS",
    "Budget",
    "Entry",
    "Header",
    "Limits",
    "Rope",
    "Segment",
    "aligned",
    "check_values",
    "check_depth",
    "copy_frames",
    "pack_header",
    "packb",
    "parse_entry",
    "parse_message",
    "read_entry",
    "read_msgpack",
]
