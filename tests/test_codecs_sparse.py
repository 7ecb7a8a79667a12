"""``topk``, ``randk`` and ``sign``: round trips, bounds, index codings and hostile index segments."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _codec_helpers import SOURCES, check, fixed_cases, tensors
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.codecs import Codec, Encoded, RandK, ScaledSign, TopK
from tensorcodec.codecs.sparse import kept_count
from tensorcodec.dtypes import by_name
from tensorcodec.testing import check_codec, raw_bytes

SPARSE_CODECS: list[Codec] = [TopK(0.01), TopK(0.3), TopK(1.0), RandK(0.05, seed=3), RandK(0.5)]
SIGN_CODECS: list[Codec] = [ScaledSign(), ScaledSign(7)]
CODECS = SPARSE_CODECS + SIGN_CODECS


@settings(max_examples=60)
@given(codec=st.sampled_from(CODECS), x=tensors(cap=1e30))
def test_round_trip(codec: Codec, x: Any) -> None:
    check(codec, x)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    fixed_cases(codec, dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_check_codec(codec: Codec) -> None:
    check_codec(codec, max_examples=20)


def _encode(codec: Codec, x: np.ndarray[Any, Any]) -> tuple[Encoded, dict[str, np.ndarray[Any, Any]]]:
    enc = codec.encode(x)
    return enc, {k: a for k, (_, a) in enc.segments.items()}


def test_topk_keeps_the_largest_magnitudes_exactly() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    enc, segs = _encode(TopK(0.01), x)
    out = TopK(0.01).decode(segs, enc.params, by_name("float32"), x.size)
    kept = np.flatnonzero(out)
    assert kept.size == 50
    assert raw_bytes(out[kept]) == raw_bytes(x[kept])
    assert np.abs(x[kept]).min() >= np.abs(np.delete(x, kept)).max()


def test_index_coding_is_the_smaller_one() -> None:
    x = np.random.default_rng(1).standard_normal(8000)
    for fraction, how in [(0.01, "varint"), (0.5, "bitmap")]:
        enc = TopK(fraction).encode(x)
        assert enc.params["index"] == how
        k = kept_count(fraction, x.size)
        assert enc.segments["indices"][1].size <= min(-(-x.size // 8), 5 * k)


def test_randk_is_seeded_and_keyed_by_name() -> None:
    x = np.arange(1000, dtype=np.float32) + 1
    policy = tc.Policy({"*": "randk1%"}, min_elements=0)
    a = tc.decode(tc.encode({"a": x, "b": x.copy()}, policy=policy))
    b = tc.decode(tc.encode({"a": x, "b": x.copy()}, policy=policy))
    assert raw_bytes(a["a"]) == raw_bytes(b["a"])
    assert not np.array_equal(np.flatnonzero(a["a"]), np.flatnonzero(a["b"]))
    assert RandK(0.01, seed=5).encode(x).params["seed"] == 5


def test_sign_is_mean_abs_times_sign() -> None:
    x = np.array([1.0, -3.0, 0.5, -0.5, 2.0, 0.0], dtype=np.float32)
    enc, segs = _encode(ScaledSign(), x)
    out = ScaledSign().decode(segs, enc.params, by_name("float32"), x.size)
    s = np.float32(7.0 / 6.0)
    assert raw_bytes(out) == raw_bytes(np.array([s, -s, s, -s, s, s], dtype=np.float32))


def test_contractive() -> None:
    x = np.random.default_rng(2).standard_normal(4096)
    for codec in [TopK(0.01), ScaledSign(), ScaledSign(64)]:
        enc, segs = _encode(codec, x)
        out = codec.decode(segs, enc.params, by_name("float64"), x.size)
        assert np.sum((x - out) ** 2) < np.sum(x**2)


def test_nan_refused_naming_the_tensor() -> None:
    x = np.array([1.0, np.nan, 2.0] * 10)
    for p in ["topk10%", "sign"]:
        with pytest.raises(ValueError, match=r"'w'.*NaN"):
            tc.encode({"w": x}, policy=tc.Policy({"*": p}, min_elements=0))


def _decode_error(codec: Codec, segs: dict[str, Any], params: dict[str, Any], n: int) -> None:
    with pytest.raises(tc.DecodeError):
        codec.decode(segs, params, by_name("float32"), n)


def test_hostile_varint_indices() -> None:
    codec = TopK(0.01)
    n = 1000
    values = np.ones(10, dtype=np.float32)
    params = {"index": "varint"}
    good = np.full(10, 5, dtype=np.uint8)  # indices 4, 9, ..., 49
    out = codec.decode({"values": values, "indices": good}, params, by_name("float32"), n)
    assert np.array_equal(np.flatnonzero(out), np.arange(4, 50, 5))
    cases = {
        "duplicate": np.array([5, 0] + [5] * 8, dtype=np.uint8),
        "too few": good[:9],
        "too many": np.full(11, 5, dtype=np.uint8),
        "out of range": np.array([5] * 9 + [0xE7, 0x07], dtype=np.uint8),
        "unterminated": np.array([5] * 9 + [0x85], dtype=np.uint8),
        "overlong": np.array([5] * 9 + [0x85, 0x00], dtype=np.uint8),
        "six bytes": np.array([5] * 9 + [0x81] * 5 + [1], dtype=np.uint8),
        "huge": np.full(10**6, 0x80, dtype=np.uint8),
    }
    for segment in cases.values():
        _decode_error(codec, {"values": values, "indices": segment}, params, n)
    _decode_error(codec, {"values": values[:9], "indices": good}, params, n)
    _decode_error(codec, {"values": values, "indices": good}, {"index": "zigzag"}, n)
    _decode_error(codec, {"values": values, "indices": good}, {}, n)
    _decode_error(codec, {"values": values.astype(np.float64), "indices": good}, params, n)


def test_hostile_bitmap_indices() -> None:
    codec = TopK(0.5)
    n = 20
    values = np.ones(10, dtype=np.float32)
    params = {"index": "bitmap"}
    good = np.array([0xFF, 0x03, 0x00], dtype=np.uint8)
    assert np.count_nonzero(codec.decode({"values": values, "indices": good}, params, by_name("float32"), n)) == 10
    for segment in [
        np.array([0xFF, 0x07, 0x00], dtype=np.uint8),  # 11 marked
        np.array([0xFF, 0x01, 0x00], dtype=np.uint8),  # 9 marked
        np.array([0xFF, 0x01, 0x10], dtype=np.uint8),  # a stray bit past element 19
        good[:2],
    ]:
        _decode_error(codec, {"values": values, "indices": segment}, params, n)


def test_hostile_sign_scale() -> None:
    signs = np.zeros(2, dtype=np.uint8)
    for scale in [-1.0, np.inf, np.nan]:
        _decode_error(ScaledSign(), {"signs": signs, "scale": np.array([scale], dtype=np.float32)}, {}, 10)


def test_config_refusals() -> None:
    for bad in [0.0, 1.5, 1, "0.1"]:
        with pytest.raises(ValueError):
            TopK(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RandK(0.1, seed=-1)
    with pytest.raises(ValueError):
        ScaledSign(-1)
