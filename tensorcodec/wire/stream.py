"""The stream's frames and records (``docs/format.md`` section 9), and their validation.

A stream is a sequence of frames, each a 32-byte frame header and a body; the bodies joined are
records (a u32 length and a msgpack map: one per tensor, then the end record holding the tree),
each tensor record followed by its segment bytes. ``read_frame`` checks a frame's header against
the stream so far, and ``read_tensor_record`` / ``read_end_record`` check a record, limits
included, before anything is allocated for it. ``tensorcodec.stream`` builds the streaming API
on top of these.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack

from ..errors import ChecksumError, DecodeError
from .header import CHECKSUMS, EXPANSION_ALLOWANCE, Entry, Limits, Segment, parse_entry, read_msgpack

__all__ = [
    "STREAM_MAGIC",
    "STREAM_VERSION",
    "FIRST_FRAME",
    "LAST_FRAME",
    "FRAME",
    "FRAME_HEADER_SIZE",
    "LENGTH",
    "DEFAULT_MAX_FRAME_BYTES",
    "MIN_FRAME_BYTES",
    "MAX_FRAME_BYTES",
    "Framer",
    "Frame",
    "TensorRecord",
    "pack_record",
    "read_frame",
    "read_record",
    "read_tensor_record",
    "read_end_record",
]

STREAM_MAGIC = b"TCSF"
STREAM_VERSION = 1
FIRST_FRAME, LAST_FRAME = 1, 2
FRAME = struct.Struct("<4sBBHQIIII")
"""magic, version, flags, reserved, stream id, sequence number, body length, body crc32, reserved."""
FRAME_HEADER_SIZE = FRAME.size
LENGTH = struct.Struct("<I")
"""The length that precedes each record."""
DEFAULT_MAX_FRAME_BYTES = (4 << 20) - (64 << 10)
"""Fits gRPC's default 4 MiB message limit with room for its own framing."""
MIN_FRAME_BYTES = FRAME_HEADER_SIZE + 1
MAX_FRAME_BYTES = 1 << 31
_MAX_SEQUENCE = (1 << 32) - 1
_TENSOR_KEYS = frozenset({"index", "entry", "name", "checksum", "checksums"})
_END_KEYS = frozenset({"tree", "count"})


class Framer:
    """Cuts the stream body into frames; each byte is copied once, by the join that builds its frame."""

    def __init__(self, stream_id: int, body_max: int) -> None:
        self.stream_id = stream_id
        self.body_max = body_max
        self.seq = 0
        self.parts: list[Any] = []
        self.size = 0

    def add(self, data: Any) -> Iterator[bytes]:
        """Appends ``data``, yielding every frame it fills (a full frame leaves only when more follows)."""
        view = memoryview(data).cast("B")
        pos, n = 0, view.nbytes
        while pos < n:
            if self.size == self.body_max:
                yield self.flush(last=False)
            take = min(self.body_max - self.size, n - pos)
            self.parts.append(view[pos : pos + take] if take < n else view)
            self.size += take
            pos += take

    def flush(self, last: bool) -> bytes:
        if self.seq > _MAX_SEQUENCE:
            raise ValueError("the stream needs more than 2^32 frames: raise max_frame_bytes")
        crc = 0
        for part in self.parts:
            crc = zlib.crc32(part, crc)
        flags = (FIRST_FRAME if self.seq == 0 else 0) | (LAST_FRAME if last else 0)
        head = FRAME.pack(STREAM_MAGIC, STREAM_VERSION, flags, 0, self.stream_id, self.seq, self.size, crc, 0)
        frame = b"".join([head, *self.parts])
        self.parts = []
        self.size = 0
        self.seq += 1
        return frame


def _record(fields: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return LENGTH.pack(len(packed)) + packed


def pack_record(fields: dict[str, Any]) -> bytes:
    """A record: the u32 length and the msgpack map."""
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return LENGTH.pack(len(packed)) + packed


class Frame(NamedTuple):
    """A frame whose header ``read_frame`` accepted."""

    stream_id: int
    flags: int
    body: memoryview


def read_frame(frame: Any, seq: int, stream_id: int | None, last_seen: bool) -> Frame:
    """Frame number ``seq`` of the stream ``stream_id`` (None before the first), checked; DecodeError says why not."""
    view = memoryview(frame).cast("B")
    n = view.nbytes
    what = f"frame {seq}"
    if n < FRAME_HEADER_SIZE:
        raise DecodeError(f"{what}: {n} bytes, shorter than the {FRAME_HEADER_SIZE}-byte frame header")
    magic, version, flags, reserved, got_id, got_seq, length, crc, reserved2 = FRAME.unpack_from(view)
    if magic != STREAM_MAGIC:
        raise DecodeError(f"{what}: not a tensorcodec stream frame: magic {bytes(magic)!r}, expected {STREAM_MAGIC!r}")
    if version != STREAM_VERSION:
        raise DecodeError(f"{what}: stream version {version} is not supported (this tensorcodec reads 1)")
    if flags & ~(FIRST_FRAME | LAST_FRAME) or reserved or reserved2:
        raise DecodeError(f"{what}: unknown flags {flags:#x} or non-zero reserved fields")
    if last_seen:
        raise DecodeError(f"{what}: a frame after the last one (sequence {got_seq}, stream {got_id:#x})")
    if stream_id is None:
        if not flags & FIRST_FRAME or got_seq != 0:
            raise DecodeError(f"{what}: the stream does not start with its first frame (got sequence {got_seq})")
    elif got_id != stream_id:
        raise DecodeError(f"{what}: from stream {got_id:#x}, expected {stream_id:#x} (interleaved streams)")
    elif flags & FIRST_FRAME:
        raise DecodeError(f"{what}: flagged first in the middle of the stream")
    if got_seq != seq:
        raise DecodeError(f"{what}: sequence number {got_seq}, expected {seq} (frames lost, duplicated or reordered)")
    if length != n - FRAME_HEADER_SIZE:
        raise DecodeError(f"{what}: header says {length} body bytes, the frame has {n - FRAME_HEADER_SIZE}")
    body = view[FRAME_HEADER_SIZE:]
    computed = zlib.crc32(body)
    if computed != crc:
        raise ChecksumError(f"{what} body", crc, computed)
    return Frame(got_id, flags, body)


def _unique_map(items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    d = dict(items)
    if len(d) != len(items):
        raise DecodeError("duplicate key in a map")
    return d


def read_record(data: Any, number: int) -> dict[Any, Any]:
    """Record ``number``'s msgpack map."""
    what = f"record {number}"
    fields = read_msgpack(data, what, object_pairs_hook=_unique_map)
    if type(fields) is not dict:
        raise DecodeError(f"{what}: must be a msgpack map")
    if "tree" not in fields and "entry" not in fields:
        raise DecodeError(f"{what}: neither a tensor record nor the end record (keys {sorted(map(str, fields))})")
    return fields


class TensorRecord(NamedTuple):
    """A validated tensor record."""

    index: int  # type: ignore[assignment]  # shadows tuple.index: the name the format uses
    name: str | None
    entry: Entry
    segments: tuple[Segment, ...]
    """All of the entry's segments, in order (a raw tensor's one implicit segment included)."""
    checksum: str
    """The checksum algorithm, "" where the record carries none."""
    checksums: list[int] | None


def read_tensor_record(
    fields: dict[Any, Any], index: int, limits: Limits, first_segment: int, decoded: int, end: int
) -> TensorRecord:
    """Tensor record ``index``, checked: ``decoded`` bytes of tensors so far, ``end`` bytes of stream read."""
    what = f"tensor {index}"
    unknown = set(fields) - _TENSOR_KEYS
    if unknown:
        raise DecodeError(f"{what}: unknown record keys {sorted(map(str, unknown))}")
    if fields.get("index") != index or type(fields.get("index")) is not int:
        raise DecodeError(f"{what}: record says index {fields.get('index')!r}, expected {index}")
    if index >= limits.max_tensors:
        raise DecodeError(f"{what}: more than max_tensors={limits.max_tensors} tensors")
    name = fields.get("name")
    if name is not None and type(name) is not str:
        raise DecodeError(f"{what}: name must be a str")
    if "entry" not in fields:
        raise DecodeError(f"{what}: a tensor record needs an 'entry'")
    entry = parse_entry(fields["entry"], index, limits, first_segment)
    segments = entry.all_segments()
    sums: list[int] | None = None
    algorithm = ""
    if "checksum" in fields or "checksums" in fields:
        algorithm = fields.get("checksum")  # type: ignore[assignment]
        if type(algorithm) is not str or algorithm not in CHECKSUMS:
            raise DecodeError(f"{what}: unknown checksum algorithm {algorithm!r}; known: {sorted(CHECKSUMS)}")
        sums = fields.get("checksums")
        if type(sums) is not list or len(sums) != len(segments):
            raise DecodeError(f"{what}: 'checksums' must list one value per segment ({len(segments)})")
        if any(type(c) is not int or not 0 <= c < 1 << 64 for c in sums):
            raise DecodeError(f"{what}: checksums must be unsigned 64-bit integers")
    declared = sum(seg.nbytes for seg in segments)
    cap = limits.max_decoded_bytes
    if cap is None:
        cap = EXPANSION_ALLOWANCE * (end + declared) + (16 << 20)
    if decoded + entry.nbytes > cap:
        source = "max_decoded_bytes" if limits.max_decoded_bytes is not None else "64 x stream size + 16 MiB"
        raise DecodeError(
            f"{what}: decoded tensors would take {decoded + entry.nbytes} bytes, over the cap of {cap} "
            f"({source}); pass limits=Limits(max_decoded_bytes=...) to allow more"
        )
    return TensorRecord(index, name, entry, segments, algorithm, sums)


def read_end_record(fields: dict[Any, Any], count: int) -> bytes:
    """The tree's msgpack bytes from the end record of a stream that carried ``count`` tensors."""
    if set(fields) != _END_KEYS:
        raise DecodeError(f"end record: keys must be 'tree' and 'count', not {sorted(map(str, fields))}")
    tree, got = fields["tree"], fields["count"]
    if type(tree) is not bytes:
        raise DecodeError("end record: 'tree' must be binary msgpack")
    if type(got) is not int or got != count:
        raise DecodeError(f"end record: count {got!r}, but the stream carried {count} tensors")
    return tree
