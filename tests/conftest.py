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


def _both_paths(request: pytest.FixtureRequest, c_name: str) -> Iterator[str]:
    import tensorcodec as tc
    from tensorcodec import _c

    use_c = request.param == c_name
    if use_c and not _c.native_available():
        pytest.skip("tensorcodec's C extensions are not built (no C compiler at install?)")
    if use_c and os.environ.get("TENSORCODEC_NATIVE", "1") == "0":
        pytest.skip("TENSORCODEC_NATIVE=0: this run tests the Python paths alone")
    before = tc.native_enabled()
    tc.set_native(use_c)
    try:
        yield str(request.param)
    finally:
        tc.set_native(before)


@pytest.fixture(scope="module", params=["native", "numpy"])
def kernel_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with the C paths and again with the Python ones (module scope: hypothesis-safe)."""
    yield from _both_paths(request, "native")


@pytest.fixture(scope="module", params=["c", "python"])
def wire_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test with the C paths (the wire loops and tree decoder among them) and again with the Python ones."""
    yield from _both_paths(request, "c")
