"""The NVFlare filters: unit round trips, and a real FedAvg job in NVFlare's simulator with them on."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvflare")

from nvflare.apis.dxo import DXO, DataKind, from_shareable  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.apis.shareable import Shareable  # noqa: E402

import tensorcodec  # noqa: E402
from tensorcodec.accounting import predict  # noqa: E402
from tensorcodec.integrations.nvflare import (  # noqa: E402
    MESSAGE_KEY,
    META_KEY,
    TensorcodecDecodeFilter,
    TensorcodecEncodeFilter,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nvflare_job"


def _model() -> dict[str, object]:
    gen = torch.Generator().manual_seed(1)
    return {
        "fc.weight": torch.randn(64, 96, generator=gen),
        "fc.bias": torch.randn(64, generator=gen),
        "half": torch.randn(80, 80, generator=gen).to(torch.bfloat16),
        "np.weight": np.random.default_rng(2).standard_normal((70, 70)).astype(np.float32),
        "np.f16": np.random.default_rng(3).standard_normal((4096,)).astype(np.float16),
        "steps": np.arange(6, dtype=np.int64),
        "mask": torch.tensor([True, False, True]),
    }


def _bits(x: object) -> bytes:
    if isinstance(x, np.ndarray):
        return x.tobytes()
    assert isinstance(x, torch.Tensor)
    return x.contiguous().view(torch.uint8).numpy().tobytes()


def _round_trip(shareable: Shareable, **kw: object) -> tuple[Shareable, Shareable]:
    sent = TensorcodecEncodeFilter(**kw).process(shareable, FLContext())
    return sent, TensorcodecDecodeFilter().process(sent, FLContext())


@pytest.mark.parametrize("kind", [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF])
def test_lossless_round_trip_keeps_containers_dtypes_and_framework(kind: DataKind) -> None:
    model = _model()
    sent, back = _round_trip(DXO(kind, model, meta={"num_steps": 3}).to_shareable())
    wire = from_shareable(sent)
    assert list(wire.data) == [MESSAGE_KEY] and isinstance(wire.data[MESSAGE_KEY], bytes)
    assert wire.meta[META_KEY]["bytes"] == len(wire.data[MESSAGE_KEY])
    out = from_shareable(back)
    assert out.data_kind == kind and out.meta == {"num_steps": 3}
    assert list(out.data) == list(model)
    for name, value in model.items():
        got = out.data[name]
        assert type(got) is type(value), name
        assert got.dtype == value.dtype and tuple(got.shape) == tuple(value.shape), name
        assert _bits(got) == _bits(value), name


@pytest.mark.parametrize("precision", ["bf16", "blockwise8", "nf4"])
def test_lossy_bytes_match_predict_and_decode(precision: str) -> None:
    model = _model()
    sent, back = _round_trip(DXO(DataKind.WEIGHTS, model).to_shareable(), precision=precision, checksum="xxh3_64")
    message = from_shareable(sent).data[MESSAGE_KEY]
    assert len(message) == predict(model, precision=precision, checksum="xxh3_64").message_bytes
    expected = tensorcodec.decode(tensorcodec.encode(model, precision=precision, checksum="xxh3_64"))
    for name, value in from_shareable(back).data.items():
        assert _bits(value) == _bits(expected[name]), name


def test_policy_is_honoured() -> None:
    model = _model()
    policy = {"fc.*": "nf4", "*": None}
    sent, _ = _round_trip(DXO(DataKind.WEIGHTS, model).to_shareable(), policy=policy)
    assert len(from_shareable(sent).data[MESSAGE_KEY]) == predict(model, policy=policy).message_bytes


def test_broadcast_gives_identical_bytes_and_leaves_the_server_model_alone() -> None:
    model = _model()
    before = {k: _bits(v) for k, v in model.items()}
    task = DXO(DataKind.WEIGHTS, model).to_shareable()
    task.set_header("round", 1)
    encoder = TensorcodecEncodeFilter(precision="nf4")
    sent = [encoder.process(task, FLContext()) for _ in range(3)]
    messages = {from_shareable(s).data[MESSAGE_KEY] for s in sent}
    assert len(messages) == 1
    assert from_shareable(task).data is not from_shareable(sent[0]).data
    assert from_shareable(task).meta == {} and from_shareable(task).data.keys() == model.keys()
    assert {k: _bits(v) for k, v in model.items()} == before
    sent[0].set_header("round", 2)  # headers are the copy's own
    assert task.get_header("round") == 1


def test_passes_what_it_does_not_own() -> None:
    metrics = DXO(DataKind.METRICS, {"acc": 0.5}).to_shareable()
    assert TensorcodecEncodeFilter(precision="bf16").process(metrics, FLContext()) is metrics
    plain = DXO(DataKind.WEIGHTS, {"w": np.ones(3, np.float32)}).to_shareable()
    assert TensorcodecDecodeFilter().process(plain, FLContext()) is plain
    bare = Shareable()
    assert TensorcodecEncodeFilter().process(bare, FLContext()) is bare


def test_hostile_message_raises_decode_error() -> None:
    sent, _ = _round_trip(DXO(DataKind.WEIGHTS, _model()).to_shareable(), precision="bf16")
    dxo = from_shareable(sent)
    dxo.data[MESSAGE_KEY] = dxo.data[MESSAGE_KEY][:-7]
    with pytest.raises(tensorcodec.DecodeError):
        TensorcodecDecodeFilter().process(dxo.to_shareable(), FLContext())


def test_bad_settings_fail_when_the_filter_is_built() -> None:
    with pytest.raises(ValueError):
        TensorcodecEncodeFilter(precision="bf16", policy={"*": "nf4"})


# ------------------------------------------------------------------------------ inside NVFlare's simulator

_SENT = re.compile(r"tensorcodec encoded \d+ tensors: \d+ bytes -> (\d+) bytes \((\w+)\)")


def test_fedavg_in_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 sites, 2 rounds: bytes on the wire = predict's, global model = FedAvg of the decoded updates."""
    precision, sites, rounds = "blockwise8", ("site-1", "site-2"), 2
    monkeypatch.syspath_prepend(str(EXAMPLE))
    path = os.pathsep.join([str(ROOT), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # the simulator runs each site in a process of its own
    from job import build_job  # type: ignore[import-not-found]
    from trainer import initial_model, local_diff  # type: ignore[import-not-found]

    build_job(precision, sites, rounds).simulator_run(str(tmp_path / "ws"))

    ws = tmp_path / "ws"
    state = initial_model().state_dict()
    size = predict(state, precision=precision).message_bytes
    server_sent = _SENT.findall((ws / "server" / "log.txt").read_text())
    assert server_sent == [(str(size), precision)] * (rounds * len(sites))
    for site in sites:
        log = (ws / site / "log.txt").read_text()
        assert _SENT.findall(log) == [(str(size), precision)] * rounds
        assert log.count(f"tensorcodec decoded {size} bytes") == rounds

    def wire(tree: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return tensorcodec.decode(tensorcodec.encode(tree, precision=precision))  # type: ignore[no-any-return]

    model = dict(state)
    for round_ in range(rounds):
        seen = wire(model)
        total: dict[str, torch.Tensor] = {}
        for site in sites:
            for k, v in wire(local_diff(seen, site, round_)).items():
                total[k] = v.clone() if k not in total else total[k].add_(v)
        model = {k: model[k] + total[k].div_(len(sites)) for k in model}
    saved = torch.load(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.pt", weights_only=False)
    got = saved["model"]
    assert sorted(got) == sorted(model)
    for k in model:
        assert torch.equal(torch.as_tensor(got[k]), model[k]), k
    assert not torch.equal(torch.as_tensor(got["fc2.weight"]), state["fc2.weight"])  # it trained


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
