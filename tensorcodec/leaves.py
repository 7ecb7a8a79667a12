"""Leaves: a user's array or tensor turned into the bytes that travel (the one way in).

On encode, a numpy array, numpy scalar or torch tensor becomes a ``Leaf``: its
dtype row, its shape and a flat little-endian uint8 view of its bytes. The view
aliases the caller's memory whenever the source is already C-contiguous,
little-endian and on the CPU; otherwise exactly one converted copy is made.
Nothing here ever writes to the caller's memory.
Every ``Leaf`` is built by ``new_leaf``. The way out (bytes back to arrays) is
``materialize.py``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from . import dtypes
from .dtypes import DType

__all__ = [
    "Leaf",
    "NUMPY",
    "TORCH",
    "SCALAR",
    "LITTLE",
    "NUMPY_NATIVE",
    "EMPTY",
    "new_leaf",
    "leaf_from_numpy",
    "leaf_from_torch",
    "device_leaf",
    "encoded_leaf",
    "array_leaf",
    "tensor_leaf",
    "values",
]

NUMPY, TORCH, SCALAR = 1, 2, 3
"""Leaf kinds; they double as the msgpack ext codes of tensor references."""

LITTLE = sys.byteorder == "little"
NUMPY_NATIVE = frozenset(d.name for d in dtypes.DTYPES if d.numpy.type.__module__ == "numpy")
"""Dtypes numpy itself defines; torch converts only these, and ml_dtypes types have kinds "V", "f" and "W"."""


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


EMPTY = np.empty(0, dtype=np.uint8)
"""The data of an empty leaf, and of one whose bytes come later (pre-encoded, left on a device)."""


def new_leaf(kind: int, row: DType, shape: tuple[int, ...], data: Any, encoded: Any = None) -> Leaf:
    """A Leaf, built without NamedTuple's argument parsing (encode builds one per tensor)."""
    return tuple.__new__(Leaf, (kind, row, shape, data, encoded))


def encoded_leaf(encoded: Any, kind: int) -> Leaf:
    """The leaf of a ``codecs.Quantized`` placed in a tree: sent as it is, no bytes of its own."""
    return new_leaf(kind, encoded.dtype, encoded.shape, EMPTY, encoded)


def array_leaf(arr: np.ndarray[Any, Any]) -> Leaf | None:
    """Leaf of a numpy array (or subclass) met in a tree, or None if its dtype cannot travel."""
    row = dtypes.BY_NUMPY.get(arr.dtype)
    if row is not None and row.name in NUMPY_NATIVE and row.max_byte == 255 and arr.flags.c_contiguous and LITTLE:
        # The common case in a few attribute reads: a native-endian contiguous array, kept as it is.
        return new_leaf(NUMPY, row, arr.shape, arr if arr.size else EMPTY)
    return leaf_from_numpy(arr if type(arr) is np.ndarray else arr.view(np.ndarray))


def tensor_leaf(t: Any) -> Leaf | None:
    """Leaf of a torch tensor met in a tree (as ``leaf_from_torch``, the common case cheaply)."""
    row = dtypes.from_torch(t.dtype)
    if row is not None and row.name in NUMPY_NATIVE and row.max_byte == 255 and LITTLE:
        try:
            arr = t.numpy()  # refuses grad, conj/neg bits and non-CPU tensors
        except (RuntimeError, TypeError):
            arr = None
        if arr is not None and arr.flags.c_contiguous:
            return new_leaf(TORCH, row, arr.shape, arr if arr.size else EMPTY)
    return leaf_from_torch(t)


def device_leaf(t: Any) -> Leaf | None:
    """A placeholder leaf (no bytes yet) for a tensor left on its accelerator, or None if its dtype cannot travel."""
    row = dtypes.from_torch(t.dtype)
    return None if row is None else new_leaf(TORCH, row, tuple(t.shape), EMPTY)


def values(leaf: Leaf) -> np.ndarray[Any, Any]:
    """The leaf's elements as a flat array of its dtype (a view, no copy)."""
    data = leaf.data
    if type(data) is not np.ndarray:  # a TensorBytes
        data = np.frombuffer(data, dtype=np.uint8)
    flat: np.ndarray[Any, Any] = data.reshape(-1).view(leaf.dtype.numpy)
    return flat


def _raw_bytes(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Flat little-endian uint8 view of ``arr``; copies only when it must."""
    if not LITTLE or arr.dtype.byteorder == ">":
        arr = _to_little_endian(arr, row)
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    elif arr.dtype.kind != "V":  # ml_dtypes types have no buffer-protocol format
        return _canonical(np.frombuffer(arr, dtype=np.uint8), row)
    return _canonical(arr.reshape(-1).view(np.uint8), row)


def _canonical(data: np.ndarray[Any, np.dtype[np.uint8]], row: DType) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The bytes of a one-byte type with unused bits as the format wants them (bool 0/1, high bits 0).

    numpy reads any nonzero bool byte as True and ml_dtypes reads only the low bits of int4 & co.,
    so an array made by reinterpreting bytes keeps its values and loses only the stray bits.
    """
    if row.max_byte == 255 or not data.size or int(data.max()) <= row.max_byte:
        return data
    if row.name == "bool":
        truth: np.ndarray[Any, np.dtype[np.uint8]] = (data != 0).view(np.uint8)
        return truth
    masked: np.ndarray[Any, np.dtype[np.uint8]] = data & np.uint8(row.max_byte)
    return masked


def _to_little_endian(arr: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    """A little-endian C-contiguous copy (big-endian arrays, big-endian hosts)."""
    width = row.itemsize // 2 if row.is_complex else row.itemsize
    out = np.array(arr, dtype=arr.dtype, order="C", copy=True)
    if width > 1:
        words = out.reshape(-1).view(f"u{width}")
        native_big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder in "=|" and not LITTLE)
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
    return new_leaf(kind, row, arr.shape, _raw_bytes(arr, row))


def leaf_from_torch(t: Any) -> Leaf | None:
    """Leaf of a torch tensor (any device), or None if its dtype cannot travel.

    Raises TypeError for sparse, quantized or meta tensors, which have no plain
    byte layout to send.
    """
    row = dtypes.from_torch(t.dtype)
    if row is None:
        return None
    native = row.name in NUMPY_NATIVE
    try:  # numpy() refuses every case the slow path below handles
        arr = t.numpy() if native else t.view(_torch_int_of_width(row.itemsize)).numpy()
    except (RuntimeError, TypeError):
        t = _plain_cpu_tensor(t)
        arr = t.numpy() if native else t.view(_torch_int_of_width(row.itemsize)).numpy()
    return new_leaf(TORCH, row, arr.shape, _raw_bytes(arr, row))


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
