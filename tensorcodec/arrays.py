"""The one gate between user arrays and wire bytes.

On encode, a numpy array, numpy scalar or torch tensor becomes a ``Leaf``: its
dtype row, its shape and a flat little-endian uint8 view of its bytes. The view
aliases the caller's memory whenever the source is already C-contiguous,
little-endian and on the CPU; otherwise exactly one converted copy is made.
Nothing here ever writes to the caller's memory.

On decode, ``Materializer`` turns a span of message bytes back into a numpy
array or torch tensor, as a read-only view (``copy=False``) or an owned,
writable copy (``copy=True``).
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import dtypes
from .dtypes import DType

__all__ = ["Leaf", "NUMPY", "TORCH", "SCALAR", "leaf_from_numpy", "leaf_from_torch", "values", "Materializer"]

NUMPY, TORCH, SCALAR = 1, 2, 3
"""Leaf kinds; they double as the msgpack ext codes of tensor references."""

_LITTLE = sys.byteorder == "little"
_NUMPY_NATIVE = frozenset(d.name for d in dtypes.DTYPES if d.numpy.type.__module__ == "numpy")
"""Dtypes numpy itself defines; torch converts only these, and ml_dtypes types have kinds "V", "f" and "W"."""

# torch warns when it wraps memory it may not write; copy=False hands out such
# views on purpose and says so in its documentation.
warnings.filterwarnings("ignore", message=r"The given (NumPy array|buffer) is not writable", module=r"tensorcodec\.")


class Leaf(NamedTuple):
    kind: int
    dtype: DType
    shape: tuple[int, ...]
    data: Any
    """C-contiguous little-endian bytes of the tensor, as a buffer with ``nbytes``: the array itself where numpy
    exports its buffer (numpy's own dtypes), a ``_fastwire.TensorBytes`` of a plain CPU torch tensor (the C walk),
    else a flat uint8 view; empty for a pre-encoded one. ``values`` reads it typed."""
    encoded: Any = None
    """A ``codecs.Quantized`` sent as it is, or None."""


def values(leaf: Leaf) -> np.ndarray[Any, Any]:
    """The leaf's elements as a flat array of its dtype (a view, no copy)."""
    data = leaf.data
    if type(data) is not np.ndarray:  # a TensorBytes
        data = np.frombuffer(data, dtype=np.uint8)
    flat: np.ndarray[Any, Any] = data.reshape(-1).view(leaf.dtype.numpy)
    return flat


def _raw_bytes(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Flat little-endian uint8 view of ``arr``; copies only when it must."""
    if not _LITTLE or arr.dtype.byteorder == ">":
        arr = _to_little_endian(arr, row)
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    elif arr.dtype.kind != "V":  # ml_dtypes types have no buffer-protocol format
        return np.frombuffer(arr, dtype=np.uint8)
    return arr.reshape(-1).view(np.uint8)


def _to_little_endian(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    """A little-endian C-contiguous copy (big-endian arrays, big-endian hosts)."""
    width = row.itemsize // 2 if row.is_complex else row.itemsize
    out = np.array(arr, dtype=arr.dtype, order="C", copy=True)
    if width > 1:
        words = out.reshape(-1).view(f"u{width}")
        native_big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder in "=|" and not _LITTLE)
        if native_big:
            words.byteswap(inplace=True)
    return out.view(row.numpy.newbyteorder("<") if width > 1 and row.numpy.kind != "V" else out.dtype)


def leaf_from_numpy(arr: np.ndarray[Any, Any] | np.generic, kind: int = NUMPY) -> Leaf | None:
    """Leaf of a numpy array or scalar, or None if its dtype cannot travel."""
    if kind == SCALAR:
        arr = np.asarray(arr)
    assert isinstance(arr, np.ndarray)
    row = dtypes.from_numpy(arr.dtype)
    if row is None:
        return None
    return tuple.__new__(Leaf, (kind, row, arr.shape, _raw_bytes(arr, row), None))


def leaf_from_torch(t: Any) -> Leaf | None:
    """Leaf of a torch tensor (any device), or None if its dtype cannot travel.

    Raises TypeError for sparse, quantized or meta tensors, which have no plain
    byte layout to send.
    """
    row = dtypes.from_torch(t.dtype)
    if row is None:
        return None
    native = row.name in _NUMPY_NATIVE
    try:  # numpy() refuses every case the slow path below handles
        arr = t.numpy() if native else t.view(_torch_int_of_width(row.itemsize)).numpy()
    except (RuntimeError, TypeError):
        t = _plain_cpu_tensor(t)
        arr = t.numpy() if native else t.view(_torch_int_of_width(row.itemsize)).numpy()
    return tuple.__new__(Leaf, (TORCH, row, arr.shape, _raw_bytes(arr, row), None))


def _plain_cpu_tensor(t: Any) -> Any:
    """A dense, CPU, grad-free tensor without lazy conjugate/negative bits; never mutates ``t``."""
    import torch

    if t.layout is not torch.strided or t.is_quantized or t.is_meta:
        raise TypeError(
            f"torch tensor with layout {t.layout}{' (quantized)' if t.is_quantized else ''}"
            f"{' on the meta device' if t.is_meta else ''} has no dense bytes to send; "
            "convert it with .to_dense() / .dequantize() / real data first"
        )
    t = t.detach()
    if not t.is_cpu:
        t = t.cpu()
    return t.resolve_conj().resolve_neg()


def _torch_int_of_width(width: int) -> Any:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[width]


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
        if not _LITTLE and row.itemsize > 1:
            return _from_little_endian(arr, row)
        return arr.copy() if self.copy else arr

    @staticmethod
    def view(row: DType, shape: tuple[int, ...], nbytes: int, buf: Any, offset: int) -> np.ndarray[Any, Any]:
        """Read-only view (a copy on big-endian hosts) of a segment, for codecs to read."""
        if nbytes == 0:
            return np.empty(shape, dtype=row.numpy)
        arr: np.ndarray[Any, Any] = np.ndarray(shape, dtype=row.numpy, buffer=buf, offset=offset)
        return _from_little_endian(arr, row) if not _LITTLE and row.itemsize > 1 else arr

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
        elif not self.copy and row.name in _NUMPY_NATIVE:
            # from_numpy of a view costs less than as_strided and needs no strides.
            t = _from_numpy(np.ndarray(shape, dtype=row.numpy, buffer=buf, offset=offset))
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
        tdtype = dtypes.torch_dtype(row) if _LITTLE else None
        count = memoryview(buf).nbytes // row.itemsize
        if tdtype is None or not count:
            return None
        import torch

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
        return got if got is not None else self._strides.setdefault(shape, _contiguous_strides(shape))


_NO_BASE: Any = object()


@functools.cache
def _from_numpy_fn() -> Any:
    import torch

    return torch.from_numpy


def _from_numpy(arr: np.ndarray[Any, Any]) -> Any:
    return _from_numpy_fn()(arr)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
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
        import torch

        raise TypeError(
            f"dtype {row.name} has no torch equivalent in torch {torch.__version__}; decode with framework='numpy'"
        )
    return tdtype


def _numpy_to_torch(arr: np.ndarray[Any, Any], row: DType) -> Any:
    import torch

    tdtype = _torch_dtype_of(row)
    if row.name not in _NUMPY_NATIVE:
        return torch.from_numpy(arr.view(f"u{row.itemsize}" if row.itemsize == 1 else f"i{row.itemsize}")).view(tdtype)
    return torch.from_numpy(arr)


def _from_little_endian(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    width = row.itemsize // 2 if row.is_complex else row.itemsize
    out = arr.copy()
    if width > 1:
        out.reshape(-1).view(f"u{width}").byteswap(inplace=True)
    return out
