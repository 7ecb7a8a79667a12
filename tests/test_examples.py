"""Every script in examples/ runs and prints what it promises (numpy_only.py with torch unimportable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = {
    "numpy_only.py": "mask     bool      (300,)       bit-exact: True",
    "torch_policy.py": "0.weight  quant4(quant_type=nf4",
    "stream_to_file.py": "lossless: True",
    "grpc_roundtrip.py": "server saw 6 tensors from site-1",
    "zmq_roundtrip.py": "multipart, lossless: True",
    "custom_codec/use_it.py": "check_codec: passed",
    "accounting_report.py": "nf4 ",
}
RUN_ELSEWHERE = {"nvflare_job/job.py", "nvflare_job/trainer.py", "flower_app/app.py"}
"""Run inside their engines' simulators by tests/test_integrations_nvflare.py and test_integrations_flower.py."""
WITHOUT_TORCH = "import runpy, sys; sys.modules['torch'] = None; runpy.run_path(sys.argv[1], run_name='__main__')"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_example_is_tested() -> None:
    scripts = {str(p.relative_to(ROOT / "examples")) for p in (ROOT / "examples").rglob("*.py")}
    assert scripts - {"custom_codec/src/halfsign/__init__.py"} - RUN_ELSEWHERE == set(EXAMPLES)


@pytest.mark.parametrize("script", list(EXAMPLES))
def test_the_example_runs(script: str) -> None:
    done = _run(str(ROOT / "examples" / script))
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXAMPLES[script] in done.stdout


def test_the_numpy_example_needs_no_torch() -> None:
    done = _run("-c", WITHOUT_TORCH, str(ROOT / "examples" / "numpy_only.py"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bit-exact: True" in done.stdout and "nf4 message" in done.stdout
