"""Golden messages: what format v1 looked like when it shipped must decode, and tiny messages must not change.

The fixtures in golden/v1 were written once by golden/make_golden.py and are
never regenerated; the expected trees are rebuilt here independently, so a
change to the encoder cannot silently move both sides at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorcodec as tc
from tensorcodec.testing import assert_tree_equal

GOLDEN = Path(__file__).parent / "golden" / "v1"


def read(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def expected_mixed() -> dict[str, Any]:
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
                "w": np.array(
                    [[-0.75, -0.625, -0.5, -0.375], [-0.25, -0.125, 0, 0.125], [0.25, 0.375, 0.5, 0.625]], np.float32
                ),
                "specials": f32_specials.view(np.float32),
            },
            {
                "bf16": np.array([0x3F80, 0xC020, 0x7F80, 0x7FC0, 0x7F62], dtype=np.uint16).view(ml_dtypes.bfloat16),
                "fp8": np.array([0, 37, 74, 111, 148, 185, 222], dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
                "e5m2": np.array([0x7C, 0xFC, 0x7E, 0x01], dtype=np.uint8).view(ml_dtypes.float8_e5m2),
            },
        ],
        "shape": (3, 4),
        "nested": {"deeper": {"deepest": (np.int8(-5), np.float32(1.25), [np.uint64(2**64 - 1)])}},
        "c64": np.array([1 + 2j, complex(-0.0, -1.0), complex(np.inf, np.nan)], dtype=np.complex64),
        "c128": np.array([[complex(1e-310, 1e300)]], dtype=np.complex128),
        "mask": np.array([[1, 0, 1], [0, 0, 1]], dtype=np.bool_),
        "i64": np.array([-(2**63), 2**63 - 1, 0, -1], dtype=np.int64),
        "u16": np.array([0, 16000, 32000, 48000, 64000], dtype=np.uint16),
        "int4": np.array([8, 15, 0, 7], dtype=np.uint8).view(ml_dtypes.int4),
        "f4": np.array([0x1, 0xF, 0x0], dtype=np.uint8).view(ml_dtypes.float4_e2m1fn),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(0x8000, dtype=np.uint16).view(np.float16)[()],
        "torch_bf16": torch.tensor([[0x3FC0, -16384], [0, 0x7F80]], dtype=torch.int16).view(torch.bfloat16),
        "torch_i32": torch.tensor([[-3, -2, -1], [0, 1, 2]], dtype=torch.int32),
    }


def expected_python_only() -> list[Any]:
    return [None, True, 0, -1, 2**64, -(2**64), 1.5, float("inf"), "", "\u00e9", b"", bytearray(), (), [], {}, ((1,),)]


@pytest.mark.parametrize("name", ["mixed.tcm", "mixed_xxh3.tcm", "mixed_crc32c.tcm"])
@pytest.mark.parametrize("copy", [True, False])
def test_mixed_fixture_decodes(name: str, copy: bool) -> None:
    assert_tree_equal(expected_mixed(), tc.decode(read(name), copy=copy))


@pytest.mark.parametrize("name", ["mixed.tcm", "mixed_xxh3.tcm", "mixed_crc32c.tcm"])
def test_mixed_fixture_decodes_into_numpy_only(name: str) -> None:
    expected = expected_mixed()
    for key in ("torch_bf16", "torch_i32"):
        t = expected[key]
        expected[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype is torch.bfloat16 else t.numpy()
    assert_tree_equal(expected, tc.decode(read(name), framework="numpy"))


def test_checksummed_fixtures_carry_their_algorithm_and_verify() -> None:
    import msgpack

    for name, algorithm in [("mixed_xxh3.tcm", "xxh3_64"), ("mixed_crc32c.tcm", "crc32c")]:
        data = read(name)
        header = msgpack.unpackb(data[16 : 16 + int.from_bytes(data[8:12], "little")], raw=False)
        assert header["checksum"] == algorithm
        assert len(header["checksums"]) == len(header["tensors"])
        corrupt = bytearray(data)
        corrupt[-1] ^= 0x01
        with pytest.raises(tc.ChecksumError):
            tc.decode(bytes(corrupt))


def test_tied_fixture_decodes_to_shared_objects() -> None:
    back = tc.decode(read("tied.tcm"))
    assert back["embed"] is back["lm_head"] and back["w"] is back["w_view"]
    assert_tree_equal(np.arange(6, dtype=np.float64).reshape(2, 3), back["embed"])
    assert_tree_equal(torch.arange(4, dtype=torch.float32), back["w"])


def test_python_only_fixture() -> None:
    back = tc.decode(read("python_only.tcm"))
    assert_tree_equal(expected_python_only(), back)


def test_tiny_fixture_is_the_pinned_message() -> None:
    assert read("tiny.tcm") == bytes.fromhex(TINY_INT16)


TINY_INT16 = (
    "5443444301000000200000004e5a6e4f82a774656e736f72739192a5696e7431369103a474726565c40681a178d4010000000000"
    "000000000000000000000000000001000200"
)
BF16_XXH3 = (
    "544344430100000048000000aa8af59084a774656e736f72739192a862666c6f617431369101a474726565c40681a174d40200a8"
    "636865636b73756da7787868335f3634a9636865636b73756d7391cf12f7496a243a963800000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000c03f"
)
TUPLE_ROOT = (
    "544344430100000031000000de3f819382a774656e736f72739192a7666c6f6174333290a474726565c416c713049401a161d403"
    "00c70905000000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000003f"
)
EMPTY_LIST = "544344430100000012000000fcbfbe3b82a774656e736f727390a474726565c40190"


@pytest.mark.parametrize(
    ("make", "pinned"),
    [
        (lambda: tc.encode({"x": np.arange(3, dtype=np.int16)}), TINY_INT16),
        (lambda: tc.encode({"t": torch.tensor([1.5], dtype=torch.bfloat16)}, checksum="xxh3_64"), BF16_XXH3),
        (lambda: tc.encode((1, "a", np.float32(0.5), 2**64)), TUPLE_ROOT),
        (lambda: tc.encode([]), EMPTY_LIST),
    ],
    ids=["int16", "bf16_xxh3", "tuple_root", "empty_list"],
)
def test_tiny_messages_are_byte_for_byte_stable(make: Any, pinned: str) -> None:
    """Any change to these bytes is a format change: it needs a new version, not a new literal."""
    assert make().hex() == pinned


def test_pinned_messages_decode() -> None:
    assert_tree_equal({"x": np.array([0, 1, 2], dtype=np.int16)}, tc.decode(bytes.fromhex(TINY_INT16)))
    back = tc.decode(bytes.fromhex(BF16_XXH3))
    assert back["t"].dtype is torch.bfloat16 and back["t"].tolist() == [1.5]
    assert_tree_equal((1, "a", np.float32(0.5), 2**64), tc.decode(bytes.fromhex(TUPLE_ROOT)))
    assert tc.decode(bytes.fromhex(EMPTY_LIST)) == []


def test_every_fixture_is_tested() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.tcm")) == sorted(
        ["mixed.tcm", "mixed_xxh3.tcm", "mixed_crc32c.tcm", "tied.tcm", "python_only.tcm", "tiny.tcm"]
    )
