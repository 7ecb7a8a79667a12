"""Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default, ci, thorough)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}

# The default keeps the whole suite to a minute or two on a 2-core machine;
# "thorough" is for hunting bugs before a release.
settings.register_profile("default", max_examples=100, **_COMMON)
settings.register_profile("ci", settings.get_profile("default"))
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    # torch warns on every read-only buffer it wraps (copy=False does so on purpose) and on any complex32 use.
    config.addinivalue_line("filterwarnings", "ignore:The given (NumPy array|buffer) is not writable:UserWarning")
    config.addinivalue_line("filterwarnings", "ignore:ComplexHalf support is experimental:UserWarning")


@pytest.fixture(scope="module", params=["native", "numpy"])
def kernel_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with the C accelerator and again with the numpy kernels (module scope: hypothesis-safe)."""
    from tensorcodec import kernels

    if request.param == "native" and not kernels.NATIVE_AVAILABLE:
        pytest.skip("tensorcodec._native is not built (no C compiler at install?)")
    before = kernels.native_enabled()
    kernels.set_native(request.param == "native")
    try:
        yield str(request.param)
    finally:
        kernels.set_native(before)


@pytest.fixture(scope="module", params=["c", "python"])
def wire_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with the C wire loops (tensorcodec._fastwire, _fasttree) and again with the Python ones."""
    from tensorcodec import wire

    built, built_tree = wire._fastwire, wire._fasttree
    if request.param == "c" and (built is None or built_tree is None):
        pytest.skip("tensorcodec._fastwire / _fasttree is not built (no C compiler at install?)")
    wire._fastwire = built if request.param == "c" else None
    wire._fasttree = built_tree if request.param == "c" else None
    try:
        yield str(request.param)
    finally:
        wire._fastwire, wire._fasttree = built, built_tree
