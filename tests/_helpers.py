"""Shared test helpers: hand-built messages, framework conversion of expected trees, example budgets."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import torch
from hypothesis import settings

import tensorcodec as tc
from tensorcodec import _c, wire
from tensorcodec.testing import raw_bytes, wire_dtype

PREAMBLE = struct.Struct("<4sBBHII")


def slow(divisor: int = 4) -> settings:
    """Settings for an expensive property: a fraction of the profile's examples, so default runs stay quick."""
    return settings(max_examples=max(10, settings().max_examples // divisor))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def ref(index: int, kind: int = 1) -> msgpack.ExtType:
    """A tree reference to tensor ``index`` (kind 1 numpy, 2 torch, 3 numpy scalar)."""
    return msgpack.ExtType(kind, index.to_bytes(1 if index < 256 else 2 if index < 65536 else 4, "little"))


def raw_map(*pairs: tuple[Any, Any]) -> bytes:
    """A msgpack map written pair by pair, so that it can hold duplicate keys."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(pack(k) + pack(v) for k, v in pairs)


def build(
    header: dict[str, Any] | bytes,
    segments: list[bytes] | tuple[bytes, ...] = (),
    *,
    magic: bytes = b"TCDC",
    version: int = 1,
    flags: int = 0,
    reserved: int = 0,
    header_len: int | None = None,
    crc: int | None = None,
    pad: bytes = b"\0",
) -> bytes:
    """A message from a header (dict or raw msgpack) and segment bytes, laid out per the format.

    The header CRC is correct unless ``crc`` is given, so that hostile headers
    reach the validation behind it. Empty segments take no bytes; the others
    start on 64-byte boundaries, the gap filled with ``pad``.
    """
    body = header if isinstance(header, bytes) else pack(header)
    out = bytearray(
        PREAMBLE.pack(
            magic,
            version,
            flags,
            reserved,
            len(body) if header_len is None else header_len,
            zlib.crc32(body) if crc is None else crc,
        )
    )
    out += body
    for seg in segments:
        if seg:
            out += (pad * 64)[: -len(out) % 64]
            out += seg
    return bytes(out)


def header_of(message: bytes) -> dict[str, Any]:
    """The decoded msgpack header of a well-formed message."""
    hlen = PREAMBLE.unpack_from(message)[4]
    header: dict[str, Any] = msgpack.unpackb(message[16 : 16 + hlen], raw=False)
    return header


def with_header(message: bytes, header: dict[str, Any] | bytes) -> bytes:
    """``message`` with its header replaced (preamble fixed up) and its segments re-laid after it."""
    old = header_of(message)
    hlen = PREAMBLE.unpack_from(message)[4]
    pos = 16 + hlen
    segments = []
    for dtype, shape in (e[:2] for e in old["tensors"]):
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(_np_dtype(dtype)).itemsize
        if n:
            pos += -pos % 64
            segments.append(message[pos : pos + n])
            pos += n
    return build(header, segments)


def _np_dtype(name: str) -> Any:
    from tensorcodec.dtypes import by_name

    row = by_name(name)
    assert row is not None
    return row.numpy


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A numpy array holding a tensor's bits, of the dtype the wire row names (bf16 -> ml_dtypes.bfloat16)."""
    row = wire_dtype(x)
    return np.frombuffer(bytearray(raw_bytes(x)), dtype=row.numpy).reshape(tuple(x.shape))


def to_torch(x: Any) -> Any:
    """A torch tensor holding an array's bits."""
    from tensorcodec.dtypes import torch_dtype

    row = wire_dtype(x)
    data = raw_bytes(x)
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(torch_dtype(row)).reshape(tuple(np.shape(x)))


def expected_as(tree: Any, framework: str | None) -> Any:
    """What decode(encode(tree), framework=framework) must return: ``tree`` with tensors converted."""
    if isinstance(tree, torch.Tensor):
        return to_numpy(tree) if framework == "numpy" else tree
    if isinstance(tree, np.ndarray):
        return to_torch(tree) if framework == "torch" else tree
    if isinstance(tree, np.generic):
        return to_torch(tree) if framework == "torch" else tree
    if type(tree) is dict:
        return {k: expected_as(v, framework) for k, v in tree.items()}
    if type(tree) is list:
        return [expected_as(v, framework) for v in tree]
    if type(tree) is tuple:
        return tuple(expected_as(v, framework) for v in tree)
    return tree


def leaves(tree: Any) -> list[Any]:
    """Tensors and numpy scalars of a tree, depth first."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in leaves(v)]
    if isinstance(tree, (np.ndarray, np.generic, torch.Tensor)):
        return [tree]
    return []


def split_message(message: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A message's header (as msgpack data) and its segments' bytes, in order."""
    hlen = struct.unpack_from("<I", message, 8)[0]
    header = msgpack.unpackb(message[16 : 16 + hlen], raw=False)
    parsed = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=False)
    segments = []
    for entry in parsed.entries:
        for j, seg in enumerate(entry.all_segments()):
            start = parsed.offsets[entry.first_segment + j]
            segments.append(message[start : start + seg.nbytes])
    return header, segments


def join_message(header: dict[str, Any], segments: list[bytes]) -> bytes:
    """A well-laid-out message: preamble with the header's CRC, header, 64-aligned segments."""
    body = msgpack.packb(header, use_bin_type=True)
    out = bytearray(struct.pack("<4sBBHII", b"TCDC", 1, 0, 0, len(body), zlib.crc32(body)) + body)
    for seg in segments:
        if seg:
            out += bytes(-len(out) % 64) + seg
    return bytes(out)


FASTWIRE = _c.wire()
"""tensorcodec._fastwire as the seam hands it out at start (None when built without C or TENSORCODEC_NATIVE=0)."""
FASTTREE = _c.tree()
"""tensorcodec._fasttree, likewise."""


@contextlib.contextmanager
def native(enabled: bool) -> Iterator[None]:
    """Every C path on or off for a while (tensorcodec.set_native), then as before."""
    before = tc.native_enabled()
    tc.set_native(enabled)
    try:
        yield
    finally:
        tc.set_native(before)


def both_wire_paths(run: Any, errors: tuple[type[BaseException], ...]) -> list[Any]:
    """``run()`` with the C paths and again with the Python ones: its results, or the errors' text."""
    results: list[Any] = []
    for enabled in (FASTWIRE is not None, False):
        with native(enabled):
            try:
                results.append(run())
            except errors as e:
                results.append(f"{type(e).__name__}: {e}")
    return results
