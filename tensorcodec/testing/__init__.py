"""Helpers for testing code that moves tensors through tensorcodec.

``assert_bitwise_equal`` and ``assert_tree_equal`` need only numpy (torch when
given torch tensors). The hypothesis strategies live in
``tensorcodec.testing.strategies`` and ``check_codec`` (the codec contract's
checker) in ``tensorcodec.testing.codecs``; both need hypothesis, which this
module does not import, so ``import tensorcodec.testing`` works without it.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import numpy as np

from .. import dtypes as _dtypes
from ..dtypes import DType

__all__ = ["assert_bitwise_equal", "assert_tree_equal", "check_codec", "raw_bytes", "wire_dtype"]


def __getattr__(name: str) -> Any:
    # check_codec needs hypothesis, which this module does not: import it on first use.
    if name == "check_codec":
        from .codecs import check_codec

        return check_codec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic)) or _is_torch(x)


def wire_dtype(x: Any) -> DType:
    """The dtype table row of a numpy array/scalar or torch tensor (either byte order)."""
    row = _dtypes.from_torch(x.dtype) if _is_torch(x) else _dtypes.from_numpy(np.asarray(x).dtype)
    if row is None:
        raise AssertionError(f"dtype {x.dtype} is not in tensorcodec.DTYPES")
    return row


def raw_bytes(x: Any) -> bytes:
    """The C-order little-endian bytes of an array, scalar or tensor, as the wire would carry them.

    torch conjugate and negative bits are resolved first: they are lazy views,
    and what a tensor holds is what reading it gives.
    """
    if _is_torch(x):
        t = x.detach().cpu().resolve_conj().resolve_neg()
        if t.numel() == 0:
            return b""
        import torch

        flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))
        return bytes(flat.view(torch.uint8).numpy().tobytes())
    arr = np.asarray(x)
    row = wire_dtype(arr)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
        width = row.itemsize // 2 if row.is_complex else row.itemsize
        arr = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).reshape(-1, width)[:, ::-1]
    return bytes(np.ascontiguousarray(arr).tobytes())


def _mismatch(a: bytes, b: bytes, width: int) -> str:
    """Where two byte strings of equal length first differ, in elements of ``width`` bytes."""
    for i in range(0, len(a), width):
        if a[i : i + width] != b[i : i + width]:
            x, y = a[i : i + width][::-1].hex(), b[i : i + width][::-1].hex()
            return f"element {i // width} (flat, C order): 0x{x} != 0x{y}"
    return "no differing element"


def assert_bitwise_equal(a: Any, b: Any, *, same_framework: bool = True, what: str = "value") -> None:
    """Asserts that two arrays/tensors/numpy scalars hold the same dtype, shape and bits.

    Values are compared as raw bytes, so NaN payloads, -0.0 and padding-free
    narrow types count. Byte order is not part of the value (a ``>f4`` array
    equals the ``<f4`` array holding the same numbers). With
    ``same_framework=False`` a numpy array may equal a torch tensor of the same
    wire dtype, which is what decoding with ``framework=`` promises.
    """
    ta, tb = _is_torch(a), _is_torch(b)
    if same_framework or ta == tb:
        if ta != tb:
            raise AssertionError(f"{what}: {type(a).__name__} vs {type(b).__name__}")
        if not ta and isinstance(a, np.generic) != isinstance(b, np.generic):
            raise AssertionError(f"{what}: {type(a).__name__} vs {type(b).__name__}")
        if not ta and isinstance(a, np.generic) and type(a) is not type(b):
            raise AssertionError(f"{what}: scalar type {type(a).__name__} vs {type(b).__name__}")
    ra, rb = wire_dtype(a), wire_dtype(b)
    if ra != rb:
        raise AssertionError(f"{what}: dtype {ra.name} vs {rb.name}")
    sa, sb = tuple(a.shape), tuple(b.shape)
    if sa != sb:
        raise AssertionError(f"{what}: shape {sa} vs {sb}")
    ba, bb = raw_bytes(a), raw_bytes(b)
    if ba != bb:
        raise AssertionError(f"{what}: {ra.name}{list(sa)} differs at {_mismatch(ba, bb, ra.itemsize)}")


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def assert_tree_equal(expected: Any, actual: Any, *, same_framework: bool = True, _path: str = "root") -> None:
    """Asserts that two trees are equal the way tensorcodec promises to preserve them.

    Container types must match exactly (tuple is not list, bytearray is not
    bytes, bool is not int), dict keys in the same order, floats bit for bit
    (NaN payloads, -0.0), numpy scalars keep their type (``np.float32`` stays
    ``np.float32``) and tensors are compared with ``assert_bitwise_equal``.
    ``same_framework=False`` lets a tensor of one framework equal one of the other.
    """
    if _is_tensor(expected):
        if not _is_tensor(actual):
            raise AssertionError(f"{_path}: expected a tensor, got {type(actual).__name__}")
        assert_bitwise_equal(expected, actual, same_framework=same_framework, what=_path)
        return
    if type(expected) is not type(actual):
        raise AssertionError(f"{_path}: type {type(expected).__name__} vs {type(actual).__name__}")
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            raise AssertionError(f"{_path}: keys {list(expected)} vs {list(actual)}")
        for k, v in expected.items():
            assert_tree_equal(v, actual[k], same_framework=same_framework, _path=f"{_path}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        if len(expected) != len(actual):
            raise AssertionError(f"{_path}: length {len(expected)} vs {len(actual)}")
        for i, (x, y) in enumerate(zip(expected, actual, strict=True)):
            assert_tree_equal(x, y, same_framework=same_framework, _path=f"{_path}[{i}]")
    elif isinstance(expected, float):
        if _float_bits(expected) != _float_bits(actual):
            raise AssertionError(f"{_path}: float {expected!r} vs {actual!r} (bits differ)")
    elif expected != actual:
        raise AssertionError(f"{_path}: {expected!r} vs {actual!r}")
