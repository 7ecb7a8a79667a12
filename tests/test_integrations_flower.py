"""The Flower mod and strategy wrapper: unit round trips, and FedAvg in Flower's simulation engine (Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import tensorcodec
from tensorcodec.accounting import predict
from tensorcodec.integrations.common import Packing
from tensorcodec.integrations.flower import (
    STYPE,
    TensorcodecStrategy,
    decode_record,
    encode_record,
    is_encoded,
    tensorcodec_mod,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower_app"


def _arrays() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(5)
    return {
        "w": rng.standard_normal((64, 96)).astype(np.float32),
        "b": rng.standard_normal(64).astype(np.float32),
        "h": rng.standard_normal(5000).astype(np.float16),
        "n": np.arange(9, dtype=np.int32),
    }


def _record(arrays: dict[str, np.ndarray[Any, Any]]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})


def _same(record: ArrayRecord, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
    assert list(record) == list(arrays)
    for k, v in arrays.items():
        got = record[k].numpy()
        assert got.dtype == v.dtype and got.shape == v.shape and got.tobytes() == v.tobytes(), k


@pytest.mark.parametrize("precision", [None, "bf16", "blockwise8", "nf4"])
def test_record_round_trip(precision: str | None) -> None:
    arrays = _arrays()
    record = _record(arrays)
    encoded = encode_record(record, Packing(precision))
    assert is_encoded(encoded) and not is_encoded(record)
    message = encoded[STYPE].data
    assert len(message) == predict(arrays, precision=precision).message_bytes
    _same(record, arrays)  # the input record is untouched
    expected = tensorcodec.decode(tensorcodec.encode(arrays, precision=precision))
    _same(decode_record(encoded), expected)
    assert decode_record(record) is record


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps each new Message with the run of the process; outside an engine there is none."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _train_message(record: ArrayRecord) -> Message:
    content = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=1, message_type="train")


def test_mod_decodes_what_arrives_and_encodes_the_reply(identity: None) -> None:
    arrays = _arrays()
    incoming = _train_message(encode_record(_record(arrays), Packing("bf16")))
    seen: dict[str, Any] = {}

    def app(msg: Message, context: Context) -> Message:
        seen["arrays"] = msg.content["arrays"]
        seen["config"] = msg.content["config"]
        reply = RecordDict({"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": 3})})
        return Message(content=reply, reply_to=msg)

    mod = tensorcodec_mod(precision="nf4", checksum="crc32c")
    reply = mod(incoming, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}), app)
    _same(seen["arrays"], tensorcodec.decode(tensorcodec.encode(arrays, precision="bf16")))
    assert seen["config"]["server-round"] == 1
    sent = reply.content["arrays"]
    assert is_encoded(sent)
    assert len(sent[STYPE].data) == predict(arrays, precision="nf4", checksum="crc32c").message_bytes
    assert reply.content["metrics"]["num-examples"] == 3


class _Broadcast(FedAvg):  # type: ignore[misc]
    """configure_train without a Grid: one message per node, all sharing the global ArrayRecord."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> list[Message]:
        return [
            Message(content=RecordDict({"arrays": arrays, "config": config}), dst_node_id=n, message_type="train")
            for n in (1, 2, 3)
        ]


def test_strategy_broadcast_gives_identical_bytes_and_keeps_the_global_model(identity: None) -> None:
    arrays = _arrays()
    record = _record(arrays)
    strategy = TensorcodecStrategy(_Broadcast(), precision="blockwise8")
    messages = list(strategy.configure_train(1, record, ConfigRecord(), None))
    payloads = {m.content["arrays"][STYPE].data for m in messages}
    assert len(payloads) == 1
    assert messages[0].content["arrays"] is messages[1].content["arrays"]  # encoded once
    _same(record, arrays)
    assert strategy.sent_bytes == [predict(arrays, precision="blockwise8").message_bytes] * 3
    assert strategy.weighted_by_key == "num-examples"  # the inner strategy's attributes show through


def test_hostile_record_raises_decode_error() -> None:
    encoded = encode_record(_record(_arrays()), Packing("bf16"))
    data = encoded[STYPE].data
    broken = ArrayRecord(array_dict={STYPE: Array(dtype="uint8", shape=(len(data) - 3,), stype=STYPE, data=data[:-3])})
    with pytest.raises(tensorcodec.DecodeError):
        decode_record(broken)


# ------------------------------------------------------------------------- inside Flower's simulation engine


def test_fedavg_in_the_simulation_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 nodes, 2 rounds on Ray: bytes = predict's, global arrays = FedAvg of the decoded updates, bit for bit."""
    precision, rounds, nodes = "nf4", 2, 2
    monkeypatch.syspath_prepend(str(EXAMPLE))
    path = os.pathsep.join([str(ROOT), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # Ray's workers import the app
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU: silences Ray's FutureWarning
    from app import initial_arrays, local_update, run  # type: ignore[import-not-found]

    seen = run(precision, rounds, nodes)

    start = initial_arrays()
    size = predict(start, precision=precision).message_bytes
    strategy = seen["strategy"]
    assert strategy.sent_bytes == [size] * (rounds * nodes)
    assert strategy.received_bytes == [size] * (rounds * nodes)

    def wire(tree: dict[str, Any]) -> dict[str, Any]:
        return tensorcodec.decode(tensorcodec.encode(tree, precision=precision))  # type: ignore[no-any-return]

    model = start
    for round_ in range(1, rounds + 1):
        seen_by_nodes = wire(model)
        total: dict[str, Any] = {}
        for node in range(nodes):
            for k, v in wire(local_update(seen_by_nodes, node, round_)).items():
                total[k] = v * (1 / nodes) if k not in total else total[k] + v * (1 / nodes)
        model = total
    final = seen["result"].arrays
    _same(final, model)
    assert final["fc1.weight"].numpy().tobytes() != start["fc1.weight"].tobytes()
