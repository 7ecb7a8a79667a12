"""``hadamard``: the random-sign Walsh-Hadamard rotation stage, alone and before a quantizer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _codec_helpers import F32_MAX, check, tensors
from _helpers import join_message, split_message
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import _c
from tensorcodec.accounting import predict, report
from tensorcodec.codecs import Hadamard, Quant4, Quantized
from tensorcodec.codecs.hadamard import pieces, rotate, signs
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec
from tensorcodec.testing.codecs import assert_within_bound

CODECS = [Hadamard(), Hadamard(2, seed=5), Hadamard(1024, seed=2**64 - 1)]


def _sylvester(p: int) -> np.ndarray[Any, Any]:
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


def _reference(x: np.ndarray[Any, Any], block: int, seed: int) -> np.ndarray[Any, Any]:
    """The documented transform in float64 with dense matrices."""
    out = np.empty(x.size)
    sg = signs(block, seed).astype(np.float64)
    for start, p, count in pieces(x.size, block):
        o = start % block if p < block else 0
        seg = x[start : start + p * count].astype(np.float64).reshape(count, p) * sg[o : o + p]
        out[start : start + p * count] = (seg @ _sylvester(p) / math.sqrt(p)).reshape(-1)
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 5, 127, 128, 300, 1000, 4173])
def test_rotation_is_the_documented_transform_and_keeps_piece_norms(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = rotate(x, 128, 3)
    assert y.dtype == np.float32 and y.shape == (n,)
    np.testing.assert_allclose(y, _reference(x, 128, 3), rtol=0, atol=1e-5)
    for start, p, count in pieces(n, 128):
        xs = x[start : start + p * count].astype(np.float64).reshape(count, p)
        ys = y[start : start + p * count].astype(np.float64).reshape(count, p)
        np.testing.assert_allclose(np.linalg.norm(ys, axis=1), np.linalg.norm(xs, axis=1), rtol=1e-5)


def test_pieces_split_the_tail_by_its_binary_expansion() -> None:
    assert pieces(300, 128) == [(0, 128, 2), (256, 32, 1), (288, 8, 1), (296, 4, 1)]
    assert pieces(7, 128) == [(0, 4, 1), (4, 2, 1), (6, 1, 1)]
    assert pieces(0, 128) == [] and pieces(256, 128) == [(0, 128, 2)]


def test_inverse_within_the_documented_float32_bound() -> None:
    rng = np.random.default_rng(1)
    for block in (2, 8, 128, 4096):
        x = (rng.standard_t(3, 3 * block + 11) * 10.0).astype(np.float32)
        codec = Hadamard(block, seed=block)
        enc = codec.encode(x)
        back = codec.decode({"data": enc.segments["data"][1]}, {}, tc.dtypes.by_name("float32"), x.size)  # type: ignore[arg-type]
        bound = codec.error_bound(x, enc)
        assert_within_bound(repr(codec), x, back, bound)
        # the bound is (2 L + 4) 2^-24 ||x_piece||: tight enough to mean something
        assert float(np.max(bound[:block] / np.linalg.norm(x[:block].astype(np.float64)))) < 40 * 2.0**-24


def test_signs_are_pinned_and_seeded() -> None:
    s = signs(64, 0)
    bits = sum(1 << j for j in range(64) if s[j] < 0)
    assert bits == 0xE220A8397B1DCDAF  # splitmix64(0)'s first output: the format's sign stream
    assert np.array_equal(signs(128, 7), signs(128, 7)) and not np.array_equal(signs(128, 7), signs(128, 8))
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    a, b = Hadamard(128, 1).encode(x), Hadamard(128, 1).encode(x)
    assert a.segments["data"][1].tobytes() == b.segments["data"][1].tobytes()
    assert a.segments["data"][1].tobytes() != Hadamard(128, 2).encode(x).segments["data"][1].tobytes()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3.3e38])
def test_non_finite_and_overflowing_inputs_are_refused(value: float) -> None:
    x = np.ones(256, dtype=np.float32)
    if math.isfinite(value):  # 3.3e38 with the signs of the rotation: its first output is sqrt(128) x 3.3e38
        x = np.tile(signs(128, 0) * np.float32(value), 2)
    else:
        x[3] = value
    with pytest.raises(ValueError, match="hadamard"):
        Hadamard().encode(x)
    with pytest.raises(ValueError, match=r"'w'.*hadamard"):
        tc.encode({"w": x}, policy=tc.Policy({"*": ["hadamard128", "nf4"]}, min_elements=0))


@pytest.mark.parametrize(
    "config",
    [
        {"block": 100},
        {"block": 1},
        {"block": 0},
        {"block": 2**17},
        {"block": True},
        {"block": 128.0},
        {"seed": -1},
        {"seed": "1"},
        {"block": 128, "extra": 1},
    ],
)
def test_hostile_configs_are_decode_errors(config: dict[str, Any]) -> None:
    x = np.random.default_rng(3).standard_normal(300).astype(np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": "hnf4"}, min_elements=0))
    header, segments = split_message(message)
    assert header["tensors"][0][2][0][0] == "hadamard"
    header["tensors"][0][2][0][1] = config
    with pytest.raises(DecodeError, match="hadamard"):
        tc.decode(join_message(header, segments))


def test_bad_constructor_arguments() -> None:
    for kwargs in ({"block": 96}, {"block": 2**17}, {"seed": 2**64}, {"seed": -1}, {"block": True}):
        with pytest.raises(ValueError, match="hadamard"):
            Hadamard(**kwargs)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_check_codec(codec: Hadamard) -> None:
    check_codec(codec, max_examples=20)


@settings(max_examples=30)
@given(codec=st.sampled_from(CODECS), x=tensors(cap=F32_MAX / 1e6, max_size=300))
def test_hadamard_round_trip(codec: Hadamard, x: Any) -> None:
    check(codec, x)


# ---------------------------------------------------------------------------- the chain before a quantizer


def _chain_bound(x: np.ndarray[Any, Any], rot: Hadamard, inner: Any) -> tuple[Any, np.ndarray[Any, Any]]:
    y = rot.encode(x).segments["data"][1]
    enc = inner.encode(y)
    return enc, rot.bound_after(x, inner.error_bound(y, enc))


@settings(max_examples=25)
@given(
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    n=st.integers(0, 700),
    seed=st.integers(0, 2**32),
    scale=st.integers(-8, 8),
    inner=st.sampled_from([Quant4("nf4"), Quant4("nf4", 32, double_quant=False), tc.Blockwise8(256)]),
)
def test_chain_round_trips_within_the_composed_bound(dtype: str, n: int, seed: int, scale: int, inner: Any) -> None:
    row = tc.dtypes.by_name(dtype)
    assert row is not None
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_t(3, n) * 10.0**scale, -6e4, 6e4).astype(row.numpy)  # finite in float16 too
    rot = Hadamard(128, seed=seed)
    _, bound = _chain_bound(x, rot, inner)
    out = tc.decode(tc.encode({"w": x}, policy=tc.Policy({"*": [rot, inner]}, min_elements=0)))["w"]
    assert out.dtype == x.dtype and out.shape == x.shape
    assert_within_bound(f"{rot!r} + {inner!r}", x, out, bound)


def test_chain_names_and_prediction() -> None:
    x = np.random.default_rng(4).standard_normal((64, 100)).astype(np.float32)
    message = tc.encode({"w": x}, precision="hnf4")
    same = tc.encode({"w": x}, policy={"*": ["hadamard128", "nf4"]})
    assert message == same
    assert predict({"w": ("float32", (64, 100))}, precision="hnf4") == report({"w": x}, precision="hnf4")[1]


def test_hostile_chain_segments_are_decode_errors() -> None:
    x = np.random.default_rng(5).standard_normal(300).astype(np.float32)
    rot, inner = Hadamard(), Quant4("nf4")
    y = rot.encode(x).segments["data"][1]
    enc = inner.encode(y)
    stages = [(rot.codec_id, rot.get_config(), {}), (inner.codec_id, inner.get_config(), enc.params)]
    good = tc.decode(tc.encode({"t": Quantized("float32", (300,), stages, enc.segments)}))["t"]
    assert good.shape == (300,)
    for name, (role, arr) in enc.segments.items():
        others = {k: v for k, v in enc.segments.items() if k != name}
        for segments in (others, {**others, name: (role, arr[:-1])}, {**others, "data": ("payload", y)}):
            with pytest.raises(DecodeError):
                tc.decode(tc.encode({"t": Quantized("float32", (300,), stages, segments)}))
    backwards = [stages[1], stages[0]]  # a quantizer cannot hand on to a further stage
    with pytest.raises(DecodeError, match="cannot be followed"):
        tc.decode(tc.encode({"t": Quantized("float32", (300,), backwards, enc.segments)}))


@pytest.mark.skipif(not _c.native_available(), reason="tensorcodec's C extensions are not built")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_c_kernel_gives_the_numpy_bits(dtype: str) -> None:
    if not tc.native_enabled():
        pytest.skip("TENSORCODEC_NATIVE=0: this run tests the Python paths alone")
    row = tc.dtypes.by_name(dtype)
    assert row is not None
    rng = np.random.default_rng(9)
    try:
        for n, block in [(0, 128), (1, 128), (300, 128), (4173, 64), (3 << 18, 128), (70000, 4096)]:
            x = (rng.standard_t(3, n) * 100).astype(row.numpy)
            tc.set_native(True)
            fwd, back = rotate(x, block, n), rotate(rotate(x, block, n), block, n, inverse=True)
            tc.set_native(False)
            assert rotate(x, block, n).tobytes() == fwd.tobytes(), (n, block)
            assert rotate(fwd, block, n, inverse=True).tobytes() == back.tobytes(), (n, block)
    finally:
        tc.set_native(True)
