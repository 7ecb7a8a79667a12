"""``nfk``: k-bit normal-float codes, their tables, packing, bounds, hostile input and the rotated chains."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from _codec_helpers import F32_MAX, check, tensors
from _helpers import join_message, split_message
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.codecs import Hadamard, NFk
from tensorcodec.codecs.nfk import HALF_GAPS, TABLES
from tensorcodec.codecs.quant4 import NF4_TABLE
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec
from tensorcodec.testing.codecs import assert_within_bound

CODECS = [NFk(2), NFk(3), NFk(5), NFk(6), NFk(3, 32, double_quant=False), NFk(4, 128), NFk(6, 4096, False)]


def _construction(bits: int) -> np.ndarray[Any, Any]:
    """create_normal_map's NF4 construction, for 2^bits codes (module docstring)."""
    m = 1 << bits
    half = m // 2
    offset = (1 - 1 / (2 * (m - 1)) + 1 - 1 / (2 * m)) / 2
    inv = NormalDist().inv_cdf
    pos = [inv(offset + (0.5 - offset) * i / half) for i in range(half)]
    neg = [-inv(offset + (0.5 - offset) * i / (half - 1)) for i in range(half - 1)]
    values = sorted([*pos, *neg, 0.0])
    return np.array(values) / max(values)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_tables_are_the_normal_float_construction(bits: int) -> None:
    table = TABLES[bits]
    assert table.dtype == np.float32 and table.size == 1 << bits
    assert table[0] == -1.0 and table[-1] == 1.0 and table[(1 << (bits - 1)) - 1] == 0.0  # exact zero
    assert np.all(np.diff(table) > 0)
    tol = 2e-7 if bits == 4 else 0  # k = 4 is bitsandbytes' table (its float32 linspace)
    assert np.abs(table.astype(np.float64) - _construction(bits)).max() <= max(tol, 6e-8)
    assert HALF_GAPS[bits] == pytest.approx(np.diff(table.astype(np.float64)).max() / 2)
    if bits == 4:
        assert table is NF4_TABLE


def test_layout_and_bits_per_element() -> None:
    f32 = tc.dtypes.by_name("float32")
    assert f32 is not None
    n = 64 * 1024
    assert NFk(3).bits_per_element(f32, n) == pytest.approx(3 + 8 / 64 + 32 * 4 / n + 32 / n)
    assert NFk(2, 64, False).bits_per_element(f32, n) == pytest.approx(2.5)
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    enc = NFk(5).encode(x)
    assert enc.segments["codes"][1].size == math.ceil(1000 * 5 / 8)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_check_codec(codec: NFk) -> None:
    check_codec(codec, max_examples=15)


@settings(max_examples=30)
@given(codec=st.sampled_from(CODECS), x=tensors(cap=F32_MAX / 1e6, max_size=300))
def test_nfk_round_trip(codec: NFk, x: Any) -> None:
    check(codec, x)


def test_codes_are_nearest_entries() -> None:
    codec = NFk(3, 32, double_quant=False)
    x = np.linspace(-1, 1, 32 * 9, dtype=np.float32)
    x[::32] = 1.0  # every block's absmax is 1: the scaled values are x itself
    enc = codec.encode(x)
    out = codec.decode({k: a for k, (_, a) in enc.segments.items()}, {}, tc.dtypes.by_name("float32"), x.size)  # type: ignore[arg-type]
    nearest = TABLES[3][np.argmin(np.abs(x[:, None] - TABLES[3][None, :]), axis=1)]
    assert np.array_equal(out, nearest)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_refused(value: float) -> None:
    x = np.ones(300, dtype=np.float32)
    x[7] = value
    with pytest.raises(ValueError, match="nfk"):
        NFk(3).encode(x)


@pytest.mark.parametrize(
    "config",
    [{"bits": 7}, {"bits": 1}, {"bits": 3.0}, {"bits": True}, {"blocksize": 48}, {"double_quant": 1}, {"x": 1}],
)
def test_hostile_configs_and_params_are_decode_errors(config: dict[str, Any]) -> None:
    x = np.random.default_rng(3).standard_normal(640).astype(np.float32)
    header, segments = split_message(tc.encode({"w": x}, policy=tc.Policy({"*": "nf3"}, min_elements=0)))
    assert header["tensors"][0][2][0][0] == "nfk"
    bad = dict(header["tensors"][0][2][0][1])
    bad.update(config)
    header["tensors"][0][2][0][1] = bad
    with pytest.raises(DecodeError, match="nfk"):
        tc.decode(join_message(header, segments))
    header["tensors"][0][2][0][1] = NFk(3).get_config()
    for params in ({}, {"offset": "0"}, {"offset": None}):
        header["tensors"][0][2][0][2] = params
        with pytest.raises(DecodeError, match="offset"):
            tc.decode(join_message(header, segments))


@settings(max_examples=20)
@given(name=st.sampled_from(["hnf2", "hnf3", "hnf5", "hnf6"]), n=st.integers(0, 900), seed=st.integers(0, 2**32))
def test_rotated_chains_within_the_composed_bound(name: str, n: int, seed: int) -> None:
    x = (np.random.default_rng(seed).standard_t(3, n)).astype(np.float32)
    rot, inner = Hadamard(128), NFk(int(name[-1]))
    y = rot.encode(x).segments["data"][1]
    bound = rot.bound_after(x, inner.error_bound(y, inner.encode(y)))
    out = tc.decode(tc.encode({"w": x}, policy=tc.Policy({"*": name}, min_elements=0)))["w"]
    assert_within_bound(name, x, out, bound)
