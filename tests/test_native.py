"""The C accelerator (tensorcodec._native) against the numpy kernels, bit for bit, and its argument checks.

tests/test_kernels.py runs every kernel test (bitsandbytes comparisons included) with both
implementations; here they are compared with each other directly, on inputs built to reach every
branch: partial blocks, odd counts, NaN/inf/-0.0, subnormals, all-zero and constant blocks, and
block absmax values below 2**-126 or near the float32 limit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from _helpers import native
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import _c
from tensorcodec import kernels as K
from tensorcodec.codecs.blockwise8 import lut8
from tensorcodec.codecs.quant4 import table4

if _c.kernels() is None:
    pytest.skip("tensorcodec._native is not built or switched off", allow_module_level=True)

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]


def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` with the accelerator, then with numpy."""
    with native(True):
        a = fn()
    with native(False):
        b = fn()
    return a, b


def bits(a: Any) -> bytes:
    a = np.ascontiguousarray(a)
    return a.dtype.str.encode() + b":" + a.tobytes()


def assert_identical(ours: Any, theirs: Any, what: str = "") -> None:
    """The same arrays (dtype and every bit, NaN payloads included), in the same nesting."""
    if isinstance(ours, (list, tuple)):
        assert isinstance(theirs, (list, tuple)) and len(ours) == len(theirs), what
        for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
            assert_identical(o, t, f"{what}[{i}]")
        return
    o, t = np.asarray(ours), np.asarray(theirs)
    assert o.dtype == t.dtype and o.shape == t.shape, what
    if bits(o) != bits(t):
        u = {4: np.uint32, 2: np.uint16, 1: np.uint8}[o.dtype.itemsize]
        diff = np.flatnonzero(o.reshape(-1).view(u) != t.reshape(-1).view(u))
        o, t = o.reshape(-1)[diff[:8]], t.reshape(-1)[diff[:8]]
        raise AssertionError(f"{what}: {diff.size} differ, e.g. at {diff[:8]}: {o} vs {t}")


def check_all(x: np.ndarray[Any, Any], bs8: int, bs4: int) -> None:
    """Every kernel on ``x``: quantize, dequantize into every dtype, double quantization."""
    q8 = both(lambda: K.quantize_blockwise8(x, bs8))
    assert_identical(*q8, "blockwise8")
    codes, absmax = q8[1]
    for dtype in DTYPES:
        assert_identical(*both(lambda d=dtype: K.dequantize_blockwise8(codes, absmax, bs8, d)), f"dq8 {dtype}")
    for quant_type in ("nf4", "fp4"):
        q4 = both(lambda qt=quant_type: K.quantize_4bit(x, qt, bs4))
        assert_identical(*q4, quant_type)
        packed, am = q4[1]
        for dtype in DTYPES:
            out = both(lambda qt=quant_type, d=dtype, p=packed, a=am: K.dequantize_4bit(p, a, x.size, qt, bs4, d))
            assert_identical(*out, f"dq4 {quant_type} {dtype}")
        if x.size:
            with np.errstate(all="ignore"):
                assert_identical(*both(lambda a=am: K.quantize_absmax(a)), "double quant")


@st.composite
def blocky_arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """Runs of zeros, constants, scaled noise and special values, so blocks of every kind occur."""
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, 700))
        kind = draw(st.sampled_from(["noise", "zeros", "constant", "special"]))
        scale = 10.0 ** draw(st.integers(-45, 38))
        if kind == "noise":
            part = rng.standard_normal(n) * scale
        elif kind == "zeros":
            part = np.where(rng.random(n) < 0.5, 0.0, -0.0)
        elif kind == "constant":
            part = np.full(n, draw(st.sampled_from([scale, -scale, 1.0, 3.0e38, 1e-40, 2.0**-126])))
        else:
            specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -3e-39, 3.4e38, 0.00260416, 2e-5]
            part = rng.choice(np.array(specials), n) * np.where(rng.random(n) < 0.5, 1.0, rng.standard_normal(n))
        parts.append(part)
    x = np.concatenate(parts) if parts else np.zeros(0)
    with np.errstate(all="ignore"):
        return x.astype(np.float32).astype(dtype)


@settings(max_examples=150)
@given(x=blocky_arrays(), bs8=st.sampled_from([1, 2, 3, 7, 64, 100, 256, 4096]), bs4=st.sampled_from(K.BLOCKSIZES_4BIT))
def test_native_equals_numpy(x: np.ndarray[Any, Any], bs8: int, bs4: int) -> None:
    check_all(x, bs8, bs4)


@settings(max_examples=40)
@given(xs=st.lists(blocky_arrays(), max_size=8), bs8=st.sampled_from([1, 64, 4096]), bs4=st.sampled_from([32, 64]))
def test_native_batches_equal_numpy(xs: list[np.ndarray[Any, Any]], bs8: int, bs4: int) -> None:
    q8 = both(lambda: K.quantize_blockwise8_batch(xs, bs8))
    assert_identical(*q8, "blockwise8 batch")
    for dtype in DTYPES:
        assert_identical(*both(lambda d=dtype: K.dequantize_blockwise8_batch(q8[1], bs8, d)), f"dq8 batch {dtype}")
    for quant_type in ("nf4", "fp4"):
        q4 = both(lambda qt=quant_type: K.quantize_4bit_batch(xs, qt, bs4))
        assert_identical(*q4, f"{quant_type} batch")
        items = [(p, a, x.size) for (p, a), x in zip(q4[1], xs, strict=True)]
        for dtype in DTYPES:
            out = both(lambda qt=quant_type, d=dtype, it=items: K.dequantize_4bit_batch(it, qt, bs4, d))
            assert_identical(*out, f"dq4 batch {quant_type} {dtype}")


def test_native_equals_numpy_large_and_threaded() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(1_300_007) * 0.02).astype(np.float32)
    x[5_000:5_064] = 0
    x[77_777] = np.nan
    x[600_001] = -np.inf
    x[900_000:900_100] = 1e-41
    for dtype in DTYPES:
        for threads in (1, 2, 3):
            K.set_num_threads(threads)
            try:
                check_all(x.astype(dtype), 4096, 64)
            finally:
                K.set_num_threads(None)


def test_float16_sources_every_pattern() -> None:
    """Each of the 65536 float16 patterns alone in a block: its float32 value is the block's absmax."""
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    x = np.zeros((65536, 32), np.float16)
    x[:, 5] = h
    x = x.reshape(-1)
    assert_identical(*both(lambda: K.quantize_4bit(x, "nf4", 32)), "4-bit")  # NaN payloads kept
    assert_identical(*both(lambda: K.quantize_blockwise8(x, 32)), "8-bit")
    assert_identical(*both(lambda: K.quantize_blockwise8(h, 1)), "8-bit, blocks of one")


def float32_patterns() -> np.ndarray[Any, Any]:
    """Every exponent and sign with the mantissa endings where rounding to float16/bfloat16 turns."""
    high = np.arange(65536, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xA000, 0xFFFF], np.uint32)
    extra = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint32)
    return np.concatenate([(high[:, None] | low).reshape(-1), extra]).view(np.float32)


def test_dequantized_values_round_like_numpy() -> None:
    """Outputs are value * 1.0 (code 255 of the dynamic map), so each float32 pattern meets each cast."""
    values = float32_patterns()
    codes = np.full(values.size, 255, np.uint8)
    assert K.dynamic_map()[255] == 1.0
    for dtype in DTYPES:
        out = both(lambda d=dtype: K.dequantize_blockwise8(codes, values, 1, d))
        assert_identical(*out, str(dtype))


def test_native_off_by_environment_or_when_not_built() -> None:
    script = (
        "import sys\n"
        "hidden = ['tensorcodec._native', 'tensorcodec._fastwire', 'tensorcodec._fasttree']\n"
        "if sys.argv[1] == 'unbuilt': sys.modules.update(dict.fromkeys(hidden))\n"
        "import tensorcodec as tc\n"
        "import numpy as np\n"
        "from tensorcodec import _c, kernels as K\n"
        "print(_c.native_available(), tc.native_enabled())\n"
        "x = np.linspace(-1, 1, 1001, dtype=np.float32)\n"
        "sys.stdout.write(K.quantize_4bit(x)[0].tobytes().hex())\n"
    )
    env = {**os.environ, "TENSORCODEC_NATIVE": "0"}
    off = subprocess.run([sys.executable, "-c", script, "off"], capture_output=True, text=True, check=True, env=env)
    env["TENSORCODEC_NATIVE"] = "1"
    unbuilt = subprocess.run([sys.executable, "-c", script, "unbuilt"], capture_output=True, text=True, env=env)
    on = subprocess.run([sys.executable, "-c", script, "on"], capture_output=True, text=True, check=True, env=env)
    assert unbuilt.returncode == 0, unbuilt.stderr
    assert off.stdout.splitlines()[0] == "True False"
    assert unbuilt.stdout.splitlines()[0] == "False False"
    assert on.stdout.splitlines()[0] == "True True"
    assert off.stdout.splitlines()[1] == unbuilt.stdout.splitlines()[1] == on.stdout.splitlines()[1]


def test_set_native_refuses_what_was_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    before = tc.native_enabled()
    monkeypatch.setattr(_c, "_built", dict.fromkeys(_c._NAMES))
    try:
        with pytest.raises(RuntimeError, match="not built"):
            tc.set_native(True)
        tc.set_native(False)
        assert not tc.native_enabled()
    finally:
        monkeypatch.undo()
        tc.set_native(before)


# ------------------------------------------------------------------------------------------------ bad calls

N = _c.kernels()
T4 = table4("nf4")
LUT = lut8(None)
F32 = np.float32

# The C kernels take a layout, tables, outputs and a block span as small tuples; the tests below spell
# each call as one flat list (a single tensor) so that each argument can be spoiled in turn.


def q8(src: Any, kind: Any, bs: Any, lut: Any, codes: Any, absmax: Any, start: Any, stop: Any) -> None:
    N.quantize8(
        ([src], bytes([kind % 256])) if isinstance(kind, int) else ([src], kind),
        bs,
        lut,
        (codes, absmax),
        (start, stop),
    )


def q4(
    src: Any, kind: Any, bs: Any, grid: Any, bounds: Any, order: Any, packed: Any, absmax: Any, start: Any, stop: Any
) -> None:
    kinds = bytes([kind % 256]) if isinstance(kind, int) else kind
    N.quantize4(([src], kinds), bs, (grid, bounds, order), (packed, absmax), (start, stop))


def dq8(codes: Any, absmax: Any, bs: Any, table: Any, out: Any, kind: Any, start: Any, stop: Any) -> None:
    N.dequantize8(([codes], [absmax]), bs, table, (out, kind), (start, stop))


def dq4(packed: Any, absmax: Any, n: Any, bs: Any, values: Any, out: Any, kind: Any, start: Any, stop: Any) -> None:
    N.dequantize4(([packed], [absmax], [n]), bs, values, (out, kind), (start, stop))


def _q8_args(n: int = 100, bs: int = 64) -> list[Any]:
    nb = -(-n // bs)
    return [np.zeros(n, F32), 0, bs, LUT.lut, np.zeros(n, np.uint8), np.zeros(nb, F32), 0, nb]


def _q4_args(n: int = 101, bs: int = 64) -> list[Any]:
    nb = -(-n // bs)
    out = [np.zeros((n + 1) // 2, np.uint8), np.zeros(nb, F32)]
    return [np.zeros(n, F32), 0, bs, T4.grid, T4.bounds, T4.order, *out, 0, nb]


def _dq8_args(n: int = 100, bs: int = 64) -> list[Any]:
    nb = -(-n // bs)
    return [np.zeros(n, np.uint8), np.ones(nb, F32), bs, LUT.code, np.zeros(n, F32), 0, 0, nb]


def _dq4_args(n: int = 101, bs: int = 64) -> list[Any]:
    nb = -(-n // bs)
    out = np.zeros(n + n % 2, F32)  # an odd count takes one more position
    return [np.zeros((n + 1) // 2, np.uint8), np.ones(nb, F32), n, bs, T4.values, out, 0, 0, nb]


FUNCS: dict[str, tuple[Callable[..., None], Callable[..., list[Any]]]] = {
    "quantize8": (q8, _q8_args),
    "quantize4": (q4, _q4_args),
    "dequantize8": (dq8, _dq8_args),
    "dequantize4": (dq4, _dq4_args),
}


def _with(args: list[Any], i: int, value: Any) -> list[Any]:
    return [*args[:i], value, *args[i + 1 :]]


def _shorter(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return a[:-1]


def _longer(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.concatenate([a, a[:1]])


# (function, argument index, a bad value or a function of the good one); 100/101 elements in blocks of 64
BAD_ARGS: list[tuple[str, int, Any]] = [
    *[("quantize8", i, f) for i in (0, 3, 4, 5) for f in (_shorter, _longer)],  # src, lut, codes, absmax
    ("quantize8", 0, np.zeros(99, np.uint8)),  # bytes that are not whole float32 values
    *[("quantize8", 1, k) for k in (255, 3)],  # kind
    *[("quantize8", 2, b) for b in (0, -64)],  # blocksize
    *[("quantize8", 2, 200)],  # blocksize that changes the block count
    *[("quantize4", i, f) for i in (4, 5, 6, 7) for f in (_shorter, _longer)],  # bounds, order, packed, absmax
    ("quantize4", 0, _shorter),  # 100 values take 50 bytes
    ("quantize4", 0, lambda a: np.zeros(103, F32)),  # 52 bytes (102 would fit: the last byte is padded)
    ("quantize4", 3, lambda g: g[:32770]),  # grid too short for c in [-1, 1]
    *[("quantize4", 2, b) for b in (0, 63, -64)],
    *[("dequantize8", i, f) for i in (0, 1, 3, 4) for f in (_shorter, _longer)],  # codes, absmax, table, out
    *[("dequantize8", 5, k) for k in (-1, 3)],
    *[("dequantize4", i, f) for i in (0, 1, 4) for f in (_shorter, _longer)],  # packed, absmax, values
    ("dequantize4", 5, _shorter),  # out: 101 values take 102 positions
    ("dequantize4", 5, lambda a: np.zeros(103, F32)),
    ("dequantize4", 2, 103),  # a count the packed bytes do not hold
    ("dequantize4", 2, -1),
    *[("dequantize4", 3, b) for b in (0, 63)],
]


@pytest.mark.parametrize(("name", "index", "bad"), BAD_ARGS)
def test_bad_sizes_and_values_raise(name: str, index: int, bad: Any) -> None:
    fn, make = FUNCS[name]
    args = make()
    fn(*args)  # the well-formed call works
    value = bad(args[index]) if callable(bad) else bad
    with pytest.raises(ValueError):
        fn(*_with(args, index, value))


@pytest.mark.parametrize("name", FUNCS)
def test_bad_block_ranges_and_arguments_raise(name: str) -> None:
    fn, make = FUNCS[name]
    args = make()
    nb = args[-1]
    for start, stop in [(-1, nb), (0, nb + 1), (2, 1), (nb + 1, nb + 1), (0, -1)]:
        with pytest.raises(ValueError):
            fn(*args[:-2], start, stop)
    with pytest.raises(OverflowError):
        fn(*args[:-2], 0, 1 << 70)
    with pytest.raises(TypeError):
        fn(*args[:-1])
    with pytest.raises(TypeError):
        fn(*_with(args, 0, "a string"))
    with pytest.raises(TypeError):
        fn(*_with(args, 3 if name == "dequantize4" else 2, 64.0))


@pytest.mark.parametrize("name", FUNCS)
def test_read_only_or_strided_outputs_raise(name: str) -> None:
    fn, make = FUNCS[name]
    args = make()
    out_index = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)][-1]
    ro = args[out_index].copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        fn(*_with(args, out_index, ro))
    with pytest.raises(TypeError):
        fn(*_with(args, out_index, bytes(args[out_index].nbytes)))
    strided = np.zeros(2 * args[0].size, args[0].dtype)[::2]
    with pytest.raises((TypeError, ValueError)):
        fn(*_with(args, 0, strided))


def test_odd_4bit_blocksize_and_short_tables_raise() -> None:
    with pytest.raises(ValueError):
        q4(*_with(_q4_args(bs=63), 2, 63))
    with pytest.raises(ValueError):
        q4(*_with(_q4_args(), 3, T4.grid[:32770]))
    with pytest.raises(ValueError):
        dq4(*_with(_dq4_args(bs=63), 3, 63))


def test_bad_batches_raise() -> None:
    xs = [np.zeros(5, F32), np.zeros(70, F32)]
    codes, absmax = np.zeros(75, np.uint8), np.zeros(1 + 2, F32)
    k2 = bytes([0, 0])
    whole = (0, 3)
    N.quantize8((xs, k2), 64, LUT.lut, (codes, absmax), whole)
    N.quantize4((xs, k2), 64, T4.native, (codes[:38], absmax), whole)
    bad_calls: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (N.quantize8, ((xs, bytes([0])), 64, LUT.lut, (codes, absmax), whole)),  # kinds too short
        (N.quantize8, ((xs, bytes([0, 7])), 64, LUT.lut, (codes, absmax), whole)),  # no such kind
        (N.quantize8, ((xs, k2), 64, LUT.lut, (codes[1:], absmax), whole)),
        (N.quantize8, ((xs, k2), 64, LUT.lut, (codes, absmax[1:]), whole)),
        (N.quantize8, ((xs, bytes([1, 1])), 64, LUT.lut, (codes, absmax), whole)),  # sizes for float16 differ
        (N.quantize8, (([np.zeros(3, np.uint8)], bytes([0])), 64, LUT.lut, (codes[:0], absmax[:1]), (0, 0))),
        (N.quantize8, (([None], bytes([0])), 64, LUT.lut, (codes[:0], absmax[:0]), (0, 0))),
        (N.quantize8, ((5, bytes([0])), 64, LUT.lut, (codes, absmax), whole)),
        (N.quantize8, ((xs, k2), 0, LUT.lut, (codes, absmax), whole)),
        (N.quantize8, ((xs, k2), 64, LUT.lut, (codes, absmax), (0, 4))),
        (N.quantize8, ((xs, k2), 64, LUT.lut, (codes, absmax), (0,))),
        (N.quantize4, ((xs, k2), 64, T4.native, (codes[:39], absmax), whole)),
        (N.quantize4, ((xs, k2), 64, T4.native, (codes[:37], absmax), whole)),
        (N.quantize4, ((xs, k2), 64, (T4.grid, T4.bounds[:-1], T4.order), (codes[:38], absmax), whole)),
        (N.quantize4, ((xs, k2), 64, (T4.grid, T4.bounds, T4.order[:-1]), (codes[:38], absmax), whole)),
    ]
    qs, ams = [codes[:5], codes[5:]], [absmax[:1], absmax[1:]]
    out = np.zeros(75, F32)
    N.dequantize8((qs, ams), 64, LUT.code, (out, 0), whole)
    bad_calls += [
        (N.dequantize8, ((qs, ams[:1]), 64, LUT.code, (out, 0), whole)),
        (N.dequantize8, ((qs, [ams[1], ams[0]]), 64, LUT.code, (out, 0), whole)),
        (N.dequantize8, ((qs, ams), 64, LUT.code, (out[1:], 0), whole)),
        (N.dequantize8, ((qs, ams), 64, LUT.code, (out, 1), whole)),
        (N.dequantize8, ((qs, ams), 64, LUT.code[1:], (out, 0), whole)),
        (N.dequantize8, ((qs, ams), 64, LUT.code, (out, -1), whole)),
        (N.dequantize8, ((qs, ams), 64, LUT.code, (out.copy().view(np.uint8).tobytes(), 0), whole)),
    ]
    ps = [codes[:3], codes[3:38]]
    out4 = np.zeros(76, F32)  # 5 values take 6 positions
    N.dequantize4((ps, ams, [5, 70]), 64, T4.values, (out4, 0), whole)
    bad_calls += [
        (N.dequantize4, ((ps, ams, [5, 68]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [7, 70]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5, 70]), 64, T4.values, (out, 0), whole)),  # no room for the pad position
        (N.dequantize4, ((ps, ams, [5, -70]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5, 2**70]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5, "70"]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5]), 64, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5, 70]), 63, T4.values, (out4, 0), whole)),
        (N.dequantize4, ((ps, ams, [5, 70]), 64, T4.values[1:], (out4, 0), whole)),
    ]
    for fn, args in bad_calls:
        with pytest.raises((TypeError, ValueError, OverflowError)):
            fn(*args)


@settings(max_examples=300)
@given(data=st.data(), name=st.sampled_from(sorted(FUNCS)))
def test_fuzzed_sizes_raise_or_work(data: st.DataObject, name: str) -> None:
    """Any mix of buffer sizes and numbers either works or raises ValueError/TypeError: never a crash."""
    fn, make = FUNCS[name]
    args = make(data.draw(st.integers(0, 300)), data.draw(st.sampled_from([2, 32, 64])))
    for i, a in enumerate(args):
        if data.draw(st.booleans()):
            continue
        if isinstance(a, np.ndarray):
            args[i] = np.zeros(max(0, a.size + data.draw(st.integers(-3, 3))), a.dtype)
        else:
            args[i] = data.draw(st.integers(-2, 400))
    with contextlib.suppress(ValueError, TypeError):
        fn(*args)
