"""A second decoder of the tensor table, written from docs/format.md and docs/codecs.md alone.

It imports nothing of tensorcodec: it reads the preamble, the header and the layout as the pages
describe them and dequantizes each built-in codec by the formulas of docs/codecs.md, in their
float32 operation order. ``tests/test_vectors.py`` holds it to the vectors' bits, so a formula the
pages get wrong fails there. It checks little: it is a reading of the spec, not a safe decoder.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

TABLES = json.loads((Path(__file__).parent / "tables.json").read_text())
F32 = np.float32


def _table(name: str) -> np.ndarray[Any, Any]:
    return np.array([int(b, 16) for b in TABLES[name]], dtype=np.uint32).view(F32)


def _np_dtype(name: str) -> np.dtype[Any]:
    if hasattr(np, name) and name not in ("bool",):
        return np.dtype(name)
    return np.dtype(np.bool_) if name == "bool" else np.dtype(getattr(ml_dtypes, name))


def tensors(message: bytes) -> list[np.ndarray[Any, Any]]:
    """Every entry of the tensor table, decoded, flat, in table order."""
    hlen = struct.unpack_from("<I", message, 8)[0]
    header = msgpack.unpackb(message[16 : 16 + hlen], raw=False)
    pos = 16 + hlen
    out = []
    for entry in header["tensors"]:
        specs = [["data", "payload", entry[0], entry[1]]] if len(entry) == 2 else entry[3]
        segments = {}
        for name, _, dtype, shape in specs:
            n = math.prod(shape) * _np_dtype(dtype).itemsize
            start = -(-pos // 64) * 64 if n else pos
            segments[name] = np.frombuffer(message, _np_dtype(dtype).newbyteorder("<"), math.prod(shape), start)
            pos = start + n
        if len(entry) == 2:
            out.append(segments["data"])
        else:
            out.append(_chain(entry[2], segments, entry[0], math.prod(entry[1])))
    return out


def _chain(stages: list[Any], segments: dict[str, Any], dtype: str, n: int) -> np.ndarray[Any, Any]:
    """format.md 3: the last stage decodes first, to the dtype the stage before it casts to."""
    dtypes = [dtype] + [cfg["to"] for _, cfg, _ in stages[:-1]]
    value = _stage(stages[-1], segments, dtypes[-1], n)
    for k in range(len(stages) - 2, -1, -1):
        value = _stage(stages[k], {**segments, "data": value}, dtypes[k], n)
    return value


def _to(values: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    """float32 values to the entry's dtype: round to nearest even (float64: exact)."""
    return values.astype(_np_dtype(dtype))


def _stage(stage: list[Any], seg: dict[str, Any], dtype: str, n: int) -> np.ndarray[Any, Any]:
    codec, config, params = stage
    if codec == "cast":
        data = seg["data"]
        out = data.astype(_np_dtype(dtype))
        if dtype == "float16":  # a finite bfloat16 beyond 65504 decodes as +-65504
            over = np.isinf(out) & np.isfinite(data.astype(F32))
            out[over] = np.copysign(np.float16(65504), data[over].astype(F32))
        return out
    if codec == "fp8":
        block = config.get("block", 0) or max(n, 1)
        scale = np.repeat(seg["scale"], block)[:n]
        return _to(seg["codes"].astype(F32) * scale, dtype)
    if codec == "minmax":
        bits, block = config.get("bits", 8), config.get("block", 0) or max(n, 1)
        ranges = seg["range"].reshape(-1, 2)
        lo, hi = np.repeat(ranges[:, 0], block)[:n], np.repeat(ranges[:, 1], block)[:n]
        if "codes" not in seg:
            return _to(lo, dtype)
        packed = np.unpackbits(seg["codes"], bitorder="little")  # code k: bits [k*bits, (k+1)*bits), LSB first
        q = (packed[: n * bits].reshape(n, bits).astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(1)
        levels = F32((1 << bits) - 1)
        return _to(q.astype(F32) / levels * (hi - lo) + lo, dtype)
    if codec == "blockwise8":
        absmax = np.repeat(seg["absmax"], config.get("blocksize", 4096))[:n]
        return _to(_table("dynamic")[seg["codes"]] * absmax, dtype)
    if codec == "quant4":
        bs = config.get("blocksize", 64)
        if config.get("double_quant", True):
            c = seg["absmax_codes"]
            scale = np.repeat(seg["absmax_scale"], 256)[: c.size]
            absmax = _table("dynamic")[c] * scale + F32(params["offset"])
        else:
            absmax = seg["absmax"]
        p = seg["codes"]
        q = np.stack([p >> 4, p & 15], axis=1).reshape(-1)[:n]  # element 0 in the high nibble
        return _to(_table(config.get("quant_type", "nf4"))[q] * np.repeat(absmax, bs)[:n], dtype)
    raise ValueError(f"unknown codec {codec!r}")
