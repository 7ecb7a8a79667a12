"""``cast``: float16 / bfloat16, clamps, NaN and Inf."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from _codec_helpers import (
    F32_MAX,
    SOURCES,
    check,
    fixed_cases,
    tensors,
    through_message,
)
from hypothesis import given
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.codecs import (
    Cast,
    Codec,
)
from tensorcodec.testing import check_codec

CAST_CODECS = [Cast("float16"), Cast("bfloat16")]


@given(codec=st.sampled_from(CAST_CODECS), x=tensors(specials=True))
def test_cast_round_trip(codec: Cast, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CAST_CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CAST_CODECS, ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_clamps_finite_keeps_inf_and_nan(dtype: Any) -> None:
    got = through_message(
        Cast("float16"), [1e5, -1e5, math.inf, -math.inf, math.nan, 65504, 65519, 1.0, 3e38, -0.0], dtype
    )
    expected = [65504, -65504, math.inf, -math.inf, math.nan, 65504, 65504, 1.0, 65504, -0.0]
    np.testing.assert_array_equal(got, expected)
    assert np.signbit(got[-1])
    t = torch.tensor([1e6, float("inf"), float("nan")])
    out = tc.decode(tc.encode(t, policy=tc.Policy({"*": "fp16"}, min_elements=0)))
    assert out.dtype == torch.float32 and out[0] == 65504 and out[1] == math.inf and out[2].isnan()


def test_bf16_clamps_finite_keeps_inf_and_nan() -> None:
    top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    got = through_message(Cast("bfloat16"), [F32_MAX, -F32_MAX, math.inf, -math.inf, math.nan, 1.0])
    np.testing.assert_array_equal(got, [top, -top, math.inf, -math.inf, math.nan, 1.0])
    assert np.array_equal(through_message(Cast("bfloat16"), [1e300, -1e300], np.float64), [top, -top])
