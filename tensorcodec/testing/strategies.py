"""Hypothesis strategies for trees of tensors, for tensorcodec's tests and for codecs built on it.

Arrays are drawn as raw bytes, so every bit pattern of a dtype can appear
(NaN payloads, signalling NaNs, -0.0, subnormals), mixed with each dtype's
special values (``special_values``) so that those appear often rather than by
luck. The narrow ml_dtypes types (int4, float4_e2m1fn, ...) and bool store one
element per byte; only their value bits are drawn, the way numpy, ml_dtypes and
torch themselves store them.

Layouts and byte orders are part of the draw: ``arrays`` gives transposed,
strided, reversed and broadcast views and big-endian arrays, ``torch_tensors``
gives permuted, strided and expanded views, lazily conjugated or negated
tensors and tensors that require grad. Compare results with
``tensorcodec.testing.assert_bitwise_equal`` / ``assert_tree_equal``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from typing import Any

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from ..dtypes import DTYPES, DType, by_name, from_numpy, torch_dtype

__all__ = [
    "dtypes",
    "shapes",
    "special_values",
    "value_bits",
    "arrays",
    "numpy_scalars",
    "torch_tensors",
    "python_scalars",
    "trees",
]

_ORDER: Any = sys.byteorder
_FINFO: Any = ml_dtypes.finfo
_IINFO: Any = ml_dtypes.iinfo
_COMPONENT = {"complex32": "float16", "complex64": "float32", "complex128": "float64"}
_LAYOUTS = ("contiguous", "permuted", "strided", "reversed", "broadcast")
_TORCH_LAYOUTS = ("contiguous", "permuted", "strided", "expanded")
INT_EDGES = (
    0,
    1,
    -1,
    2**31 - 1,
    -(2**31),
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    2**200,
    -(2**200),
)
"""Python ints at msgpack's and numpy's boundaries (a tensorcodec message sends those past 64 bits as big ints)."""


def _as_row(dtype: DType | str | Any) -> DType:
    if isinstance(dtype, DType):
        return dtype
    row = by_name(dtype) if isinstance(dtype, str) else None
    if row is None:
        try:
            row = from_numpy(np.dtype(dtype))
        except TypeError:
            row = None
    if row is None:
        raise ValueError(f"{dtype!r} is not a dtype in tensorcodec.DTYPES")
    return row


def _torch_rows() -> list[DType]:
    return [row for row in DTYPES if torch_dtype(row) is not None]


def dtypes(*, torch: bool = False, exclude: tuple[str, ...] = ()) -> st.SearchStrategy[DType]:
    """Rows of ``tensorcodec.DTYPES``; with ``torch=True`` only those the installed torch has."""
    rows = _torch_rows() if torch else list(DTYPES)
    return st.sampled_from([row for row in rows if row.name not in exclude])


def shapes(
    *, min_dims: int = 0, max_dims: int = 6, max_side: int = 7, max_size: int = 48
) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes from 0-d up to ``max_dims`` (numpy allows 64) with at most ``max_size`` elements.

    Small ranks are drawn most often; high ranks are mostly ones with a few
    longer sides at random positions. About one shape in eight is empty (a
    zero side), so empty tensors of every rank come up.
    """
    if not 0 <= min_dims <= max_dims or max_size < 1:
        raise ValueError("need 0 <= min_dims <= max_dims and max_size >= 1")

    @st.composite
    def draw_shape(draw: st.DrawFn) -> tuple[int, ...]:
        small = st.integers(min_dims, min(max_dims, max(min_dims, 4)))
        ndim = draw(st.one_of(small, st.integers(min_dims, max_dims)))
        sides = []
        budget = max_size
        for _ in range(ndim):
            side = draw(st.integers(1, max(1, min(max_side, budget))))
            budget //= side
            sides.append(side)
        if ndim and draw(st.integers(0, 7)) == 0:
            sides[draw(st.integers(0, ndim - 1))] = 0
        return tuple(draw(st.permutations(sides))) if ndim > 1 else tuple(sides)

    return draw_shape()


def value_bits(dtype: DType | str | Any) -> int:
    """Bits of one element that carry its value; the others are zero (bool: 1, int4: 4, float32: 32)."""
    row = _as_row(dtype)
    if row.name == "bool":
        return 1
    if row.is_complex:
        return row.itemsize * 8
    info: Any = _FINFO(row.numpy) if row.is_floating else _IINFO(row.numpy)
    return int(info.bits)


def _element(row: DType, pattern: int) -> bytes:
    return (pattern & ((1 << value_bits(row)) - 1)).to_bytes(row.itemsize, _ORDER)


def _converted(row: DType, values: list[float]) -> list[bytes]:
    """Element bytes of each value converted the way numpy/ml_dtypes convert (NaN where a type has no inf)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        arr = np.array(values, dtype=np.float64).astype(row.numpy)
    raw = arr.tobytes()
    return [raw[i : i + row.itemsize] for i in range(0, len(raw), row.itemsize)]


def _special_bytes(row: DType) -> list[bytes]:
    """Bit patterns worth testing for one dtype, in a stable order, without duplicates."""
    if row.name == "bool":
        out = [b"\x00", b"\x01"]
    elif row.is_complex:
        parts = _special_bytes(_as_row(_COMPONENT[row.name]))
        out = [re + im for re in parts for im in parts]
    elif row.is_floating:
        fi: Any = _FINFO(row.numpy)
        bits, nexp, nmant = int(fi.bits), int(fi.nexp), int(fi.nmant)
        sign = 1 << (bits - 1) if bits > nexp + nmant else 0
        exp = ((1 << nexp) - 1) << nmant
        mant = (1 << nmant) - 1
        quiet = 1 << (nmant - 1) if nmant else 0
        patterns = [0, 1, mant, 1 << nmant, exp - 1, exp, exp | 1, exp | quiet, exp | quiet | 1, exp | mant]
        patterns += [p | sign for p in patterns]
        out = [_element(row, p) for p in patterns]
        values = [1.0, -1.0, 0.5, float(fi.max), float(fi.min), float(fi.eps)]
        values += [float(fi.smallest_normal), float(fi.smallest_subnormal), -float(fi.smallest_subnormal)]
        values += [math.inf, -math.inf, math.nan, -0.0]
        out += _converted(row, values)
    else:
        ii: Any = _IINFO(row.numpy)
        bits = int(ii.bits)
        values_i = [0, 1, int(ii.max), int(ii.min), int(ii.max) - 1, int(ii.min) + 1, 1 << (bits // 2)]
        out = [_element(row, v) for v in values_i]
        out += [_element(row, p) for p in (1 << (bits - 1), (1 << bits) - 1, 0x5555555555555555)]
    return list(dict.fromkeys(out))


def special_values(dtype: DType | str | Any) -> np.ndarray[Any, Any]:
    """A 1-d array of a dtype's edge values: zeros of both signs, ±inf, NaNs with payloads, subnormals, extremes.

    Built from bit patterns (exponent all ones with various mantissas, sign
    bit, smallest and largest subnormal) and from ``ml_dtypes.finfo`` /
    ``iinfo`` values converted to the dtype, so the types without inf or
    negative zero (fn, fnuz, e8m0) get their own NaN and saturating encodings.
    """
    row = _as_row(dtype)
    raw = b"".join(_special_bytes(row))
    return np.frombuffer(bytearray(raw), dtype=row.numpy)


def _random_element(row: DType) -> st.SearchStrategy[bytes]:
    bits = value_bits(row)
    if bits >= 8 * row.itemsize:
        return st.binary(min_size=row.itemsize, max_size=row.itemsize)
    return st.integers(0, (1 << bits) - 1).map(lambda v: v.to_bytes(row.itemsize, _ORDER))


def _element_bytes(row: DType, count: int) -> st.SearchStrategy[bytes]:
    """``count`` elements: random bit patterns mixed with special values, or one special value repeated."""
    special = st.sampled_from(_special_bytes(row))
    mixed = st.lists(st.one_of(special, _random_element(row)), min_size=count, max_size=count).map(b"".join)
    constant = special.map(lambda b: b * count)
    return st.one_of(mixed, constant)


def _big_endian(flat: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    """Reverses the bytes of each element (of each component, for complex) in a (count, itemsize) byte array."""
    if row.is_complex:
        half = row.itemsize // 2
        return np.ascontiguousarray(flat.reshape(-1, 2, half)[..., ::-1]).reshape(flat.shape)
    return np.ascontiguousarray(flat[:, ::-1])


def _filler(shape: list[int], like: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An array of ``like``'s dtype and ``shape`` filled with 0xA5 bytes, to surround a strided view."""
    return np.frombuffer(bytearray(b"\xa5" * (math.prod(shape) * like.itemsize)), dtype=like.dtype).reshape(shape)


def _layout(draw: st.DrawFn, cells: np.ndarray[Any, Any], layout: str) -> np.ndarray[Any, Any]:
    """A view holding the same elements as ``cells`` in another memory layout."""
    ndim = cells.ndim
    if ndim == 0 or layout == "contiguous":
        return cells
    axis = draw(st.integers(0, ndim - 1))
    index: list[Any] = [slice(None)] * ndim
    if layout == "permuted":
        perm = draw(st.permutations(range(ndim)))
        return np.ascontiguousarray(cells.transpose(perm)).transpose([perm.index(i) for i in range(ndim)])
    if layout == "strided":
        step = draw(st.integers(2, 3))
        start = draw(st.integers(0, step - 1))
        shape = list(cells.shape)
        shape[axis] = cells.shape[axis] * step + start
        big = _filler(shape, cells)
        index[axis] = slice(start, None, step)
        big[tuple(index)] = cells
        view: np.ndarray[Any, Any] = big[tuple(index)]
        return view
    if layout == "reversed":
        index[axis] = slice(None, None, -1)
        reversed_view: np.ndarray[Any, Any] = np.ascontiguousarray(cells[tuple(index)])[tuple(index)]
        return reversed_view
    if cells.shape[axis] == 0:
        return cells
    index[axis] = slice(0, 1)
    return np.broadcast_to(cells[tuple(index)], cells.shape)


def arrays(
    dtype: DType | str | Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    max_dims: int = 6,
    max_side: int = 7,
    max_size: int = 48,
    layouts: bool = True,
    byteorders: bool = True,
) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """numpy arrays of any tensorcodec dtype (or ``dtype``), with special values and odd layouts.

    ``layouts`` adds non-contiguous views (permuted axes, steps, negative
    strides, zero-stride broadcasts); ``byteorders`` adds big-endian arrays of
    numpy's own multi-byte types. The values do not depend on the layout, and
    the arrays are writable except for broadcasts.
    """
    fixed = None if dtype is None else _as_row(dtype)

    @st.composite
    def draw_array(draw: st.DrawFn) -> np.ndarray[Any, Any]:
        row = fixed if fixed is not None else draw(dtypes())
        shp = shape if shape is not None else draw(shapes(max_dims=max_dims, max_side=max_side, max_size=max_size))
        count = math.prod(shp)
        flat = np.frombuffer(bytearray(draw(_element_bytes(row, count))), dtype=np.uint8).reshape(count, row.itemsize)
        np_type = row.numpy
        native = row.numpy.type.__module__ == "numpy" and row.itemsize > 1
        if byteorders and native and draw(st.booleans()):
            flat = _big_endian(flat, row)
            np_type = row.numpy.newbyteorder(">" if _ORDER == "little" else "<")
        # Opaque same-width cells move bytes around without ever interpreting them as values.
        cells = flat.view(f"V{row.itemsize}").reshape(shp)
        if layouts:
            cells = _layout(draw, cells, draw(st.sampled_from(_LAYOUTS)))
        return cells.view(np_type)

    return draw_array()


def numpy_scalars(dtype: DType | str | Any = None) -> st.SearchStrategy[Any]:
    """numpy scalars (``np.float32(...)``, ``ml_dtypes.bfloat16(...)``, ...) with special values."""
    return arrays(dtype, shape=(), layouts=False, byteorders=False).map(lambda a: a[()])


def torch_tensors(
    dtype: DType | str | Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    max_dims: int = 6,
    max_side: int = 7,
    max_size: int = 48,
    layouts: bool = True,
    flags: bool = True,
) -> st.SearchStrategy[Any]:
    """CPU torch tensors of the dtypes the installed torch has, with special values and odd layouts.

    ``layouts`` adds permuted, stepped and expanded (zero-stride) views;
    ``flags`` adds ``requires_grad`` on floating tensors, lazily conjugated
    complex tensors (``.conj()``) and negative-bit views (``.conj().imag``).
    A lazy tensor's value is what reading it gives.
    """
    import torch

    fixed = None if dtype is None else _as_row(dtype)
    if fixed is not None and torch_dtype(fixed) is None:
        raise ValueError(f"torch {torch.__version__} has no {fixed.name}")
    grad_types = {"float16", "bfloat16", "float32", "float64", "complex64", "complex128"}
    # Same-width integer types carry the bits through layout changes without reading them as floats.
    carriers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

    @st.composite
    def draw_tensor(draw: st.DrawFn) -> Any:
        row = fixed if fixed is not None else draw(dtypes(torch=True))
        shp = shape if shape is not None else draw(shapes(max_dims=max_dims, max_side=max_side, max_size=max_size))
        count = math.prod(shp)
        data = bytearray(draw(_element_bytes(row, count)))
        carrier = carriers.get(row.itemsize, torch_dtype(row))
        b = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        b = b.view(carrier).reshape(shp).clone()
        layout = draw(st.sampled_from(_TORCH_LAYOUTS)) if layouts and shp else "contiguous"
        if layout == "permuted":
            perm = draw(st.permutations(range(len(shp))))
            b = b.permute(*perm).contiguous().permute(*[perm.index(i) for i in range(len(shp))])
        elif layout == "strided":
            axis = draw(st.integers(0, len(shp) - 1))
            big_shape = list(shp)
            big_shape[axis] *= 2
            big = torch.zeros(big_shape, dtype=carrier)
            index: list[Any] = [slice(None)] * len(shp)
            index[axis] = slice(None, None, 2)
            big[tuple(index)] = b
            b = big[tuple(index)]
        elif layout == "expanded":
            axis = draw(st.integers(0, len(shp) - 1))
            if shp[axis] > 0:
                b = b.narrow(axis, 0, 1).expand(*shp)
        t = b.view(torch_dtype(row))
        if flags and row.is_complex and row.name != "complex32" and draw(st.booleans()):
            t = t.conj()
        if flags and row.name in ("float32", "float64") and draw(st.integers(0, 3)) == 0:
            t = torch.complex(torch.zeros_like(t), t).conj().imag
        if flags and row.name in grad_types and draw(st.booleans()):
            t = t.detach().requires_grad_(True)
        return t

    return draw_tensor()


def python_scalars() -> st.SearchStrategy[Any]:
    """None, bools, ints of any size (with the 64-bit boundaries), floats with NaN/inf/-0.0, str, bytes, bytearray."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(INT_EDGES),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.sampled_from([-0.0, math.inf, -math.inf, math.nan, 5e-324]),
        st.text(max_size=12),
        st.binary(max_size=24),
        st.binary(max_size=24).map(bytearray),
    )


def trees(
    *,
    torch: bool | None = None,
    max_leaves: int = 12,
    tensors: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[Any]:
    """Nested dicts (str keys), lists and tuples of every leaf type tensorcodec encodes.

    Leaves are Python scalars, numpy arrays and scalars and, when ``torch`` is
    true (default: whenever torch is installed), torch tensors. ``tensors``
    replaces the array leaves, e.g. to use one dtype or smaller arrays.
    """
    if torch is None:
        torch = importlib.util.find_spec("torch") is not None
    if tensors is None:
        options = [arrays(max_dims=4, max_side=5, max_size=24), numpy_scalars()]
        if torch:
            options.append(torch_tensors(max_dims=4, max_side=5, max_size=24))
        tensors = st.one_of(*options)
    leaves = st.one_of(python_scalars(), tensors)
    keys = st.text(max_size=8)

    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(keys, children, max_size=4),
        )

    return st.recursive(leaves, containers, max_leaves=max_leaves)
