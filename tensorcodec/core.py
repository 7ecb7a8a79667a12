"""encode / decode: the public entry points, tying tree, arrays and wire together."""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from typing import Any, Literal

import numpy as np

from . import _c, dtypes, wire
from .arrays import (
    _LITTLE,
    _NUMPY_NATIVE,
    NUMPY,
    SCALAR,
    TORCH,
    Leaf,
    Materializer,
    _contiguous_strides,
    _from_numpy,
    _from_numpy_fn,
    leaf_from_numpy,
    leaf_from_torch,
    values,
)
from .codecs import BuiltCodecs, Codec, Encoded, build_codec, decode_batch, decode_segments, encode_chain
from .errors import DecodeError
from .policy import Policy, Precision
from .tree import _NO_ROUTES, Route, flatten, unflatten
from .wire import ALIGN, DEFAULT_LIMITS, ZEROS, Limits, Rope

__all__ = ["encode", "encode_frames", "encode_into", "decode"]

Framework = Literal["numpy", "torch"]


_BATCH_MAX_ELEMENTS = 1 << 16
"""Tensors up to this size that share a codec are encoded in one batch call (per-call overhead dominates them)."""
_DECODE_BATCH = 256
"""Most tensors per ``decode_batch`` call."""


def _plan(obj: Any, precision: Precision, policy: Any, checksum: str | None, max_depth: int) -> tuple[bytes, list[Any]]:
    """The preamble + header, and the segments to follow it, in order."""
    if checksum is not None and checksum not in wire.CHECKSUMS:
        raise ValueError(f"unknown checksum {checksum!r}; choose one of {sorted(wire.CHECKSUMS)} or None")
    rules = Policy.of(precision, policy)
    devices: dict[int, Any] = {}
    tree, leaves, names = flatten(obj, max_depth, names=rules is not None, devices=devices if rules else None)
    chains: list[list[Codec] | None] = [None] * len(leaves)
    batches: dict[int, list[int]] = {}
    if rules is not None and names is not None:
        for i, leaf in enumerate(leaves):
            if leaf.encoded is None:
                chain = chains[i] = rules.choose(names[i], leaf.dtype, math.prod(leaf.shape))
                small = leaf.data.nbytes <= _BATCH_MAX_ELEMENTS * leaf.dtype.itemsize
                if chain is not None and len(chain) == 1 and i not in devices and small:
                    batches.setdefault(id(chain[0]), []).append(i)
    entries: list[list[Any]] = []
    segments: list[Any] = []
    if rules is None and all(leaf.encoded is None for leaf in leaves):  # all raw: the hot path
        entries = [[leaf.dtype.name, leaf.shape] for leaf in leaves]
        segments = [leaf.data for leaf in leaves]
    else:
        encoded = _encode_batches(batches, chains, leaves)
        for i, leaf in enumerate(leaves):
            if leaf.encoded is not None:
                entry, data = leaf.encoded.wire_entry()
            else:
                name = names[i] if names is not None else ""
                # pop: a batch result dies once its entry is built, which spares garbage collections
                entry, data = _encode_leaf(chains[i], leaf, name, devices.get(i), encoded.pop(i, None))
            entries.append(entry)
            segments.extend(data)
    sums = [wire.CHECKSUMS[checksum](seg) for seg in segments] if checksum else []
    return wire.pack_header(entries, tree, checksum, sums), segments


def _encode_batches(
    batches: dict[int, list[int]], chains: list[list[Codec] | None], leaves: list[Leaf]
) -> dict[int, Encoded]:
    """Small tensors sharing one codec, encoded by a single ``encode_batch`` call per codec."""
    out: dict[int, Encoded] = {}
    for members in batches.values():
        if len(members) < 2:
            continue
        codec = chains[members[0]][0]  # type: ignore[index]
        views = [values(leaves[i]) for i in members]
        try:
            results = codec.encode_batch(views)
        except (TypeError, ValueError):
            continue  # encode one by one below, so that the error names its tensor
        out.update(zip(members, results, strict=True))
    return out


def _encode_leaf(
    chain: list[Codec] | None, leaf: Leaf, name: str, device_tensor: Any = None, done: Encoded | None = None
) -> tuple[list[Any], list[Any]]:
    """Header entry and segment bytes of one tensor, raw or encoded by a chain of codecs.

    A tensor left on an accelerator (``device_tensor``) is quantized there when
    the codec can; otherwise it is copied to the CPU first. ``done`` is this
    tensor's result from a batch call.
    """
    try:
        encoded = done
        if encoded is None and device_tensor is not None and chain is not None and len(chain) == 1:
            encoded = chain[0].encode_torch(device_tensor.detach().reshape(-1))
        if encoded is not None:
            stages = [[chain[0].codec_id, chain[0].get_config(), encoded.params]]  # type: ignore[index]
            produced = encoded.segments
        else:
            if device_tensor is not None:
                leaf = leaf_from_torch(device_tensor)  # type: ignore[assignment]
            if chain is None:
                return [leaf.dtype.name, leaf.shape], [leaf.data]
            stages, produced = encode_chain(chain, values(leaf))
    except (TypeError, ValueError) as e:
        raise type(e)(f"tensor {name!r}: {e}") from None
    described = []
    data = []
    for seg_name, (role, arr) in produced.items():
        row = dtypes.from_numpy(arr.dtype)
        if row is None or role not in wire.ROLES:
            raise TypeError(f"tensor {name!r}: a codec produced segment {seg_name!r} of {arr.dtype}/{role!r}")
        described.append([seg_name, role, row.name, list(arr.shape)])
        if _LITTLE and row.name in _NUMPY_NATIVE and arr.dtype.isnative and arr.flags.c_contiguous:
            data.append(arr)  # exports its bytes as they are, like a raw leaf
        else:
            data.append(leaf_from_numpy(arr).data)  # type: ignore[union-attr]
    return [leaf.dtype.name, leaf.shape, stages, described], data


def encode_frames(
    obj: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
) -> list[Any]:
    """The message as a list of buffers, for scatter-gather transports.

    The first buffer is the preamble and header; the others are the tensors'
    own memory (no copy where the tensor is C-contiguous little-endian CPU
    memory) and the zero padding between them. ``b"".join(frames)`` equals
    ``encode(obj)``, and ``decode`` accepts the list as it is. The frames alias
    the caller's tensors: keep those unchanged until the frames are sent.
    """
    return _frames(obj, precision, policy, checksum, max_depth)[0]


_PADDING = [memoryview(ZEROS)[:n] for n in range(ALIGN)]


def _frames(obj: Any, precision: Precision, policy: Any, checksum: str | None, max_depth: int) -> tuple[list[Any], int]:
    """The frames of ``encode_frames`` and their total size."""
    prefix, segments = _plan(obj, precision, policy, checksum, max_depth)
    frames: list[Any] = [prefix]
    append = frames.append
    pos = len(prefix)
    for seg in segments:
        n = seg.nbytes
        if n:
            pad = -pos % ALIGN
            if pad:
                append(_PADDING[pad])
            append(seg)
            pos += pad + n
    return frames, pos


def encode(
    obj: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
) -> bytes:
    """Encode a tree of containers, scalars and tensors into one message.

    ``precision`` (a name from ``tensorcodec.PRECISIONS`` such as "bf16" or
    "nf4", or a Codec) quantizes every floating tensor of at least
    ``DEFAULT_MIN_ELEMENTS`` elements that it makes smaller; ``policy`` (a
    ``Policy`` or a dict of name patterns to precisions) chooses per tensor.
    The caller's tensors are never modified. ``checksum`` ("xxh3_64" or
    "crc32c") adds a checksum of every segment that ``decode`` verifies. Each
    tensor's bytes are copied once, into the result. Raises TypeError naming
    the path of an object that cannot be encoded.
    """
    frames, size = _frames(obj, precision, policy, checksum, max_depth)
    fast = _c.wire()
    if fast is not None:
        # One copy, into memory placed for huge pages from 2 MiB; the frames are dropped as they are
        # copied, so that the header is freed before the output is complete.
        joined: bytes = fast.join_bytes(frames, size)
        return joined
    if size >= _HUGE_BYTES_MIN_PYTHON:
        made = _fresh_bytes(size)
        if made is not None:
            out, dst = made
            wire.copy_frames(frames, dst)
            del dst  # the view must not outlive ``out``, which it does not keep alive
            return out
    return b"".join(frames)


_HUGE_BYTES_MIN_PYTHON = 8 << 20
"""Without ``_fastwire``, from this size ``encode`` writes into huge-page memory (``_fastwire.join_bytes`` does
from 2 MiB, one huge page): copying frame by frame in Python costs more than the faults it saves below."""


def _fresh_bytes(size: int) -> tuple[bytes, np.ndarray[Any, Any]] | None:
    """An uninitialised bytes object of ``size`` and a writable view of it, backed by huge pages.

    Writing into freshly allocated 4 KiB pages runs at ~1.7 GB/s here (a page
    fault per page); asking for transparent huge pages before the first touch
    makes the one copy into the message 3-4x faster. This is what C extensions
    do with PyBytes_FromStringAndSize(NULL, n): the object is filled before
    anyone sees it. Returns None where that API is unavailable (not CPython).
    """
    api = _bytes_api()
    if api is None:
        return None
    new, madvise = api
    out = new(None, size)
    address = ctypes.cast(ctypes.c_char_p(out), ctypes.c_void_p).value
    if address is None:
        return None
    huge = 2 << 20
    start, end = (address + huge - 1) & -huge, (address + size) & -huge
    if madvise is not None and end > start:
        madvise(start, end - start, 14)  # MADV_HUGEPAGE; advice only, failure is harmless
    dst = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))
    return out, dst


@functools.cache
def _bytes_api() -> tuple[Any, Any] | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    except AttributeError:
        return None
    madvise = None
    if sys.platform.startswith("linux"):
        try:
            madvise = ctypes.CDLL(None).madvise
            madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            madvise = None
    return new, madvise


def encode_into(
    obj: Any,
    out: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
) -> int:
    """Encode into a caller-owned writable buffer (reused across calls); returns the bytes written.

    Raises ValueError, naming the size needed, when ``out`` is too small.
    """
    frames, size = _frames(obj, precision, policy, checksum, max_depth)
    dst = np.frombuffer(out, dtype=np.uint8)
    if dst.flags.writeable is False:
        raise ValueError("encode_into needs a writable buffer")
    if size > dst.size:
        raise ValueError(f"buffer of {dst.size} bytes is too small: the message needs {size}")
    wire.copy_frames(frames, dst)
    return size


_WRAPPABLE = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
)
"""Dtypes whose numpy alignment equals their size, so that numpy's aligned flag vouches for torch's kernels."""

_KINDS: dict[str | None, dict[int, int]] = {
    None: {NUMPY: NUMPY, TORCH: TORCH, SCALAR: SCALAR},
    "numpy": {NUMPY: NUMPY, TORCH: NUMPY, SCALAR: SCALAR},
    "torch": {NUMPY: TORCH, TORCH: TORCH, SCALAR: TORCH},
}


def decode(
    data: Any,
    *,
    copy: bool = True,
    framework: Framework | None = None,
    device: Any = None,
    verify: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Decode a message (bytes-like, or the list that ``encode_frames`` gave).

    Tensors come back in the framework they were sent from, or all as
    ``framework`` ("numpy" or "torch"); ``device`` moves torch tensors.
    ``copy=False`` returns read-only views into ``data`` (no per-byte work but
    checksum verification); ``copy=True`` returns writable arrays of their own.
    ``verify`` checks segment checksums when the message carries them.

    Raises DecodeError (or its subclass ChecksumError) for any malformed,
    truncated or over-limit message, naming what is wrong.
    """
    if framework not in _KINDS:
        raise ValueError(f"framework must be 'numpy', 'torch' or None, not {framework!r}")
    kinds = _KINDS[framework]
    rope = Rope(data)
    header = wire.parse_message(rope, limits, verify)
    entries = header.entries
    offsets = header.offsets
    make = Materializer(copy, device)
    single = rope.parts[0] if len(rope.parts) == 1 else None
    cache: dict[int, Any] = {}
    coded = _Coded(entries, offsets, rope)
    views: list[Any] = []
    ndarray = np.ndarray
    if single is None and _LITTLE:
        views = _frame_views(entries, offsets, rope, framework)
    elif single is not None and _LITTLE:
        # The hot path: read-only views straight into the one message buffer, made in one sweep;
        # copy=True copies them, and torch tensors of numpy's own dtypes wrap them (cheaper than a
        # strided view of a base or a clone). Other dtypes (bf16, fp8) usually go to torch through
        # a strided view: their views wait until asked for.
        views = [
            ndarray(e.shape, e.dtype.numpy, single, offsets[e.first_segment])
            if e.nbytes and not e.stages and (framework == "numpy" or e.dtype.name in _NUMPY_NATIVE)
            else None
            for e in entries
        ]
    wrap = bool(views) and device is None and framework != "numpy"  # torch is imported only when a tensor asks
    strided = make.strided_view(single) if single is not None and not copy and device is None else None

    def tensor(index: int, sent_kind: int) -> Any:
        kind = kinds[sent_kind]
        view = views[index] if views else None
        if kind == NUMPY and views:
            if view is None and single is not None:
                entry = entries[index]
                if entry.nbytes and not entry.stages:
                    view = views[index] = ndarray(entry.shape, entry.dtype.numpy, single, offsets[entry.first_segment])
            if view is not None and not copy:
                return view
        key = index << 2 | kind
        value = cache.get(key)
        if value is None:
            value = cache[key] = materialize(index, kind, view)
        return value

    def materialize(index: int, kind: int, view: Any) -> Any:
        entry = entries[index]
        try:
            if entry.stages:
                return coded.tensor(index, make, kind)
            if view is not None:
                if kind == NUMPY:
                    return view.copy()  # (copy=True: views were returned as they are)
                if kind == TORCH and wrap and entry.dtype.name in _WRAPPABLE and view.flags.aligned:
                    return _from_numpy(view.copy() if copy else view)
            part: int | None = 0
            if single is not None:
                buf, offset = single, offsets[entry.first_segment]
                if kind == TORCH and strided is not None and entry.nbytes:
                    t = strided(entry.dtype, entry.shape, offset)
                    if t is not None:
                        return t
            else:
                buf, offset, part = rope.locate(offsets[entry.first_segment], entry.nbytes)
            if kind == TORCH:
                return make.torch(entry.dtype, entry.shape, entry.nbytes, buf, offset, part)
            if kind == NUMPY:
                return make.numpy(entry.dtype, entry.shape, entry.nbytes, buf, offset)
            return make.scalar(entry.dtype, entry.shape, entry.nbytes, buf, offset)
        except TypeError as e:
            raise DecodeError(f"tensor {index}: {e}") from None
        except DecodeError as e:
            e.args = (f"tensor {index}: {e}",)  # (keeps the subclass and its attributes)
            raise

    routes = _routes(views, entries, offsets, single, kinds, make, wrap) if views else _NO_ROUTES
    return unflatten(header.tree, tensor, len(entries), limits.max_depth, routes)


def _routes(
    views: list[Any],
    entries: list[wire.Entry],
    offsets: list[int],
    single: Any,
    kinds: dict[int, int],
    make: Materializer,
    wrap: bool,
) -> tuple[Route | None, ...]:
    """Tables from which the C tree decoder answers references without calling back (by ext code).

    numpy answers are the sweep's views (copied when ``copy``), or views made when first asked
    for; torch answers wrap the views, or are strided views of one typed base for dtypes numpy
    lacks (bf16, fp8). Anything else (scalars, coded tensors, devices, complex) goes through
    ``tensor``.
    """
    n = len(entries)
    copy = make.copy
    # The tables of a kind are laid out only when the tree first refers to a tensor of that kind.
    by_kind: dict[int, Route] = {
        NUMPY: ([None] * n, views, np.ndarray.copy)
        if copy
        else (views, lambda: _lazy_views(views, entries, offsets, single), None)
    }
    if wrap:
        # torch is imported only when a tensor asks for it: until then, a wrapper that imports it.
        imported = sys.modules.get("torch") is not None
        convert = _from_numpy_copy if copy else _from_numpy_fn() if imported else _from_numpy
        strided = make if imported and not copy else None
        by_kind[TORCH] = ([None] * n, lambda: _torch_sources(views, entries, offsets, single, strided), convert)
    return (None, *(by_kind.get(kinds[code]) for code in (NUMPY, TORCH, SCALAR)))


def _lazy_views(views: list[Any], entries: list[wire.Entry], offsets: list[int], single: Any) -> list[Any] | None:
    """Calls making the numpy views the sweep left out (dtypes numpy lacks), or None where there are none."""
    if single is None or all(e.dtype.name in _NUMPY_NATIVE for e in entries):
        return None
    ndarray = np.ndarray
    return [
        (ndarray, e.shape, e.dtype.numpy, single, offsets[e.first_segment])
        if v is None and e.nbytes and not e.stages
        else None
        for v, e in zip(views, entries, strict=True)
    ]


def _torch_sources(
    views: list[Any], entries: list[wire.Entry], offsets: list[int], single: Any, make: Materializer | None
) -> list[Any]:
    """What each torch answer is made from: a view for ``torch.from_numpy``, a call ``(base.as_strided, shape,
    strides, offset)`` for the dtypes numpy lacks (with ``make``), or None (``tensor`` decides)."""
    rows = {e.dtype for e in entries}
    wrappable = sum(row.name in _WRAPPABLE for row in rows)
    # A buffer aligned for the widest dtype aligns every view (segments sit at multiples of ALIGN);
    # frames, or an odd buffer, have each view asked.
    if single is None or (wrappable and not np.ndarray((1,), _U64, single).flags.aligned):
        return [
            v if v is not None and v.flags.aligned and e.dtype.name in _WRAPPABLE else None
            for v, e in zip(views, entries, strict=True)
        ]
    if wrappable == len(rows):
        return views
    # Per dtype: True for the view, (as_strided, itemsize) for a strided view of a typed base, or None.
    plan: dict[dtypes.DType, Any] = {
        row: True
        if row.name in _WRAPPABLE
        else (call, row.itemsize)
        if (call := _as_strided(make, row, single))
        else None
        for row in rows
    }
    fast = _c.tree()
    if fast is not None:
        return fast.strided_sources(views, entries, offsets, plan)  # type: ignore[no-any-return]
    sources: list[Any] = []
    for v, e in zip(views, entries, strict=True):
        how = plan[e.dtype]
        if how is True:
            sources.append(v)
        elif how is not None and e.nbytes and not e.stages:
            call, itemsize = how
            sources.append((call, e.shape, _contiguous_strides(e.shape), offsets[e.first_segment] // itemsize))
        else:
            sources.append(None)
    return sources


def _as_strided(make: Materializer | None, row: dtypes.DType, buf: Any) -> Any:
    """``as_strided`` of a torch tensor of ``row`` over ``buf``, for a dtype numpy lacks; else None."""
    if make is None or row.name in _NUMPY_NATIVE:
        return None
    base = make.aligned_base(row, buf)
    return None if base is None else base.as_strided


_U64 = np.dtype(np.uint64)
"""The widest alignment numpy asks of a wrappable dtype."""


def _from_numpy_copy(view: np.ndarray[Any, Any]) -> Any:
    return _from_numpy_fn()(view.copy())


def _frame_views(entries: list[wire.Entry], offsets: list[int], rope: Rope, framework: str | None) -> list[Any]:
    """The views of the one-buffer sweep for a message in frames: each raw tensor viewed in its frame.

    Offsets and frames are both in message order, so one walk finds every tensor's frame; a tensor
    that straddles frames gets None (the general path joins it).
    """
    ndarray = np.ndarray
    parts, starts = rope.parts, rope.starts
    last = len(parts) - 1
    k = 0
    views: list[Any] = []
    for e in entries:
        if not e.nbytes or e.stages or not (framework == "numpy" or e.dtype.name in _NUMPY_NATIVE):
            views.append(None)
            continue
        start = offsets[e.first_segment]
        while k < last and starts[k + 1] <= start:
            k += 1
        local = start - starts[k]
        part = parts[k]
        views.append(ndarray(e.shape, e.dtype.numpy, part, local) if local + e.nbytes <= part.nbytes else None)
    return views


class _Coded:
    """The encoded tensors of one message, for one decode call.

    At the first one asked for, the small single-stage ones are decoded in batches: one
    ``decode_batch`` call per codec config and dtype, since per-call overhead dominates small
    tensors. A batch that fails is left to the one-by-one path, whose error names the tensor.
    """

    def __init__(self, entries: list[wire.Entry], offsets: list[int], rope: Rope) -> None:
        self.entries = entries
        self.offsets = offsets
        self.rope = rope
        self.built: BuiltCodecs = {}
        self.done: dict[int, np.ndarray[Any, Any]] | None = None

    def tensor(self, index: int, make: Materializer, kind: int) -> Any:
        if self.done is None:
            self.done = self._batches()
        entry = self.entries[index]
        flat = self.done.pop(index, None)  # once: a reference of another kind gets arrays of its own
        if flat is None:
            segments = _segment_views(entry, self.offsets, self.rope)
            count = entry.nbytes // entry.dtype.itemsize
            flat = decode_segments(entry.stages, segments, entry.dtype, count, self.built)
        return _converted(flat, entry, make, kind)

    def _batches(self) -> dict[int, np.ndarray[Any, Any]]:
        done: dict[int, np.ndarray[Any, Any]] = {}
        for (codec_id, _, dtype), members in self._groups().items():
            if len(members) > 1:
                # In slices, so that the per-tensor objects of a call die young: the garbage
                # collector's full passes, costly in a process that holds torch, come less often.
                for k in range(0, len(members), _DECODE_BATCH):
                    self._batch(codec_id, dtype, members[k : k + _DECODE_BATCH], done)
        return done

    def _groups(self) -> dict[tuple[str, str, dtypes.DType], list[int]]:
        """Small single-stage entries by codec id, config and dtype."""
        groups: dict[tuple[str, str, dtypes.DType], list[int]] = {}
        for i, entry in enumerate(self.entries):
            if len(entry.stages) == 1 and entry.nbytes <= _BATCH_MAX_ELEMENTS * entry.dtype.itemsize:
                codec_id, config, _ = entry.stages[0]
                try:
                    key = (codec_id, repr(config), entry.dtype)  # repr tells 1, 1.0 and True apart
                except RecursionError:  # a hostile, deeply nested config: the one-by-one path refuses it
                    continue
                groups.setdefault(key, []).append(i)
        return groups

    def _batch(self, codec_id: str, dtype: dtypes.DType, members: list[int], done: dict[int, Any]) -> None:
        """Decodes ``members`` into ``done`` by one call, or leaves them all to the one-by-one path."""
        entries = self.entries
        try:
            codec = build_codec(codec_id, entries[members[0]].stages[0][1], self.built)
            items = [
                (
                    _segment_views(entries[i], self.offsets, self.rope),
                    entries[i].stages[0][2],
                    entries[i].nbytes // dtype.itemsize,
                )
                for i in members
            ]
            done.update(zip(members, decode_batch(codec, items, dtype), strict=True))
        except Exception:  # whatever failed, the one-by-one path raises it again, naming its tensor
            return


def _segment_views(entry: wire.Entry, offsets: list[int], rope: Rope) -> dict[str, np.ndarray[Any, Any]]:
    """Read-only views of an encoded tensor's segments, by name."""
    segments = {}
    first = entry.first_segment
    single = rope.parts[0] if len(rope.parts) == 1 and _LITTLE else None
    for j, seg in enumerate(entry.segments):
        if single is not None and seg.nbytes:  # (positional: np.ndarray parses keywords three times slower)
            segments[seg.name] = np.ndarray(seg.shape, seg.dtype.numpy, single, offsets[first + j])
        else:
            buf, offset, _ = rope.locate(offsets[first + j], seg.nbytes)
            segments[seg.name] = Materializer.view(seg.dtype, seg.shape, seg.nbytes, buf, offset)
    return segments


def _converted(flat: np.ndarray[Any, Any], entry: wire.Entry, make: Materializer, kind: int) -> Any:
    """A decoded tensor's values in its shape and the requested framework."""
    arr = flat.reshape(entry.shape)
    if kind == SCALAR:
        return arr[()]
    if kind == TORCH:
        return make.from_numpy(arr, entry.dtype)
    return arr
