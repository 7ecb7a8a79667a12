"""Takes messages and streams apart and puts them back together, checks recomputed.

A mutant that fails the header CRC, a frame CRC or a segment checksum tests nothing past that
check; so the mutator edits the parsed structure and these functions re-pack it, relaying the
segments out to the sizes the (mutated) table declares and recomputing every CRC and checksum.
``pack`` is a msgpack writer of its own, so that a mutant can hold what msgpack-python refuses
to write: duplicate keys (``Pairs``), nesting past its 512 levels and arbitrary bytes (``Raw``).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from typing import Any, NamedTuple

import msgpack

from tensorcodec import DTYPES
from tensorcodec.wire.header import CHECKSUMS

PREAMBLE = struct.Struct("<4sBBHII")
FRAME = struct.Struct("<4sBBHQIIII")
LENGTH = struct.Struct("<I")
ITEMSIZE = {d.name: d.itemsize for d in DTYPES}
ALIGN = 64
MAX_SEGMENT_BYTES = 1 << 20
"""Segment bytes a re-laid-out mutant may hold; a table declaring more keeps its old segments."""


class Raw(bytes):
    """Bytes that ``pack`` writes verbatim (a pre-packed, possibly invalid, msgpack value)."""


class Pairs(list):  # type: ignore[type-arg]
    """A map written pair by pair, in order: it may repeat a key."""


def _head(small: int, fix: int, codes: tuple[int, int, int], n: int) -> bytes:
    if n < small:
        return bytes([fix | n])
    if n < 1 << 8 and codes[0]:
        return bytes([codes[0], n])
    if n < 1 << 16:
        return bytes([codes[1]]) + n.to_bytes(2, "big")
    return bytes([codes[2]]) + n.to_bytes(4, "big")


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (dict, Pairs, list, tuple, str, bytes, int, float, bool, None, ExtType, Raw).

    msgpack-python writes all but Raw and Pairs, which go in as placeholders replaced afterwards
    (an ext value tagged with a random prefix); what it refuses (huge ints, lone surrogates) takes the slow path.
    """
    subs: list[bytes] = []
    prefix = os.urandom(4)

    def default(o: Any) -> Any:
        if isinstance(o, (Raw, Pairs)):
            subs.append(bytes(o) if isinstance(o, Raw) else _slow(o))
            return msgpack.ExtType(99, prefix + (len(subs) - 1).to_bytes(4, "little"))
        if isinstance(o, tuple):
            return list(o)
        if isinstance(o, (bytearray, memoryview)):
            return bytes(o)
        raise TypeError(type(o).__name__)

    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True, default=default)
    except (OverflowError, ValueError, TypeError):
        return _slow(obj)
    if not subs:
        return out
    parts = re.split(b"\xd7\x63" + re.escape(prefix) + b"(.{4})", out, flags=re.DOTALL)
    for i in range(1, len(parts), 2):  # one pass: the odd parts are the placeholders' indices
        parts[i] = subs[int.from_bytes(parts[i], "little")]
    return b"".join(parts)


def _slow(obj: Any) -> bytes:
    out: list[bytes] = []
    _pack(obj, out)
    return b"".join(out)


def _pack(obj: Any, out: list[bytes]) -> None:
    if isinstance(obj, Raw):
        out.append(bytes(obj))
    elif isinstance(obj, (dict, Pairs)):
        items = list(obj.items()) if isinstance(obj, dict) else list(obj)
        out.append(_head(16, 0x80, (0, 0xDE, 0xDF), len(items)))
        for k, v in items:
            _pack(k, out)
            _pack(v, out)
    elif isinstance(obj, msgpack.ExtType):
        out.append(_ext_head(obj.code, len(obj.data)) + obj.data)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(16, 0x90, (0, 0xDC, 0xDD), len(obj)))
        for v in obj:
            _pack(v, out)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        out.append(_head(32, 0xA0, (0xD9, 0xDA, 0xDB), len(data)) + data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        n = len(data)
        out.append((bytes([0xC4, n]) if n < 256 else _head(0, 0, (0xC4, 0xC5, 0xC6), n)) + data)
    elif isinstance(obj, (bool, type(None))) or (isinstance(obj, int) and -(1 << 63) <= obj < 1 << 64):
        out.append(msgpack.packb(obj))
    elif isinstance(obj, float):
        out.append(b"\xcb" + struct.pack(">d", obj))
    else:  # an int outside msgpack's range: the nearest edge
        out.append(msgpack.packb((1 << 64) - 1 if obj > 0 else -(1 << 63)))


def _ext_head(code: int, n: int) -> bytes:
    code_b = (code & 0xFF).to_bytes(1, "big")
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes([fixed[n]]) + code_b
    if n < 1 << 8:
        return bytes([0xC7, n]) + code_b
    if n < 1 << 16:
        return b"\xc8" + n.to_bytes(2, "big") + code_b
    return b"\xc9" + n.to_bytes(4, "big") + code_b


def unpack(data: bytes) -> Any:
    """The value, with maps that may have any key and ext values kept as ExtType; raises on bad input."""
    return msgpack.unpackb(data, strict_map_key=False, raw=False, use_list=True)


def nbytes(dtype: Any, shape: Any) -> int:
    """Bytes a segment of this dtype and shape declares; 0 where it says nothing sensible."""
    if not isinstance(dtype, str) or dtype not in ITEMSIZE or not isinstance(shape, list):
        return 0
    n = ITEMSIZE[dtype]
    for d in shape:  # stops at the first bad or too large dimension: mutants carry huge ints and long shapes
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            return 0
        n *= d
        if n > 1 << 24:
            return 0  # larger would not fit the message anyway
    return n


def segment_sizes(entry: Any) -> list[int]:
    """Bytes of each segment a table entry declares (one for a raw entry)."""
    if not isinstance(entry, list) or len(entry) < 2:
        return []
    if len(entry) == 4 and isinstance(entry[3], list):
        return [nbytes(s[2], s[3]) if isinstance(s, list) and len(s) == 4 else 0 for s in entry[3]]
    return [nbytes(entry[0], entry[1])]


def checksum_of(algorithm: str, data: bytes) -> int:
    return CHECKSUMS[algorithm](data) if algorithm in CHECKSUMS else 0


class Message(NamedTuple):
    header: dict[str, Any]
    tree: Any
    segments: list[bytes]


def parse_message(data: bytes) -> Message | None:
    """The parts of a message that tensorcodec could have written, or None."""
    if len(data) < PREAMBLE.size or data[:4] != b"TCDC":
        return None
    size = PREAMBLE.unpack_from(data)[4]
    try:
        header = unpack(data[16 : 16 + size])
        tree = unpack(header["tree"]) if isinstance(header.get("tree"), bytes) else header.get("tree")
    except Exception:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        return None
    segments, pos = [], 16 + size
    for entry in header["tensors"]:
        for n in segment_sizes(entry):
            start = (pos + ALIGN - 1) & -ALIGN if n else pos
            segments.append(data[start : start + n])
            pos = start + n
    return Message(header, tree, segments)


def build_message(msg: Message, fix_sums: bool = True, fix_crc: bool = True, relayout: bool = True) -> bytes:
    """The message's bytes: segments resized to what the table declares, padding, checksums and CRC redone."""
    header = dict(msg.header)
    segments = list(msg.segments)
    sizes = [n for e in header.get("tensors", []) for n in segment_sizes(e)] if relayout else []
    if relayout and sum(sizes) <= MAX_SEGMENT_BYTES:
        segments = [_resized(segments[i] if i < len(segments) else b"", n, i) for i, n in enumerate(sizes)]
    if msg.tree is not None and not isinstance(msg.tree, bytes):
        header["tree"] = pack(msg.tree)
    if fix_sums and isinstance(header.get("checksum"), str) and header["checksum"] in CHECKSUMS:
        header["checksums"] = [checksum_of(header["checksum"], s) for s in segments]
    body = pack(header)
    crc = zlib.crc32(body) if fix_crc else zlib.crc32(body) ^ 1
    out = [PREAMBLE.pack(b"TCDC", 1, 0, 0, len(body), crc), body]
    pos = 16 + len(body)
    for s in segments:
        if s:
            pad = -pos % ALIGN
            out.append(bytes(pad))
            pos += pad
        out.append(s)
        pos += len(s)
    return b"".join(out)


_FILL = bytes((i * 11 + 7) & 0xFF for i in range(512))


def _resized(data: bytes, n: int, salt: int) -> bytes:
    """``data`` cut or extended to ``n`` bytes (with a pattern that depends on ``salt``)."""
    if len(data) >= n:
        return data[:n]
    fill = _FILL[salt % 256 : salt % 256 + 256]
    return data + (fill * ((n - len(data)) // 256 + 1))[: n - len(data)]


class Record(NamedTuple):
    fields: Any
    segments: list[bytes]


def parse_stream(data: bytes) -> tuple[int, list[Record]] | None:
    """The stream id and records of a concatenation of frames, or None."""
    body, pos, stream_id = [], 0, 0
    while pos + FRAME.size <= len(data):
        head = FRAME.unpack_from(data, pos)
        if head[0] != b"TCSF":
            return None
        stream_id = head[4]
        body.append(data[pos + FRAME.size : pos + FRAME.size + head[6]])
        pos += FRAME.size + head[6]
    joined = b"".join(body)
    records, p = [], 0
    while p + 4 <= len(joined):
        n = LENGTH.unpack_from(joined, p)[0]
        try:
            fields = unpack(joined[p + 4 : p + 4 + n])
        except Exception:
            return None
        p += 4 + n
        segments = []
        if isinstance(fields, dict) and "entry" in fields:
            for size in segment_sizes(fields["entry"]):
                segments.append(joined[p : p + size])
                p += size
        records.append(Record(fields, segments))
    return stream_id, records


def split_frames(data: bytes) -> list[bytes]:
    """Frames by their header's length field; what does not parse goes as one last frame."""
    frames, pos = [], 0
    while pos < len(data):
        n = FRAME.unpack_from(data, pos)[6] + FRAME.size if pos + FRAME.size <= len(data) else len(data) - pos
        frames.append(data[pos : pos + n])
        pos += n
    return frames


def build_stream(stream_id: int, records: list[Record], body_max: int, fix_sums: bool = True) -> bytes:
    """Frames of at most ``body_max`` body bytes holding the records, segments resized and checks redone."""
    parts, total = [], 0
    for rec in records:
        fields, segments = rec.fields, list(rec.segments)
        if isinstance(fields, dict) and "entry" in fields:
            sizes = segment_sizes(fields["entry"])
            total += sum(sizes)
            if total <= MAX_SEGMENT_BYTES:
                segments = [_resized(segments[i] if i < len(segments) else b"", n, i) for i, n in enumerate(sizes)]
            if fix_sums and isinstance(fields.get("checksum"), str) and fields["checksum"] in CHECKSUMS:
                fields = {**fields, "checksums": [checksum_of(fields["checksum"], s) for s in segments]}
        packed = pack(fields)
        parts.append(LENGTH.pack(len(packed)) + packed + b"".join(segments))
    return frame(b"".join(parts), stream_id, body_max)


def frame(body: bytes, stream_id: int, body_max: int) -> bytes:
    chunks = [body[i : i + body_max] for i in range(0, len(body), max(body_max, 1))] or [b""]
    out = []
    for seq, chunk in enumerate(chunks):
        flags = (1 if seq == 0 else 0) | (2 if seq == len(chunks) - 1 else 0)
        out.append(FRAME.pack(b"TCSF", 1, flags, 0, stream_id, seq, len(chunk), zlib.crc32(chunk), 0) + chunk)
    return b"".join(out)
