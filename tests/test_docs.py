"""The documentation site builds with --strict (no broken link, anchor or reference), and its API
reference shows every public name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tensorcodec as tc

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
