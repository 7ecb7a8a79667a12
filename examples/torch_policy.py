"""A torch state dict with a per-tensor policy: weights in nf4, norms lossless, the rest in bf16.

python examples/torch_policy.py
"""

import torch

import tensorcodec as tc
from tensorcodec.accounting import inspect

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(256, 512), torch.nn.LayerNorm(512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
)
state = {k: v.clone() for k, v in model.state_dict().items()}  # a copy: load_state_dict writes in place
policy = tc.Policy({"1.*": None, "*.weight": "nf4", "*": "bf16"}, min_elements=1024)

message = tc.encode(state, policy=policy)
back = tc.decode(message)  # torch in, torch out: same dtypes, no configuration needed
model.load_state_dict(back)

for row in inspect(message).rows:
    error = (back[row.name].float() - state[row.name].float()).abs().max().item()
    print(f"{row.name:9} {row.codec:56} {row.payload_bytes + row.meta_bytes:7,} B  max abs error {error:.4f}")
raw = sum(t.numel() * t.element_size() for t in state.values())
print(f"message {len(message):,} bytes for {raw:,} bytes of fp32 ({100 * len(message) / raw:.1f} %)")
assert all(back[k].dtype == v.dtype for k, v in state.items())
