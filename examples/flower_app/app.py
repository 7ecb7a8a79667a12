"""Flower FedAvg on two simulated nodes, every ArrayRecord on the wire a tensorcodec message.

    PYTHONPATH=. python examples/flower_app/app.py bf16

The set-up is one line at each end: ``mods=[tensorcodec_mod(...)]`` on the
ClientApp and ``TensorcodecStrategy(FedAvg(...), ...)`` around the strategy.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tensorcodec.integrations.flower import TensorcodecStrategy, tensorcodec_mod

SHAPES = {"fc1.weight": (128, 32), "fc1.bias": (128,), "fc2.weight": (64, 128), "fc2.bias": (64,)}


def initial_arrays() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def local_update(params: dict[str, np.ndarray[Any, Any]], node: int, round_: int) -> dict[str, np.ndarray[Any, Any]]:
    """A deterministic stand-in for local training: a step toward the node's own target."""
    rng = np.random.default_rng(zlib.crc32(f"{node}/{round_}".encode()))
    return {k: (v + np.float32(0.05) * rng.standard_normal(v.shape).astype(np.float32)) for k, v in params.items()}


def record(arrays: dict[str, np.ndarray[Any, Any]]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})


def client_app(precision: str | None) -> ClientApp:
    app = ClientApp(mods=[tensorcodec_mod(precision=precision)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        params = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        node, round_ = int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        new = local_update(params, node, round_)
        content = RecordDict({"arrays": record(new), "metrics": MetricRecord({"num-examples": 16})})
        return Message(content=content, reply_to=msg)

    return app


def server_app(precision: str | None, rounds: int, seen: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TensorcodecStrategy(FedAvg(fraction_evaluate=0.0), precision=precision)
        result = strategy.start(grid=grid, initial_arrays=record(initial_arrays()), num_rounds=rounds)
        seen["strategy"], seen["result"] = strategy, result

    return app


def run(precision: str | None = "bf16", rounds: int = 2, nodes: int = 2) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    seen: dict[str, Any] = {}
    run_simulation(
        server_app=server_app(precision, rounds, seen),
        client_app=client_app(precision),
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": nodes}},
    )
    return seen


if __name__ == "__main__":
    out = run(sys.argv[1] if len(sys.argv) > 1 else "bf16")
    print("sent", out["strategy"].sent_bytes, "received", out["strategy"].received_bytes)
