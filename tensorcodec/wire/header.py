"""Wire format v1: the byte layout of a message, and its validation in one pass.

A message is a 16-byte preamble, a msgpack header and the tensor segments,
each segment starting at a multiple of 64 bytes. ``docs/format.md`` is the
normative description; this module is its implementation. Every field read
from the wire is checked here before anything is allocated for it: ``parse_message`` checks
the preamble, the header, every entry, the layout, the padding and the checksums, and only
then does decode build a tensor.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np

from .. import _c, dtypes
from ..dtypes import DType
from ..errors import ChecksumError, DecodeError
from .rope import Rope

__all__ = [
    "MAGIC",
    "VERSION",
    "ALIGN",
    "PREAMBLE_SIZE",
    "Limits",
    "Segment",
    "Entry",
    "Header",
    "CHECKSUMS",
    "pack_header",
    "parse_message",
    "parse_entry",
    "read_entry",
    "aligned",
    "copy_frames",
    "ZEROS",
    "ROLES",
    "EXPANSION_ALLOWANCE",
    "DEFAULT_LIMITS",
    "NO_ROUTES",
    "packb",
    "MAX_VALUE_DEPTH",
    "read_msgpack",
    "check_depth",
    "Budget",
    "check_values",
]

MAGIC = b"TCDC"
VERSION = 1
ALIGN = 64
_PREAMBLE = struct.Struct("<4sBBHII")  # magic, version, flags, reserved, header length, header crc32
PREAMBLE_SIZE = _PREAMBLE.size
_MAX_SIZE = (1 << 63) - 1
ZEROS = bytes(ALIGN)
ROLES = ("payload", "meta")
EXPANSION_ALLOWANCE = 64
"""Without an explicit cap, decoded tensors may take this many times the message's size (+16 MiB)."""


def aligned(offset: int) -> int:
    return (offset + ALIGN - 1) & -ALIGN


@dataclass(frozen=True)
class Limits:
    """Bounds that a decoder enforces before it allocates anything.

    The defaults accept any message that tensorcodec's own encoder produces for
    models up to the terabyte range while refusing headers built to exhaust
    memory or CPU. Raise them for unusual messages; lower them for untrusted
    peers.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> message = tc.encode({"w": np.zeros(1 << 18)})
        >>> tc.decode(message, limits=tc.Limits(max_decoded_bytes=1 << 20))
        Traceback (most recent call last):
            ...
        tensorcodec.errors.DecodeError: decoded tensors would take 2097152 bytes, over the cap of 1048576 ...
    """

    max_header_bytes: int = 64 << 20
    """Largest msgpack header accepted (bytes)."""
    max_tensors: int = 1 << 20
    """Most entries in the tensor table."""
    max_segments_per_tensor: int = 16
    """Most segments one encoded tensor may have."""
    max_ndim: int = 64
    """Most dimensions of one tensor (numpy's own limit)."""
    max_depth: int = 64
    """Deepest nesting of containers in the tree."""
    max_decoded_bytes: int | None = None
    """Cap on the total bytes of all decoded tensors; None: 64 x the message size + 16 MiB."""


DEFAULT_LIMITS = Limits()


def _xxh3_64(data: Any) -> int:
    import xxhash

    return int(xxhash.xxh3_64_intdigest(data))


def _crc32c(data: Any) -> int:
    try:
        import google_crc32c
    except ImportError:
        raise DecodeError(
            "the message uses crc32c checksums: pip install google-crc32c, or decode with verify=False"
        ) from None
    # google_crc32c takes bytes and numpy arrays but refuses every memoryview; a uint8 array view copies nothing.
    return int(google_crc32c.value(np.frombuffer(data, dtype=np.uint8)))


CHECKSUMS: dict[str, Callable[[Any], int]] = {"xxh3_64": _xxh3_64, "crc32c": _crc32c}
"""Segment checksum algorithms, by wire name."""


class Segment(NamedTuple):
    name: str
    role: str
    dtype: DType
    shape: tuple[int, ...]
    nbytes: int


class Entry(NamedTuple):
    """One validated row of the tensor table."""

    dtype: DType
    shape: tuple[int, ...]
    nbytes: int
    """Bytes of the decoded tensor."""
    stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]
    """Codec chain in encode order as (codec id, config, per-tensor params); empty for raw bytes."""
    segments: tuple[Segment, ...]
    """Named segments of an encoded tensor; a raw tensor has one implicit segment (``all_segments``)."""
    first_segment: int
    """Index of this entry's first segment in the message-wide segment list."""

    def all_segments(self) -> tuple[Segment, ...]:
        if self.stages:
            return self.segments
        return (Segment("data", "payload", self.dtype, self.shape, self.nbytes),)


class Header(NamedTuple):
    entries: list[Entry]
    tree: bytes
    offsets: list[int]
    """Absolute start of every segment in the message."""
    checksum: str | None
    checksums: list[int]
    budget: Budget
    """The allocation gate of this message's decode, the decoded tensors already counted."""


def pack_header(entries: list[list[Any]], tree: bytes, checksum: str | None, checksums: list[int]) -> bytes:
    """The preamble plus the msgpack header (the padding that follows is the caller's)."""
    body: dict[str, Any] = {"tensors": entries, "tree": tree}
    if checksum is not None:
        body["checksum"] = checksum
        body["checksums"] = checksums
    packer = _take_packer()
    packer.pack(body)
    header = packer.getbuffer()
    try:  # one copy of the header, after the preamble
        out = b"".join((_PREAMBLE.pack(MAGIC, VERSION, 0, 0, len(header), zlib.crc32(header)), header))
    finally:
        header.release()
    _keep_packer(packer, len(out))
    return out


def packb(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, through this thread's packer."""
    packer = _take_packer()
    packer.pack(obj)
    out: bytes = packer.bytes()
    _keep_packer(packer, len(out))
    return out


_PACKERS = threading.local()
_PACKER_KEEP = 1 << 20
"""A thread keeps its packer while what it packs stays below this size."""


def _take_packer() -> Any:
    """This thread's packer, taken while in use (a nested call makes its own).

    A packer allocates its 256 KiB buffer anew, and writing into fresh memory costs a page fault per
    4 KiB: kept, the buffer stays warm. An exception leaves the packer unkept, so no half-packed
    buffer is reused.
    """
    packer = _PACKERS.__dict__.pop("packer", None)
    return packer if packer is not None else msgpack.Packer(use_bin_type=True, autoreset=False)


def _keep_packer(packer: Any, size: int) -> None:
    if size <= _PACKER_KEEP:
        packer.reset()
        _PACKERS.packer = packer


MAX_VALUE_DEPTH = 16
"""Deepest nesting of arrays and maps in a header or a stream record (the outermost map counts 1).

A legitimate header nests 7 deep (header map, tensors, entry, stages, stage, config, flat array);
the tree has its own limit, ``Limits.max_depth``.
"""


def check_depth(value: Any, max_depth: int, what: str) -> None:
    """Refuses ``value`` if arrays and maps nest more than ``max_depth`` deep (an iterative walk: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise DecodeError(f"{what}: arrays and maps nest deeper than {max_depth}")
        for v in node.values() if type(node) is dict else node:
            if type(v) is list or type(v) is dict:
                stack.append((v, depth + 1))
    return None


def read_msgpack(data: Any, what: str, max_depth: int = MAX_VALUE_DEPTH, **options: Any) -> Any:
    """The one bounded msgpack reader for values off the wire: depth-checked, every failure a DecodeError."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, **options)
    except DecodeError as e:
        raise DecodeError(f"{what}: {e}") from None
    except Exception as e:  # msgpack reports malformed input through many types
        raise DecodeError(f"{what}: malformed msgpack ({type(e).__name__}: {e})") from None
    if type(value) is list or type(value) is dict:
        check_depth(value, max_depth, what)
    return value


class Budget:
    """The one allocation gate of a decode: every allocation is counted here before it is made.

    The cap is the message's size plus ``max_decoded_bytes`` (or its default), inclusive.
    """

    __slots__ = ("cap", "source", "used")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and (self.cap, self.used) == (other.cap, other.used)

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, limits: Limits, message_bytes: int) -> None:
        extra = limits.max_decoded_bytes
        self.source = "message size + max_decoded_bytes"
        if extra is None:
            extra = EXPANSION_ALLOWANCE * message_bytes + (16 << 20)
            self.source = "message size + 64 x message size + 16 MiB"
        self.cap = message_bytes + extra
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        used = self.used + nbytes
        if used > self.cap:
            raise DecodeError(
                f"{what}: decoding needs {used} bytes, over the cap of {self.cap} ({self.source}); "
                "pass limits=Limits(max_decoded_bytes=...) to allow more"
            )
        self.used = used


def check_values(data: Any, dtype: DType, index: int) -> None:
    """Refuses bytes a one-byte type does not use: a bool other than 0/1, an int4 with high bits set."""
    if dtype.max_byte != 255 and len(data):
        top = int(np.frombuffer(data, dtype=np.uint8).max())
        if top > dtype.max_byte:
            raise _fail(
                f"tensor {index}: a {dtype.name} byte is {top:#04x}, over {dtype.max_byte:#04x} "
                "(bits above the type's width must be zero, docs/format.md section 4)"
            )


def _fail(msg: str) -> DecodeError:
    return DecodeError(msg)


def _what(index: int, segment: str | None) -> str:
    return f"tensor {index}" if segment is None else f"tensor {index} segment {segment!r}"


def _shape(value: Any, itemsize: int, max_ndim: int, index: int, segment: str | None = None) -> tuple[int, ...]:
    """A validated shape; overflow-checked the way numpy checks it. Errors name ``index`` (and ``segment``)."""
    if type(value) is not list:
        raise _fail(f"{_what(index, segment)}: shape must be an array of integers, got {type(value).__name__}")
    if len(value) > max_ndim:
        raise _fail(f"{_what(index, segment)}: {len(value)} dimensions exceed max_ndim={max_ndim}")
    span = itemsize  # product with zero dims counted as one: numpy's own bound
    for d in value:
        if type(d) is not int or d < 0:
            raise _fail(f"{_what(index, segment)}: dimension {d!r} is not a non-negative integer")
        span *= d or 1
    if span > _MAX_SIZE:
        raise _fail(f"{_what(index, segment)}: shape {value} overflows a 64-bit size")
    return tuple(value)


def _dtype(name: Any, index: int, segment: str | None = None) -> DType:
    row = dtypes.BY_NAME.get(name) if type(name) is str else None
    if row is None:
        raise _fail(f"{_what(index, segment)}: dtype {name!r} is not one tensorcodec knows")
    return row


_SCALARS = (type(None), bool, int, float, str, bytes)


def _flat(values: dict[Any, Any], index: int, what: str) -> None:
    """Codec configs and params hold scalars and flat arrays of scalars only."""
    for k, v in values.items():
        if type(v) in _SCALARS:
            continue
        if type(v) is list and all(type(x) in _SCALARS for x in v):
            continue
        raise _fail(f"tensor {index}: {what} {k!r} must be a scalar or a flat array of scalars")


def read_entry(raw: Any, index: int, first_segment: int, limits: Limits) -> Entry:
    """One validated table entry (``parse_message``'s check). Messages of many small encoded tensors spend much
    of their decode here, so the checks are plain comparisons and error messages are only built when raised."""
    if type(raw) is not list or len(raw) not in (2, 4):
        raise _fail(f"tensor {index}: entry must be an array of 2 or 4 items")
    row = _dtype(raw[0], index)
    shape = _shape(raw[1], row.itemsize, limits.max_ndim, index)
    nbytes = math.prod(shape) * row.itemsize
    if len(raw) == 2:
        return tuple.__new__(Entry, (row, shape, nbytes, (), (), first_segment))
    stages_raw, segments_raw = raw[2], raw[3]
    if type(stages_raw) is not list or not stages_raw:
        raise _fail(f"tensor {index}: stages must be a non-empty array")
    stages = []
    for s in stages_raw:
        if type(s) is not list or len(s) != 3:
            raise _fail(f"tensor {index}: each stage must be [codec id, config map, params map]")
        codec_id, config, params = s
        if type(codec_id) is not str or type(config) is not dict or type(params) is not dict:
            raise _fail(f"tensor {index}: each stage must be [codec id, config map, params map]")
        _flat(config, index, "config")
        _flat(params, index, "params")
        stages.append((codec_id, config, params))
    if type(segments_raw) is not list or len(segments_raw) > limits.max_segments_per_tensor:
        raise _fail(f"tensor {index}: segments must be an array of at most {limits.max_segments_per_tensor}")
    segments = []
    names = set()
    for s in segments_raw:
        if type(s) is not list or len(s) != 4 or type(s[0]) is not str or s[1] not in ROLES:
            raise _fail(f"tensor {index}: each segment must be [name, 'payload'|'meta', dtype, shape]")
        name, role, seg_dtype, seg_dims = s
        if name in names:
            raise _fail(f"tensor {index}: duplicate segment name {name!r}")
        names.add(name)
        seg_row = _dtype(seg_dtype, index, name)
        seg_shape = _shape(seg_dims, seg_row.itemsize, limits.max_ndim, index, name)
        segments.append(
            tuple.__new__(Segment, (name, role, seg_row, seg_shape, math.prod(seg_shape) * seg_row.itemsize))
        )
    return tuple.__new__(Entry, (row, shape, nbytes, tuple(stages), tuple(segments), first_segment))


def parse_entry(raw: Any, index: int, limits: Limits = DEFAULT_LIMITS, first_segment: int = 0) -> Entry:
    """One tensor-table entry, validated on its own: for decoders that meet entries one at a time (streams)."""
    return read_entry(raw, index, first_segment, limits)


_HEADER_KEYS = {"tensors", "tree", "checksum", "checksums"}

_FAST_ROWS = {row.name: (row, row.itemsize) for row in dtypes.DTYPES if row.max_byte == 255}
"""The dtypes the C layout takes; the one-byte types with unused bits stay with Python, which checks their bytes."""


def _header_map(items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    d = dict(items)
    if len(d) != len(items):
        raise _fail("duplicate key")
    return d


def _fast_header(data: Any, max_array_len: int) -> Any:
    """The header map read by the C tree decoder, or None to let msgpack read it (and word any error)."""
    fast = _c.tree()
    if fast is None:
        return None
    done = fast.unpack_tree(data, MAX_VALUE_DEPTH, bytearray(), _no_reference, NO_ROUTES, max_array_len)
    return None if done is None else done[0]


NO_ROUTES = (None, None, None, None)
"""``_fasttree.unpack_tree``'s routes where no tables are laid out: every reference calls back (see tree.Route)."""


def _no_reference(index: int, kind: int) -> Any:  # pragma: no cover - a header has no table to refer to
    raise AssertionError("a header has no tensor references")


def parse_message(rope: Rope, limits: Limits, verify: bool, check_padding: bool = True) -> Header:
    """Validates preamble, header and layout; verifies checksums if asked and present.

    ``check_padding=False`` is for sizing a header whose segments are not at hand.
    """
    total = rope.total
    if total < PREAMBLE_SIZE:
        raise _fail(f"message is {total} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble")
    magic, version, flags, reserved, hlen, hcrc = _PREAMBLE.unpack(rope.view(0, PREAMBLE_SIZE))
    if magic != MAGIC:
        raise _fail(f"not a tensorcodec message: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise _fail(f"format version {version} is not supported (this tensorcodec reads version {VERSION})")
    if flags or reserved:
        raise _fail(f"preamble: flags {flags:#x} / reserved {reserved:#x} must be zero in version 1")
    if hlen > limits.max_header_bytes:
        raise _fail(f"header of {hlen} bytes exceeds max_header_bytes={limits.max_header_bytes}")
    if PREAMBLE_SIZE + hlen > total:
        raise _fail(f"truncated: header claims {hlen} bytes, message has {total - PREAMBLE_SIZE} after the preamble")
    header_bytes = rope.view(PREAMBLE_SIZE, hlen)
    computed = zlib.crc32(header_bytes)
    if computed != hcrc:
        raise ChecksumError("header", hcrc, computed)
    # The longest legitimate arrays: checksums (one per segment) and shapes.
    max_array_len = max(limits.max_tensors * max(limits.max_segments_per_tensor, 4), limits.max_ndim, 8)
    body = _fast_header(header_bytes, max_array_len)  # bounded at MAX_VALUE_DEPTH as read_msgpack is
    if body is None:
        body = read_msgpack(header_bytes, "header", object_pairs_hook=_header_map, max_array_len=max_array_len)
    if type(body) is not dict:
        raise _fail("header: must be a msgpack map")
    unknown = set(body) - _HEADER_KEYS
    if unknown:
        raise _fail(f"header: unknown keys {sorted(map(str, unknown))}")
    raw_entries, tree = body.get("tensors"), body.get("tree")
    if type(raw_entries) is not list:
        raise _fail("header: 'tensors' must be an array")
    if type(tree) is not bytes:
        raise _fail("header: 'tree' must be binary msgpack")
    if len(raw_entries) > limits.max_tensors:
        raise _fail(f"header: {len(raw_entries)} tensors exceed max_tensors={limits.max_tensors}")

    entries: list[Entry] = []
    offsets: list[int] = []
    gaps: list[int] = []
    """Start and length of every run of padding bytes, flattened."""
    pos = PREAMBLE_SIZE + hlen
    decoded = 0
    max_ndim = limits.max_ndim
    done = 0
    fast = _c.wire()
    if fast is not None:
        # The C loop lays out the run of plain raw entries; this loop goes on from the first other one.
        entries, offsets, gaps, decoded, pos, done = fast.layout(raw_entries, _FAST_ROWS, Entry, pos, total, max_ndim)
    narrow: list[int] = []
    """The plain entries whose bytes must be checked for stray bits, once the layout is known."""
    for i in range(done, len(raw_entries)):
        entry = read_entry(raw_entries[i], i, len(offsets), limits)
        entries.append(entry)
        decoded += entry.nbytes
        if entry.dtype.max_byte != 255 and entry.nbytes and not entry.stages:
            narrow.append(i)
        for n in [seg.nbytes for seg in entry.segments] if entry.stages else (entry.nbytes,):
            start = (pos + ALIGN - 1) & -ALIGN if n else pos
            if start != pos:
                gaps.append(pos)
                gaps.append(start - pos)
            pos = start + n
            if pos > total:
                raise _fail(f"truncated: tensor {i} needs bytes [{start}, {pos}), message has {total}")
            offsets.append(start)
    if pos != total:
        raise _fail(f"{total - pos} trailing bytes after the last segment (message is {total}, layout ends at {pos})")
    cap = limits.max_decoded_bytes
    if cap is None:
        cap = EXPANSION_ALLOWANCE * total + (16 << 20)
    if decoded > cap:
        source = "max_decoded_bytes" if limits.max_decoded_bytes is not None else "64 x message size + 16 MiB"
        raise _fail(
            f"decoded tensors would take {decoded} bytes, over the cap of {cap} ({source}); "
            "pass limits=Limits(max_decoded_bytes=...) to allow more"
        )
    if check_padding:
        _check_padding(rope, gaps)

    checksum = body.get("checksum")
    checksums: list[int] = []
    if checksum is not None or "checksums" in body:
        if type(checksum) is not str or checksum not in CHECKSUMS:
            raise _fail(f"header: unknown checksum algorithm {checksum!r}; known: {sorted(CHECKSUMS)}")
        checksums = body.get("checksums")  # type: ignore[assignment]
        if type(checksums) is not list or len(checksums) != len(offsets):
            raise _fail(f"header: 'checksums' must list one value per segment ({len(offsets)})")
        if any(type(c) is not int or not 0 <= c < 1 << 64 for c in checksums):
            raise _fail("header: checksums must be unsigned 64-bit integers")
        if verify:
            fn = CHECKSUMS[checksum]
            for i, entry in enumerate(entries):
                for j, seg in enumerate(entry.all_segments()):
                    k = entry.first_segment + j
                    got = fn(rope.view(offsets[k], seg.nbytes))
                    if got != checksums[k]:
                        raise ChecksumError(f"tensor {i} segment {seg.name!r}", checksums[k], got)
    for i in narrow:
        entry = entries[i]
        check_values(rope.view(offsets[entry.first_segment], entry.nbytes), entry.dtype, i)
    budget = Budget(limits, total)
    budget.take(decoded, "decoded tensors")
    return Header(entries, tree, offsets, checksum, checksums, budget)


def copy_frames(frames: list[Any], dst: np.ndarray[Any, Any]) -> None:
    """``b"".join(frames)`` written into ``dst``, a writable uint8 array at least as long."""
    fast = _c.wire()
    if fast is not None:
        fast.join_into(dst, frames)
        return
    pos = 0
    for f in frames:
        src = np.frombuffer(f, dtype=np.uint8)
        dst[pos : pos + src.size] = src
        pos += src.size


def _check_padding(rope: Rope, gaps: list[int]) -> None:
    """Every padding byte must be zero, so that no data hides between segments.

    ``gaps`` holds start, length, start, length, ... of the padding runs.
    """
    if not gaps:
        return
    fast = _c.wire()
    if fast is not None:
        first = fast.first_nonzero(rope.parts[0] if len(rope.parts) == 1 else rope.parts, gaps)
        if first >= 0:
            raise _fail(f"padding byte at offset {first} is not zero")
        return
    parts, part_starts = rope.parts, rope.starts
    last = len(parts) - 1
    p = 0
    for k in range(0, len(gaps), 2):
        start, n = gaps[k], gaps[k + 1]
        while p < last and part_starts[p + 1] <= start:  # gaps and frames are both in order: one walk
            p += 1
        local = start - part_starts[p]
        run = parts[p][local : local + n] if local + n <= parts[p].nbytes else rope.view(start, n)
        if run != ZEROS[:n]:
            first = start + next(i for i, byte in enumerate(bytes(run)) if byte)
            raise _fail(f"padding byte at offset {first} is not zero")
