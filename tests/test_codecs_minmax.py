"""``minmax``: every width, blocks, constants, refusals, stochastic rounding."""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from _codec_helpers import (
    F32_MAX,
    SOURCES,
    check,
    fixed_cases,
    tensors,
)
from hypothesis import given
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import wire
from tensorcodec.codecs import (
    Codec,
    MinMax,
    packed_size,
)
from tensorcodec.testing import check_codec, raw_bytes

MINMAX_CODECS = [
    MinMax(8),
    MinMax(4),
    MinMax(2),
    MinMax(1),
    MinMax(16),
    MinMax(3, block=5),
    MinMax(12, block=7),
    MinMax(5, stochastic=True, seed=3),
    MinMax(1, block=4, stochastic=True),
]


@given(codec=st.sampled_from(MINMAX_CODECS), x=tensors(cap=F32_MAX / 2))
def test_minmax_round_trip(codec: MinMax, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", MINMAX_CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", MINMAX_CODECS, ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("block", [0, 3])
@pytest.mark.parametrize(
    "values", [[1.0, math.nan, 2.0], [math.inf, 0.0, 1.0], [1.0, 2.0, -math.inf, 4.0], [1e300, 0.0, 1.0]]
)
def test_minmax_refuses_nan_inf_naming_the_tensor(values: list[float], block: int) -> None:
    x = np.array(values, dtype=np.float64)
    tree = {"layers": [{"w": x}]}
    with pytest.raises(ValueError, match=r"'layers\.0\.w'.*NaN or Inf"):
        tc.encode(tree, policy=tc.Policy({"*": MinMax(8, block=block)}, min_elements=0))
    assert np.array_equal(x, values, equal_nan=True)


def test_minmax_refuses_a_range_beyond_fp32() -> None:
    x = np.array([3e38, -3e38, 0.0], dtype=np.float32)
    with pytest.raises(ValueError, match=r"'w'.*overflows"):
        tc.encode({"w": x}, policy=tc.Policy({"*": "minmax8"}, min_elements=0))
    check(MinMax(8), np.array([3e38, 1e38, 0.0], dtype=np.float32))  # a wide range that fits is fine


@pytest.mark.parametrize("codec", [MinMax(8), MinMax(3, block=4), MinMax(1, stochastic=True)], ids=repr)
@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -7e30, 1e-40])
def test_minmax_constant_tensor_sends_no_codes(codec: MinMax, value: float) -> None:
    x = np.full((3, 7), value, dtype=np.float32)
    message = tc.encode({"c": x}, policy=tc.Policy({"*": codec}, min_elements=0))
    (entry,) = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=True).entries
    assert [s.name for s in entry.segments] == ["range"]
    assert entry.stages[0][0] == "minmax"
    assert raw_bytes(tc.decode(message)["c"]) == raw_bytes(x)


def test_minmax_block_constant_blocks() -> None:
    x = np.array([1, 1, 1, 5, 5, 5, 2, 3], dtype=np.float32)
    enc = MinMax(4, block=3).encode(x)
    assert "codes" in enc.segments
    assert enc.segments["range"][1].tolist() == [1, 1, 5, 5, 2, 3]
    check(MinMax(4, block=3), x)
    enc = MinMax(4, block=3).encode(np.array([1, 1, 1, 5, 5, 5, 2], dtype=np.float32))
    assert "codes" not in enc.segments  # the last, partial block counts its padding as constant


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("block", [0, 10])
def test_minmax_every_width(bits: int, block: int) -> None:
    rng = np.random.default_rng(bits)
    x = rng.standard_normal(53).astype(np.float32)
    codec = MinMax(bits, block=block)
    enc = codec.encode(x)
    assert enc.segments["codes"][1].size == packed_size(53, bits)
    check(codec, x)
    check(MinMax(bits, block=block, stochastic=True, seed=bits), x.astype(np.float64))


# ---------------------------------------------------------------------------- stochastic rounding


def _stochastic(x: Any, seed: int, name: str = "w", bits: int = 2) -> bytes:
    return tc.encode({name: x}, policy=tc.Policy({"*": MinMax(bits, stochastic=True, seed=seed)}, min_elements=0))


def test_stochastic_rounding_is_reproducible() -> None:
    x = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    a, b = _stochastic(x, 11), _stochastic(x, 11)
    assert a == b
    decoded = tc.decode(a)["w"]
    from_torch = tc.decode(_stochastic(torch.from_numpy(x), 11), framework="numpy")["w"]
    assert np.array_equal(from_torch, decoded), "the framework does not matter"
    assert np.array_equal(decoded, tc.decode(b)["w"])
    assert not np.array_equal(decoded, tc.decode(_stochastic(x, 12))["w"]), "another seed, other codes"
    other_name = tc.decode(_stochastic(x, 11, name="v"))["v"]
    assert not np.array_equal(decoded, other_name), "another tensor name, another stream"
    (entry,) = wire.parse_message(wire.Rope(a), wire.DEFAULT_LIMITS, verify=True).entries
    assert entry.stages[0][2] == {"stream": zlib.crc32(b"w")}
    nearest = tc.decode(tc.encode({"w": x}, policy=tc.Policy({"*": "minmax2"}, min_elements=0)))["w"]
    assert not np.array_equal(decoded, nearest)


def test_stochastic_rounding_is_unbiased() -> None:
    """Over many seeds the mean decoded value is the input; round-to-nearest fails the same test."""
    rng = np.random.default_rng(1234)
    x = np.concatenate([[-1.0, 1.0], rng.uniform(-1, 1, 998)]).astype(np.float32)
    step = 2.0 / 3  # 2 bits over [-1, 1]
    seeds = 300
    total = np.zeros(x.size)
    errors = []
    for seed in range(seeds):
        got = tc.decode(_stochastic(x, seed))["w"].astype(np.float64)
        total += got
        errors.append(got - x)
    err = np.concatenate(errors)
    sigma = err.std()
    assert 0 < sigma <= step / 2 + 1e-6  # each rounding is off by < step, variance <= step^2 / 4
    assert abs(err.mean()) < 4 * sigma / math.sqrt(err.size), "biased on average"
    per_element = total / seeds - x
    assert np.abs(per_element).max() < 5 * (step / 2) / math.sqrt(seeds), "biased for some element"
    # The test has power: round-to-nearest (deterministic) is biased per element.
    nearest = tc.decode(tc.encode({"w": x}, policy=tc.Policy({"*": "minmax2"}, min_elements=0)))["w"]
    assert np.abs(nearest - x).max() > 5 * (step / 2) / math.sqrt(seeds)
