"""The smoke test of an installed tensorcodec (run by .ci/package from outside the checkout).

    python smoke.py NATIVE TORCH    # 1/0: whether the C extensions and torch must be there
"""

import importlib.util
import sys

import numpy as np

import tensorcodec as tc

want_native, want_torch = (sys.argv[1] == "1"), (sys.argv[2] == "1")
assert "site-packages" in tc.__file__, f"tensorcodec imported from {tc.__file__}, not from the install"
assert tc.native_enabled() == want_native, f"native_enabled() is {tc.native_enabled()}, expected {want_native}"
assert (importlib.util.find_spec("torch") is not None) == want_torch

tree = {"round": 3, "w": np.arange(4096, dtype=np.float32).reshape(64, 64), "flags": np.array([True, False])}
back = tc.decode(tc.encode(tree))
assert back["round"] == 3 and back["w"].tobytes() == tree["w"].tobytes() and back["flags"].tolist() == [True, False]
small = tc.decode(tc.encode(tree, precision="nf4"))
assert small["w"].shape == (64, 64) and float(np.abs(small["w"] - tree["w"]).max()) < 300
if want_torch:
    import torch

    state = {"layer.weight": torch.randn(128, 128, dtype=torch.bfloat16)}
    out = tc.decode(tc.encode(state))
    assert isinstance(out["layer.weight"], torch.Tensor) and torch.equal(out["layer.weight"], state["layer.weight"])
print(f"smoke ok: tensorcodec {tc.__version__}, native={want_native}, torch={want_torch}")
