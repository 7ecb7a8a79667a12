"""The weighted mean of many clients' messages, decoded one tensor at a time (``tc.aggregate``).

A server that averages N client updates must not hold N decoded models: ``Aggregator.add``
validates a message's header, checks that its tensors agree with the first message's (names,
dtypes, shapes), then decodes one tensor at a time and adds ``weight * tensor`` into an
accumulator per tensor. Memory stays at the accumulators (one model in float32), the message
being read and one decoded tensor. Stream sources are the exception: a stream's tree arrives
last, so its tensors are decoded whole before they are added.

No codec is summed in its compressed domain: every lossy codec here scales each block by the
block's own absmax (or min/max) of each client, so codes of two clients share no scale and must be
dequantized before they can be added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .core import TensorSlot, open_message
from .dtypes import DType
from .errors import DecodeError
from .leaves import NUMPY, SCALAR, TORCH
from .materialize import Materializer
from .reference import flat_values, is_tensor
from .stream import StreamDecoder, decode_stream
from .wire.header import DEFAULT_LIMITS, MAGIC, Limits
from .wire.stream import STREAM_MAGIC
from .wire.tree import map_tensors, named_leaves

__all__ = ["Aggregator", "aggregate"]

_WIDE = frozenset({"float64", "complex64", "complex128", "int32", "int64", "uint32", "uint64"})
"""Dtypes accumulated in float64 (complex128 for complex): float32 would round them."""


class Aggregator:
    """The weighted mean of models (or updates) added one message at a time: ``add(source, weight)``, then ``result()``.

    A source is a message (bytes-like), the list ``encode_frames`` gave, a stream's frames, or a
    ``StreamDecoder`` that has received a whole stream. Every source must hold the same tensor
    names, dtypes and shapes as the first (ValueError naming the tensor otherwise; DecodeError for
    a malformed message, after which the sums are as before it). ``result()`` returns the mean in
    the first source's tree, dtypes and framework: floats rounded once from the float32
    accumulator (float64 with ``wide=True``, and always for float64, 32/64-bit integers and
    complex), integers and bool rounded to the nearest value. ``decode`` arguments (``verify``,
    ``limits``, ``reference`` for messages of deltas) apply to every source.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> clients = [{"w": np.full(4, v, np.float32), "step": 3} for v in (1.0, 2.0, 6.0)]
        >>> agg = tc.Aggregator()
        >>> for update, samples in zip(clients, (10, 10, 20)):
        ...     agg.add(tc.encode(update), weight=samples)
        >>> agg.result()
        {'w': array([3.75, 3.75, 3.75, 3.75], dtype=float32), 'step': 3}
    """

    def __init__(
        self, *, wide: bool = False, verify: bool = True, limits: Limits = DEFAULT_LIMITS, reference: Any = None
    ) -> None:
        self.wide = wide
        self._decode_args: dict[str, Any] = {"verify": verify, "limits": limits, "reference": reference}
        self._skeleton: Any = None
        self._kinds: dict[str, tuple[DType, tuple[int, ...], int]] = {}
        self._sums: dict[str, np.ndarray[Any, Any]] = {}
        self._scratch = np.empty(0, np.float32)
        self._finished = False
        self.count = 0
        """Sources added."""
        self.total_weight = 0.0
        """The sum of their weights."""

    def add(self, source: Any, weight: float = 1.0) -> None:
        """Adds ``weight`` times each tensor of ``source`` (a message, frames or a finished StreamDecoder)."""
        if self._finished:
            raise ValueError("result() has been taken from this Aggregator; start a new one for the next round")
        weight = float(weight)
        if not 0.0 <= weight < float("inf"):
            raise ValueError(f"an aggregation weight must be finite and >= 0, not {weight!r}")
        tree, take = self._open(source)
        slots = named_leaves(tree, _is_slot)
        if self._skeleton is None:
            self._skeleton = tree
            self._kinds = {path: (slot.dtype, slot.shape, slot.kind) for path, slot in slots}
        else:
            self._check(slots)
        added: list[tuple[str, int]] = []
        try:
            for path, slot in slots:
                self._accumulate(path, take(slot.index), weight)
                added.append((path, slot.index))
        except (DecodeError, TypeError, ValueError) as e:
            if self.count == 0:  # the first source set the layout: forget it with its sums
                self._skeleton, self._kinds, self._sums = None, {}, {}
            for path, index in added if self.count else ():  # undo this source's part (to within rounding)
                self._accumulate(path, take(index), -weight)
            if isinstance(e, DecodeError):
                e.args = (f"source {self.count}: {e}",)
                raise
            raise DecodeError(f"source {self.count}: {e}") from None
        self.count += 1
        self.total_weight += weight

    def result(self) -> Any:
        """The weighted mean, in the first source's tree, dtypes and framework (ends this Aggregator)."""
        if self.count == 0 or self.total_weight == 0.0:
            raise ValueError("nothing to aggregate: add at least one source with a positive weight")
        self._finished = True
        make = Materializer(False, None)
        out: dict[str, Any] = {}
        for path in list(self._sums):
            mean = self._sums.pop(path)
            np.divide(mean, self.total_weight, out=mean)
            row, _, kind = self._kinds[path]
            if row.numpy.kind in "iub":
                mean = np.rint(mean, out=mean)
            value = mean if mean.dtype == row.numpy else mean.astype(row.numpy)
            if kind == TORCH:
                out[path] = make.from_numpy(value, row)
            else:
                out[path] = value[()] if kind == SCALAR else value
        return map_tensors(self._skeleton, _is_slot, lambda _, path: out[path])

    def _open(self, source: Any) -> tuple[Any, Callable[[int], np.ndarray[Any, Any]]]:
        """The source's tree with a slot per tensor, and the function that decodes one."""
        if isinstance(source, StreamDecoder):
            return _slotted(source.result())
        first = source if isinstance(source, (bytes, bytearray, memoryview)) else None
        if first is None and isinstance(source, (list, tuple)) and source:
            first = source[0]
        if first is not None and bytes(memoryview(first).cast("B")[:4]) == MAGIC:
            return open_message(source, **self._decode_args)
        if first is not None and bytes(memoryview(first).cast("B")[:4]) != STREAM_MAGIC:
            raise DecodeError(f"not a tensorcodec message or stream: it starts {bytes(memoryview(first)[:4])!r}")
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = [source]
        if not isinstance(source, Iterable):
            raise TypeError(
                f"cannot aggregate a {type(source).__name__}: pass a message, its frames, a stream's frames"
                " or a StreamDecoder"
            )
        return _slotted(decode_stream(source, **self._decode_args))

    def _check(self, slots: list[tuple[str, Any]]) -> None:
        names = {path for path, _ in slots}
        missing = [p for p in self._kinds if p not in names]
        extra = [p for p, _ in slots if p not in self._kinds]
        if missing or extra:
            raise ValueError(
                f"source {self.count} holds other tensors than the first: missing {missing[:5]}, extra {extra[:5]}"
            )
        for path, slot in slots:
            row, shape, _ = self._kinds[path]
            if slot.dtype is not row or slot.shape != shape:
                raise ValueError(
                    f"tensor {path!r}: source {self.count} has {slot.dtype.name} {list(slot.shape)},"
                    f" the first source {row.name} {list(shape)}"
                )

    def _accumulate(self, path: str, x: np.ndarray[Any, Any], weight: float) -> None:
        total = self._sums.get(path)
        if total is None:
            row = self._kinds[path][0]
            wide = self.wide or row.name in _WIDE or row.numpy.kind == "c"
            target = (np.complex128 if row.numpy.kind == "c" else np.float64) if wide else np.float32
            total = self._sums[path] = np.zeros(x.shape, target)
        if weight == 1.0:
            np.add(total, x, out=total, casting="unsafe")
            return
        if x.dtype == total.dtype and x.flags.writeable and _owned(x):  # freshly decoded: weighted where it lies
            np.multiply(x, weight, out=x)
            np.add(total, x, out=total)
            return
        if self._scratch.size < x.size or self._scratch.dtype != total.dtype:
            self._scratch = np.empty(max(x.size, self._scratch.size), total.dtype)
        scaled = self._scratch[: x.size].reshape(x.shape)
        np.multiply(x, weight, out=scaled, dtype=total.dtype, casting="unsafe")  # in the accumulator's precision
        np.add(total, scaled, out=total)


def _owned(x: np.ndarray[Any, Any]) -> bool:
    """Whether ``x``'s memory is an array's own (not a view of a message buffer, which may be writable)."""
    base: Any = x
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, np.ndarray)


def _is_slot(node: Any) -> bool:
    return isinstance(node, TensorSlot)


def _slotted(tree: Any) -> tuple[Any, Callable[[int], np.ndarray[Any, Any]]]:
    """A decoded tree as ``open_message`` gives one: tensors replaced by slots, and their values by index."""
    arrays: list[np.ndarray[Any, Any]] = []

    def slot(node: Any, _: str) -> Any:
        kind = SCALAR if isinstance(node, np.generic) else NUMPY if isinstance(node, np.ndarray) else TORCH
        got = flat_values(np.asarray(node) if kind == SCALAR else node)
        if got is None:
            return node
        flat, row, shape = got
        view = flat.reshape(shape).view()
        view.flags.writeable = False  # the caller's tensor (a StreamDecoder's result): never weighted in place
        arrays.append(view)
        return TensorSlot(len(arrays) - 1, kind, row, shape)

    slotted = map_tensors(tree, lambda n: is_tensor(n) or isinstance(n, np.generic), slot)
    return slotted, arrays.__getitem__


def aggregate(sources: Iterable[Any], weights: Iterable[float] | None = None, **options: Any) -> Any:
    """The weighted mean of clients' messages, one tensor in memory at a time (see ``Aggregator``).

    Equal weights when ``weights`` is None; ``options`` go to ``Aggregator``.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> messages = [tc.encode({"w": np.array([v, -v], np.float32)}) for v in (1.0, 3.0)]
        >>> tc.aggregate(messages, weights=[1, 3])["w"]
        array([ 2.5, -2.5], dtype=float32)
    """
    agg = Aggregator(**options)
    if weights is None:
        for source in sources:
            agg.add(source)
    else:
        for source, weight in zip(sources, weights, strict=True):
            agg.add(source, weight)
    return agg.result()
