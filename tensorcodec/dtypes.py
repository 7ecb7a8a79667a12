"""The one dtype table: wire names, numpy dtypes and torch dtypes.

Every dtype that may cross the wire is listed here once. The wire carries the
name (``"bfloat16"``), never a numpy type string or a pickled dtype, and the
decoder accepts only names from this table. numpy lacks bfloat16 and the fp8
family, so those come from ml_dtypes; torch is optional and looked up by
attribute name, so an older torch that lacks a dtype still imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["DType", "DTYPES", "by_name", "from_numpy", "from_torch", "torch_dtype"]


@dataclass(frozen=True, eq=False)
class DType:
    """One row of the table; rows are singletons, compared and hashed by identity.

    Examples:
        >>> import tensorcodec as tc
        >>> row = next(row for row in tc.DTYPES if row.name == "bfloat16")
        >>> row.itemsize, row.is_floating, row.torch_name
        (2, True, 'bfloat16')
    """

    name: str
    """Wire name, e.g. ``"bfloat16"``."""
    numpy: np.dtype[Any]
    """Native numpy dtype (from ml_dtypes where numpy has none)."""
    torch_name: str | None
    """Attribute of the ``torch`` module, or None where torch has no equivalent."""
    itemsize: int = field(init=False)
    """Bytes per element (a plain attribute: the decoder reads it for every tensor)."""
    max_byte: int = field(init=False)
    """The largest valid byte of a one-byte type whose values leave bits unused (bool: 1, int4: 15), else 255."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "itemsize", self.numpy.itemsize)
        object.__setattr__(self, "max_byte", _MAX_BYTE.get(self.name, 255))

    @property
    def is_floating(self) -> bool:
        return self.name.startswith(("float", "bfloat"))

    @property
    def is_complex(self) -> bool:
        return self.name.startswith(("complex", "bcomplex"))


_MAX_BYTE = {
    "bool": 1,
    "float6_e2m3fn": 63,
    "float6_e3m2fn": 63,
    "float4_e2m1fn": 15,
    "int4": 15,
    "uint4": 15,
    "int2": 3,
    "uint2": 3,
}
"""Types held one value per byte in its low bits: the bits above must be zero (docs/format.md, section 4)."""


def _row(name: str, np_type: Any, torch_name: str | None = "") -> DType:
    return DType(name, np.dtype(np_type), name if torch_name == "" else torch_name)


DTYPES: tuple[DType, ...] = (
    _row("bool", np.bool_),
    _row("int8", np.int8),
    _row("int16", np.int16),
    _row("int32", np.int32),
    _row("int64", np.int64),
    _row("uint8", np.uint8),
    _row("uint16", np.uint16),
    _row("uint32", np.uint32),
    _row("uint64", np.uint64),
    _row("float16", np.float16),
    _row("bfloat16", ml_dtypes.bfloat16),
    _row("float32", np.float32),
    _row("float64", np.float64),
    _row("complex32", ml_dtypes.complex32),
    _row("complex64", np.complex64),
    _row("complex128", np.complex128),
    _row("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
    _row("float8_e5m2", ml_dtypes.float8_e5m2),
    _row("float8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz),
    _row("float8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz),
    _row("float8_e8m0fnu", ml_dtypes.float8_e8m0fnu),
    _row("float8_e4m3", ml_dtypes.float8_e4m3, None),
    _row("float8_e3m4", ml_dtypes.float8_e3m4, None),
    _row("float8_e4m3b11fnuz", ml_dtypes.float8_e4m3b11fnuz, None),
    # ml_dtypes stores these narrow types one element per byte.
    _row("float6_e2m3fn", ml_dtypes.float6_e2m3fn, None),
    _row("float6_e3m2fn", ml_dtypes.float6_e3m2fn, None),
    _row("float4_e2m1fn", ml_dtypes.float4_e2m1fn, None),
    _row("int4", ml_dtypes.int4, None),
    _row("uint4", ml_dtypes.uint4, None),
    _row("int2", ml_dtypes.int2, None),
    _row("uint2", ml_dtypes.uint2, None),
)

BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
"""Allowed wire names."""
BY_NUMPY: dict[np.dtype[Any], DType] = {d.numpy: d for d in DTYPES}
_BY_TORCH: dict[Any, DType] | None = None


def by_name(name: str) -> DType | None:
    """The row for a wire name, or None if the name is not allowed."""
    return BY_NAME.get(name)


def from_numpy(dtype: np.dtype[Any]) -> DType | None:
    """The row for a numpy dtype of either byte order, or None if unsupported."""
    row = BY_NUMPY.get(dtype)
    if row is None and dtype.byteorder == ">":
        row = BY_NUMPY.get(dtype.newbyteorder("<"))
    return row


def torch_module() -> Any:
    """torch, imported when a tensor first needs it; a receiver without torch is told what to do."""
    try:
        import torch
    except ImportError as e:
        raise ModuleNotFoundError(
            "this message holds torch tensors (its sender used torch) but torch is not installed here: "
            "decode with framework='numpy' to get numpy arrays, or install torch",
            name="torch",
        ) from e
    return torch


def torch_table() -> dict[Any, DType]:
    global _BY_TORCH
    if _BY_TORCH is None:
        torch = torch_module()

        table = {}
        for d in DTYPES:
            t = getattr(torch, d.torch_name, None) if d.torch_name else None
            if t is not None:
                table[t] = d
        _BY_TORCH = table
    return _BY_TORCH


def from_torch(dtype: Any) -> DType | None:
    """The row for a torch dtype, or None if unsupported."""
    return torch_table().get(dtype)


def torch_dtype(row: DType) -> Any:
    """The torch dtype of a row, or None where the installed torch has none."""
    torch = torch_module()

    return getattr(torch, row.torch_name, None) if row.torch_name else None
