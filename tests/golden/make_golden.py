"""Writes the golden messages of wire format v1 (tests/golden/v1/*.tcm).

This script documents how the committed fixtures were made; the tests never
run it. The fixtures are frozen: a decoder must read them forever, so never
regenerate them to make a failing test pass. A new format version gets a new
directory (v2/) beside this one.

    python tests/golden/make_golden.py        # writes tests/golden/v1/

tests/test_golden.py rebuilds the same trees on its own and compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import torch

import tensorcodec as tc

OUT = Path(__file__).parent / "v1"


def mixed() -> dict[str, Any]:
    """A small tree with every kind of leaf and several dtypes, special values included."""
    f32_specials = np.array([0x7FC00001, 0xFF800000, 0x80000000, 0x00000001, 0x7F7FFFFF], dtype=np.uint32)
    return {
        "meta": {
            "round": 3,
            "name": "golden v1 \u2713",
            "lr": 0.001,
            "flags": [True, False, None],
            "blob": b"\x00\xff",
            "buf": bytearray(b"ba"),
            "big": 2**100,
            "neg_big": -(2**70) - 1,
            "u64_max": 2**64 - 1,
            "i64_min": -(2**63),
            "neg_zero": -0.0,
        },
        "layers": [
            {
                "w": (np.arange(12, dtype=np.float32).reshape(3, 4) - 6) / 8,
                "specials": f32_specials.view(np.float32),
            },
            {
                "bf16": np.array([1.0, -2.5, np.inf, np.nan, 3.0e38], dtype=ml_dtypes.bfloat16),
                "fp8": np.arange(0, 256, 37, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
                "e5m2": np.array([0x7C, 0xFC, 0x7E, 0x01], dtype=np.uint8).view(ml_dtypes.float8_e5m2),
            },
        ],
        "shape": (3, 4),
        "nested": {"deeper": {"deepest": (np.int8(-5), np.float32(1.25), [np.uint64(2**64 - 1)])}},
        "c64": np.array([1 + 2j, -0.0 - 1j, complex(np.inf, np.nan)], dtype=np.complex64),
        "c128": np.array([[1e-310 + 1e300j]], dtype=np.complex128),
        "mask": np.array([[True, False, True], [False, False, True]]),
        "i64": np.array([-(2**63), 2**63 - 1, 0, -1], dtype=np.int64),
        "u16": np.arange(5, dtype=np.uint16) * 16000,
        "int4": np.array([-8, -1, 0, 7], dtype=ml_dtypes.int4),
        "f4": np.array([0.5, -6.0, 0.0], dtype=ml_dtypes.float4_e2m1fn),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.float16(-0.0),
        "torch_bf16": torch.tensor([[1.5, -2.0], [0.0, float("inf")]], dtype=torch.bfloat16),
        "torch_i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3),
    }


def tied() -> dict[str, Any]:
    shared = np.arange(6, dtype=np.float64).reshape(2, 3)
    weight = torch.arange(4, dtype=torch.float32)
    return {"embed": shared, "lm_head": shared, "w": weight, "w_view": weight.view(4)}


def python_only() -> list[Any]:
    return [None, True, 0, -1, 2**64, -(2**64), 1.5, float("inf"), "", "\u00e9", b"", bytearray(), (), [], {}, ((1,),)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    files = {
        "mixed.tcm": tc.encode(mixed()),
        "mixed_xxh3.tcm": tc.encode(mixed(), checksum="xxh3_64"),
        "mixed_crc32c.tcm": tc.encode(mixed(), checksum="crc32c"),
        "tied.tcm": tc.encode(tied()),
        "python_only.tcm": tc.encode(python_only()),
        "tiny.tcm": tc.encode({"x": np.arange(3, dtype=np.int16)}),
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
