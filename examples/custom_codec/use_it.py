"""Using a codec from a user package: encode with it in a policy, decode anywhere it is installed,
and check it with tensorcodec's own codec checker.

    pip install ./examples/custom_codec   # registers it through the tensorcodec.codecs entry point
    python examples/custom_codec/use_it.py

Without installing, this script puts src/ on the path and imports the package, which registers it too.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "src"))

import halfsign

import tensorcodec as tc
from tensorcodec.testing import check_codec

gradient = {"layer.weight": np.random.default_rng(4).standard_normal(10_000).astype(np.float32)}
message = tc.encode(gradient, policy=tc.Policy({"*": halfsign.SignCodec()}, min_elements=0))
back = tc.decode(message)["layer.weight"]
print(
    f"{len(message):,} bytes for {gradient['layer.weight'].nbytes:,} of fp32; signs kept: "
    f"{bool((np.sign(back) == np.sign(gradient['layer.weight'])).all())}"
)
print("registered:", "halfsign.sign" in tc.registered_codecs())
check_codec(halfsign.SignCodec())  # round trips, bounds, config, sizes, hostile segments
print("check_codec: passed")
