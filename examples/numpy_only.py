"""Numpy only: a tree of arrays to bytes and back, bit for bit, then quantized with a size report.

Runs without torch installed:  python examples/numpy_only.py
"""

import ml_dtypes
import numpy as np

import tensorcodec as tc
from tensorcodec.accounting import report

rng = np.random.default_rng(0)
update = {
    "round": 12,
    "weights": {
        "dense": rng.standard_normal((256, 128)).astype(np.float32),
        "embed": rng.standard_normal((512, 64)).astype(ml_dtypes.bfloat16),
        "counts": rng.integers(-100, 100, 1000).astype(np.int8),
        "mask": rng.random(300) > 0.5,
    },
}

message = tc.encode(update)
back = tc.decode(message)
for name, array in update["weights"].items():
    same = back["weights"][name].dtype == array.dtype and back["weights"][name].tobytes() == array.tobytes()
    print(f"{name:8} {array.dtype!s:9} {array.shape!s:12} bit-exact: {same}")
print(f"lossless message: {len(message):,} bytes, round {back['round']}")

small, rep = report(update, precision="nf4", quality=True)
print(
    f"nf4 message: {len(small):,} bytes ({rep.percent_of_fp32():.1f} % of fp32), rel MSE {rep.quality['rel_mse']:.2e}"
)
