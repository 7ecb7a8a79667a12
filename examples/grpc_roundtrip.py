"""gRPC: a client streams a model to a server in frames under gRPC's 4 MiB limit; the server
decodes it as it arrives and replies with a summary, also a tensorcodec message. Loopback only.

    python examples/grpc_roundtrip.py
"""

import grpc
import numpy as np

from tensorcodec.transports import grpc as tcg

received = []


def on_tree(tree):
    """What the server does with each decoded model: keep it, answer with a small tree."""
    received.append(tree)
    return {"tensors": len(tree["weights"]), "norm": float(sum(np.linalg.norm(v) for v in tree["weights"].values()))}


server, port = tcg.serve(on_tree)  # any free port on 127.0.0.1
rng = np.random.default_rng(3)
update = {
    "client": "site-1",
    "weights": {f"l{i}": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(6)},
}
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = tcg.send(channel, update, precision="bf16", timeout=60)  # 24 MB of fp32, 12 MB sent
    print(f"server saw {reply['tensors']} tensors from {received[0]['client']}, norm {reply['norm']:.1f}")
finally:
    server.stop(None)
