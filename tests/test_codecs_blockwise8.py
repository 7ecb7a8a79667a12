"""``blockwise8``: bitsandbytes' 8-bit blockwise format, with the C kernels and with numpy."""

from __future__ import annotations

from typing import Any

import pytest
from _codec_helpers import (
    DYNAMIC_HALF_GAP,
    F32_MAX,
    SOURCES,
    TABLE_HALF_GAP,
    check,
    fixed_cases,
    kernels_or_skip,
    tensors,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorcodec.codecs import (
    Blockwise8,
    Codec,
)
from tensorcodec.testing import check_codec

BLOCKWISE8_CODECS = [Blockwise8(64), Blockwise8(4096)]


@pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy
@settings(max_examples=30)
@given(codec=st.sampled_from(BLOCKWISE8_CODECS), x=tensors(cap=F32_MAX, max_size=300))
def test_blockwise8_round_trip(codec: Blockwise8, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", BLOCKWISE8_CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.usefixtures("kernel_impl")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", BLOCKWISE8_CODECS, ids=repr)
def test_check_codec(codec: Codec) -> None:
    """The shared contract checker (``tensorcodec.testing.check_codec``) passes."""
    check_codec(codec)


def test_documented_bounds_match_the_kernels() -> None:
    from tensorcodec.codecs import blockwise8, quant4

    assert blockwise8.HALF_GAP == DYNAMIC_HALF_GAP and quant4.HALF_GAPS == TABLE_HALF_GAP
    kernels = kernels_or_skip("quant4")
    if not hasattr(kernels, "error_bound"):
        pytest.skip("tensorcodec.kernels has no error_bound")
    for kind, bound in [("dynamic", DYNAMIC_HALF_GAP), *TABLE_HALF_GAP.items()]:
        assert kernels.error_bound(kind) == pytest.approx(bound, rel=1e-5), kind
