"""encode / decode: the public entry points, each a short pipeline.

encode: walk the tree into leaves (``wire.tree.flatten``), plan each leaf's entry and segments
(raw, or through the policy's codecs, small ones in batches), pack the header, then join.
decode: parse and validate the whole message in one pass (``wire.header.parse_message``: limits,
layout, padding, checksums) before any tensor is built, then unpack the tree, whose references
``materialize.MessageTensors`` answers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import _c, dtypes
from .codecs import (
    BuiltCodecs,
    Codec,
    build_codec,
    check_coded,
    check_layout,
    decode_batch,
    decode_segments,
    encode_chain,
)
from .dtypes import DType
from .feedback import ErrorFeedback
from .leaves import LITTLE, NUMPY_NATIVE, SCALAR, Leaf, leaf_from_numpy, leaf_from_torch, values
from .materialize import Framework, Materializer, MessageTensors, converted, kinds_of, scalar_error
from .policy import Policy, Precision
from .reference import References, is_delta, rebuild, with_deltas
from .wire.header import (
    ALIGN,
    CHECKSUMS,
    DEFAULT_LIMITS,
    ROLES,
    ZEROS,
    Budget,
    Entry,
    Limits,
    copy_frames,
    pack_header,
    parse_message,
)
from .wire.rope import Rope
from .wire.tree import flatten, unflatten

__all__ = [
    "encode",
    "encode_frames",
    "encode_into",
    "decode",
    "open_message",
    "TensorSlot",
    "encode_leaf",
    "WireTensor",
    "Framework",
]

_BATCH_MAX_ELEMENTS = 1 << 16
"""Tensors up to this size that share a codec are encoded (and decoded) in one batch call (per-call overhead)."""
_DECODE_BATCH = 256
"""Most tensors per ``decode_batch`` call."""


def _plan(
    obj: Any, precision: Precision, policy: Any, checksum: str | None, max_depth: int, named: bool = False
) -> tuple[bytes, list[Any]]:
    """The preamble + header, and the segments to follow it, in order.

    Tensor names are built only when the policy reads them, or (``named``) to name a tensor in an error.
    """
    if checksum is not None and checksum not in CHECKSUMS:
        raise ValueError(f"unknown checksum {checksum!r}; choose one of {sorted(CHECKSUMS)} or None")
    rules = Policy.of(precision, policy)
    devices: dict[int, Any] = {}
    want_names = rules is not None and (named or rules.needs_names)
    tree, leaves, names = flatten(obj, max_depth, names=want_names, devices=devices if rules else None)
    if rules is not None and names is None:
        try:
            return _planned(rules, tree, leaves, [""] * len(leaves), devices, checksum)
        except (TypeError, ValueError):
            return _plan(obj, precision, policy, checksum, max_depth, named=True)
    return _planned(rules, tree, leaves, names, devices, checksum)


def _warn_unmatched(rules: Policy, names: list[str]) -> None:
    patterns = [pattern for pattern, _ in rules.rules]
    examples = ", ".join(repr(n) for n in names[:3])
    warnings.warn(
        f"the policy's patterns {patterns} match no tensor, so every tensor is sent losslessly; "
        f"names are dotted paths such as {examples}: write '*.bias', '*norm*' or '*'",
        UserWarning,
        stacklevel=6,
    )


def _planned(
    rules: Policy | None,
    tree: bytes,
    leaves: list[Leaf],
    names: list[str] | None,
    devices: dict[int, Any],
    checksum: str | None,
) -> tuple[bytes, list[Any]]:
    chains: list[list[Codec] | None] = [None] * len(leaves)
    batches: dict[int, list[int]] = {}
    if rules is not None and names is not None:
        for i, leaf in enumerate(leaves):
            if leaf.encoded is None:
                chain = chains[i] = rules.choose(names[i], leaf.dtype, math.prod(leaf.shape))
                small = leaf.data.nbytes <= _BATCH_MAX_ELEMENTS * leaf.dtype.itemsize
                if chain is not None and len(chain) == 1 and i not in devices and small:
                    batches.setdefault(id(chain[0]), []).append(i)
        if leaves and all(c is None for c in chains) and not any(rules.matches(n) for n in names):
            _warn_unmatched(rules, names)
    entries: list[list[Any]] = []
    segments: list[Any] = []
    if rules is None and all(leaf.encoded is None for leaf in leaves):  # all raw: the hot path
        entries = [[leaf.dtype.name, leaf.shape] for leaf in leaves]
        segments = [leaf.data for leaf in leaves]
    else:
        batched = _encode_batches(batches, chains, leaves, names)
        for i, leaf in enumerate(leaves):
            if leaf.encoded is not None:
                entry, data = leaf.encoded.wire_entry()
            else:
                # pop: a batch result dies once its entry is built, which spares garbage collections
                done = batched.pop(i, None)
                name = names[i] if names is not None else ""
                entry, data = done if done is not None else encode_leaf(chains[i], leaf, name, devices.get(i))
            entries.append(entry)
            segments.extend(data)
    sums = [CHECKSUMS[checksum](seg) for seg in segments] if checksum else []
    return pack_header(entries, tree, checksum, sums), segments


def _encode_batches(
    batches: dict[int, list[int]], chains: list[list[Codec] | None], leaves: list[Leaf], names: list[str] | None
) -> dict[int, WireTensor]:
    """Small tensors sharing one codec, encoded by a single ``encode_batch`` call per codec.

    One codec, so its config is read once and its segments' dtypes are looked up once for the batch.
    """
    out: dict[int, WireTensor] = {}
    for members in batches.values():
        if len(members) < 2:
            continue
        codec = chains[members[0]][0]  # type: ignore[index]
        views = [values(leaves[i]) for i in members]
        try:
            results = codec.encode_batch(views)
        except (TypeError, ValueError):
            continue  # encode one by one below, so that the error names its tensor
        stage = [codec.codec_id, codec.get_config()]
        known: dict[tuple[str, np.dtype[Any]], tuple[str, bool]] = {}
        for i, encoded in zip(members, results, strict=True):
            leaf = leaves[i]
            name = names[i] if names is not None else ""
            described, data = _segments(name, encoded.segments, known)
            stages = [[*stage, encoded.params]]
            out[i] = tuple.__new__(WireTensor, ([leaf.dtype.name, leaf.shape, stages, described], data))
    return out


def _segments(
    name: str, produced: Any, known: dict[tuple[str, np.dtype[Any]], tuple[str, bool]]
) -> tuple[list[Any], list[Any]]:
    """The table rows and bytes of a codec's segments; ``known`` remembers (role, dtype) checks already made."""
    described = []
    data = []
    for seg_name, (role, arr) in produced.items():
        checked = known.get((role, arr.dtype))
        if checked is None:
            row = dtypes.from_numpy(arr.dtype)
            if row is None or role not in ROLES:
                raise TypeError(f"tensor {name!r}: a codec produced segment {seg_name!r} of {arr.dtype}/{role!r}")
            checked = known[role, arr.dtype] = (row.name, LITTLE and row.name in NUMPY_NATIVE and arr.dtype.isnative)
        described.append([seg_name, role, checked[0], list(arr.shape)])
        if checked[1] and arr.flags.c_contiguous:
            data.append(arr)  # exports its bytes as they are, like a raw leaf
        else:
            data.append(leaf_from_numpy(arr).data)  # type: ignore[union-attr]
    return described, data


class WireTensor(NamedTuple):
    """One tensor as it goes on the wire: what ``encode_leaf`` gives."""

    entry: list[Any]
    """Its tensor-table entry."""
    segments: list[Any]
    """Its segments' bytes, in order (buffers with ``nbytes``)."""


def encode_leaf(chain: list[Codec] | None, leaf: Leaf, name: str, device_tensor: Any = None) -> WireTensor:
    """Header entry and segment bytes of one tensor, raw or encoded by a chain of codecs.

    A tensor left on an accelerator (``device_tensor``) is quantized there when
    the codec can; otherwise it is copied to the CPU first.
    """
    try:
        encoded = None
        if device_tensor is not None and chain is not None and len(chain) == 1:
            encoded = chain[0].encode_torch(device_tensor.detach().reshape(-1))
        if encoded is not None:
            stages = [[chain[0].codec_id, chain[0].get_config(), encoded.params]]  # type: ignore[index]
            produced = encoded.segments
        else:
            if device_tensor is not None:
                leaf = leaf_from_torch(device_tensor)  # type: ignore[assignment]
            if chain is None:
                return tuple.__new__(WireTensor, ([leaf.dtype.name, leaf.shape], [leaf.data]))
            stages, produced = encode_chain(chain, values(leaf))
    except (TypeError, ValueError) as e:
        raise type(e)(f"tensor {name!r}: {e}") from None
    described, data = _segments(name, produced, {})
    return tuple.__new__(WireTensor, ([leaf.dtype.name, leaf.shape, stages, described], data))


def encode_frames(
    obj: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
    reference: Any = None,
    feedback: ErrorFeedback | None = None,
) -> list[Any]:
    """The message as a list of buffers, for scatter-gather transports.

    The first buffer is the preamble and header; the others are the tensors'
    own memory (no copy where the tensor is C-contiguous little-endian CPU
    memory) and the zero padding between them. ``b"".join(frames)`` equals
    ``encode(obj)``, and ``decode`` accepts the list as it is. The frames alias
    the caller's tensors: keep those unchanged until the frames are sent.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> tree = {"w": np.arange(4.0)}
        >>> frames = tc.encode_frames(tree)
        >>> b"".join(frames) == tc.encode(tree)
        True
        >>> tc.decode(frames)["w"]
        array([0., 1., 2., 3.])
    """
    frames, _, done = _frames(obj, precision, policy, checksum, max_depth, reference, feedback)
    done()
    return frames


_PADDING = [memoryview(ZEROS)[:n] for n in range(ALIGN)]


def _frames(
    obj: Any,
    precision: Precision,
    policy: Any,
    checksum: str | None,
    max_depth: int,
    reference: Any = None,
    feedback: ErrorFeedback | None = None,
) -> tuple[list[Any], int, Callable[[], None]]:
    """The frames of ``encode_frames``, their total size, and what to call once they are made (feedback's commit)."""
    done = _nothing
    if reference is not None or feedback is not None:
        rules = Policy.of(precision, policy)
        refs = References(reference) if reference is not None else None
        if feedback is not None:
            feedback_round = feedback.round(refs)
            obj = feedback_round.apply(obj, rules)
            done = feedback_round.commit
        if refs is not None:
            obj = with_deltas(obj, refs, rules)
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
    return frames, pos, done


def _nothing() -> None:
    pass


def encode(
    obj: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
    reference: Any = None,
    feedback: ErrorFeedback | None = None,
) -> bytes:
    """Encode a tree of containers, scalars and tensors into one message.

    ``precision`` (a name from ``tensorcodec.PRECISIONS`` such as "bf16" or
    "nf4", or a Codec) quantizes every floating tensor of at least
    ``DEFAULT_MIN_ELEMENTS`` elements that it makes smaller; ``policy`` (a
    ``Policy`` or a dict of name patterns to precisions) chooses per tensor.
    The caller's tensors are never modified. ``checksum`` ("xxh3_64" or
    "crc32c") adds a checksum of every segment that ``decode`` verifies. Each
    tensor's bytes are copied once, into the result. With ``reference`` (a
    model the receiver holds), each tensor it holds under the same name, dtype
    and shape is sent as its difference from it (``tensorcodec.reference``),
    which ``decode(..., reference=...)`` adds back. ``feedback`` (an
    ``ErrorFeedback``) adds each quantized tensor's residual from the last
    message before quantizing and keeps the new one (``tensorcodec.feedback``).
    Raises TypeError naming the path of an object that cannot be encoded.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> weights = {"fc.weight": np.ones((256, 64), np.float32), "step": 7}
        >>> lossless = tc.encode(weights)
        >>> small = tc.encode(weights, precision="nf4")
        >>> len(small) / len(lossless) < 0.15
        True
        >>> tc.decode(small)["step"]
        7
        >>> tc.encode({"w": object()})
        Traceback (most recent call last):
            ...
        TypeError: root['w']: cannot encode an object of type builtins.object; supported: ...
    """
    frames, size, done = _frames(obj, precision, policy, checksum, max_depth, reference, feedback)
    message = _joined(frames, size)
    done()
    return message


def _joined(frames: list[Any], size: int) -> bytes:
    fast = _c.wire()
    if fast is not None:
        # One copy, into memory placed for huge pages from 2 MiB; the frames are dropped as they are
        # copied, so that the header is freed before the output is complete.
        joined: bytes = fast.join_bytes(frames, size)
        return joined
    if size >= _HUGE_BYTES_MIN_PYTHON:
        made = _c.fresh_bytes(size)
        if made is not None:
            out, dst = made
            copy_frames(frames, dst)
            del dst  # the view must not outlive ``out``, which it does not keep alive
            return out
    return b"".join(frames)


_HUGE_BYTES_MIN_PYTHON = 8 << 20
"""Without ``_fastwire``, from this size ``encode`` writes into huge-page memory (``_fastwire.join_bytes`` does
from 2 MiB, one huge page): copying frame by frame in Python costs more than the faults it saves below."""


def encode_into(
    obj: Any,
    out: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
    reference: Any = None,
    feedback: ErrorFeedback | None = None,
) -> int:
    """Encode into a caller-owned writable buffer (reused across calls); returns the bytes written.

    Raises ValueError, naming the size needed, when ``out`` is too small.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> buffer = bytearray(1 << 16)
        >>> n = tc.encode_into({"w": np.arange(4.0)}, buffer)
        >>> tc.decode(memoryview(buffer)[:n])["w"]
        array([0., 1., 2., 3.])
    """
    frames, size, done = _frames(obj, precision, policy, checksum, max_depth, reference, feedback)
    dst = np.frombuffer(out, dtype=np.uint8)
    if dst.flags.writeable is False:
        raise ValueError("encode_into needs a writable buffer")
    if size > dst.size:
        raise ValueError(f"buffer of {dst.size} bytes is too small: the message needs {size}")
    copy_frames(frames, dst)
    done()
    return size


def decode(
    data: Any,
    *,
    copy: bool = True,
    framework: Framework | None = None,
    device: Any = None,
    verify: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    reference: Any = None,
) -> Any:
    """Decode a message (bytes-like, or the list that ``encode_frames`` gave).

    Tensors come back in the framework they were sent from, or all as
    ``framework`` ("numpy" or "torch"); ``device`` moves torch tensors.
    ``copy=False`` returns read-only views into ``data`` (no per-byte work but
    checksum verification); ``copy=True`` returns writable arrays of their own.
    ``verify`` checks segment checksums when the message carries them.
    ``reference`` is the model a message of deltas was encoded against.

    Raises DecodeError (or its subclass ChecksumError) for any malformed,
    truncated or over-limit message, naming what is wrong.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> message = tc.encode({"w": np.arange(3, dtype=np.int16)})
        >>> tc.decode(message)
        {'w': array([0, 1, 2], dtype=int16)}
        >>> tc.decode(message, copy=False)["w"].flags.writeable
        False
        >>> tc.decode(message[:20])
        Traceback (most recent call last):
            ...
        tensorcodec.errors.DecodeError: ...
    """
    kinds_of(framework)  # a wrong framework is refused before the message is read
    rope = Rope(data)
    header = parse_message(rope, limits, verify)  # every rule checked before any tensor is built
    refs = References(reference) if reference is not None else None
    coded = _Coded(header.entries, header.offsets, rope, header.budget, refs)
    tensors = MessageTensors(header, rope, framework, copy, device, coded.tensor)
    return unflatten(header.tree, tensors.tensor, len(header.entries), limits.max_depth, tensors.routes())


class TensorSlot:
    """Where ``open_message`` leaves a tensor in the tree: its table index, how it was sent, dtype and shape."""

    __slots__ = ("dtype", "index", "kind", "shape")

    def __init__(self, index: int, kind: int, dtype: DType, shape: tuple[int, ...]) -> None:
        self.index = index
        self.kind = kind
        """NUMPY, TORCH or SCALAR (``tensorcodec.leaves``): what the sender held."""
        self.dtype = dtype
        self.shape = shape


def open_message(
    data: Any, *, verify: bool = True, limits: Limits = DEFAULT_LIMITS, reference: Any = None
) -> tuple[Any, Callable[[int], np.ndarray[Any, Any]]]:
    """A validated message's tree with a ``TensorSlot`` for each tensor, and a function that decodes one of them.

    For readers that hold one tensor at a time (``tensorcodec.aggregate``): ``take(index)`` gives
    tensor ``index`` as a numpy array (read-only where it is a view of ``data``) and keeps nothing.
    Raises DecodeError as ``decode`` does.
    """
    rope = Rope(data)
    header = parse_message(rope, limits, verify)
    refs = References(reference) if reference is not None else None
    coded = _Coded(header.entries, header.offsets, rope, header.budget, refs)
    tensors = MessageTensors(header, rope, "numpy", False, None, coded.tensor)
    entries = header.entries

    def slot(index: int, kind: int) -> TensorSlot:
        entry = entries[index]
        if kind == SCALAR and entry.shape:
            raise scalar_error(index, entry.shape)
        return TensorSlot(index, kind, entry.dtype, entry.shape)

    return unflatten(header.tree, slot, len(entries), limits.max_depth), tensors.take


class _Coded:
    """The encoded tensors of one message, for one decode call.

    At the first one asked for, the small single-stage ones are decoded in batches: one
    ``decode_batch`` call per codec config and dtype, since per-call overhead dominates small
    tensors. A batch that fails is left to the one-by-one path, whose error names the tensor.
    """

    def __init__(
        self, entries: list[Entry], offsets: list[int], rope: Rope, budget: Budget, refs: References | None = None
    ) -> None:
        self.refs = refs
        self.budget = budget
        self.entries = entries
        self.offsets = offsets
        self.rope = rope
        self.built: BuiltCodecs = {}
        self.done: dict[int, np.ndarray[Any, Any]] | None = None
        self.checked: set[int] = set()

    def check(self, index: int) -> None:
        """``check_coded`` of entry ``index``, once, before anything is decoded for it."""
        if index not in self.checked:
            entry = self.entries[index]
            count = entry.nbytes // entry.dtype.itemsize
            check_coded(entry.stages, entry.segments, entry.dtype, count, self.built, self.budget)
            self.checked.add(index)

    def tensor(self, index: int, make: Materializer, kind: int) -> Any:
        if self.done is None:
            self.done = self._batches()
        self.check(index)
        entry = self.entries[index]
        flat = self.done.pop(index, None)  # once: a reference of another kind gets arrays of its own
        if flat is None:
            segments = _segment_views(entry, self.offsets, self.rope)
            count = entry.nbytes // entry.dtype.itemsize
            if is_delta(entry.stages):
                flat = rebuild(entry.stages, segments, entry.dtype, entry.shape, self.refs, self.built)
            else:
                flat = decode_segments(entry.stages, segments, entry.dtype, count, self.built)
        return converted(flat, entry, make, kind)

    def _batches(self) -> dict[int, np.ndarray[Any, Any]]:
        done: dict[int, np.ndarray[Any, Any]] = {}
        for (codec_id, _, dtype), members in self._groups().items():
            if len(members) > 1:
                # In slices, so that the per-tensor objects of a call die young: the garbage
                # collector's full passes, costly in a process that holds torch, come less often.
                for k in range(0, len(members), _DECODE_BATCH):
                    self._batch(codec_id, dtype, members[k : k + _DECODE_BATCH], done)
        return done

    def _groups(self) -> dict[tuple[str, str, DType], list[int]]:
        """Small single-stage entries by codec id, config and dtype."""
        groups: dict[tuple[str, str, DType], list[int]] = {}
        for i, entry in enumerate(self.entries):
            if len(entry.stages) == 1 and entry.nbytes <= _BATCH_MAX_ELEMENTS * entry.dtype.itemsize:
                codec_id, config, _ = entry.stages[0]
                if codec_id == "delta":
                    continue  # its reference is added one by one
                try:
                    key = (codec_id, repr(config), entry.dtype)  # repr tells 1, 1.0 and True apart
                except RecursionError:  # a hostile, deeply nested config: the one-by-one path refuses it
                    continue
                groups.setdefault(key, []).append(i)
        return groups

    def _batch(self, codec_id: str, dtype: DType, members: list[int], done: dict[int, Any]) -> None:
        """Decodes ``members`` into ``done`` by one call, or leaves them all to the one-by-one path."""
        entries = self.entries
        try:
            codec = build_codec(codec_id, entries[members[0]].stages[0][1], self.built)
            for i in members:  # one codec, config and dtype: check_coded less the chain it shares
                check_layout(codec, dtype, entries[i].nbytes // dtype.itemsize, entries[i].segments)
                self.checked.add(i)
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


def _segment_views(entry: Entry, offsets: list[int], rope: Rope) -> dict[str, np.ndarray[Any, Any]]:
    """Read-only views of an encoded tensor's segments, by name."""
    segments = {}
    first = entry.first_segment
    single = rope.parts[0] if len(rope.parts) == 1 and LITTLE else None
    for j, seg in enumerate(entry.segments):
        if single is not None and seg.nbytes:  # (positional: np.ndarray parses keywords three times slower)
            segments[seg.name] = np.ndarray(seg.shape, seg.dtype.numpy, single, offsets[first + j])
        else:
            buf, offset, _ = rope.locate(offsets[first + j], seg.nbytes)
            segments[seg.name] = Materializer.view(seg.dtype, seg.shape, seg.nbytes, buf, offset)
    return segments
