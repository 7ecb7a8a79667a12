"""Taking over what bitsandbytes produced, and handing our encodings back to it.

A tensor that bitsandbytes already quantized (its codes plus ``QuantState``)
becomes a ``Quantized`` that travels without a second quantization and decodes
anywhere, no GPU or bitsandbytes needed; ``to_bitsandbytes`` rebuilds the codes
and state for receivers that run bitsandbytes' own kernels. Only the standard
tables (the dynamic 8-bit map, NF4, FP4) are accepted: they are referred to by
name on the wire, never sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes, kernels
from .codecs import Quantized, Segments

__all__ = ["from_bitsandbytes", "to_bitsandbytes"]


def _numpy(t: Any) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(t.detach().cpu().reshape(-1).numpy())


def _same_table(table: Any, expected: np.ndarray[Any, Any], what: str) -> None:
    got = _numpy(table).astype(np.float32)
    if got.shape != expected.shape or not np.array_equal(got.view(np.uint32), expected.view(np.uint32)):
        raise ValueError(f"{what}: only bitsandbytes' standard table can be taken over, not a custom one")


def from_bitsandbytes(codes: Any, state: Any) -> Quantized:
    """A ``Quantized`` holding bitsandbytes' output of ``quantize_blockwise`` or ``quantize_4bit``."""
    row = dtypes.from_torch(state.dtype)
    if row is None or row.name not in ("float32", "float16", "bfloat16"):
        raise TypeError(f"bitsandbytes state of dtype {state.dtype} cannot be taken over")
    quant_type = getattr(state, "quant_type", None)
    if quant_type in ("nf4", "fp4"):
        shape = tuple(int(d) for d in state.shape)
        _same_table(state.code, kernels.NF4_TABLE if quant_type == "nf4" else kernels.FP4_TABLE, quant_type)
        packed = _numpy(codes).view(np.uint8)
        if state.nested:
            if state.state2.blocksize != 256:
                raise ValueError(f"nested statistics in blocks of {state.state2.blocksize}; tensorcodec uses 256")
            _same_table(state.state2.code, kernels.dynamic_map(), "nested statistics")
            segments: Segments = {
                "codes": ("payload", packed),
                "absmax_codes": ("meta", _numpy(state.absmax).view(np.uint8)),
                "absmax_scale": ("meta", _numpy(state.state2.absmax).astype(np.float32)),
            }
            params = {"offset": float(state.offset)}
        else:
            segments = {"codes": ("payload", packed), "absmax": ("meta", _numpy(state.absmax).astype(np.float32))}
            params = {}
        config = {"quant_type": quant_type, "blocksize": int(state.blocksize), "double_quant": bool(state.nested)}
        return Quantized(row.name, shape, [("quant4", config, params)], segments, framework="torch")
    if getattr(state, "nested", False):
        raise ValueError("nested 8-bit statistics cannot be taken over; quantize with nested=False")
    _same_table(state.code, kernels.dynamic_map(), "8-bit code")
    shape = tuple(int(d) for d in codes.shape)
    segments = {"codes": ("payload", _numpy(codes).view(np.uint8)), "absmax": ("meta", _numpy(state.absmax))}
    return Quantized(
        row.name, shape, [("blockwise8", {"blocksize": int(state.blocksize)}, {})], segments, framework="torch"
    )


def to_bitsandbytes(quantized: Quantized, device: Any = "cpu") -> tuple[Any, Any]:
    """``(codes, QuantState)`` that bitsandbytes' dequantize functions accept."""
    import torch
    from bitsandbytes.functional import QuantState as _QuantState

    QuantState: Any = _QuantState

    if len(quantized.stages) != 1 or quantized.stages[0][0] not in ("quant4", "blockwise8"):
        raise ValueError("only blockwise8 and quant4 encodings map onto bitsandbytes")
    codec_id, config, params = quantized.stages[0]
    seg = {name: torch.from_numpy(np.array(arr)).to(device) for name, (_, arr) in quantized.segments.items()}
    tdtype = dtypes.torch_dtype(quantized.dtype)
    shape = torch.Size(quantized.shape)
    if codec_id == "blockwise8":
        code = torch.from_numpy(kernels.dynamic_map()).to(device)
        state = QuantState(absmax=seg["absmax"], code=code, blocksize=config["blocksize"], dtype=tdtype)
        return seg["codes"].reshape(shape), state
    table = kernels.NF4_TABLE if config["quant_type"] == "nf4" else kernels.FP4_TABLE
    code = torch.from_numpy(np.array(table)).to(device)
    codes = seg["codes"].reshape(-1, 1)
    common = {"shape": shape, "code": code, "blocksize": config["blocksize"], "quant_type": config["quant_type"]}
    if not config["double_quant"]:
        return codes, QuantState(absmax=seg["absmax"], dtype=tdtype, **common)
    dynamic = torch.from_numpy(kernels.dynamic_map()).to(device)
    inner = QuantState(absmax=seg["absmax_scale"], code=dynamic, blocksize=256, dtype=torch.float32)
    offset = torch.tensor(params["offset"], dtype=torch.float32, device=device)
    state = QuantState(absmax=seg["absmax_codes"], dtype=tdtype, offset=offset, state2=inner, **common)
    return codes, state
