"""FedAvg on two simulated sites, every model on the wire a tensorcodec message.

    PYTHONPATH=. python examples/nvflare_job/job.py /tmp/nvflare_ws bf16

The four ``job.to(...)`` filter lines are the whole set-up: they sit exactly
where NVFlare's ModelQuantizer / ModelDequantizer would.
"""

from __future__ import annotations

import sys

from nvflare.app_opt.pt.fedavg import PTFedAvg
from nvflare.app_opt.pt.job_config.model import PTModel
from nvflare.job_config.api import FedJob, FilterType

from tensorcodec.integrations.nvflare import TensorcodecDecodeFilter, TensorcodecEncodeFilter

try:
    from trainer import TinyTrainer, initial_model
except ImportError:  # imported as examples.nvflare_job.job
    from .trainer import TinyTrainer, initial_model


def build_job(precision: str | None, sites: tuple[str, ...] = ("site-1", "site-2"), rounds: int = 2) -> FedJob:
    job = FedJob(name="tensorcodec_fedavg", min_clients=len(sites))
    persistor = job.to(PTModel(initial_model(), allow_numpy_conversion=False), "server")["persistor_id"]
    job.to(PTFedAvg(num_clients=len(sites), num_rounds=rounds, persistor_id=persistor), "server")
    # Server -> clients: encode the global model; clients -> server: decode their updates.
    job.to(TensorcodecEncodeFilter(precision=precision), "server", tasks=["train"], filter_type=FilterType.TASK_DATA)
    job.to(TensorcodecDecodeFilter(), "server", tasks=["train"], filter_type=FilterType.TASK_RESULT)
    for site in sites:
        job.to(TinyTrainer(), site, tasks=["train"])
        job.to(TensorcodecDecodeFilter(), site, tasks=["train"], filter_type=FilterType.TASK_DATA)
        job.to(TensorcodecEncodeFilter(precision=precision), site, tasks=["train"], filter_type=FilterType.TASK_RESULT)
    return job


if __name__ == "__main__":
    workspace = sys.argv[1] if len(sys.argv) > 1 else "/tmp/nvflare_ws"
    build_job(sys.argv[2] if len(sys.argv) > 2 else "bf16").simulator_run(workspace)
    print(f"global model: {workspace}/server/simulate_job/app_server/FL_global_model.pt")
