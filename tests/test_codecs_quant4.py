"""``quant4``: nf4 / fp4 with and without double quantization, with the C kernels and with numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _codec_helpers import (
    F32_MAX,
    SOURCES,
    check,
    encoded_message,
    fixed_cases,
    kernels_or_skip,
    tensors,
)
from _helpers import join_message
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.codecs import (
    Codec,
    Quant4,
)
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec

QUANT4_CODECS = [Quant4("nf4", 64), Quant4("fp4", 32, double_quant=False), Quant4("nf4", 32, False), Quant4("fp4")]


@pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy
@settings(max_examples=30)
@given(codec=st.sampled_from(QUANT4_CODECS), x=tensors(cap=F32_MAX / 1e6, max_size=300))
def test_quant4_round_trip(codec: Quant4, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", QUANT4_CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.usefixtures("kernel_impl")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", [*QUANT4_CODECS, Quant4("fp4", 256), Quant4("nf4", 4096, False)], ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


def test_hostile_quant4_params() -> None:
    kernels_or_skip("quant4")
    header, segments = encoded_message(Quant4("nf4", 64), 640)
    for bad in ({"offset": "0.5"}, {}, {"offset": None}, {"offset": 1}):
        header["tensors"][0][2][0][2] = bad
        with pytest.raises(DecodeError, match="offset"):
            tc.decode(join_message(header, segments))


@pytest.mark.parametrize("value", [math.inf, math.nan, 3e38])
def test_quant4_double_quant_refuses_overflowing_statistics(value: float) -> None:
    kernels_or_skip("quant4")
    x = np.full(640, 0.5, dtype=np.float32)
    x[::64] = value
    with pytest.raises(ValueError, match=r"'w'.*double_quant"):
        tc.encode({"w": x}, policy=tc.Policy({"*": "nf4"}, min_elements=0))
    if math.isfinite(value):  # without double quantization, huge values are fine
        check(Quant4("nf4", double_quant=False), x)
