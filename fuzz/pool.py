"""Runs workers as subprocesses and turns their deaths into findings, so that a campaign survives them.

Each job (entry points, native or not, engine, number of inputs) runs in one worker process at a time;
up to ``workers`` jobs run at once. A worker that exits non-zero crashed on the input it last wrote
to its ``current`` file: that input is a ``crash`` finding and the job restarts after it. A worker
whose input number stays the same for ``HANG_SECONDS`` is killed: a ``hang`` finding, and a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HANG_SECONDS = 10.0
"""Wall time after which an input counts as a hang (its CPU time over 1 s is already a ``slow`` finding)."""
_CURRENT = struct.Struct("<QII")
_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


@dataclass
class Job:
    name: str
    targets: list[str]
    native: bool
    runs: int
    engine: str = "random"
    seed: int = 0
    files: Path | None = None
    done: int = 0
    restarts: int = 0
    deaths: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen[bytes]
    current: Path
    out: Path
    last: tuple[int, float]


def _read_current(path: Path) -> tuple[int, int, bytes] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < _CURRENT.size:
        return None
    number, target, n = _CURRENT.unpack_from(raw)
    return number, target, raw[_CURRENT.size : _CURRENT.size + n]


def _start(job: Job, work: Path, corpus: list[Path], extra: list[str]) -> _Running:
    out = work / job.name
    out.mkdir(parents=True, exist_ok=True)
    current = out / "current"
    current.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "fuzz.worker", "--engine", job.engine, "--targets", ",".join(job.targets)]
    cmd += ["--runs", str(job.runs), "--start", str(job.done), "--seed", str(job.seed)]
    cmd += ["--current", str(current), "--out", str(out)]
    for c in corpus:
        cmd += ["--corpus", str(c)]
    if job.files is not None:
        cmd += ["--files", str(job.files)]
    env = {**os.environ, **_ENV}
    if not job.native:
        env["TENSORCODEC_NATIVE"] = "0"
    else:
        env.pop("TENSORCODEC_NATIVE", None)
    log = open(out / f"log-{job.restarts}.txt", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return _Running(job, proc, current, out, (-1, time.monotonic()))


def _death(run: _Running, category: str) -> None:
    """Records the input a dead or killed worker was running, and where the job resumes."""
    job = run.job
    cur = _read_current(run.current)
    if cur is None or cur[0] < job.done:  # it died before its first input: nothing to retry
        job.deaths.append(
            {
                "target": job.targets[0],
                "category": "crash",
                "file": "",
                "number": job.done,
                "detail": f"worker exit {run.proc.returncode} before its first input, see {run.out}",
            }
        )
        job.done = job.runs
        return
    number, target, data = cur
    detail = f"exit {run.proc.returncode}" if category == "crash" else f"no progress in {HANG_SECONDS:.0f} s"
    file = f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    (run.out / file).write_bytes(data)
    job.deaths.append(
        {"target": job.targets[target], "category": category, "detail": detail, "file": file, "number": number}
    )
    job.done = number + 1
    job.restarts += 1


def run_jobs(
    jobs: list[Job],
    work: Path,
    corpus: list[Path],
    workers: int,
    extra: list[str] | None = None,
    progress: bool = False,
) -> None:
    """Runs every job to its end, ``workers`` at a time; deaths and hangs are recorded on the job."""
    pending = list(jobs)
    running: list[_Running] = []
    while pending or running:
        while pending and len(running) < workers:
            running.append(_start(pending.pop(0), work, corpus, extra or []))
        time.sleep(0.2)
        for run in list(running):
            code = run.proc.poll()
            job = run.job
            if code is None:
                cur = _read_current(run.current)
                number = cur[0] if cur is not None else -1
                if number != run.last[0]:
                    run.last = (number, time.monotonic())
                elif number >= 0 and time.monotonic() - run.last[1] > HANG_SECONDS:
                    run.proc.kill()
                    run.proc.wait()
                    _death(run, "hang")
                    running.remove(run)
                    pending.insert(0, job)
                continue
            running.remove(run)
            cur = _read_current(run.current)
            if code == 0:
                job.done = cur[0] + 1 if cur is not None else job.done
                if progress:
                    print(f"  {job.name}: {job.done} inputs, {job.restarts} restarts", flush=True)
                continue
            _death(run, "crash")
            if job.done < job.runs and job.restarts < 1000:
                pending.insert(0, job)


def findings(work: Path, job: Job) -> list[dict[str, Any]]:
    """The job's findings: those its workers wrote, then the deaths."""
    out: list[dict[str, Any]] = []
    path = work / job.name / "findings.jsonl"
    if path.exists():
        out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out + job.deaths


def results(work: Path, job: Job) -> dict[int, tuple[str, str]]:
    """A replay job's outcomes by item number: (category, detail); deaths included."""
    out: dict[int, tuple[str, str]] = {}
    path = work / job.name / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line:
                number, _, category, detail = json.loads(line)
                out[number] = (category, detail)
    for d in job.deaths:
        out[d["number"]] = (d["category"], d["detail"])
    return out
