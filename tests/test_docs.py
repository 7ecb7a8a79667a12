"""The documentation site builds with --strict (no broken link, anchor or reference), and its API
reference shows every public name."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tensorcodec as tc
from tensorcodec.codecs import base as codecs_base

ROOT = Path(__file__).parents[1]


def test_the_site_builds_strictly_and_documents_every_public_name(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    anchors = set(re.findall(r'id="([\w.]+)"', (tmp_path / "api" / "index.html").read_text()))
    assert [name for name in tc.__all__ if f"tensorcodec.{name}" not in anchors] == []
    assert "Keep a Changelog" in (tmp_path / "changelog" / "index.html").read_text()


def _documented_objects() -> list[str]:
    return [name for name in tc.__all__ if callable(getattr(tc, name))]


@pytest.mark.parametrize("name", _documented_objects())
def test_every_public_function_and_class_has_an_example_that_runs(name: str) -> None:
    obj = getattr(tc, name)
    doc = obj.__doc__ or ""
    assert "Examples:" in doc and ">>> " in doc, f"{name}'s docstring has no example"
    saved = dict(codecs_base.REGISTRY)
    was_native = tc.native_enabled()
    try:
        test = doctest.DocTestParser().get_doctest(doc, {}, name, None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out: list[str] = []
        runner.run(test, out=out.append)
        assert runner.failures == 0, "".join(out)
    finally:
        codecs_base.REGISTRY.clear()
        codecs_base.REGISTRY.update(saved)
        tc.set_native(was_native)


def test_the_speed_picture_reads_every_workload_of_the_benchmarks_page() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pictures
    finally:
        sys.path.pop(0)
    tables = pictures.workload_tables((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8"))
    assert list(tables) == list(pictures.WORKLOADS)
    for rows in tables.values():
        assert {"tc", "tc frames", "safetensors"} <= set(rows)
        assert all(enc > 0 and dec > 0 for enc, dec in rows.values())
    assert (ROOT / "docs" / "img" / "speed.png").stat().st_size > 10_000
