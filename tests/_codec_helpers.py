"""Shared by the codec test modules: input strategies, the per-codec checks beyond the bound, ``check``.

Every lossy codec is checked against the error bound its docstring documents, which the codec states
itself as ``Codec.error_bound`` (evaluated in float64). A bound holds for the fp32 (or target-format)
value a codec computes; the final cast to a float16/bfloat16 source at most doubles it, because the
source value itself is a candidate of that round-to-nearest (|r - x| <= |r - y| + |y - x| <= 2 |y - x|),
hence ``tensorcodec.codecs.base.rounding_factor``. The functions below add what each codec promises
beyond the bound (clamps, NaN/Inf, the statistics it sends).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pytest
import torch
from _helpers import join_message, split_message
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.codecs import (
    FP8,
    Blockwise8,
    Cast,
    Codec,
    MinMax,
    Quant4,
)
from tensorcodec.codecs.base import EPS32, block_absmax
from tensorcodec.dtypes import by_name
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


def load_example() -> ModuleType:
    """tests/example_codec.py (the worked example of docs/codecs.md), imported once per process."""
    name = "tensorcodec_example_codec"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("example_codec.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SignScale: Any = load_example().SignScale


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


def stated_bound(codec: Codec, flat: np.ndarray[Any, Any], enc: tc.Encoded, got: np.ndarray[Any, Any]) -> None:
    """A codec whose promise is its ``Codec.error_bound`` alone (hadamard, nf-k)."""
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


def sparse_bound(codec: Any, flat: np.ndarray[Any, Any], enc: Any, dec: np.ndarray[Any, Any]) -> None:
    """Every element keeps its value or decodes as 0, at most k = ceil(fraction n) nonzero; topk drops the smallest."""
    n = flat.size
    if n == 0:
        return
    k = min(n, max(1, math.ceil(codec.fraction * n)))
    x, got = flat.astype(np.float64), dec.astype(np.float64)
    zero = got == 0
    assert bool(np.all(zero | (got == x) | (np.isinf(x) & (got == x)))), "an element is neither kept nor 0"
    assert int((~zero).sum()) <= k
    if codec.codec_id == "topk" and k < n and zero.any():
        assert np.abs(x[zero]).max() <= np.sort(np.abs(x))[::-1][k - 1]


def sign_bound(codec: Any, flat: np.ndarray[Any, Any], enc: Any, dec: np.ndarray[Any, Any]) -> None:
    """Each element decodes as +s or -s with its own sign, s the block's mean |x| (to fp32)."""
    n = flat.size
    x = flat.astype(np.float64)
    size = codec.block if 0 < codec.block < n else max(n, 1)
    for start in range(0, n, size):
        block = x[start : start + size]
        s = np.float32(np.abs(block.astype(np.float32).astype(np.float64)).mean())
        want = np.where(np.signbit(block), -s, s).astype(np.float32).astype(flat.dtype)
        assert raw_bytes(want) == raw_bytes(dec[start : start + size]), (block, dec[start : start + size])


BOUNDS: dict[str, Any] = {
    "topk": sparse_bound,
    "randk": sparse_bound,
    "sign": sign_bound,
    "cast": cast_bound,
    "fp8": fp8_bound,
    "minmax": minmax_bound,
    "blockwise8": blockwise8_bound,
    "quant4": quant4_bound,
    "hadamard": stated_bound,
    "nfk": stated_bound,
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
    expected = dec if used == codec and not hasattr(codec, "with_stream") else None
    if expected is None:  # stochastic rounding is keyed by the tensor's name
        e2 = used.encode(flat)
        expected = used.decode(_segments(e2), e2.params, row, n)
    assert raw_bytes(out) == expected.tobytes()


def fixed_cases(codec: Codec, dtype: str) -> None:
    """The cases a property run might miss: every source with empty, 0-d, partial blocks, many dims."""
    rng = np.random.default_rng(7)
    np_type = by_name(dtype).numpy  # type: ignore[union-attr]
    for shape in [(0,), (), (1,), (3, 0, 2), (37,), (2, 3, 1, 5, 1, 2), (5, 9)]:
        values = np.asarray(rng.standard_normal(shape)).astype(np_type)
        for framework in ("numpy", "torch"):
            check(codec, lay_out(values, framework, "transposed"))
    check(codec, np.zeros(12, np_type))
    check(codec, np.full(12, -2.5, np_type))


def through_message(codec: Codec, values: list[float], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    """``values`` through a message encoded with ``codec``, as float64."""
    x = np.array(values, dtype=dtype)
    out = tc.decode(tc.encode(x, policy=tc.Policy({"*": codec}, min_elements=0)))
    assert out.dtype == x.dtype
    return np.asarray(out, dtype=np.float64)


def encoded_message(codec: Codec, n: int = 300) -> tuple[dict[str, Any], list[bytes]]:
    """A message of one 300-element tensor encoded with ``codec``, split into its header and segments."""
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": codec}, min_elements=0))
    header, segments = split_message(message)
    assert join_message(header, segments) == message
    return header, segments
