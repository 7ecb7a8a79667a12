"""Taking over bitsandbytes' own output, and handing ours back to it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tensorcodec as tc

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    F = pytest.importorskip("bitsandbytes.functional")
from tensorcodec.interop import from_bitsandbytes, to_bitsandbytes  # noqa: E402

pytestmark = pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy


def _bits(t: object) -> bytes:
    return bytes(np.ascontiguousarray(t.contiguous().view(torch.uint8).numpy()))  # type: ignore[attr-defined]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_4bit_state_decodes_like_bitsandbytes(quant_type: str, nested: bool, dtype: object) -> None:
    x = torch.randn(37, 130, generator=torch.Generator().manual_seed(1)).to(dtype)
    codes, state = F.quantize_4bit(x, quant_type=quant_type, blocksize=64, compress_statistics=nested)
    expected = F.dequantize_4bit(codes, state)
    q = from_bitsandbytes(codes, state)
    back = tc.decode(tc.encode({"w": q}))["w"]
    assert isinstance(back, torch.Tensor) and back.dtype == dtype and tuple(back.shape) == (37, 130)
    _same(back, expected.reshape(37, 130), quant_type)
    codes2, state2 = to_bitsandbytes(q)
    _same(F.dequantize_4bit(codes2, state2), expected, quant_type)


def _same(ours: object, theirs: object, quant_type: str) -> None:
    """Bitwise equal; for FP4 up to the sign of zero (bitsandbytes' CPU C path decodes code 8 as -0.0)."""
    if quant_type == "fp4":
        assert torch.equal(ours, theirs)  # type: ignore[arg-type]
    else:
        assert _bits(ours) == _bits(theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_8bit_state_decodes_like_bitsandbytes(dtype: object) -> None:
    x = torch.randn(9000, generator=torch.Generator().manual_seed(2)).to(dtype)
    codes, state = F.quantize_blockwise(x)
    expected = F.dequantize_blockwise(codes, state)
    q = from_bitsandbytes(codes, state)
    assert _bits(tc.decode(tc.encode([q]))[0]) == _bits(expected)
    codes2, state2 = to_bitsandbytes(q)
    assert _bits(F.dequantize_blockwise(codes2, state2)) == _bits(expected)


def test_our_encoding_hands_over_to_bitsandbytes() -> None:
    x = torch.randn(4096 * 3 + 5, generator=torch.Generator().manual_seed(3))
    message = tc.encode({"w": x}, policy=tc.Policy({"*": "nf4"}, min_elements=0))
    ours = tc.decode(message)["w"]
    from tensorcodec.codecs import Quant4
    from tensorcodec.kernels import quantize_4bit

    packed, absmax = quantize_4bit(x.numpy(), "nf4", 64)
    q = tc.Quantized(
        "float32",
        tuple(x.shape),
        [("quant4", Quant4("nf4", double_quant=False).get_config(), {})],
        {"codes": ("payload", packed), "absmax": ("meta", absmax)},
        framework="torch",
    )
    codes, state = to_bitsandbytes(q)
    theirs = F.dequantize_4bit(codes, state)
    assert _bits(torch.from_numpy(q.dequantize())) == _bits(theirs)
    assert ours.shape == x.shape


def test_custom_tables_are_refused() -> None:
    x = torch.randn(300)
    code = F.create_dynamic_map(signed=True) * 0.5
    codes, state = F.quantize_blockwise(x, code=code)
    with pytest.raises(ValueError, match="standard table"):
        from_bitsandbytes(codes, state)
