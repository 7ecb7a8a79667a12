"""budget_policy: the least-error policy within a bit budget, the fewest bytes within an error budget."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import models
from tensorcodec.accounting import predict


def _model() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    heavy = rng.standard_t(3, size=(64, 512)).astype(np.float32)
    heavy[:, 7] *= 40  # an outlier channel
    tied = rng.standard_normal(8192).astype(np.float32)
    return {
        "embed": rng.standard_normal((128, 256)).astype(np.float32),
        "heavy[0]*": heavy,
        "small.bias": rng.standard_normal(64).astype(np.float32) * 1e-2,
        "half": torch.randn(64, 128).to(torch.bfloat16),
        "steps": np.arange(10, dtype=np.int64),
        "tied.a": tied,
        "tied.b": tied,
    }


def _floats(tree: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    out = {}
    for k, v in tree.items():
        if k == "tied.b":
            continue  # one tensor under two names is one parameter: it counts once
        a = v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if a.dtype.kind == "f":
            out[k] = a.astype(np.float64)
    return out


def _measured(model: dict[str, Any], **kw: Any) -> tuple[float, float]:
    """(bits per element of the whole message, squared error over squared values of the floating tensors)."""
    message = tc.encode(model, **kw)
    back = _floats(tc.decode(message))
    originals = _floats(model)
    elements = sum(math.prod(v.shape) for v in model.values())
    err = sum(float(np.sum((back[k] - v) ** 2)) for k, v in originals.items())
    signal = sum(float(np.sum(v**2)) for v in originals.values())
    return 8 * len(message) / elements, err / signal


SINGLE = ["minmax1", "minmax2", "fp4", "nf4", "fp8_e4m3", "blockwise8", "fp16", "bf16"]


@pytest.mark.parametrize("bits", [2.5, 4.25, 6.0, 9.0])
def test_the_budget_holds_and_beats_every_single_precision_within_it(bits: float) -> None:
    model = _model()
    policy = tc.budget_policy(model, bits=bits)
    got_bits, got_error = _measured(model, policy=policy)
    assert got_bits == pytest.approx(policy.bits) and got_bits <= bits
    assert got_error == pytest.approx(policy.rel_mse, rel=1e-9, abs=1e-15)  # small tensors: measured whole
    for precision in SINGLE:
        single_bits, single_error = _measured(model, policy=tc.Policy({"*": precision}, min_elements=0))
        if single_bits <= bits:
            assert got_error <= single_error, precision


def test_an_error_budget_gives_the_fewest_bytes_of_the_singles_that_meet_it() -> None:
    model = _model()
    for target in (1e-2, 1e-4):
        policy = tc.budget_policy(model, max_rel_mse=target)
        got_bits, got_error = _measured(model, policy=policy)
        assert got_error <= target
        for precision in SINGLE:
            single_bits, single_error = _measured(model, policy=tc.Policy({"*": precision}, min_elements=0))
            if single_error <= target:
                assert got_bits <= single_bits, precision


def test_rows_say_what_was_chosen_and_names_match_only_themselves() -> None:
    model = _model()
    policy = tc.budget_policy(model, bits=4.25)
    names = [row.name for row in policy.rows]
    assert "tied.b" not in names and "tied.a" in names  # a tied tensor is planned (and sent) once
    assert {row.name for row in policy.rows if row.precision == "raw"} >= {"steps"}
    assert policy.matches("heavy[0]*") and not policy.matches("heavy0x")
    assert predict(model, policy=policy).message_bytes == len(tc.encode(model, policy=policy))
    assert isinstance(tc.decode(tc.encode(model, policy=policy))["half"], torch.Tensor)


def test_the_model_is_not_touched() -> None:
    model = _model()
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v.copy()) for k, v in model.items()}
    tc.budget_policy(model, bits=3)
    for k, v in model.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v.view(torch.int16), before[k].view(torch.int16))
        else:
            assert v.tobytes() == before[k].tobytes()


def test_impossible_or_ambiguous_budgets_are_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"bits per element, over the budget of 0\.5"):
        tc.budget_policy(model, bits=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        tc.budget_policy(model)
    with pytest.raises(ValueError, match="exactly one"):
        tc.budget_policy(model, bits=4, max_rel_mse=1e-3)


def test_nan_tensors_take_only_the_codecs_that_keep_them() -> None:
    x = np.random.default_rng(0).standard_normal(8192).astype(np.float32)
    x[5] = np.nan
    policy = tc.budget_policy({"x": x, "y": np.ones(8192, np.float32)}, bits=20)
    chosen = {row.name: row.precision for row in policy.rows}
    assert chosen["x"] in ("raw", "fp16", "bf16")
    back = tc.decode(tc.encode({"x": x}, policy=policy))["x"]
    assert np.isnan(back[5])


@settings(max_examples=15, deadline=None)
@given(st.floats(1.5, 33.0), st.floats(0.0, 3.0))
def test_more_bits_never_cost_more_error(bits: float, more: float) -> None:
    model = _model()
    del model["half"]  # keep each example fast
    low = tc.budget_policy(model, bits=bits)
    high = tc.budget_policy(model, bits=bits + more)
    assert low.bits <= bits and high.bits <= bits + more
    assert high.rel_mse <= low.rel_mse * (1 + 1e-9) + 1e-15


def test_on_minilm_the_budget_beats_every_single_precision_of_at_most_its_bits() -> None:
    model = models.load_model()
    policy = tc.budget_policy(model, bits=4.25)
    got_bits, got_error = _measured(model, policy=policy)
    assert got_bits <= 4.25
    for precision in ("nf4", "fp4", "minmax4", "minmax2"):
        for rule in (tc.Policy({"*": precision}, min_elements=0), tc.Policy({"*": precision})):
            single_bits, single_error = _measured(model, policy=rule)
            assert single_bits > 4.25 or got_error < single_error, precision
