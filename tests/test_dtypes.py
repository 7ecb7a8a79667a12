"""The dtype table: consistent with numpy, ml_dtypes and torch, and every dtype bit-exact on the wire."""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from _helpers import to_torch

import tensorcodec as tc
from tensorcodec import dtypes
from tensorcodec.testing import assert_bitwise_equal, strategies

ROWS = list(tc.DTYPES)
TORCH_ROWS = [row for row in ROWS if dtypes.torch_dtype(row) is not None]
FLOAT_ROWS = [row for row in ROWS if row.is_floating]
IDS = [row.name for row in ROWS]


def test_names_and_numpy_dtypes_are_unique() -> None:
    assert len({row.name for row in ROWS}) == len(ROWS)
    assert len({row.numpy for row in ROWS}) == len(ROWS)
    assert all(isinstance(row, tc.DType) for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_lookups_agree(row: tc.DType) -> None:
    assert dtypes.by_name(row.name) is row
    assert dtypes.from_numpy(row.numpy) is row
    assert row.itemsize == row.numpy.itemsize
    if row.numpy.type.__module__ == "numpy" and row.itemsize > 1:
        assert dtypes.from_numpy(row.numpy.newbyteorder(">")) is row
        assert dtypes.from_numpy(row.numpy.newbyteorder("<")) is row


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_wire_name_is_the_numpy_or_ml_dtypes_name(row: tc.DType) -> None:
    """The wire carries names, so each must name the same type in numpy/ml_dtypes everywhere."""
    expected = np.dtype(getattr(np, row.name, None) or getattr(ml_dtypes, row.name))
    assert row.numpy == expected


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_torch_column(row: tc.DType) -> None:
    assert row.torch_name in (None, row.name)
    t = dtypes.torch_dtype(row)
    if row.torch_name is None:
        assert t is None
    else:
        assert t is getattr(torch, row.torch_name)
        assert dtypes.from_torch(t) is row
        assert t.itemsize == row.itemsize


def test_torch_has_every_dtype_the_table_maps_to_it() -> None:
    """torch is pinned; a row naming a torch dtype that torch lacks would be dead."""
    assert [row.name for row in ROWS if row.torch_name and dtypes.torch_dtype(row) is None] == []
    assert {"bfloat16", "float8_e4m3fn", "float8_e5m2", "complex32", "uint64"} <= {r.name for r in TORCH_ROWS}


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_kind_flags(row: tc.DType) -> None:
    assert not (row.is_floating and row.is_complex)
    assert row.is_complex == (row.name in ("complex32", "complex64", "complex128"))
    if row.is_floating:
        ml_dtypes.finfo(row.numpy)
    elif not row.is_complex and row.name != "bool":
        ml_dtypes.iinfo(row.numpy)


@pytest.mark.parametrize(
    "dtype",
    [np.dtype(object), np.longdouble, np.clongdouble, "U3", "S3", "V2", "M8[s]", "m8[s]", [("a", "i4")]],
    ids=str,
)
def test_unsupported_numpy_dtypes(dtype: object) -> None:
    if np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.complex128)):
        pytest.skip("long double is double on this platform")
    assert dtypes.from_numpy(np.dtype(dtype)) is None  # type: ignore[arg-type]
    assert dtypes.by_name(np.dtype(dtype).name) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["object", "float128", "complex256", "str", "", "Float32", "float32 ", "<f4", "f4"])
def test_unknown_wire_names(name: str) -> None:
    assert dtypes.by_name(name) is None


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8, torch.qint32, torch.bits8])
def test_unsupported_torch_dtypes(dtype: torch.dtype) -> None:
    assert dtypes.from_torch(dtype) is None


@pytest.mark.parametrize("row", ROWS, ids=IDS)
@pytest.mark.parametrize("copy", [True, False])
def test_special_values_round_trip_numpy(row: tc.DType, copy: bool) -> None:
    arr = strategies.special_values(row)
    back = tc.decode(tc.encode({"a": arr, "s": arr[-1]}), copy=copy)
    assert back["a"].dtype == row.numpy
    assert_bitwise_equal(arr, back["a"])
    assert_bitwise_equal(arr[-1], back["s"])


@pytest.mark.parametrize("row", TORCH_ROWS, ids=[r.name for r in TORCH_ROWS])
@pytest.mark.parametrize("copy", [True, False])
def test_special_values_round_trip_torch(row: tc.DType, copy: bool) -> None:
    t = to_torch(strategies.special_values(row))
    assert t.dtype is dtypes.torch_dtype(row)
    back = tc.decode(tc.encode([t, t[:0], t[-1]]), copy=copy)
    for original, decoded in zip([t, t[:0], t[-1]], back, strict=True):
        assert decoded.dtype is t.dtype
        assert_bitwise_equal(original, decoded)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_cross_framework(row: tc.DType) -> None:
    """numpy in, torch out and back, bit for bit; dtypes torch lacks are refused with a DecodeError."""
    arr = strategies.special_values(row)
    message = tc.encode(arr)
    if dtypes.torch_dtype(row) is None:
        with pytest.raises(tc.DecodeError, match=row.name):
            tc.decode(message, framework="torch")
        return
    t = tc.decode(message, framework="torch")
    assert t.dtype is dtypes.torch_dtype(row)
    assert_bitwise_equal(arr, t, same_framework=False)
    back = tc.decode(tc.encode(t), framework="numpy")
    assert back.dtype == row.numpy
    assert_bitwise_equal(arr, back)


@pytest.mark.parametrize("row", [r for r in ROWS if r.itemsize == 1], ids=lambda r: r.name)
def test_every_bit_pattern_of_one_byte_types(row: tc.DType) -> None:
    bits = strategies.value_bits(row)
    arr = np.arange(1 << bits, dtype=np.uint8).view(row.numpy)
    back = tc.decode(tc.encode(arr))
    assert back.tobytes() == arr.tobytes()
    if dtypes.torch_dtype(row) is not None:
        assert_bitwise_equal(arr, tc.decode(tc.encode(arr), framework="torch"), same_framework=False)


@pytest.mark.parametrize("row", [r for r in ROWS if r.itemsize == 2], ids=lambda r: r.name)
def test_every_bit_pattern_of_two_byte_types(row: tc.DType) -> None:
    arr = np.arange(1 << 16, dtype=np.uint16).view(row.numpy)
    assert tc.decode(tc.encode(arr)).tobytes() == arr.tobytes()
    t = tc.decode(tc.encode(arr), framework="torch")
    assert_bitwise_equal(arr, t, same_framework=False)
    assert tc.decode(tc.encode(t), framework="numpy").tobytes() == arr.tobytes()


def _has(row: tc.DType, value: float) -> bool:
    """Whether a float dtype represents ``value`` (fn types lack inf, float4/float6 lack NaN, e8m0 lacks zero)."""
    with np.errstate(all="ignore"):
        back = float(np.asarray(value).astype(row.numpy).astype(np.float64))
    return bool(np.isnan(back)) if np.isnan(value) else back == value


@pytest.mark.parametrize("row", FLOAT_ROWS, ids=[r.name for r in FLOAT_ROWS])
def test_finfo_edge_values(row: tc.DType) -> None:
    """The extremes ml_dtypes documents for each float type survive, and NaN stays NaN."""
    fi = ml_dtypes.finfo(row.numpy)
    values = [fi.max, fi.min, fi.smallest_normal, fi.smallest_subnormal, fi.eps, fi.epsneg, fi.resolution]
    specials = [v for v in (np.nan, np.inf, -np.inf, -0.0) if _has(row, v)]
    arr = np.array([np.asarray(v).astype(row.numpy) for v in values + specials])
    assert arr.dtype == row.numpy
    back = tc.decode(tc.encode(arr))
    assert back.tobytes() == arr.tobytes()
    as64 = back.astype(np.float64)
    assert as64[0] == float(fi.max)
    assert as64[3] == float(fi.smallest_subnormal)
    assert np.isnan(as64).any() == _has(row, np.nan)


@pytest.mark.parametrize("row", [r for r in ROWS if not r.is_floating and not r.is_complex], ids=lambda r: r.name)
def test_integer_extremes(row: tc.DType) -> None:
    if row.name == "bool":
        arr = np.array([True, False, True])
    else:
        ii = ml_dtypes.iinfo(row.numpy)
        arr = np.array([ii.min, ii.max, 0, ii.max // 2], dtype=row.numpy)
    back = tc.decode(tc.encode(arr))
    assert back.tobytes() == arr.tobytes()
    assert back.tolist() == arr.tolist()


@pytest.mark.parametrize("row", [r for r in ROWS if r.is_floating or r.is_complex], ids=lambda r: r.name)
def test_special_values_cover_the_edges(row: tc.DType) -> None:
    """special_values feeds every property test: it must hold what its docstring promises."""
    vals = strategies.special_values(row)
    base = row
    if row.is_complex:
        base = dtypes.by_name({"complex32": "float16", "complex64": "float32"}.get(row.name, "float64"))  # type: ignore[assignment]
    component = vals.view(base.numpy)
    with np.errstate(all="ignore"):
        as64 = component.astype(np.float64)
    for value in (np.nan, 0.0, -0.0, np.inf, -np.inf):
        if _has(base, value):
            assert (np.isnan(as64) if np.isnan(value) else as64 == value).any(), value
    assert (np.abs(as64) == float(ml_dtypes.finfo(row.numpy).max)).any()
    assert (np.abs(as64) == float(ml_dtypes.finfo(row.numpy).smallest_subnormal)).any()
    if base.name in ("float16", "bfloat16", "float32", "float64"):
        bits = component.view(f"u{component.itemsize}")
        assert (bits == 1 << (8 * component.itemsize - 1)).any(), "negative zero"
        assert len(set(bits[np.isnan(as64)].tolist())) >= 4, "NaNs with several payloads and both signs"


def test_host_is_little_endian() -> None:
    """The zero-copy promises tested elsewhere assume it; a big-endian host takes the copying path."""
    assert sys.byteorder == "little"
