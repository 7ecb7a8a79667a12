"""Quantizing tensors where they live: the accelerator path gives the CPU path's bytes."""

from __future__ import annotations

import numpy as np
import pytest

import tensorcodec as tc
from tensorcodec.core import encode_leaf
from tensorcodec.leaves import leaf_from_torch
from tensorcodec.policy import Policy

torch = pytest.importorskip("torch")
pytest.importorskip("tensorcodec.kernels")

PRECISIONS = ["blockwise8", "nf4", "fp4", tc.Quant4("nf4", 64, double_quant=False), tc.Blockwise8(256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("precision", PRECISIONS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("count", [1, 63, 64, 4097, 10_001])
def test_encode_torch_matches_numpy_path(precision: object, dtype: object, count: int) -> None:
    """encode_torch (used for tensors on a GPU) produces the same entry and segment bytes."""
    t = (torch.randn(count, generator=torch.Generator().manual_seed(count)) * 3).to(dtype)
    chain = Policy({"*": precision}, min_elements=0).choose("w", leaf_from_torch(t).dtype, count)
    if chain is None:
        pytest.skip("the codec would not make so small a tensor smaller")
    leaf = leaf_from_torch(t)
    expected_entry, expected_data = encode_leaf(chain, leaf, "w")
    entry, data = encode_leaf(chain, leaf, "w", device_tensor=t)
    assert entry == expected_entry
    assert [bytes(d) for d in data] == [bytes(d) for d in expected_data]


def test_codecs_without_a_torch_path_fall_back_to_the_cpu() -> None:
    t = torch.randn(5000)
    chain = Policy({"*": "minmax8"}).choose("w", leaf_from_torch(t).dtype, t.numel())
    assert chain is not None and chain[0].encode_torch(t) is None
    entry, _ = encode_leaf(chain, leaf_from_torch(t), "w", device_tensor=t)
    assert entry == encode_leaf(chain, leaf_from_torch(t), "w")[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["blockwise8", "nf4", "fp4", "bf16", "minmax8"])
def test_cuda_tensors_encode_like_cpu_tensors(precision: str) -> None:
    state = {"w": torch.randn(3000, 77, dtype=torch.bfloat16), "b": torch.randn(77)}
    on_gpu = {k: v.cuda() for k, v in state.items()}
    assert tc.encode(on_gpu, precision=precision) == tc.encode(state, precision=precision)
    back = tc.decode(tc.encode(on_gpu, precision=precision), device="cuda")
    assert back["w"].device.type == "cuda" and back["w"].dtype == torch.bfloat16
    np.testing.assert_array_equal(back["b"].cpu().numpy(), state["b"].numpy())
