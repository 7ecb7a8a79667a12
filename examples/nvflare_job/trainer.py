"""A tiny deterministic trainer for the NVFlare example job: one SGD step, sends the weight diff."""

from __future__ import annotations

import zlib

import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal


class Net(torch.nn.Module):
    """Initialised from its own seed: the server builds it from the job config, not from our object."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 128)
        self.fc2 = torch.nn.Linear(128, 64)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def initial_model() -> Net:
    return Net()


def local_diff(params: dict[str, torch.Tensor], site: str, round_: int) -> dict[str, torch.Tensor]:
    """One SGD step on the site's own data (fixed by its name and the round); the diff from ``params``."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{site}/{round_}".encode()))
    x, y = torch.randn(16, 32, generator=gen), torch.randn(16, 64, generator=gen)
    model = Net()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    with torch.no_grad():
        return {k: -0.1 * p.grad for k, p in model.named_parameters() if p.grad is not None}


class TinyTrainer(Executor):
    """Trains ``Net`` for one step on each "train" task and returns a WEIGHT_DIFF DXO."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        dxo = from_shareable(shareable)
        round_ = int(shareable.get_header("current_round", 0) or 0)
        site = fl_ctx.get_identity_name()
        diff = local_diff(dxo.data, site, round_)
        return DXO(DataKind.WEIGHT_DIFF, diff, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1}).to_shareable()
