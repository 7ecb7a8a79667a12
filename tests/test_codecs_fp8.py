"""``fp8``: e4m3 / e5m2, per tensor and per block, NaN and Inf."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
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

from tensorcodec.codecs import (
    FP8,
    Codec,
)
from tensorcodec.testing import check_codec

FP8_CODECS = [FP8("e4m3"), FP8("e5m2"), FP8("e4m3", block=16), FP8("e5m2", block=7)]


@given(codec=st.sampled_from(FP8_CODECS), x=tensors(specials=True, cap=F32_MAX))
def test_fp8_round_trip(codec: FP8, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", FP8_CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", [*FP8_CODECS, FP8("e4m3", block=64)], ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # float64 beyond fp32, on purpose
def test_fp8_nan_inf() -> None:
    e4m3 = through_message(FP8("e4m3"), [math.nan, math.inf, -math.inf, 1.0, -2.0, 0.0])
    assert np.isnan(e4m3[:3]).all()
    np.testing.assert_allclose(e4m3[3:], [1.0, -2.0, 0.0], rtol=1e-6)  # absmax over finite values
    e5m2 = through_message(FP8("e5m2"), [math.nan, math.inf, -math.inf, 1.0, -2.0, 0.0])
    assert np.isnan(e5m2[0]) and np.array_equal(e5m2[1:3], [math.inf, -math.inf])
    np.testing.assert_allclose(e5m2[3:], [1.0, -2.0, 0.0], rtol=1e-6)
    only = through_message(FP8("e5m2"), [math.inf, math.nan, -math.inf])
    assert np.isnan(only[1]) and np.array_equal(only[[0, 2]], [math.inf, -math.inf])
    # float64 beyond fp32's range counts as Inf (documented); tiny ones never overflow the fp8 range.
    huge = through_message(FP8("e5m2"), [1e300, -1e300, 1.0], np.float64)
    assert np.array_equal(huge[:2], [math.inf, -math.inf]) and huge[2] == pytest.approx(1.0, rel=1e-6)
    tiny = through_message(FP8("e5m2"), [1e-40, -3e-41, 5e-42, 1e-45])
    assert np.isfinite(tiny).all() and np.abs(tiny - [1e-40, -3e-41, 5e-42, 1e-45]).max() < 1e-40
