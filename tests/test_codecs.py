"""Precision codecs: the registry, configs, error bounds, special values, hostile entries, the worked example.

Every lossy codec is checked against the error bound its docstring documents,
written below as one function per codec and evaluated in float64. A bound
holds for the fp32 (or target-format) value a codec computes; the final cast
to a float16/bfloat16 source at most doubles it, because the source value
itself is a candidate of that round-to-nearest (|r - x| <= |r - y| + |y - x|
<= 2 |y - x|), hence ``_narrow``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
import torch
from _helpers import join_message, split_message
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import codecs, wire
from tensorcodec.codecs import (
    FP8,
    PRECISIONS,
    Blockwise8,
    Cast,
    Codec,
    MinMax,
    Quant4,
    pack_bits,
    packed_size,
    unpack_bits,
)
from tensorcodec.codecs.base import EPS32, block_absmax
from tensorcodec.dtypes import DType, by_name
from tensorcodec.errors import DecodeError, UnknownCodecError
from tensorcodec.testing import raw_bytes, wire_dtype
from tensorcodec.testing.codecs import assert_within_bound

try:  # the shared strategies, when present
    from tensorcodec.testing.strategies import shapes as _shared_shapes
except ImportError:  # pragma: no cover - written by another module's owner
    _shared_shapes = None

ROOT = Path(__file__).resolve().parent.parent
F32_MAX = float(np.finfo(np.float32).max)
SOURCES = ("float32", "float16", "bfloat16", "float64")
_KERNEL_FUNCS = {
    "blockwise8": ("quantize_blockwise8", "dequantize_blockwise8"),
    "quant4": ("quantize_4bit", "dequantize_4bit", "quantize_absmax", "dequantize_absmax"),
}


def _load_example() -> ModuleType:
    """tests/example_codec.py (the worked example of docs/codecs.md), imported once per process."""
    name = "tensorcodec_example_codec"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("example_codec.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SignScale: Any = _load_example().SignScale


def kernels_or_skip(codec_id: str) -> Any:
    """tensorcodec.kernels, or a skip while it is missing or lacks what ``codec_id`` calls."""
    kernels = pytest.importorskip("tensorcodec.kernels", reason="tensorcodec.kernels is not there yet")
    missing = [f for f in _KERNEL_FUNCS[codec_id] if not hasattr(kernels, f)]
    if missing:
        pytest.skip(f"tensorcodec.kernels lacks {missing}")
    return kernels


def needs_kernels(codec: Codec) -> bool:
    return codec.codec_id in _KERNEL_FUNCS


# ---------------------------------------------------------------------------- inputs


def _local_shapes(max_size: int) -> st.SearchStrategy[tuple[int, ...]]:
    def fit(dims: list[int]) -> tuple[int, ...]:
        out: list[int] = []
        size = 1
        for d in dims:
            if size * max(d, 1) > max_size:
                d = 1
            out.append(d)
            size *= max(d, 1)
        return tuple(out)

    return st.lists(st.integers(0, 9), max_size=5).map(fit)


def shapes(max_size: int = 40) -> st.SearchStrategy[tuple[int, ...]]:
    """0-d, empty, odd and many-dimensional shapes."""
    if _shared_shapes is not None:
        return _shared_shapes(max_dims=6, max_side=max(9, max_size // 3), max_size=max_size)
    return _local_shapes(max_size)  # pragma: no cover


KINDS = ("normal", "offset", "constant", "zeros", "huge", "tiny", "subnormal", "wide", "small_ints")


def _values(kind: str, n: int, rng: np.random.Generator, name: str, top: float) -> np.ndarray[Any, Any]:
    """``n`` float64 values of one kind, within the range of dtype ``name`` (magnitudes <= top)."""
    fi: Any = ml_dtypes.finfo(by_name(name).numpy)  # type: ignore[union-attr]
    sign = rng.choice([-1.0, 1.0], size=n)
    if kind == "normal":
        return np.clip(rng.standard_normal(n) * 10.0 ** int(rng.integers(-3, 4)), -top, top)
    if kind == "offset":  # far from zero, narrow range
        return np.clip(rng.uniform(100.0, 101.0, n), -top, top)
    if kind == "constant":
        return np.full(n, float(rng.choice([1.0, -3.5, 1e-3, 7.0, top / 2])))
    if kind == "zeros":
        return np.where(sign < 0, -0.0, 0.0)
    if kind == "huge":
        return sign * rng.uniform(0.5, 1.0, n) * top
    if kind == "tiny":
        return sign * rng.uniform(1.0, 100.0, n) * float(fi.smallest_normal)
    if kind == "subnormal":
        return sign * rng.integers(0, 1000, n) * float(fi.smallest_subnormal)
    if kind == "wide":
        lo, hi = math.log2(float(fi.smallest_subnormal)), math.log2(top) - 0.01
        return sign * np.exp2(rng.uniform(lo, hi, n))
    return rng.integers(-8, 9, n).astype(np.float64)


@st.composite
def tensors(
    draw: st.DrawFn,
    *,
    specials: bool = False,
    cap: float | None = None,
    max_size: int = 40,
    sources: tuple[str, ...] = SOURCES,
) -> Any:
    """A float tensor as numpy array, numpy scalar or torch tensor, in any memory layout.

    ``cap`` bounds the magnitudes (codecs that compute in fp32 take float64 only up to fp32's range);
    ``specials`` mixes in NaN, ±Inf and signed zeros.
    """
    name = draw(st.sampled_from(sources))
    row = by_name(name)
    assert row is not None
    fmax = float(ml_dtypes.finfo(row.numpy).max)  # type: ignore[no-untyped-call]
    top = fmax if cap is None else min(fmax, cap)
    shape = draw(shapes(max_size))
    n = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = _values(draw(st.sampled_from(KINDS)), n, rng, name, top)
    if specials and n and draw(st.booleans()):
        k = draw(st.integers(1, n))
        values[rng.choice(n, size=k, replace=False)] = rng.choice([math.nan, math.inf, -math.inf, -0.0], size=k)
    arr = values.astype(row.numpy).reshape(shape)
    frameworks = ["numpy", "torch"] + (["scalar"] if shape == () else [])
    framework = draw(st.sampled_from(frameworks))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "reversed", "broadcast"]))
    return lay_out(arr, framework, layout)


def lay_out(arr: np.ndarray[Any, Any], framework: str, layout: str) -> Any:
    """``arr``'s values as a numpy array / scalar / torch tensor with the given memory layout."""
    if framework == "scalar":
        return arr[()]
    nd = arr.ndim
    if framework == "numpy":
        if layout == "transposed" and nd >= 2:
            return np.ascontiguousarray(arr.T).T
        if layout == "strided" and nd >= 1:
            big = np.zeros((arr.shape[0] * 2, *arr.shape[1:]), dtype=arr.dtype)
            big[::2] = arr
            return big[::2]
        if layout == "reversed" and nd >= 1:
            return np.ascontiguousarray(arr[::-1])[::-1]
        if layout == "broadcast" and nd >= 1 and arr.shape[0] > 0:
            return np.broadcast_to(arr[:1], arr.shape)
        return arr
    if arr.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(np.ascontiguousarray(arr).view(np.uint16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr).copy())
    if layout == "transposed" and nd >= 2:
        perm = list(range(nd))[::-1]
        return t.permute(*perm).contiguous().permute(*perm)
    if layout == "strided" and nd >= 1:
        big = torch.zeros((t.shape[0] * 2, *t.shape[1:]), dtype=t.dtype)
        big[::2] = t
        return big[::2]
    if layout == "broadcast" and nd >= 1 and t.shape[0] > 0:
        return t[:1].expand(*t.shape)
    return t


def source_array(x: Any) -> np.ndarray[Any, Any]:
    """A flat, contiguous, writable numpy copy of a tensor's values in its own dtype."""
    return np.frombuffer(bytearray(raw_bytes(x)), dtype=wire_dtype(x).numpy).copy()


def _segments(encoded: tc.Encoded) -> dict[str, np.ndarray[Any, Any]]:
    return {name: arr for name, (_role, arr) in encoded.segments.items()}


# ---------------------------------------------------------------------------- documented error bounds


def assert_within(flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any], codec: Codec) -> None:
    """The decoded values against the bound the codec states (``Codec.error_bound``), element by element."""
    assert_within_bound(repr(codec), flat, got, codec.error_bound(flat, enc))


def cast_bound(codec: Cast, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """Cast (``Cast.error_bound``) and what it promises beyond the bound: finite values beyond the
    largest become it (never Inf); NaN and ±Inf are kept."""
    x, out = flat.astype(np.float64), got.astype(np.float64)
    target = by_name(codec.to).numpy  # type: ignore[union-attr]
    fi: Any = ml_dtypes.finfo(target)
    beyond = np.isfinite(x) & (np.abs(x) > float(fi.max))
    clamp = float(np.array(fi.max, dtype=target).astype(flat.dtype))
    assert np.array_equal(out[beyond], np.sign(x[beyond]) * clamp), "finite values beyond the range are clamped"
    assert_within(flat, enc, got, codec)
    assert np.isnan(out[np.isnan(x)]).all(), "NaN stays NaN"
    inf = np.isinf(x)
    assert np.array_equal(out[inf], x[inf]), "±Inf stays ±Inf"


def fp8_bound(codec: FP8, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """FP8 (``FP8.error_bound``), with scale = absmax / fp8_max over finite values as documented (so the
    bound is not vacuous); NaN stays NaN, ±Inf stays ±Inf (e5m2) or becomes NaN (e4m3)."""
    x, out = flat.astype(np.float64), got.astype(np.float64)
    fmax = float(ml_dtypes.finfo(codec._dtype.numpy).max)  # type: ignore[no-untyped-call]
    scale = enc.segments["scale"][1].astype(np.float64)
    absmax = block_absmax(x.astype(np.float32).astype(np.float64), codec.block)
    assert scale.shape == absmax.shape
    expected = np.where(absmax == 0, 1.0, np.maximum(absmax / fmax, 2.0**-126))
    assert np.allclose(scale, expected, rtol=4 * EPS32, atol=0), (scale, expected)
    assert_within(flat, enc, got, codec)
    assert np.isnan(out[np.isnan(x)]).all(), "NaN stays NaN"
    inf = np.isinf(x)
    if codec.format == "e5m2":
        assert np.array_equal(out[inf], x[inf]), "e5m2 keeps ±Inf"
    else:
        assert np.isnan(out[inf]).all(), "e4m3 has no Inf: ±Inf becomes NaN"


def minmax_bound(codec: MinMax, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """MinMax (``MinMax.error_bound``), with the range the exact fp32 min/max of each block and no codes
    for a constant tensor, which decodes exactly (to fp32)."""
    n = flat.size
    x32 = flat.astype(np.float32).astype(np.float64)
    ranges = enc.segments["range"][1].astype(np.float64).reshape(-1, 2)
    size = codec.block if codec.block else max(n, 1)
    for b, (lo_b, hi_b) in enumerate(ranges):
        part = x32[b * size : (b + 1) * size]
        if part.size:
            assert (lo_b, hi_b) == (part.min(), part.max()), f"block {b}: range {lo_b, hi_b}"
    constant = bool(np.all(ranges[:, 0] == ranges[:, 1]))
    assert ("codes" in enc.segments) == (n > 0 and not constant), "codes are sent iff some block is not constant"
    if constant:
        assert np.array_equal(got.astype(np.float64), x32), "a constant tensor decodes exactly (to fp32)"
    assert_within(flat, enc, got, codec)


DYNAMIC_HALF_GAP = 0.0070468
"""Blockwise8's documented bound per unit of absmax: half the largest gap of bitsandbytes' signed
dynamic map (0.0140625 / 2), plus the slack of its approximate CPU code lookup."""
TABLE_HALF_GAP = {"nf4": 0.3038072 / 2, "fp4": (1 - 0.6666667) / 2}
"""Half the largest gap of bitsandbytes' 16-entry nf4 and fp4 tables (both include -1 and 1)."""


def blockwise8_bound(codec: Blockwise8, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """Blockwise8 (``Blockwise8.error_bound``): absmax_block * (largest gap of the dynamic map) / 2."""
    assert_within(flat, enc, got, codec)


def quant4_bound(codec: Quant4, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """Quant4 (``Quant4.error_bound``): absmax_block * (largest gap of the table) / 2, plus the error of
    the quantized absmax."""
    kernels_or_skip("quant4")
    assert_within(flat, enc, got, codec)


def sign_scale_bound(codec: Any, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """The worked example (``SignScale.error_bound``): x̂ = ±scale with x's sign bit; scale = mean |x|
    (l1) or rms (l2)."""
    x, out = flat.astype(np.float64), got.astype(np.float64)
    n = x.size
    scale = enc.params["scale"]
    expected = 0.0 if n == 0 else float(np.mean(np.abs(x)) if codec.norm == "l1" else np.sqrt(np.mean(x * x)))
    assert scale == pytest.approx(expected, rel=1e-12, abs=0)
    magnitude = float(np.array(scale).astype(flat.dtype))
    assert np.array_equal(np.abs(out), np.full(n, magnitude)), "every |x̂| is the scale"
    assert np.array_equal(np.signbit(out), np.signbit(x)), "the sign bit is kept"
    assert_within(flat, enc, got, codec)


def test_documented_bounds_match_the_kernels() -> None:
    from tensorcodec.codecs import blockwise8, quant4

    assert blockwise8.HALF_GAP == DYNAMIC_HALF_GAP and quant4.HALF_GAPS == TABLE_HALF_GAP
    kernels = kernels_or_skip("quant4")
    if not hasattr(kernels, "error_bound"):
        pytest.skip("tensorcodec.kernels has no error_bound")
    for kind, bound in [("dynamic", DYNAMIC_HALF_GAP), *TABLE_HALF_GAP.items()]:
        assert kernels.error_bound(kind) == pytest.approx(bound, rel=1e-5), kind


BOUNDS: dict[str, Any] = {
    "cast": cast_bound,
    "fp8": fp8_bound,
    "minmax": minmax_bound,
    "blockwise8": blockwise8_bound,
    "quant4": quant4_bound,
    "example.sign_scale": sign_scale_bound,
}



def check(codec: Codec, x: Any) -> None:
    """Encode ``x`` directly and through a message; the bound holds and the message gives the same values."""
    if needs_kernels(codec):
        kernels_or_skip(codec.codec_id)
    before = raw_bytes(x)
    row = wire_dtype(x)
    flat = source_array(x)
    n = flat.size
    untouched = flat.copy()
    enc = codec.encode(flat)
    assert flat.tobytes() == untouched.tobytes(), "encode wrote to its input"
    for name, (role, arr) in enc.segments.items():
        assert role in ("payload", "meta") and isinstance(arr, np.ndarray), name
    packed = msgpack.packb(enc.params)
    assert msgpack.packb(msgpack.unpackb(packed, raw=False)) == packed, "params must survive msgpack"
    dec = codec.decode(_segments(enc), enc.params, row, n)
    assert isinstance(dec, np.ndarray) and dec.dtype == row.numpy and dec.shape == (n,)
    BOUNDS[codec.codec_id](codec, flat, enc, dec)

    policy = tc.Policy({"t": codec}, min_elements=0)
    message = tc.encode({"t": x}, policy=policy)
    assert raw_bytes(x) == before, "encode modified the caller's tensor"
    out = tc.decode(message)["t"]
    assert type(out) is type(x) or (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor))
    assert wire_dtype(out) is row and tuple(out.shape) == tuple(x.shape)
    chain = policy.choose("t", row, n)
    if chain is None:  # skipped: not smaller than the source
        assert raw_bytes(out) == before
        return
    (used,) = chain
    expected = dec if used == codec and not getattr(codec, "stochastic", False) else None
    if expected is None:  # stochastic rounding is keyed by the tensor's name
        e2 = used.encode(flat)
        expected = used.decode(_segments(e2), e2.params, row, n)
    assert raw_bytes(out) == expected.tobytes()


# ---------------------------------------------------------------------------- registry


class _Tmp(Codec):
    """A lossless stand-in codec for registry tests: the values as they are."""

    codec_id = "test.tmp"

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 1.0  # always "smaller", so policies use it

    def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
        return tc.Encoded({"data": ("payload", x.copy())})

    def decode(self, segments: Any, params: Any, dtype: DType, count: int) -> np.ndarray[Any, Any]:
        return np.array(self.segment(segments, "data", dtype.name, count))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Codec]]:
    """A private copy of the registry with entry points not yet loaded; restored afterwards."""
    monkeypatch.setattr(codecs.base, "REGISTRY", dict(codecs.base.REGISTRY))
    monkeypatch.setattr(codecs.base, "_INSTALL_HINTS", dict(codecs.base._INSTALL_HINTS))
    monkeypatch.setattr(codecs.base, "_entry_points_loaded", False)
    return codecs.base.REGISTRY


def test_builtin_codecs_are_registered() -> None:
    found = tc.registered_codecs()
    for cls in (Cast, FP8, MinMax, Blockwise8, Quant4):
        assert found[cls.codec_id] is cls
        assert tc.get_codec(cls.codec_id) is cls


def test_register_duplicate_id_needs_replace(registry: dict[str, type[Codec]]) -> None:
    class Other(_Tmp):
        codec_id = "cast"

    with pytest.raises(ValueError, match=r"'cast' is already registered.*replace=True"):
        tc.register_codec(Other)
    assert tc.get_codec("cast") is Cast
    assert tc.register_codec(Cast) is Cast  # the same class again is fine
    assert tc.register_codec(Other, replace=True) is Other
    assert tc.get_codec("cast") is Other


def test_register_rejects_non_codecs(registry: dict[str, type[Codec]]) -> None:
    class NoId(_Tmp):
        codec_id = ""

    for bad in (NoId, object, "cast", Cast("float16")):
        with pytest.raises(TypeError):
            tc.register_codec(bad)  # type: ignore[arg-type]


def test_get_codec_unknown_names_the_id(registry: dict[str, type[Codec]]) -> None:
    with pytest.raises(UnknownCodecError, match=r"no\.such\.codec") as info:
        tc.get_codec("no.such.codec")
    assert isinstance(info.value, DecodeError)
    assert info.value.codec_id == "no.such.codec"


def test_unregistered_codec_fails_at_decode(registry: dict[str, type[Codec]]) -> None:
    tc.register_codec(_Tmp)
    x = np.arange(10, dtype=np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": _Tmp()}, min_elements=0))
    assert np.array_equal(tc.decode(message)["w"], x)
    del registry["test.tmp"]
    with pytest.raises(UnknownCodecError, match=r"'test\.tmp'"):
        tc.decode(message)


class _EntryPoint:
    """What importlib.metadata.entry_points yields: a name and a load()."""

    def __init__(self, name: str, target: Any, loads: list[str]) -> None:
        self.name, self.target, self.loads = name, target, loads

    def load(self) -> Any:
        self.loads.append(self.name)
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_entry_point_plugins(registry: dict[str, type[Codec]], monkeypatch: pytest.MonkeyPatch) -> None:
    class Plugin(_Tmp):
        codec_id = "plugin.good"

    class Mislabelled(_Tmp):
        codec_id = "plugin.other"

    loads: list[str] = []
    groups: list[str] = []
    points = [
        _EntryPoint("plugin.good", Plugin, loads),
        _EntryPoint("plugin.broken", ImportError("no module named plugin_dep"), loads),
        _EntryPoint("plugin.mislabelled", Mislabelled, loads),
        _EntryPoint("plugin.notacodec", dict, loads),
        _EntryPoint("cast", Plugin, loads),  # a built-in id is never replaced by a plugin
    ]

    def entry_points(*, group: str) -> list[_EntryPoint]:
        groups.append(group)
        return points

    monkeypatch.setattr(codecs.base.metadata, "entry_points", entry_points)
    assert tc.get_codec("plugin.good") is Plugin
    assert groups == ["tensorcodec.codecs"]
    assert "cast" not in loads and tc.get_codec("cast") is Cast
    with pytest.raises(UnknownCodecError, match=r"plugin\.broken.*failed to load.*plugin_dep"):
        tc.get_codec("plugin.broken")
    for name in ("plugin.mislabelled", "plugin.other", "plugin.notacodec"):
        with pytest.raises(UnknownCodecError):
            tc.get_codec(name)
    assert groups == ["tensorcodec.codecs"], "entry points are read once"
    assert "plugin.good" in tc.registered_codecs()

    # A message naming the plugin decodes through it.
    x = np.arange(6, dtype=np.float32)
    message = tc.encode([x], policy=tc.Policy({"*": Plugin()}, min_elements=0))
    assert np.array_equal(tc.decode(message)[0], x)


def test_decode_never_imports_what_a_message_names(
    registry: dict[str, type[Codec]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "imported"
    module = "tc_test_evil_plugin"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(codecs.base.metadata, "entry_points", lambda *, group: [])
    message = tc.encode({"w": np.ones(8, np.float32)}, policy=tc.Policy({"*": "fp16"}, min_elements=0))
    header, segments = split_message(message)
    for codec_id in (module, f"{module}:Codec", f"{module}.Codec", "os.system"):
        header["tensors"][0][2][0][0] = codec_id
        with pytest.raises(UnknownCodecError, match=re.escape(repr(codec_id))):
            tc.decode(join_message(header, segments))
    assert module not in sys.modules and not marker.exists()


# ---------------------------------------------------------------------------- configs


BUILTIN_CODECS: list[Codec] = [
    Cast("float16"),
    Cast("bfloat16"),
    FP8(),
    FP8("e5m2", block=128),
    MinMax(),
    MinMax(3, block=17, stochastic=True, seed=2**64 - 1),
    Blockwise8(),
    Blockwise8(64),
    Quant4(),
    Quant4("fp4", 128, double_quant=False),
    SignScale(),
    SignScale("l2"),
]


@pytest.mark.parametrize("codec", BUILTIN_CODECS + [make() for make in PRECISIONS.values()], ids=repr)
def test_config_round_trips_through_json(codec: Codec) -> None:
    config = codec.get_config()
    text = json.dumps(config)
    twin = type(codec).from_config(json.loads(text))
    assert twin == codec and hash(twin) == hash(codec)
    assert twin.get_config() == config and json.dumps(twin.get_config()) == text
    assert tc.get_codec(codec.codec_id) is type(codec)
    assert repr(twin) == repr(codec)


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (Cast, {"to": "float32"}),
        (Cast, {}),
        (FP8, {"format": "e3m4"}),
        (FP8, {"block": -1}),
        (FP8, {"block": True}),
        (FP8, {"block": 1.5}),
        (MinMax, {"bits": 0}),
        (MinMax, {"bits": 17}),
        (MinMax, {"seed": -1}),
        (MinMax, {"seed": 2**64}),
        (MinMax, {"block": 2**25}),
        (Blockwise8, {"blocksize": 100}),
        (Quant4, {"quant_type": "int4"}),
        (Quant4, {"blocksize": 16}),
        (Cast, {"to": "float16", "extra": 1}),
        (SignScale, {"norm": "l3"}),
    ],
)
def test_bad_configs_are_refused(cls: type[Codec], config: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        cls.from_config(config)


def test_precision_names() -> None:
    assert set(PRECISIONS) >= {"fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "blockwise8", "nf4", "fp4", "minmax8"}
    for name, make in PRECISIONS.items():
        assert codecs.precision_codec(name) == make()
    codec = MinMax(5)
    assert codecs.precision_codec(codec) is codec
    with pytest.raises(ValueError, match="unknown precision 'fp5'"):
        codecs.precision_codec("fp5")


# ---------------------------------------------------------------------------- property round trips

CAST_CODECS = [Cast("float16"), Cast("bfloat16")]
FP8_CODECS = [FP8("e4m3"), FP8("e5m2"), FP8("e4m3", block=16), FP8("e5m2", block=7)]
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
BLOCKWISE8_CODECS = [Blockwise8(64), Blockwise8(4096)]
QUANT4_CODECS = [Quant4("nf4", 64), Quant4("fp4", 32, double_quant=False), Quant4("nf4", 32, False), Quant4("fp4")]


@given(codec=st.sampled_from(CAST_CODECS), x=tensors(specials=True))
def test_cast_round_trip(codec: Cast, x: Any) -> None:
    check(codec, x)


@given(codec=st.sampled_from(FP8_CODECS), x=tensors(specials=True, cap=F32_MAX))
def test_fp8_round_trip(codec: FP8, x: Any) -> None:
    check(codec, x)


@given(codec=st.sampled_from(MINMAX_CODECS), x=tensors(cap=F32_MAX / 2))
def test_minmax_round_trip(codec: MinMax, x: Any) -> None:
    check(codec, x)


@pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy
@settings(max_examples=30)
@given(codec=st.sampled_from(BLOCKWISE8_CODECS), x=tensors(cap=F32_MAX, max_size=300))
def test_blockwise8_round_trip(codec: Blockwise8, x: Any) -> None:
    check(codec, x)


@pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy
@settings(max_examples=30)
@given(codec=st.sampled_from(QUANT4_CODECS), x=tensors(cap=F32_MAX / 1e6, max_size=300))
def test_quant4_round_trip(codec: Quant4, x: Any) -> None:
    check(codec, x)


@given(norm=st.sampled_from(["l1", "l2"]), x=tensors(cap=1e100))
def test_example_codec_round_trip(norm: str, x: Any) -> None:
    check(SignScale(norm), x)


ALL_LOSSY = CAST_CODECS + FP8_CODECS + MINMAX_CODECS + BLOCKWISE8_CODECS + QUANT4_CODECS + [SignScale()]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", ALL_LOSSY, ids=repr)
@pytest.mark.parametrize("dtype", SOURCES)
def test_fixed_cases(codec: Codec, dtype: str) -> None:
    """The cases a property run might miss: every source with empty, 0-d, partial blocks, many dims."""
    rng = np.random.default_rng(7)
    np_type = by_name(dtype).numpy  # type: ignore[union-attr]
    for shape in [(0,), (), (1,), (3, 0, 2), (37,), (2, 3, 1, 5, 1, 2), (5, 9)]:
        values = np.asarray(rng.standard_normal(shape)).astype(np_type)
        for framework in ("numpy", "torch"):
            check(codec, lay_out(values, framework, "transposed"))
    check(codec, np.zeros(12, np_type))
    check(codec, np.full(12, -2.5, np_type))


# ---------------------------------------------------------------------------- special values


def _cast(codec: Codec, values: list[float], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    x = np.array(values, dtype=dtype)
    out = tc.decode(tc.encode(x, policy=tc.Policy({"*": codec}, min_elements=0)))
    assert out.dtype == x.dtype
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_clamps_finite_keeps_inf_and_nan(dtype: Any) -> None:
    got = _cast(Cast("float16"), [1e5, -1e5, math.inf, -math.inf, math.nan, 65504, 65519, 1.0, 3e38, -0.0], dtype)
    expected = [65504, -65504, math.inf, -math.inf, math.nan, 65504, 65504, 1.0, 65504, -0.0]
    np.testing.assert_array_equal(got, expected)
    assert np.signbit(got[-1])
    t = torch.tensor([1e6, float("inf"), float("nan")])
    out = tc.decode(tc.encode(t, policy=tc.Policy({"*": "fp16"}, min_elements=0)))
    assert out.dtype == torch.float32 and out[0] == 65504 and out[1] == math.inf and out[2].isnan()


def test_bf16_clamps_finite_keeps_inf_and_nan() -> None:
    top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    got = _cast(Cast("bfloat16"), [F32_MAX, -F32_MAX, math.inf, -math.inf, math.nan, 1.0])
    np.testing.assert_array_equal(got, [top, -top, math.inf, -math.inf, math.nan, 1.0])
    assert np.array_equal(_cast(Cast("bfloat16"), [1e300, -1e300], np.float64), [top, -top])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # float64 beyond fp32, on purpose
def test_fp8_nan_inf() -> None:
    e4m3 = _cast(FP8("e4m3"), [math.nan, math.inf, -math.inf, 1.0, -2.0, 0.0])
    assert np.isnan(e4m3[:3]).all()
    np.testing.assert_allclose(e4m3[3:], [1.0, -2.0, 0.0], rtol=1e-6)  # absmax over finite values
    e5m2 = _cast(FP8("e5m2"), [math.nan, math.inf, -math.inf, 1.0, -2.0, 0.0])
    assert np.isnan(e5m2[0]) and np.array_equal(e5m2[1:3], [math.inf, -math.inf])
    np.testing.assert_allclose(e5m2[3:], [1.0, -2.0, 0.0], rtol=1e-6)
    only = _cast(FP8("e5m2"), [math.inf, math.nan, -math.inf])
    assert np.isnan(only[1]) and np.array_equal(only[[0, 2]], [math.inf, -math.inf])
    # float64 beyond fp32's range counts as Inf (documented); tiny ones never overflow the fp8 range.
    huge = _cast(FP8("e5m2"), [1e300, -1e300, 1.0], np.float64)
    assert np.array_equal(huge[:2], [math.inf, -math.inf]) and huge[2] == pytest.approx(1.0, rel=1e-6)
    tiny = _cast(FP8("e5m2"), [1e-40, -3e-41, 5e-42, 1e-45])
    assert np.isfinite(tiny).all() and np.abs(tiny - [1e-40, -3e-41, 5e-42, 1e-45]).max() < 1e-40


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


# ---------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    for count in (0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001):
        codes = rng.integers(0, top + 1, count).astype(np.uint32)
        if count:
            codes[0], codes[-1] = top, 0
        packed = pack_bits(codes, bits)
        assert packed.dtype == np.uint8 and packed.ndim == 1
        assert packed.size == packed_size(count, bits) == math.ceil(count * bits / 8)
        back = unpack_bits(packed, bits, count)
        assert back.size == count and np.array_equal(back.astype(np.uint32), codes), (bits, count)
    # little-endian: code 0 sits in the lowest bits of byte 0
    first = pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=np.uint32), bits)
    assert first[0] == 1 and not first[1:].any()


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


# ---------------------------------------------------------------------------- caller data, 1 -> N


def _precisions() -> list[Any]:
    return [pytest.param(name, id=name) for name in PRECISIONS]


def _skip_unless_usable(precision: str) -> None:
    codec = codecs.precision_codec(precision)
    if needs_kernels(codec):
        kernels_or_skip(codec.codec_id)


def _model() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 70)).astype(np.float32)
    return {
        "numpy": {"w": w, "b": rng.standard_normal(70).astype(np.float16), "steps": np.arange(5)},
        "torch": {"w": torch.from_numpy(w.copy()).T, "h": torch.randn(33, 65, dtype=torch.bfloat16)},
        "tied": [w, w],
        "meta": {"round": 3, "name": "client-1"},
    }


def _all_bytes(tree: Any) -> list[bytes]:
    out: list[bytes] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, (np.ndarray, torch.Tensor)):
            out.append(raw_bytes(node))
    return out


@pytest.mark.parametrize("precision", _precisions())
def test_caller_data_is_never_mutated(precision: str) -> None:
    _skip_unless_usable(precision)
    model = _model()
    model["numpy"]["w"].flags.writeable = False  # a read-only input must not need a copy to be written to
    before = _all_bytes(model)
    tc.encode(model, precision=precision)
    tc.encode_frames(model, policy=tc.Policy({"*": precision}, min_elements=0))
    assert _all_bytes(model) == before


@pytest.mark.parametrize("precision", _precisions())
def test_broadcast_one_to_n(precision: str) -> None:
    """A server encodes one dict for N clients: every encoding and every decoding is the same."""
    _skip_unless_usable(precision)
    model = _model()
    policy = tc.Policy({"*": precision}, min_elements=0)
    messages = [tc.encode(model, policy=policy) for _ in range(4)]
    assert all(m == messages[0] for m in messages)
    message = messages[0]
    snapshot = bytes(message)
    first = tc.decode(message)
    for copy in (True, False, True):
        again = tc.decode(message, copy=copy)
        assert _all_bytes(again) == _all_bytes(first)
        assert type(again["torch"]["h"]) is torch.Tensor and again["torch"]["h"].dtype == torch.bfloat16
    assert message == snapshot
    reference = _all_bytes(first)
    first["numpy"]["w"][...] = 7  # a client writing to its copy affects no other client
    first["torch"]["h"].zero_()
    assert _all_bytes(tc.decode(message)) == reference


# ---------------------------------------------------------------------------- hostile entries


def _encoded(codec: Codec, n: int = 300) -> tuple[dict[str, Any], list[bytes]]:
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": codec}, min_elements=0))
    header, segments = split_message(message)
    assert join_message(header, segments) == message
    return header, segments


def test_split_join_round_trip() -> None:
    message = tc.encode({"a": np.ones(3), "b": [np.zeros((2, 5), np.float16)]}, checksum="xxh3_64")
    assert join_message(*split_message(message)) == message


def _mutations() -> list[Any]:
    """(codec, mutate(entry, segments) -> segments, message pattern): hostile entries built from real ones."""
    fp8, mm, sign = FP8("e4m3"), MinMax(8), SignScale()
    cast = ["cast", {"to": "bfloat16"}, {}]
    fp8_stage = ["fp8", {"format": "e4m3", "block": 0}, {}]

    def seg(i: int, field: int, value: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[3][i][field] = value
            return segs

        return go

    def resize(i: int, count: int) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            itemsize = len(segs[i]) // math.prod(entry[3][i][3])
            entry[3][i][3] = [count]
            segs = list(segs)
            segs[i] = (segs[i] + bytes(count * itemsize))[: count * itemsize]
            return segs

        return go

    def stage(field: int, value: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[2][0][field] = value
            return segs

        return go

    def drop(name: str) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            i = [s[0] for s in entry[3]].index(name)
            del entry[3][i]
            return segs[:i] + segs[i + 1 :]

        return go

    def stages(extra: list[list[Any]]) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[2] = extra + entry[2]
            return segs

        return go

    def dtype(name: str) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[0] = name
            return segs

        return go

    def both(*steps: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            for step in steps:
                segs = step(entry, segs)
            return segs

        return go

    return [
        pytest.param(fp8, seg(1, 2, "int32"), "segment 'scale' has dtype int32", id="segment-dtype"),
        pytest.param(fp8, seg(0, 2, "int8"), "segment 'codes' has dtype int8", id="codes-dtype"),
        pytest.param(fp8, resize(0, 299), "segment 'codes' has 299 elements", id="segment-short"),
        pytest.param(fp8, resize(1, 2), "segment 'scale' has 2 elements", id="segment-long"),
        pytest.param(fp8, drop("scale"), "segment 'scale' is missing", id="missing-segment"),
        pytest.param(fp8, stage(1, {"format": "e9m9", "block": 0}), "bad config", id="config-value"),
        pytest.param(fp8, stage(1, {"format": "e4m3", "bogus": 1}), "bad config", id="config-key"),
        pytest.param(fp8, stage(1, {"format": "e4m3", "block": "7"}), "bad config", id="config-type"),
        pytest.param(mm, stage(1, {"bits": 99}), "bad config", id="minmax-bits"),
        pytest.param(mm, drop("codes"), "'codes' is missing", id="minmax-no-codes"),
        pytest.param(mm, resize(0, 7), "segment 'range' has 7 elements", id="minmax-range-size"),
        pytest.param(mm, resize(1, 10), "segment 'codes' has 10 elements", id="minmax-codes-size"),
        pytest.param(
            fp8, both(stage(0, "blockwise8"), stage(1, {"blocksize": 3})), "bad config", id="blockwise8-config"
        ),
        pytest.param(fp8, stage(0, "no.such.codec"), "unknown codec 'no.such.codec'", id="unknown-codec"),
        pytest.param(fp8, dtype("int32"), "cannot produce dtype int32", id="target-dtype"),
        pytest.param(sign, stage(2, {"scale": "1.0"}), "parameter 'scale'", id="param-type"),
        pytest.param(sign, stage(2, {}), "parameter 'scale'", id="param-missing"),
        pytest.param(sign, stage(2, {"scale": math.nan}), "parameter 'scale'", id="param-nan"),
        pytest.param(sign, stage(2, {"scale": -1.0}), "parameter 'scale'", id="param-negative"),
        pytest.param(sign, stage(2, {"scale": True}), "parameter 'scale'", id="param-bool"),
        pytest.param(sign, resize(0, 37), "segment 'signs' has 37 elements", id="example-segment-size"),
        pytest.param(fp8, stages([fp8_stage]), "cannot be followed", id="chain-not-array-to-array"),
        pytest.param(fp8, stages([cast] * 4), "stages exceed", id="chain-too-long"),
        pytest.param(fp8, both(stages([cast]), seg(0, 0, "data")), "'data' is reserved", id="chain-data-reserved"),
        pytest.param(fp8, both(stages([cast]), dtype("int32")), "cannot take dtype int32", id="chain-dtype"),
    ]


@pytest.mark.parametrize(("codec", "mutate", "pattern"), _mutations())
def test_hostile_entries_raise_decode_error(codec: Codec, mutate: Any, pattern: str) -> None:
    header, segments = _encoded(codec)
    entry = header["tensors"][0]
    segments = mutate(entry, segments)
    with pytest.raises(DecodeError, match=pattern):
        tc.decode(join_message(header, segments))


def test_hostile_quant4_params() -> None:
    kernels_or_skip("quant4")
    header, segments = _encoded(Quant4("nf4", 64), 640)
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


def test_a_valid_chain_decodes() -> None:
    """The counterpart of the chain cases above: bf16 then fp8, as a policy writes it."""
    x = np.random.default_rng(4).standard_normal(300).astype(np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": ["bf16", "fp8_e4m3"]}, min_elements=0))
    (entry,) = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=True).entries
    assert [s[0] for s in entry.stages] == ["cast", "fp8"]
    got = tc.decode(message)["w"]
    assert got.dtype == np.float32 and np.abs(got - x).max() <= 2**-4 * np.abs(x).max() * 1.1


# ---------------------------------------------------------------------------- the worked example


def _doc_example() -> str:
    text = (ROOT / "docs" / "codecs.md").read_text()
    start = text.index("<!-- example: tests/example_codec.py -->")
    block = text[start:].split("```python\n", 1)[1].split("\n```", 1)[0]
    return block + "\n"


def test_docs_example_is_the_tested_code() -> None:
    assert _doc_example() == Path(__file__).with_name("example_codec.py").read_text()


def test_example_codec_behaviour() -> None:
    x = np.array([0.5, -1.5, -0.0, 0.0, 3.0], dtype=np.float32)
    got = tc.decode(tc.encode({"g": x}, policy=tc.Policy({"*": SignScale()}, min_elements=0)))["g"]
    np.testing.assert_array_equal(got, [1.0, -1.0, -1.0, 1.0, 1.0])
    got = tc.decode(tc.encode({"g": x}, policy=tc.Policy({"*": SignScale("l2")}, min_elements=0)))["g"]
    assert np.sum(got.astype(np.float64) ** 2) == pytest.approx(np.sum(x.astype(np.float64) ** 2))
    with pytest.raises(ValueError, match=r"'g'.*NaN or Inf"):
        tc.encode({"g": np.array([1.0, np.nan])}, policy=tc.Policy({"*": SignScale()}, min_elements=0))
    # 1 bit per element plus a header float: a single element is not worth it and stays lossless.
    one = tc.encode({"g": np.array([2.0], np.float32)}, policy=tc.Policy({"*": SignScale()}, min_elements=0))
    assert not wire.parse_message(wire.Rope(one), wire.DEFAULT_LIMITS, verify=True).entries[0].stages


def test_example_codec_predict_matches_report() -> None:
    from tensorcodec.accounting import predict, report

    rng = np.random.default_rng(9)
    model = {"a": rng.standard_normal((40, 41)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16)}
    policy = tc.Policy({"*": SignScale()}, min_elements=0)
    _, rep = report(model, policy=policy)
    assert predict(model, policy=policy) == rep
