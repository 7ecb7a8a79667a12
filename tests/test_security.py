"""docs/security.md's promises: its server example runs, the memory bound holds on hostile messages,
and with checksums every single-bit flip of a message is refused."""

from __future__ import annotations

import contextlib
import re
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import tensorcodec as tc
from tensorcodec.accounting import inspect
from tests.vectors.make_vectors import edit, join

PAGE = Path(__file__).parents[1] / "docs" / "security.md"
PER_HEADER_BYTE = 80
SCRATCH = 4 << 20
"""The bound's constants, as docs/security.md states them."""


def test_the_server_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text()
    block = re.search(r"<!-- run: security example -->\s*```python\n(.*?)```", text, re.S)
    assert block is not None, "docs/security.md lost its example"
    exec(compile(block.group(1), "docs/security.md", "exec"), {"__name__": "security_example"})
    assert capsys.readouterr().out.count("refused: ") == 2


def _header_length(message: bytes) -> int:
    return int.from_bytes(message[8:12], "little")


def _hostile() -> dict[str, tuple[bytes, int]]:
    """Messages built to make a decoder allocate much per byte: name -> (message, max_decoded_bytes)."""
    n = 20_000
    nf4 = tc.encode({"x": np.ones(1 << 16, np.float32)}, policy=tc.Policy({"*": "nf4"}, min_elements=0))
    chain = tc.encode({"x": np.ones(1 << 16, np.float32)}, policy=tc.Policy({"*": ["bf16", "nf4"]}, min_elements=0))
    constant = tc.encode({"x": np.ones(8, np.float32)}, policy=tc.Policy({"*": "minmax4"}, min_elements=0))
    constant = edit(constant, lambda h, s: h["tensors"][0].__setitem__(1, [1 << 22]))
    checksums = {"tensors": [], "tree": msgpack.packb(None), "checksum": "xxh3_64", "checksums": [-20] * n}
    return {
        "empty maps": (tc.encode([{}] * n), 0),
        "empty tensors": (tc.encode([np.zeros(0, np.float32) for _ in range(n)]), 0),
        "negative ints": (tc.encode([-20] * n), 0),
        "header ints": (join(checksums, []), 0),
        "nf4 expanding 8x": (nf4, 4 << 16),
        "a chain's intermediate": (chain, 4 << 16),
        "a constant tensor of 16 MiB": (constant, 4 << 22),
    }


@pytest.mark.parametrize("name", list(_hostile()))
@pytest.mark.parametrize("copy", [True, False])
def test_decode_allocates_within_the_stated_bound(name: str, copy: bool) -> None:
    message, cap = _hostile()[name]
    bound = len(message) + cap + PER_HEADER_BYTE * _header_length(message) + SCRATCH
    limits = tc.Limits(max_decoded_bytes=cap)
    with contextlib.suppress(tc.DecodeError):  # once to warm caches and kernels' buffers
        tc.decode(message, limits=limits, copy=copy)
    tracemalloc.start()
    try:
        with contextlib.suppress(tc.DecodeError):
            tc.decode(message, limits=limits, copy=copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= bound, f"{name}: peak {peak} over the bound {bound} of docs/security.md"


def _every_flip(message: bytes) -> list[bytes]:
    data = bytearray(message)
    out = []
    for i in range(len(data) * 8):
        data[i // 8] ^= 1 << (i % 8)
        out.append(bytes(data))
        data[i // 8] ^= 1 << (i % 8)
    return out


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32c"])
def test_every_single_bit_flip_is_refused(algorithm: str) -> None:
    tree: dict[str, Any] = {"w": np.arange(5, dtype=np.float32), "b": np.array([True]), "n": 3}
    message = tc.encode(tree, checksum=algorithm)
    for flipped in _every_flip(message):
        with pytest.raises(tc.DecodeError):
            tc.decode(flipped)


def _linear_cases(n: int) -> dict[str, bytes]:
    """Headers that grow with n in the ways that once cost more than linear time."""
    quantized = tc.Policy({"*": "nf4"}, min_elements=0)
    return {
        "empty maps": tc.encode([{}] * n),
        "empty tensors": tc.encode([np.zeros(0, np.float32) for _ in range(n)]),
        "quantized entries": tc.encode([np.full(3, i, np.float32) for i in range(n)], policy=quantized),
        "shared references": tc.encode([np.ones(2, np.float32)] * n),
    }


def _calls(function: Any, message: bytes) -> int:
    """Python and C calls made by function(message): a measure of work that no machine load perturbs."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        function(message)
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("name", list(_linear_cases(1)))
@pytest.mark.parametrize("entry", ["decode", "inspect"])
def test_header_validation_is_linear_in_its_bytes(name: str, entry: str) -> None:
    """docs/security.md's linear-time promise, as work counted: 4x the header is at most ~4x the calls."""
    function = {"decode": tc.decode, "inspect": inspect}[entry]
    small, large = _linear_cases(250)[name], _linear_cases(1000)[name]
    growth = _header_length(large) / _header_length(small)
    assert 3.5 < growth < 4.5
    assert _calls(function, large) <= 1.15 * growth * _calls(function, small)
