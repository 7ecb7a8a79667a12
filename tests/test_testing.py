"""tensorcodec.testing: the strategies generate what they promise and the assertions catch what they should."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.testing import assert_bitwise_equal, assert_tree_equal, raw_bytes, strategies, wire_dtype


class _Found(Exception):
    pass


def reach(strategy: st.SearchStrategy[Any], predicate: Any, tries: int = 3000) -> Any:
    """The first drawn example that satisfies ``predicate``; unlike hypothesis.find it does not shrink (slow here)."""
    found: list[Any] = []

    @settings(max_examples=tries, database=None, phases=[Phase.generate], derandomize=True, deadline=None)
    @given(strategy)
    def probe(x: Any) -> None:
        if predicate(x):
            found.append(x)
            raise _Found

    try:
        probe()
    except _Found:
        return found[0]
    raise AssertionError(f"no example in {tries} draws satisfied the predicate")


def test_package_imports_without_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import tensorcodec, tensorcodec.testing\n"
        "assert 'tensorcodec.testing' not in sys.modules or 'tensorcodec.testing.strategies' not in sys.modules\n"
        "try:\n    import tensorcodec.testing.strategies\nexcept ImportError:\n    print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_importing_tensorcodec_imports_neither_hypothesis_nor_testing() -> None:
    code = (
        "import sys, tensorcodec\n"
        "print(sorted(m for m in sys.modules if m.startswith(('hypothesis', 'tensorcodec.testing'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- assertions -------------------------------------------------------------------------------------------------


def _f32(bits: int) -> np.ndarray[Any, Any]:
    return np.array([bits], dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (_f32(0x7FC00000), _f32(0x7FC00001)),
        (_f32(0x00000000), _f32(0x80000000)),
        (np.zeros(3, np.float32), np.zeros(3, np.int32)),
        (np.zeros(3), np.zeros((3, 1))),
        (np.zeros(3), torch.zeros(3, dtype=torch.float64)),
        (np.float32(1), np.float64(1)),
        (np.float32(1), np.array(1, np.float32)),
        (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, -float("nan")])),
        (np.zeros(2, ml_dtypes.bfloat16), np.zeros(2, np.float16)),
    ],
    ids=[
        "nan_payload",
        "signed_zero",
        "dtype",
        "shape",
        "framework",
        "scalar_type",
        "scalar_vs_0d",
        "torch_nan_sign",
        "bf16_f16",
    ],
)
def test_assert_bitwise_equal_catches(a: Any, b: Any) -> None:
    with pytest.raises(AssertionError):
        assert_bitwise_equal(a, b)


def test_assert_bitwise_equal_accepts() -> None:
    assert_bitwise_equal(np.arange(4, dtype=">i4"), np.arange(4, dtype="<i4"))
    assert_bitwise_equal(np.arange(6.0).reshape(2, 3).T, np.ascontiguousarray(np.arange(6.0).reshape(2, 3).T))
    c = torch.randn(3, dtype=torch.complex64)
    assert_bitwise_equal(c.conj(), c.conj().resolve_conj())
    assert_bitwise_equal(np.arange(3.0), torch.arange(3.0, dtype=torch.float64), same_framework=False)
    assert raw_bytes(np.array([1, 2], dtype=">u2")) == b"\x01\x00\x02\x00"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((1, 2), [1, 2]),
        (bytearray(b"x"), b"x"),
        (True, 1),
        (1, 1.0),
        (np.float32(1), np.float64(1)),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (0.0, -0.0),
        (math.nan, -math.nan),
        ([np.zeros(2)], [np.zeros(3)]),
        ({"a": [1, (2, [3])]}, {"a": [1, (2, (3,))]}),
        (np.zeros(2), [0.0, 0.0]),
    ],
    ids=[
        "tuple_list",
        "bytearray",
        "bool_int",
        "int_float",
        "scalar_type",
        "key_order",
        "neg_zero",
        "nan_sign",
        "nested",
        "deep",
        "array_vs_list",
    ],
)
def test_assert_tree_equal_catches(a: Any, b: Any) -> None:
    with pytest.raises(AssertionError):
        assert_tree_equal(a, b)


def test_assert_tree_equal_names_the_path() -> None:
    with pytest.raises(AssertionError, match=r"root\['a'\]\[1\]\[0\]"):
        assert_tree_equal({"a": [0, (1,)]}, {"a": [0, (2,)]})


# -- strategies -------------------------------------------------------------------------------------------------


@given(strategies.shapes(max_dims=64, max_size=20))
def test_shapes_respect_their_bounds(shape: tuple[int, ...]) -> None:
    assert len(shape) <= 64
    assert all(d >= 0 for d in shape)
    assert math.prod(max(d, 1) for d in shape) <= 20


def test_shapes_reach_their_corners() -> None:
    assert reach(strategies.shapes(), lambda s: s == ()) == ()
    assert 0 in reach(strategies.shapes(), lambda s: 0 in s and len(s) >= 2)
    assert len(reach(strategies.shapes(max_dims=64), lambda s: len(s) == 64)) == 64
    assert reach(strategies.shapes(), lambda s: any(d % 2 and d > 1 for d in s))


def test_arrays_reach_their_corners() -> None:
    assert not reach(strategies.arrays(), lambda a: not a.flags.c_contiguous and a.size > 1).flags.c_contiguous
    assert reach(strategies.arrays(), lambda a: a.dtype.byteorder == ">").dtype.byteorder == ">"
    reach(strategies.arrays(), lambda a: 0 in a.strides and a.size > 1)
    reach(strategies.arrays(), lambda a: any(s < 0 for s in a.strides))
    reach(strategies.arrays(np.float32), lambda a: bool(np.isin(a.view(np.uint32), [0x7FC00001, 0x7F800001]).any()))
    reach(strategies.arrays(np.float16), lambda a: bool((a.view(np.uint16) == 0x8000).any()))
    reach(strategies.arrays(np.float64), lambda a: bool((a.view(np.uint64) == 1).any()))


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        ("bfloat16", "bfloat16"),
        (np.dtype(np.complex64), "complex64"),
        (tc.dtypes.by_name("int4"), "int4"),
        (ml_dtypes.float8_e5m2, "float8_e5m2"),
        (">i2", "int16"),
    ],
)
def test_arrays_accept_any_dtype_spelling(dtype: Any, name: str) -> None:
    arr = reach(strategies.arrays(dtype), lambda a: a.size > 2)
    assert wire_dtype(arr).name == name
    with pytest.raises(ValueError):
        strategies.arrays("float128")


@given(st.data())
def test_narrow_types_only_set_their_value_bits(data: st.DataObject) -> None:
    row = data.draw(st.sampled_from([r for r in tc.DTYPES if strategies.value_bits(r) < 8 * r.itemsize]))
    arr = data.draw(strategies.arrays(row))
    assert (np.ascontiguousarray(arr).view(np.uint8) < (1 << strategies.value_bits(row))).all()


def test_value_bits() -> None:
    assert [strategies.value_bits(n) for n in ("bool", "int4", "uint2", "float6_e2m3fn", "float4_e2m1fn")] == [
        1,
        4,
        2,
        6,
        4,
    ]
    assert strategies.value_bits("complex128") == 128 and strategies.value_bits("bfloat16") == 16


def test_torch_tensors_reach_their_corners() -> None:
    assert reach(strategies.torch_tensors(), lambda t: t.is_conj()).is_conj()
    assert reach(strategies.torch_tensors(), lambda t: t.is_neg()).is_neg()
    assert reach(strategies.torch_tensors(), lambda t: t.requires_grad).requires_grad
    assert not reach(strategies.torch_tensors(), lambda t: not t.is_contiguous()).is_contiguous()
    reach(strategies.torch_tensors(), lambda t: 0 in t.stride() and t.numel() > 1)
    reach(strategies.torch_tensors(), lambda t: t.dtype is torch.float8_e8m0fnu)
    with pytest.raises(ValueError, match="torch"):
        strategies.torch_tensors("float4_e2m1fn")


def _walk(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [tree] + [x for v in tree.values() for x in _walk(v)]
    if isinstance(tree, (list, tuple)):
        return [tree] + [x for v in tree for x in _walk(v)]
    return [tree]


@pytest.mark.parametrize(
    "kind",
    [tuple, dict, bytearray, bytes, torch.Tensor, np.generic, np.ndarray, bool, type(None), str, float],
    ids=lambda k: k.__name__,
)
def test_trees_hold_every_leaf_and_container_type(kind: type) -> None:
    reach(strategies.trees(), lambda t: any(isinstance(x, kind) for x in _walk(t)))


def test_trees_hold_big_ints() -> None:
    reach(strategies.trees(), lambda t: any(type(x) is int and abs(x) >= 2**64 for x in _walk(t)))


def test_trees_without_torch() -> None:
    @given(strategies.trees(torch=False))
    @settings(max_examples=50)
    def check(tree: Any) -> None:
        assert not any(isinstance(x, torch.Tensor) for x in _walk(tree))

    check()


@given(strategies.numpy_scalars())
def test_numpy_scalars_are_numpy_scalars(scalar: Any) -> None:
    assert isinstance(scalar, np.generic)
    assert wire_dtype(scalar) is not None


@given(strategies.dtypes(torch=True))
def test_torch_dtypes_exist_in_torch(row: tc.DType) -> None:
    assert tc.dtypes.torch_dtype(row) is not None


def test_special_values_are_unique_bit_patterns() -> None:
    for row in tc.DTYPES:
        vals = strategies.special_values(row)
        raw = vals.tobytes()
        items = {raw[i : i + row.itemsize] for i in range(0, len(raw), row.itemsize)}
        assert len(items) == vals.size > 1
