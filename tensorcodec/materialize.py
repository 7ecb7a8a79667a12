"""Materializing leaves: message bytes back into numpy arrays, numpy scalars and torch tensors (the one way out).

``Materializer`` turns a span of message bytes into an array or tensor, as a read-only view
(``copy=False``) or an owned, writable copy (``copy=True``), on ``device`` where asked.
``MessageTensors`` does it for the tensors of one parsed (and so already validated) message,
as the tree refers to them: the tables from which the C tree decoder answers references
(``Route``) and the views of the one-buffer sweep; encoded tensors it asks of the caller.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from . import _c, dtypes
from .dtypes import DType
from .errors import DecodeError
from .leaves import LITTLE, NUMPY, NUMPY_NATIVE, SCALAR, TORCH
from .wire.header import Entry, Header
from .wire.rope import Rope
from .wire.tree import NO_ROUTES, Route

__all__ = [
    "Framework",
    "KINDS",
    "CodedTensor",
    "converted",
    "scalar_error",
    "Materializer",
    "MessageTensors",
    "kinds_of",
    "torch_from_numpy",
    "torch_from_numpy_fn",
    "contiguous_strides",
]

Framework = Literal["numpy", "torch"]

CodedTensor = Callable[[int, "Materializer", int], Any]
"""``coded(index, make, kind)``: an encoded tensor of the message, decoded (the codecs' part; see core)."""

# torch warns when it wraps memory it may not write; copy=False hands out such
# views on purpose and says so in its documentation.
warnings.filterwarnings("ignore", message=r"The given (NumPy array|buffer) is not writable", module=r"tensorcodec\.")


class Materializer:
    """Builds decoded arrays over the message's buffers, for one decode call.

    numpy arrays are constructed directly over the buffer; torch tensors are
    strided views of one typed tensor per buffer and dtype, which costs one
    torch call per tensor instead of three.
    """

    def __init__(self, copy: bool, device: Any) -> None:
        self.copy = copy
        self.device = device
        self._strides: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._bases: dict[tuple[int | None, DType, int], Any] = {}

    def numpy(self, row: DType, shape: tuple[int, ...], nbytes: int, buf: Any, offset: int) -> np.ndarray[Any, Any]:
        if nbytes == 0:
            return np.empty(shape, dtype=row.numpy)
        arr: np.ndarray[Any, Any] = np.ndarray(shape, dtype=row.numpy, buffer=buf, offset=offset)
        if not LITTLE and row.itemsize > 1:
            return _from_little_endian(arr, row)
        return arr.copy() if self.copy else arr

    @staticmethod
    def view(row: DType, shape: tuple[int, ...], nbytes: int, buf: Any, offset: int) -> np.ndarray[Any, Any]:
        """Read-only view (a copy on big-endian hosts) of a segment, for codecs to read."""
        if nbytes == 0:
            return np.empty(shape, dtype=row.numpy)
        arr: np.ndarray[Any, Any] = np.ndarray(shape, dtype=row.numpy, buffer=buf, offset=offset)
        return _from_little_endian(arr, row) if not LITTLE and row.itemsize > 1 else arr

    def from_numpy(self, arr: np.ndarray[Any, Any], row: DType) -> Any:
        """A torch tensor sharing an owned numpy array's memory, moved to ``device``."""
        t = _numpy_to_torch(arr, row)
        return t.to(self.device) if self.device is not None else t

    def scalar(self, row: DType, shape: tuple[int, ...], nbytes: int, buf: Any, offset: int) -> Any:
        return self.numpy(row, shape, nbytes, buf, offset)[()]

    def torch(self, row: DType, shape: tuple[int, ...], nbytes: int, buf: Any, offset: int, buf_key: int | None) -> Any:
        shift = offset % row.itemsize  # nonzero where a frame starts off the element grid
        key = (buf_key, row, shift)
        base = self._bases.get(key) if buf_key is not None else None
        if nbytes == 0 or (self.copy and nbytes >= _NUMPY_COPY_MIN):
            # numpy allocates large arrays on transparent huge pages; torch's clone() does not,
            # and first-touch page faults dominate a copy into fresh memory.
            base = _NO_BASE
        elif base is None:
            base = self.aligned_base(row, buf[shift:] if shift else buf)
            if base is None:
                base = _NO_BASE  # through numpy below, which words a missing torch dtype
            if buf_key is not None:
                self._bases[key] = base
        if base is _NO_BASE:
            arr = self.numpy(row, shape, nbytes, buf, offset)
            if arr.ctypes.data % row.itemsize:
                arr = arr.copy()
            t = _numpy_to_torch(arr, row)
        elif not self.copy and row.name in NUMPY_NATIVE:
            # from_numpy of a view costs less than as_strided and needs no strides.
            t = torch_from_numpy(np.ndarray(shape, dtype=row.numpy, buffer=buf, offset=offset))
        else:
            t = base.as_strided(shape, self._contiguous(shape), offset // row.itemsize)
            if self.copy:
                t = t.clone()
        if self.device is not None:
            t = t.to(self.device)
        return t

    def strided_view(self, buf: Any) -> Callable[[DType, tuple[int, ...], int], Any]:
        """A function making read-only torch views of tensors at element-aligned offsets of ``buf``.

        It returns None where it cannot (misaligned buffer, no torch dtype); ``torch`` then does the work.
        """
        bases: dict[DType, Any] = {}

        def view(row: DType, shape: tuple[int, ...], offset: int) -> Any:
            base = bases.get(row, _NO_BASE)
            if base is _NO_BASE:
                base = bases[row] = self.aligned_base(row, buf)
            if base is None or offset % row.itemsize:
                return None
            return base.as_strided(shape, self._contiguous(shape), offset // row.itemsize)

        return view

    def aligned_base(self, row: DType, buf: Any) -> Any:
        """One typed torch tensor over all of ``buf``, from which tensors are strided views.

        None where torch lacks the dtype, ``buf`` holds no whole element, or its elements are misaligned
        (torch's vector kernels fault on them; complex128 needs 16).
        """
        tdtype = dtypes.torch_dtype(row) if LITTLE else None
        count = memoryview(buf).nbytes // row.itemsize
        if tdtype is None or not count:
            return None
        torch = dtypes.torch_module()

        base = torch.frombuffer(buf, dtype=tdtype, count=count)
        return None if base.data_ptr() % row.itemsize else base

    def _contiguous(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """C-order strides in elements (1-D and 2-D directly, others remembered per decode call)."""
        n = len(shape)
        if n == 2:
            return (shape[1], 1)
        if n == 1:
            return (1,)
        got = self._strides.get(shape)
        return got if got is not None else self._strides.setdefault(shape, contiguous_strides(shape))


_NO_BASE: Any = object()


@functools.cache
def torch_from_numpy_fn() -> Any:
    return dtypes.torch_module().from_numpy


def torch_from_numpy(arr: np.ndarray[Any, Any]) -> Any:
    return torch_from_numpy_fn()(arr)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for d in shape[::-1]:
        strides.append(step)
        step *= d
    return tuple(strides[::-1])


_NUMPY_COPY_MIN = 1 << 20


def _torch_dtype_of(row: DType) -> Any:
    """The torch dtype of a row; TypeError where the installed torch has none."""
    tdtype = dtypes.torch_dtype(row)
    if tdtype is None:
        torch = dtypes.torch_module()
        raise TypeError(
            f"dtype {row.name} has no torch equivalent in torch {torch.__version__}; decode with framework='numpy'"
        )
    return tdtype


def _numpy_to_torch(arr: np.ndarray[Any, Any], row: DType) -> Any:
    torch = dtypes.torch_module()

    tdtype = _torch_dtype_of(row)
    if row.name not in NUMPY_NATIVE:
        return torch.from_numpy(arr.view(f"u{row.itemsize}" if row.itemsize == 1 else f"i{row.itemsize}")).view(tdtype)
    return torch.from_numpy(arr)


def _from_little_endian(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    width = row.itemsize // 2 if row.is_complex else row.itemsize
    out = arr.copy()
    if width > 1:
        out.reshape(-1).view(f"u{width}").byteswap(inplace=True)
    return out


_WRAPPABLE = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
)
"""Dtypes whose numpy alignment equals their size, so that numpy's aligned flag vouches for torch's kernels."""

KINDS: dict[str | None, dict[int, int]] = {
    None: {NUMPY: NUMPY, TORCH: TORCH, SCALAR: SCALAR},
    "numpy": {NUMPY: NUMPY, TORCH: NUMPY, SCALAR: SCALAR},
    "torch": {NUMPY: TORCH, TORCH: TORCH, SCALAR: TORCH},
}
"""The kind each sent kind is materialized as, by the ``framework`` that decode was asked for."""


def kinds_of(framework: str | None) -> dict[int, int]:
    """``KINDS[framework]``; ValueError for a framework that is not one."""
    if framework not in KINDS:
        raise ValueError(f"framework must be 'numpy', 'torch' or None, not {framework!r}")
    return KINDS[framework]


class MessageTensors:
    """The tensors of one parsed message, made as the tree refers to them (one decode call).

    ``tensor`` is the tree decoder's callback and ``routes`` its tables; each tensor is made once
    per kind it is asked for.
    """

    def __init__(
        self, header: Header, rope: Rope, framework: str | None, copy: bool, device: Any, coded: CodedTensor
    ) -> None:
        self.kinds = kinds_of(framework)
        self.entries = entries = header.entries
        self.offsets = offsets = header.offsets
        self.rope = rope
        self.copy = copy
        self.make = Materializer(copy, device)
        self.single = single = rope.parts[0] if len(rope.parts) == 1 else None
        self.cache: dict[int, Any] = {}
        self.coded = coded
        self.views: list[Any] = []
        if single is None and LITTLE:
            self.views = _frame_views(entries, offsets, rope, framework)
        elif single is not None and LITTLE:
            # The hot path: read-only views straight into the one message buffer, made in one sweep;
            # copy=True copies them, and torch tensors of numpy's own dtypes wrap them (cheaper than a
            # strided view of a base or a clone). Other dtypes (bf16, fp8) usually go to torch through
            # a strided view: their views wait until asked for.
            ndarray = np.ndarray
            self.views = [
                ndarray(e.shape, e.dtype.numpy, single, offsets[e.first_segment])
                if e.nbytes and not e.stages and (framework == "numpy" or e.dtype.name in NUMPY_NATIVE)
                else None
                for e in entries
            ]
        # torch is imported only when a tensor asks for it
        self.wrap = bool(self.views) and device is None and framework != "numpy"
        self.strided = self.make.strided_view(single) if single is not None and not copy and device is None else None

    def routes(self) -> tuple[Route | None, ...]:
        if not self.views:
            return NO_ROUTES
        return _routes(self.views, self.entries, self.offsets, self.single, self.kinds, self.make, self.wrap)

    def tensor(self, index: int, sent_kind: int) -> Any:
        """The tensor of table entry ``index`` as the tree's reference of ``sent_kind`` asks for it."""
        if sent_kind == SCALAR and self.entries[index].shape:
            raise scalar_error(index, self.entries[index].shape)
        kind = self.kinds[sent_kind]
        views = self.views
        view = views[index] if views else None
        if kind == NUMPY and views:
            if view is None and self.single is not None:
                entry = self.entries[index]
                if entry.nbytes and not entry.stages:
                    offset = self.offsets[entry.first_segment]
                    view = views[index] = np.ndarray(entry.shape, entry.dtype.numpy, self.single, offset)
            if view is not None and not self.copy:
                return view
        key = index << 2 | kind
        value = self.cache.get(key)
        if value is None:
            value = self.cache[key] = self._made(index, kind, view)
        return value

    def take(self, index: int) -> np.ndarray[Any, Any]:
        """Tensor ``index`` as a numpy array, kept nowhere: for readers that use one tensor at a time."""
        views = self.views
        view = views[index] if views else None
        if view is not None and not self.copy:
            return view  # type: ignore[no-any-return]
        value: np.ndarray[Any, Any] = self._made(index, NUMPY, view)
        return value

    def _made(self, index: int, kind: int, view: Any) -> Any:
        try:
            return self._materialize(self.entries[index], index, kind, view)
        except TypeError as e:
            raise DecodeError(f"tensor {index}: {e}") from None
        except DecodeError as e:
            e.args = (f"tensor {index}: {e}",)  # (keeps the subclass and its attributes)
            raise

    def _materialize(self, entry: Entry, index: int, kind: int, view: Any) -> Any:
        make = self.make
        if entry.stages:
            return self.coded(index, make, kind)
        if view is not None:
            if kind == NUMPY:
                return view.copy()  # (copy=True: views were returned as they are)
            if kind == TORCH and self.wrap and entry.dtype.name in _WRAPPABLE and view.flags.aligned:
                return torch_from_numpy(view.copy() if self.copy else view)
        part: int | None = 0
        if self.single is not None:
            buf, offset = self.single, self.offsets[entry.first_segment]
            if kind == TORCH and self.strided is not None and entry.nbytes:
                t = self.strided(entry.dtype, entry.shape, offset)
                if t is not None:
                    return t
        else:
            buf, offset, part = self.rope.locate(self.offsets[entry.first_segment], entry.nbytes)
        if kind == TORCH:
            return make.torch(entry.dtype, entry.shape, entry.nbytes, buf, offset, part)
        if kind == NUMPY:
            return make.numpy(entry.dtype, entry.shape, entry.nbytes, buf, offset)
        return make.scalar(entry.dtype, entry.shape, entry.nbytes, buf, offset)


def _routes(
    views: list[Any],
    entries: list[Entry],
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
        NUMPY: Route([None] * n, views, np.ndarray.copy)
        if copy
        else Route(views, functools.partial(_lazy_views, views, entries, offsets, single), None)
    }
    if wrap:
        # torch is imported only when a tensor asks for it: until then, a wrapper that imports it.
        imported = sys.modules.get("torch") is not None
        convert = _from_numpy_copy if copy else torch_from_numpy_fn() if imported else torch_from_numpy
        strided = make if imported and not copy else None
        sources = functools.partial(_torch_sources, views, entries, offsets, single, strided)
        by_kind[TORCH] = Route([None] * n, sources, convert)
    # A scalar reference always calls back, so that ``tensor`` checks that its entry is 0-d.
    return (None, by_kind.get(kinds[NUMPY]), by_kind.get(kinds[TORCH]), None)


def _lazy_views(views: list[Any], entries: list[Entry], offsets: list[int], single: Any) -> list[Any] | None:
    """Calls making the numpy views the sweep left out (dtypes numpy lacks), or None where there are none."""
    if single is None or all(e.dtype.name in NUMPY_NATIVE for e in entries):
        return None
    ndarray = np.ndarray
    return [
        (ndarray, e.shape, e.dtype.numpy, single, offsets[e.first_segment])
        if v is None and e.nbytes and not e.stages
        else None
        for v, e in zip(views, entries, strict=True)
    ]


def _torch_sources(
    views: list[Any], entries: list[Entry], offsets: list[int], single: Any, make: Materializer | None
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
    plan: dict[DType, Any] = {
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
            sources.append((call, e.shape, contiguous_strides(e.shape), offsets[e.first_segment] // itemsize))
        else:
            sources.append(None)
    return sources


def _as_strided(make: Materializer | None, row: DType, buf: Any) -> Any:
    """``as_strided`` of a torch tensor of ``row`` over ``buf``, for a dtype numpy lacks; else None."""
    if make is None or row.name in NUMPY_NATIVE:
        return None
    base = make.aligned_base(row, buf)
    return None if base is None else base.as_strided


_U64 = np.dtype(np.uint64)
"""The widest alignment numpy asks of a wrappable dtype."""


def _from_numpy_copy(view: np.ndarray[Any, Any]) -> Any:
    return torch_from_numpy_fn()(view.copy())


def _frame_views(entries: list[Entry], offsets: list[int], rope: Rope, framework: str | None) -> list[Any]:
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
        if not e.nbytes or e.stages or not (framework == "numpy" or e.dtype.name in NUMPY_NATIVE):
            views.append(None)
            continue
        start = offsets[e.first_segment]
        while k < last and starts[k + 1] <= start:
            k += 1
        local = start - starts[k]
        part = parts[k]
        views.append(ndarray(e.shape, e.dtype.numpy, part, local) if local + e.nbytes <= part.nbytes else None)
    return views


def scalar_error(index: int, shape: tuple[int, ...]) -> DecodeError:
    """A scalar reference (ext 3) names only a 0-d entry."""
    return DecodeError(f"tree: scalar reference to tensor {index} of shape {list(shape)}; only a 0-d entry is a scalar")


def converted(flat: np.ndarray[Any, Any], entry: Entry, make: Materializer, kind: int) -> Any:
    """A decoded tensor's values in its shape and the requested framework."""
    arr = flat.reshape(entry.shape)
    if kind == SCALAR:
        return arr[()]
    if kind == TORCH:
        return make.from_numpy(arr, entry.dtype)
    return arr
