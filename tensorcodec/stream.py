"""Streams: a message cut into bounded frames, produced and consumed one tensor at a time.

A single message needs the whole model in one buffer on both ends, which gRPC
(4 MiB default, 2 GiB hard cap), bounded queues and small machines refuse. A
stream (``docs/format.md`` section 9) sends the same content as a sequence of
frames of at most ``max_frame_bytes``: each tensor as a record (its table
entry) followed by its segment bytes, then the tree. The encoder quantizes a
tensor only when its turn comes and copies each byte once, into the frame; the
decoder validates each record before it allocates anything for it and writes
the bytes straight into the tensor they belong to, so both ends hold about one
frame beyond the tensors themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .codecs import check_coded, decode_segments
from .core import encode_leaf
from .dtypes import DType
from .errors import ChecksumError, DecodeError
from .feedback import ErrorFeedback, FeedbackRound
from .leaves import NUMPY, SCALAR, TORCH, Leaf, leaf_from_torch, values
from .materialize import Framework, Materializer, kinds_of, scalar_error
from .policy import Policy, Precision
from .reference import References, delta_of, is_delta, rebuild
from .wire.header import CHECKSUMS, DEFAULT_LIMITS, Budget, Entry, Limits, Segment, check_values
from .wire.stream import (
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_HEADER_SIZE,
    LAST_FRAME,
    LENGTH,
    MAX_FRAME_BYTES,
    MIN_FRAME_BYTES,
    STREAM_MAGIC,
    STREAM_VERSION,
    Framer,
    pack_record,
    read_end_record,
    read_frame,
    read_record,
    read_tensor_record,
)
from .wire.tree import flatten, unflatten

__all__ = [
    "STREAM_MAGIC",
    "STREAM_VERSION",
    "FRAME_HEADER_SIZE",
    "DEFAULT_MAX_FRAME_BYTES",
    "MIN_FRAME_BYTES",
    "encode_stream",
    "decode_stream",
    "StreamDecoder",
    "StreamTensor",
]


# ---------------------------------------------------------------------------- encoding


def encode_stream(
    obj: Any,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    names: bool = True,
    max_depth: int = DEFAULT_LIMITS.max_depth,
    stream_id: int | None = None,
    reference: Any = None,
    feedback: ErrorFeedback | None = None,
) -> Iterator[bytes]:
    """The message as a stream of frames, each at most ``max_frame_bytes`` long.

    Takes the arguments of ``encode``. The tree is walked now (so unsupported
    objects raise TypeError here), but each tensor is quantized and copied only
    when the iterator reaches it: memory stays at about one frame plus one
    quantized tensor. The frames alias nothing; the caller's tensors must stay
    unchanged until the iterator is exhausted. ``names`` puts each tensor's
    dotted path in its record, for receivers that use tensors as they arrive.
    ``stream_id`` (a random u64 by default) tags every frame of the stream.
    ``reference`` sends deltas, each computed when its tensor's turn comes (see ``encode``);
    ``feedback``'s residuals are stored once the last frame has been produced.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> frames = list(tc.encode_stream({"w": np.zeros(10_000, np.float32)}, max_frame_bytes=4096))
        >>> len(frames) > 1 and max(len(f) for f in frames) <= 4096
        True
        >>> tc.decode_stream(frames)["w"].shape
        (10000,)
    """
    if not MIN_FRAME_BYTES <= max_frame_bytes <= MAX_FRAME_BYTES:
        raise ValueError(f"max_frame_bytes must be in [{MIN_FRAME_BYTES}, {MAX_FRAME_BYTES}], not {max_frame_bytes}")
    if checksum is not None and checksum not in CHECKSUMS:
        raise ValueError(f"unknown checksum {checksum!r}; choose one of {sorted(CHECKSUMS)} or None")
    if stream_id is None:
        stream_id = int.from_bytes(os.urandom(8), "little")
    elif not 0 <= stream_id < 1 << 64:
        raise ValueError(f"stream_id must be an unsigned 64-bit integer, not {stream_id}")
    rules = Policy.of(precision, policy)
    devices: dict[int, Any] = {}  # accelerator tensors stay there until their turn: one CPU copy at a time
    refs = References(reference) if reference is not None else None
    want_paths = names or rules is not None or refs is not None
    tree, leaves, paths = flatten(obj, max_depth, names=want_paths, devices=devices)
    framer = Framer(stream_id, max_frame_bytes - FRAME_HEADER_SIZE)
    feedback_round = feedback.round(refs) if feedback is not None else None
    return _frames(framer, tree, leaves, devices, paths, names, rules, checksum, refs, feedback_round)


def _frames(
    framer: Framer,
    tree: bytes,
    leaves: list[Leaf],
    devices: dict[int, Any],
    paths: list[str] | None,
    names: bool,
    rules: Policy | None,
    checksum: str | None,
    refs: References | None = None,
    feedback_round: FeedbackRound | None = None,
) -> Iterator[bytes]:
    """The body of ``encode_stream``: one record and its segments per tensor, then the end record."""
    count = len(leaves)
    leaves.reverse()  # popped in order, so that a leaf that flatten had to copy is freed once sent
    for i in range(count):
        leaf = leaves.pop()
        path = paths[i] if paths is not None else ""
        entry: list[Any]
        segments: list[Any]
        if leaf.encoded is not None:  # a Quantized placed in the tree travels as it is
            entry, segments = leaf.encoded.wire_entry()
        else:
            chain = rules.choose(path, leaf.dtype, math.prod(leaf.shape)) if rules is not None else None
            ready = None
            kind = "torch" if leaf.kind == TORCH else "numpy"
            if feedback_round is not None and chain is not None:
                if i in devices:
                    leaf = leaf_from_torch(devices.pop(i))  # type: ignore[assignment]
                ready = feedback_round.tensor(values(leaf).reshape(-1), leaf.dtype, leaf.shape, kind, path, chain)
            if ready is None and refs is not None and i not in devices:
                ready = delta_of(values(leaf).reshape(-1), leaf.dtype, leaf.shape, kind, path, refs, chain)
            if ready is not None:
                entry, segments = ready.wire_entry()
            else:
                entry, segments = encode_leaf(chain, leaf, path, devices.pop(i, None))
        fields: dict[str, Any] = {"index": i, "entry": entry}
        if names:
            fields["name"] = path
        if checksum is not None:
            fields["checksum"] = checksum
            fields["checksums"] = [CHECKSUMS[checksum](seg) for seg in segments]
        yield from framer.add(pack_record(fields))
        for seg in segments:
            yield from framer.add(seg)
        del leaf, entry, segments
    yield from framer.add(pack_record({"tree": tree, "count": count}))
    last = framer.flush(last=True)
    if feedback_round is not None:
        feedback_round.commit()
    yield last


# ---------------------------------------------------------------------------- decoding


class StreamTensor(NamedTuple):
    """A tensor that a stream completed, before the tree that places it has arrived.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> [t] = tc.StreamDecoder().feed(b"".join(tc.encode_stream({"w": np.ones(2)}, names=True)))
        >>> t.index, t.name, t.tensor
        (0, 'w', array([1., 1.]))
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index: the name the format uses
    """Its position in the tensor table (the tree's reference)."""
    name: str | None
    """The dotted path the sender gave it, if the stream carries names."""
    tensor: Any
    """numpy array (a torch tensor with ``framework="torch"``)."""


_LEN, _RECORD, _SEGMENT, _END = range(4)


class StreamDecoder:
    """Decodes a stream fed one frame at a time, validating as it goes.

    ``feed`` returns the tensors each frame completed; ``result`` returns the
    tree once the last frame has arrived. Arguments are those of ``decode``:
    with ``copy=False`` a tensor that lies inside one frame (and is aligned) is
    a view of that frame, which must then stay unchanged; every other tensor
    owns its memory. Tensors handed out by ``feed`` are numpy arrays unless
    ``framework="torch"``: the tree, which says how the sender held each one,
    comes last. A frame that is out of place, damaged or malformed raises
    DecodeError, and so does every later call.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> decoder = tc.StreamDecoder()
        >>> for frame in tc.encode_stream({"a": np.ones(2), "b": np.zeros(2)}):
        ...     for done in decoder.feed(frame):
        ...         print(done.index, done.tensor)
        0 [1. 1.]
        1 [0. 0.]
        >>> decoder.result()
        {'a': array([1., 1.]), 'b': array([0., 0.])}
    """

    def __init__(
        self,
        *,
        copy: bool = True,
        framework: Framework | None = None,
        device: Any = None,
        verify: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        reference: Any = None,
    ) -> None:
        self._kinds = kinds_of(framework)
        self._refs = References(reference) if reference is not None else None
        self._torch_now = framework == "torch"
        self._copy = copy
        self._verify = verify
        self._limits = limits
        self._make = Materializer(False, device)
        self._stream_id: int | None = None
        self._seq = 0
        self._last_seen = False
        self._failed: str | None = None
        self._base = 0
        """Stream-body bytes before the current frame."""
        self._state = _LEN
        self._want = LENGTH.size
        self._pending = bytearray()
        self._decoded = 0
        self._segment_count = 0
        self._store: dict[int, Any] = {}
        self._rows: list[DType] = []
        self._shapes: list[tuple[int, ...]] = []
        self._tree: Any = None
        # The tensor being received.
        self._index = 0
        self._name: str | None = None
        self._entry: Entry | None = None
        self._segments: tuple[Segment, ...] = ()
        self._sums: list[int] | None = None
        self._algorithm = ""
        self._seg = 0
        self._fill = 0
        self._buf: Any = None
        self._bufs: list[Any] = []

    @property
    def done(self) -> bool:
        """True once the last frame has arrived and the tree is decoded."""
        return self._failed is None and self._last_seen and self._state == _END

    @property
    def frames(self) -> int:
        """Frames accepted so far."""
        return self._seq

    def feed(self, frame: Any) -> list[StreamTensor]:
        """Takes the next frame (bytes-like); returns the tensors it completed, in order."""
        if self._failed is not None:
            raise DecodeError(f"the stream failed earlier: {self._failed}")
        try:
            return self._feed(frame)
        except DecodeError as e:
            self._failed = str(e)
            self._release()
            raise

    def result(self) -> Any:
        """The decoded tree; raises DecodeError unless the whole stream has arrived."""
        if self._failed is not None:
            raise DecodeError(f"the stream failed: {self._failed}")
        if not self.done:
            raise DecodeError(
                f"stream incomplete: {self._seq} frames and {len(self._rows)} tensors received, "
                + ("the last frame never came" if not self._last_seen else "no end record")
            )
        return self._tree

    # -- frames

    def _feed(self, frame: Any) -> list[StreamTensor]:
        stream_id, flags, body = read_frame(frame, self._seq, self._stream_id, self._last_seen)
        what = f"frame {self._seq}"
        self._stream_id = stream_id
        self._seq += 1
        out: list[StreamTensor] = []
        self._consume(body, out)
        self._base += body.nbytes
        if flags & LAST_FRAME:
            self._last_seen = True
            if self._state != _END:
                raise DecodeError(f"{what}: the last frame ends before the stream's end record")
        elif self._state == _END:
            raise DecodeError(f"{what}: the end record is in a frame not flagged last")
        return out

    def _consume(self, body: memoryview, out: list[StreamTensor]) -> None:
        p, n = 0, body.nbytes
        while p < n:
            state = self._state
            if state == _SEGMENT:
                p = self._segment_bytes(body, p, out)
                continue
            if state == _END:
                raise DecodeError(f"{n - p} bytes after the end record (stream byte {self._base + p})")
            have = len(self._pending)
            take = min(self._want - have, n - p)
            if not have and take == self._want:
                chunk: Any = body[p : p + take]
            else:
                self._pending += body[p : p + take]
                chunk = self._pending if len(self._pending) == self._want else None
            p += take
            if chunk is None:
                continue
            if state == _LEN:
                (size,) = LENGTH.unpack(chunk)
                if size == 0 or size > self._limits.max_header_bytes:
                    raise DecodeError(
                        f"record at stream byte {self._base + p - 4}: length {size} is outside "
                        f"[1, max_header_bytes={self._limits.max_header_bytes}]"
                    )
                self._state, self._want = _RECORD, size
            else:
                self._record(chunk, self._base + p, out)
            self._pending = bytearray()

    # -- records

    def _record(self, data: Any, end: int, out: list[StreamTensor]) -> None:
        fields = read_record(data, len(self._rows))
        if "tree" in fields:
            self._end_record(fields)
            return
        rec = read_tensor_record(fields, len(self._rows), self._limits, self._segment_count, self._decoded, end)
        entry = rec.entry
        if entry.stages:  # checked before a buffer is allocated for its segments
            budget = Budget(self._limits, end + sum(seg.nbytes for seg in rec.segments))
            try:
                budget.take(self._decoded + entry.nbytes, "decoded tensors")
                check_coded(
                    entry.stages, entry.segments, entry.dtype, entry.nbytes // entry.dtype.itemsize, None, budget
                )
            except DecodeError as e:  # say which tensor, keep the class
                e.args = (f"tensor {rec.index}: {e}",)
                raise
        self._decoded += rec.entry.nbytes
        self._segment_count += len(rec.segments)
        self._rows.append(rec.entry.dtype)
        self._shapes.append(rec.entry.shape)
        self._index, self._name, self._entry, self._segments = rec.index, rec.name, rec.entry, rec.segments
        self._sums, self._algorithm = rec.checksums, rec.checksum
        self._seg = 0
        self._bufs = []
        self._next_segment(out)

    def _end_record(self, fields: dict[Any, Any]) -> None:
        tree = read_end_record(fields, len(self._rows))
        count = len(self._rows)
        self._state = _END
        cache: dict[tuple[int, int], Any] = {}

        def tensor(index: int, sent_kind: int) -> Any:
            if sent_kind == SCALAR and self._shapes[index]:
                raise scalar_error(index, self._shapes[index])
            kind = self._kinds[sent_kind]
            value = cache.get((index, kind))
            if value is None:
                value = self._as_kind(index, kind)
                cache[(index, kind)] = value
            return value

        self._tree = unflatten(tree, tensor, count, self._limits.max_depth)
        self._store = {}

    # -- segments

    def _next_segment(self, out: list[StreamTensor]) -> None:
        """Completes empty segments at once; moves on to the next tensor after the last one."""
        segments = self._segments
        while self._seg < len(segments) and segments[self._seg].nbytes == 0:
            self._segment_done(memoryview(b""))
        if self._seg < len(segments):
            self._state, self._fill, self._buf = _SEGMENT, 0, None
        else:
            self._finish_tensor(out)
            self._state, self._want = _LEN, LENGTH.size

    def _segment_bytes(self, body: memoryview, p: int, out: list[StreamTensor]) -> int:
        seg = self._segments[self._seg]
        take = min(seg.nbytes - self._fill, body.nbytes - p)
        if self._buf is None:
            if not self._copy and take == seg.nbytes and self._aligned(body, p, seg):
                self._segment_done(body[p : p + take])
                self._next_segment(out)
                return p + take
            # Memory the stream has earned: the whole segment at once when its bytes are here or the
            # stream so far is as long; else a buffer that grows with the bytes as they arrive.
            if take == seg.nbytes or seg.nbytes <= self._base + p:
                try:
                    self._buf = np.empty(seg.nbytes, dtype=np.uint8)
                except MemoryError:
                    raise DecodeError(f"tensor {self._index}: cannot allocate {seg.nbytes} bytes") from None
            else:
                self._buf = bytearray()
        if type(self._buf) is bytearray:
            self._buf += body[p : p + take]
        else:
            memoryview(self._buf)[self._fill : self._fill + take] = body[p : p + take]
        self._fill += take
        if self._fill == seg.nbytes:
            if type(self._buf) is bytearray:
                self._buf = np.frombuffer(self._buf, dtype=np.uint8)
            self._segment_done(self._buf)
            self._next_segment(out)
        return p + take

    @staticmethod
    def _aligned(body: memoryview, p: int, seg: Segment) -> bool:
        """Whether a view of the frame at ``p`` is aligned for the segment's dtype (torch needs it)."""
        address: int = np.frombuffer(body, dtype=np.uint8, count=1, offset=p).ctypes.data
        return address % seg.dtype.numpy.alignment == 0

    def _segment_done(self, buf: Any) -> None:
        if self._sums is not None and self._verify:
            seg = self._segments[self._seg]
            got = CHECKSUMS[self._algorithm](memoryview(buf).cast("B").toreadonly())
            if got != self._sums[self._seg]:
                raise ChecksumError(f"tensor {self._index} segment {seg.name!r}", self._sums[self._seg], got)
        self._bufs.append(buf)
        self._seg += 1

    def _finish_tensor(self, out: list[StreamTensor]) -> None:
        entry = self._entry
        assert entry is not None
        try:
            if not entry.stages:
                check_values(memoryview(self._bufs[0]).cast("B")[: entry.nbytes], entry.dtype, self._index)
                value: Any = self._make.numpy(entry.dtype, entry.shape, entry.nbytes, self._bufs[0], 0)
            else:
                parts = {
                    seg.name: Materializer.view(seg.dtype, seg.shape, seg.nbytes, buf, 0)
                    for seg, buf in zip(entry.segments, self._bufs, strict=True)
                }
                if is_delta(entry.stages):
                    flat = rebuild(entry.stages, parts, entry.dtype, entry.shape, self._refs)
                else:
                    flat = decode_segments(entry.stages, parts, entry.dtype, entry.nbytes // entry.dtype.itemsize)
                value = flat.reshape(entry.shape)
            if self._torch_now:
                value = self._make.from_numpy(value, entry.dtype)
        except TypeError as e:
            raise DecodeError(f"tensor {self._index}: {e}") from None
        except DecodeError as e:  # the codec's own words; say which tensor, keep the class
            e.args = (f"tensor {self._index}: {e}",)
            raise
        self._bufs = []
        self._buf = None
        self._entry = None
        self._store[self._index] = value
        out.append(StreamTensor(self._index, self._name, value))

    def _as_kind(self, index: int, kind: int) -> Any:
        """A received tensor the way the tree asks for it (numpy, numpy scalar or torch)."""
        value = self._store[index]
        if not isinstance(value, np.ndarray):
            return value  # already torch
        if kind == SCALAR:
            return value[()]
        if kind == TORCH:
            try:
                return self._make.from_numpy(value, self._rows[index])
            except TypeError as e:
                raise DecodeError(f"tensor {index}: {e}") from None
        assert kind == NUMPY
        return value

    def _release(self) -> None:
        """Drops what a failed stream had received, so that its memory goes back at once."""
        self._store = {}
        self._bufs = []
        self._buf = None
        self._pending = bytearray()


def decode_stream(
    frames: Iterable[Any],
    *,
    copy: bool = True,
    framework: Framework | None = None,
    device: Any = None,
    verify: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    on_tensor: Callable[[StreamTensor], None] | None = None,
    reference: Any = None,
) -> Any:
    """Decodes a whole stream from an iterable of frames; the arguments are those of ``decode``.

    ``on_tensor`` is called with every tensor as soon as its last byte has
    arrived (see ``StreamDecoder``). Raises DecodeError for a malformed,
    damaged, reordered, interleaved or incomplete stream, or frames past its end.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> frames = tc.encode_stream({"a": np.ones(3), "b": [np.zeros(2)]}, names=True)
        >>> arrived = []
        >>> tree = tc.decode_stream(frames, on_tensor=lambda t: arrived.append(t.name))
        >>> arrived, tree["b"][0]
        (['a', 'b.0'], array([0., 0.]))
    """
    decoder = StreamDecoder(
        copy=copy, framework=framework, device=device, verify=verify, limits=limits, reference=reference
    )
    for frame in frames:
        arrived = decoder.feed(frame)
        if on_tensor is not None:
            for item in arrived:
                on_tensor(item)
    return decoder.result()
