"""With checksums on, every single-bit flip of a message or a stream is detected (issue 10, build point 5).

Exhaustive over the bit positions of small messages of several kinds, with both algorithms: a flip in
the preamble or header fails the header CRC or a field check, one in a segment fails its checksum,
one in the padding fails the zero-padding rule, one in a frame fails the frame's checks or its CRC.
The only flips that may decode are those in the stream id of a one-frame stream, which the content
does not depend on: those must decode to the very same tree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tensorcodec as tc
from tensorcodec.testing import assert_tree_equal

ALGORITHMS = ("xxh3_64", "crc32c")
_STREAM_ID = slice(8, 16)  # bytes of a frame header


def _tree() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {
        "w": rng.standard_normal(16).astype(np.float32),
        "i": np.array([1, -2, 3], dtype=np.int8),
        "meta": ("x", 5, 2.5),
    }


KINDS = {
    "raw": None,
    "nf4": "nf4",
    "minmax4": "minmax4",
    "blockwise8": "blockwise8",
    "fp8": "fp8_e4m3",
}


def _flips(data: bytes) -> Any:
    buf = bytearray(data)
    for bit in range(len(buf) * 8):
        buf[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(buf)
        buf[bit // 8] ^= 1 << (bit % 8)


def _undetected(decode: Any, data: bytes) -> list[int]:
    missed = []
    for bit, flipped in _flips(data):
        try:
            decode(flipped)
        except tc.DecodeError:
            continue
        missed.append(bit)
    return missed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_bit_flip_of_a_message_is_detected(kind: str, algorithm: str) -> None:
    precision = KINDS[kind]
    policy = None if precision is None else tc.Policy({"w": precision}, min_elements=1)
    message = tc.encode(_tree(), policy=policy, checksum=algorithm)
    assert len(message) < 1024
    header = tc.decode(message)
    assert_tree_equal(header, tc.decode(message, copy=False))
    assert _undetected(tc.decode, message) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("frame_bytes", [80, 1 << 16], ids=["frames", "one-frame"])
def test_every_bit_flip_of_a_stream_is_detected(algorithm: str, frame_bytes: int) -> None:
    policy = tc.Policy({"w": "nf4"}, min_elements=1)
    frames = list(tc.encode_stream(_tree(), policy=policy, checksum=algorithm, max_frame_bytes=frame_bytes))
    expected = tc.decode_stream(frames)
    for k, frame in enumerate(frames):

        def decode(flipped: bytes, k: int = k) -> Any:
            return tc.decode_stream([*frames[:k], flipped, *frames[k + 1 :]])

        missed = _undetected(decode, frame)
        if len(frames) == 1:  # the stream id is compared with the first frame's: alone, it is free
            assert all(_STREAM_ID.start * 8 <= b < _STREAM_ID.stop * 8 for b in missed), missed
            for bit in missed:
                buf = bytearray(frame)
                buf[bit // 8] ^= 1 << (bit % 8)
                assert_tree_equal(tc.decode_stream([bytes(buf)]), expected)
        else:
            assert missed == [], f"frame {k} of {len(frames)}"
