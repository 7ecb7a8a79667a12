"""``mx`` and ``nvfp4``: bit for bit against torchao 0.18's reference quantizers, every code, the contract."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from _codec_helpers import F32_MAX, tensors
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorcodec.codecs import MX, NVFP4, Codec
from tensorcodec.codecs.mx import ELEMENTS, dequantize_mx, quantize_mx, unpack
from tensorcodec.codecs.nvfp4 import quantize_nvfp4
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec
from tensorcodec.testing.codecs import check_round_trip

mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
constants = pytest.importorskip("torchao.prototype.mx_formats.constants")
nvfp4_tensor = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
fp_utils = pytest.importorskip("torchao.prototype.custom_fp_utils")

TORCHAO = {
    "e4m3": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2,
    "e2m3": constants.DTYPE_FP6_E2M3,
    "e3m2": constants.DTYPE_FP6_E3M2,
    "e2m1": torch.float4_e2m1fn_x2,
}
CODECS: list[Codec] = [MX(f) for f in ELEMENTS] + [NVFP4()]


def inputs(seed: int) -> np.ndarray[Any, Any]:
    """Heavy-tailed values over the whole fp32 range, with NaN, ±Inf, -0.0, subnormals and zero blocks."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, 4096) * 10.0 ** rng.integers(-44, 36, 4096)).astype(np.float32)
    x[64:96] = 0.0
    x[96:128] = rng.integers(-1000, 1000, 32) * np.float32(2.0**-149)  # subnormal block
    x[128:160] = rng.uniform(-3e38, 3e38, 32)
    x[7], x[9], x[11] = -0.0, np.inf, -np.inf
    x[1000::301] = np.nan
    return x


def torchao_mx(x: torch.Tensor, fmt: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """torchao's codes (packed as ours: fp6 unpacked, fp4 two a byte), E8M0 bytes and fp32 decode."""
    scale, data = mx_tensor.to_mx(x, TORCHAO[fmt], 32)  # the default: ScaleCalculationMode.FLOOR
    decoded = mx_tensor.to_dtype(data, scale, TORCHAO[fmt], 32, torch.float32)
    codes = data.view(torch.uint8).numpy().reshape(-1)
    return codes, scale.view(torch.uint8).numpy().reshape(-1), decoded.numpy().reshape(-1)


def same_values(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Equal bits, or NaN at the same places (NaN payloads are not part of the format)."""
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32)))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", list(TORCHAO))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("source", ["float32", "bfloat16"])
def test_mx_matches_torchao(fmt: str, seed: int, source: str) -> None:
    x = torch.from_numpy(inputs(seed)).to(getattr(torch, source))
    codes, scales, decoded = torchao_mx(x, fmt)
    packed, ours_scales = quantize_mx(x.float().numpy(), fmt)
    assert np.array_equal(ours_scales, scales)
    bits = ELEMENTS[fmt].bits
    assert np.array_equal(packed if bits == 4 else unpack(packed, bits, x.numel()), codes)
    assert same_values(dequantize_mx(packed, ours_scales, fmt, x.numel()), decoded)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", list(TORCHAO))
@pytest.mark.parametrize("n", [1, 31, 33, 63, 101])
def test_mx_partial_block_is_zero_padded(fmt: str, n: int) -> None:
    """The last block is as torchao's block padded with zeros; the padding is not sent."""
    x = inputs(2)[:n] * np.float32(1e-3)
    padded = np.zeros(-(-n // 32) * 32, np.float32)
    padded[:n] = x
    codes, scales, _ = torchao_mx(torch.from_numpy(padded), fmt)
    packed, ours_scales = quantize_mx(x, fmt)
    assert np.array_equal(ours_scales, scales)
    bits = ELEMENTS[fmt].bits
    full = unpack(codes, 4, padded.size) if bits == 4 else codes
    assert np.array_equal(unpack(packed, bits, n), full[:n])
    assert packed.size == -(-n * bits // 8)


@pytest.mark.parametrize("fmt", ["e2m3", "e3m2", "e2m1"])
def test_every_subbyte_code_decodes_as_torchao_and_ml_dtypes(fmt: str) -> None:
    elem = ELEMENTS[fmt]
    codes = np.arange(1 << elem.bits, dtype=np.uint8)
    ref = fp_utils._floatx_unpacked_to_f32(torch.from_numpy(codes), elem.ebits, elem.mbits).numpy()
    assert np.array_equal(elem.table[codes].view(np.uint32), ref.view(np.uint32))
    ml = {"e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn, "e2m1": ml_dtypes.float4_e2m1fn}[fmt]
    assert np.array_equal(elem.table[codes], codes.view(ml).astype(np.float32))
    # Each value encodes back to its own code: every block holds ±max, so its scale is 2^0.
    packed, scales = quantize_mx(elem.table[codes], fmt)
    assert (scales == 127).all() and np.array_equal(unpack(packed, elem.bits, codes.size), codes)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_every_fp8_code_decodes_as_torch(fmt: str) -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(TORCHAO[fmt]).float().numpy()
    assert same_values(ELEMENTS[fmt].table, ref)


def test_every_int8_code() -> None:
    assert np.array_equal(ELEMENTS["int8"].table, np.arange(256, dtype=np.uint8).view(np.int8) / np.float32(64))


def test_mxint8_rule() -> None:
    """MXINT8 (no torchao reference): scale 2^floor(log2 amax), codes rint(x / scale * 64) in [-127, 127]."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(320) * 5).astype(np.float32)
    packed, scales = quantize_mx(x, "int8")
    amax = np.abs(x).reshape(-1, 32).max(axis=1)
    assert np.array_equal(scales.astype(int) - 127, np.floor(np.log2(amax)).astype(int))
    scale = np.repeat(2.0 ** (scales.astype(np.float64) - 127), 32)
    assert np.array_equal(packed.view(np.int8), np.clip(np.rint(x / scale * 64), -127, 127).astype(np.int8))


def test_special_values() -> None:
    x = np.zeros(96, np.float32)
    x[0], x[33], x[64:96] = np.nan, 2.0, 0.0
    for fmt in ELEMENTS:
        packed, scales = quantize_mx(x, fmt)
        assert scales[0] == 0xFF and scales[2] == 0  # a NaN block gets E8M0's NaN; a zero block the least scale
        out = dequantize_mx(packed, scales, fmt, 96)
        assert np.isnan(out[:32]).all() and out[33] == 2.0 and not np.signbit(out[64:]).any()
    neg = MX("e4m3").decode(
        {k: a for k, (_, a) in MX("e4m3").encode(np.full(4, -0.0, np.float32)).segments.items()},
        {},
        __import__("tensorcodec").dtypes.BY_NAME["float32"],
        4,
    )
    assert np.signbit(neg).all()  # -0.0 keeps its sign


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", [0, 1, 4])
def test_nvfp4_matches_torchao(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, (8, 512)) * 10.0 ** int(rng.integers(-20, 20))).astype(np.float32)
    if seed == 4:
        x[0, ::37], x[1, 3], x[2, :16] = np.nan, -0.0, 1e-42
    amax = torch.tensor(np.abs(x[np.isfinite(x)]).max())
    t = nvfp4_tensor.per_tensor_amax_to_scale(amax)
    scales, data = nvfp4_tensor.nvfp4_quantize(torch.from_numpy(x), 16, t)
    packed, ours_scales, ours_t = quantize_nvfp4(x.reshape(-1))
    assert ours_t.tobytes() == t.numpy().tobytes()
    assert np.array_equal(ours_scales, scales.view(torch.uint8).numpy().reshape(-1))
    assert np.array_equal(packed, data.view(torch.uint8).numpy().reshape(-1))
    ref = nvfp4_tensor.NVFP4Tensor(data, scales, 16, torch.float32, per_tensor_scale=t).dequantize(torch.float32)
    codec = NVFP4()
    enc = codec.encode(x.reshape(-1))
    out = codec.decode({k: a for k, (_, a) in enc.segments.items()}, {}, _f32(), x.size)
    assert same_values(out, ref.numpy().reshape(-1))


def _f32() -> Any:
    from tensorcodec.dtypes import BY_NAME

    return BY_NAME["float32"]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_check_codec(codec: Codec) -> None:
    check_codec(codec, max_examples=15)


@settings(max_examples=40)
@given(codec=st.sampled_from(CODECS), x=tensors(cap=F32_MAX / 1e3, max_size=200))
def test_round_trip(codec: Codec, x: Any) -> None:
    check_round_trip(codec, x)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_hostile_segments(codec: Codec) -> None:
    enc = codec.encode(np.ones(100, np.float32))
    segments = {k: a for k, (_, a) in enc.segments.items()}
    for name, arr in segments.items():
        for bad in (arr[:-1], np.concatenate([arr, arr[:1]]), arr.view(np.int8)):
            with pytest.raises(DecodeError):
                codec.decode({**segments, name: bad}, {}, _f32(), 100)
    with pytest.raises(DecodeError):
        codec.decode({}, {}, _f32(), 100)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        MX("e8m0")
