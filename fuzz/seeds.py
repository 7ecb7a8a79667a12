"""Seed inputs: small valid messages and streams that reach every codec, dtype and tree value kind.

Deterministic, so that ``python -m fuzz.run --write-seeds`` rewrites the same corpus files.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

import tensorcodec as tc

_CHAINS: list[Any] = [
    "fp16",
    "bf16",
    "fp8_e4m3",
    "fp8_e5m2",
    "blockwise8",
    "nf4",
    "fp4",
    "minmax8",
    "minmax4",
    "minmax2",
    "minmax1",
    tc.MinMax(4, block=32),
    tc.MinMax(3, block=7, stochastic=True, seed=5),
    tc.FP8("e4m3", block=16),
    tc.Blockwise8(blocksize=64),
    tc.Quant4("nf4", blocksize=64, double_quant=False),
    ["fp16", "nf4"],
    ["bf16", "minmax4"],
]


def _arrays(rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in tc.DTYPES:
        raw = rng.integers(0, 256, size=6 * d.itemsize, dtype=np.uint8)
        a = raw.view(d.numpy) if d.numpy.kind not in "b" and d.itemsize > 1 else raw.view(np.uint8)
        if d.name == "bool":
            a = (raw & 1).astype(np.bool_)
        elif d.itemsize == 1:
            a = (raw & 1).astype(d.numpy) if d.name in ("int2", "uint2", "int4", "uint4") else raw.view(d.numpy)
            if d.name.startswith(("float4", "float6")):
                a = np.zeros(6, dtype=d.numpy)
        out[d.name] = a.reshape(2, 3)
    return out


def _trees() -> list[tuple[Any, Any]]:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    h = rng.standard_normal(70).astype(np.float16)
    b = rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16)
    shared = np.arange(4, dtype=np.int32)
    misc = {
        "none": None,
        "t": (1, -2, 2**70, -(2**80), 1.5, True, "s", b"b", bytearray(b"ba")),
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "zero_d": np.array(7, dtype=np.int64),
        "shared": [shared, shared, {"again": shared}],
    }
    trees: list[tuple[Any, Any]] = [(misc, None), (_arrays(rng), None), ({}, None), ([], None), (None, None)]
    trees += [({"w": w, "h": h, "b": b, "n": [w[:2], {"k": h[:5]}]}, chain) for chain in _CHAINS]
    try:
        import torch

        trees.append(({"t": torch.arange(12, dtype=torch.float32).reshape(3, 4), "i": torch.ones(3)}, None))
        trees.append(({"t": torch.randn(64, generator=torch.Generator().manual_seed(1))}, "nf4"))
    except ImportError:  # pragma: no cover - torch is optional
        pass
    return trees


def messages() -> list[bytes]:
    out = []
    for i, (tree, chain) in enumerate(_trees()):
        policy = None if chain is None else tc.Policy({"*": chain}, min_elements=1)
        checksum = (None, "xxh3_64", "crc32c")[i % 3]
        out.append(tc.encode(tree, policy=policy, checksum=checksum))
    return out


def streams() -> list[bytes]:
    out = []
    for i, (tree, chain) in enumerate(_trees()):
        policy = None if chain is None else tc.Policy({"*": chain}, min_elements=1)
        frame_bytes = (33, 100, 1 << 16)[i % 3]
        checksum = (None, "crc32c", "xxh3_64")[i % 3]
        frames = tc.encode_stream(
            tree, policy=policy, checksum=checksum, max_frame_bytes=frame_bytes, names=i % 2 == 0, stream_id=i
        )
        out.append(b"".join(frames))
    return out
