"""``tensorcodec.testing.check_codec`` catches broken codecs and passes a correct lossless one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import tensorcodec as tc
from tensorcodec.codecs import FP8, Cast, Codec, MinMax, base
from tensorcodec.dtypes import DType
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private copy of the registry for the broken codecs below, restored afterwards."""
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY))
    yield


class Exact(Codec):
    """A correct lossless codec: the values as they are, read back through ``Codec.segment``."""

    codec_id = "test.exact"
    lossless = True

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 * dtype.itemsize

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"data": ("payload", dtype.name, [count])}

    def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
        return tc.Encoded({"data": ("payload", x.copy())})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        return np.array(self.segment(segments, "data", dtype.name, count))


class OffByMore(Cast):
    """Decodes fp16 values a little too large: beyond the 2^-11 relative bound."""

    codec_id = "test.off_by_more"

    def decode(self, segments: Any, params: Any, dtype: DType, count: int) -> np.ndarray[Any, Any]:
        out = super().decode(segments, params, dtype, count)
        return (out.astype(np.float64) * (1 + 2.0**-8)).astype(dtype.numpy)


class ForgetfulConfig(MinMax):
    """Reports its bits off by one, so the codec its config rebuilds is another codec."""

    codec_id = "test.forgetful"

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bits": self.bits + 1}


class LyingLayout(FP8):
    """States one scale per element, while encode sends one per tensor."""

    codec_id = "test.lying_layout"

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", "float8_e4m3fn", [count]), "scale": ("meta", "float32", [count])}


class Unchecked(Exact):
    """Checks a segment's presence and dtype but not its length: a short one raises IndexError."""

    codec_id = "test.unchecked"

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        data = segments.get("data")
        if data is None or data.dtype != dtype.numpy:
            raise DecodeError("segment 'data' is missing or of another dtype")
        out = np.empty(count, dtype.numpy)
        for i in range(count):
            out[i] = data[i]
        return out


def test_a_correct_lossless_codec_passes() -> None:
    tc.register_codec(Exact)
    check_codec(Exact(), max_examples=10)


def test_a_lossy_codec_must_state_its_bound() -> None:
    class Silent(Cast):
        codec_id = "test.silent"
        error_bound = Codec.error_bound

    codec = Silent("float16")
    with pytest.raises(NotImplementedError, match=r"override Codec\.error_bound"):
        codec.error_bound(np.zeros(3, np.float32), codec.encode(np.zeros(3, np.float32)))
    assert Exact().error_bound(np.zeros(3, np.float32), Exact().encode(np.zeros(3, np.float32))) is None


def test_decode_beyond_its_bound_fails() -> None:
    tc.register_codec(OffByMore)
    with pytest.raises(AssertionError, match=r"test\.off_by_more|OffByMore.*element \d+.*> bound"):
        check_codec(OffByMore("float16"), max_examples=10)


def test_a_config_that_does_not_round_trip_fails() -> None:
    tc.register_codec(ForgetfulConfig)
    with pytest.raises(AssertionError, match=r"ForgetfulConfig.*from_config"):
        check_codec(ForgetfulConfig(4), max_examples=10)


def test_a_config_that_does_not_rebuild_fails() -> None:
    class Unbuildable(ForgetfulConfig):
        codec_id = "test.unbuildable"

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "levels": 15}

    tc.register_codec(Unbuildable)
    with pytest.raises(AssertionError, match=r"from_config.*raised TypeError"):
        check_codec(Unbuildable(4), max_examples=10)


def test_an_unregistered_codec_fails() -> None:
    with pytest.raises(AssertionError, match="not registered"):
        check_codec(Exact(), max_examples=10)


def test_a_lying_segment_layout_fails() -> None:
    tc.register_codec(LyingLayout)
    with pytest.raises(AssertionError, match=r"segment_layout says 'scale'"):
        check_codec(LyingLayout(), max_examples=10)


def test_index_error_on_a_short_segment_fails() -> None:
    tc.register_codec(Unchecked)
    with pytest.raises(AssertionError, match=r"'data' one element short: decode raised IndexError"):
        check_codec(Unchecked(), max_examples=10)
