"""The one seam to C (tensorcodec._c): one switch governs every C path, and the environment can keep C out entirely."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import tensorcodec as tc
from tensorcodec import _c
from tensorcodec.accounting import inspect

EXTENSIONS = ("tensorcodec._native", "tensorcodec._fastwire", "tensorcodec._fasttree")


def _workload() -> None:
    """Every path that has a C twin: the raw and coded encode, every decode form, batches, frames, streams."""
    rng = np.random.default_rng(0)
    small = {f"s{i}": rng.standard_normal(i + 1).astype(np.float32) for i in range(40)}
    tree = {
        "w": torch.randn(300, 70),
        "b": rng.standard_normal(513).astype(np.float16),
        "nested": [small, (1, "x", b"y")],
        "n": np.int64(7),
    }
    for precision in (None, "nf4", "fp4", "blockwise8", "bf16", "minmax4", "lossless"):
        policy = tc.Policy({"*": precision}, min_elements=0) if precision else None
        message = tc.encode(tree, policy=policy)
        tc.decode(message)
        tc.decode(message, copy=False)
        tc.decode(message, framework="torch")
        tc.decode(tc.encode_frames(tree, policy=policy))
        inspect(message)
    big = {"w": torch.randn(1 << 19)}
    for precision in ("nf4", "blockwise8"):
        tc.decode(tc.encode(big, precision=precision))
    decoder = tc.StreamDecoder()
    for frame in tc.encode_stream(tree, max_frame_bytes=4096):
        decoder.feed(frame)
    decoder.result()


def _c_calls(run: Callable[[], None]) -> set[str]:
    """The tensorcodec C functions (module.name) that ``run`` calls, seen through the profiler's c_call events."""
    seen: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or getattr(type(owner), "__module__", None) or ""
            if module.startswith("tensorcodec."):
                seen.add(f"{module}.{getattr(arg, '__name__', '?')}")

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


def test_switched_off_no_c_function_is_called() -> None:
    before = tc.native_enabled()
    tc.set_native(False)
    try:
        assert not tc.native_enabled()
        assert _c.kernels() is None and _c.wire() is None and _c.tree() is None
        assert _c_calls(_workload) == set()
    finally:
        tc.set_native(before)


@pytest.mark.skipif(not _c.native_available(), reason="tensorcodec's C extensions are not built")
@pytest.mark.skipif(os.environ.get("TENSORCODEC_NATIVE", "1") == "0", reason="TENSORCODEC_NATIVE=0")
def test_switched_on_every_extension_is_called() -> None:
    before = tc.native_enabled()
    tc.set_native(True)
    try:
        calls = _c_calls(_workload)
    finally:
        tc.set_native(before)
    for extension in EXTENSIONS:
        assert any(call.startswith(extension + ".") for call in calls), (extension, sorted(calls))


def test_environment_keeps_every_extension_out() -> None:
    script = (
        "import sys\n"
        "sys.path[:0] = sys.argv[1:2]\n"
        "from test_c import _workload\n"
        "import tensorcodec as tc\n"
        "_workload()\n"
        "print(tc.native_enabled(), *[m for m in sys.modules if m in "
        f"{EXTENSIONS!r}])\n"
    )
    env = {**os.environ, "TENSORCODEC_NATIVE": "0"}
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", script, here], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


@pytest.mark.skipif(not _c.native_available(), reason="tensorcodec's C extensions are not built")
def test_switching_on_later_imports_the_extensions() -> None:
    script = (
        "import sys, tensorcodec as tc\n"
        "assert not tc.native_enabled()\n"
        f"assert not any(m in sys.modules for m in {EXTENSIONS!r})\n"
        "tc.set_native(True)\n"
        "from tensorcodec import _c\n"
        "print(tc.native_enabled(), _c.kernels() is not None, _c.wire() is not None, _c.tree() is not None)\n"
    )
    env = {**os.environ, "TENSORCODEC_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 4


def test_no_other_module_imports_an_extension() -> None:
    package = os.path.dirname(tc.__file__)
    offenders = []
    for root, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py") or (root == package and name == "_c.py"):
                continue
            with open(os.path.join(root, name), encoding="utf-8") as f:
                text = f.read()
            for extension in EXTENSIONS:
                short = extension.split(".")[1]
                if f"import {short}" in text or f"{extension}" in text.replace(f"``{extension}``", ""):
                    offenders.append(f"{name}: {short}")
    assert offenders == []
