"""A fuzzing campaign: ``python -m fuzz.run --inputs 1000000 --workers 2``.

Runs every entry point of ``fuzz.targets`` with and without the C extensions, ``--inputs`` inputs
each, prints the inputs per entry point and the findings by category, and copies each finding's
input into the committed corpus (``tests/fuzz_corpus/<kind>/``) unless ``--no-save``.
``--engine atheris`` lets libFuzzer pick the inputs, guided by coverage of tensorcodec's Python
code; ``random`` (the default, and the fallback without atheris) mutates seeds and mutants that
decoded. ``--write-seeds`` rewrites the seed files of the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import pool
from .targets import TARGETS

CORPUS = pool.ROOT / "tests" / "fuzz_corpus"
MODES = {"both": (True, False), "native": (True,), "python": (False,)}


def write_seeds(corpus: Path = CORPUS) -> int:
    from . import seeds

    n = 0
    for kind, inputs in (("message", seeds.messages()), ("stream", seeds.streams())):
        folder = corpus / kind
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)
            n += 1
    return n


def campaign(
    inputs: int,
    workers: int = 1,
    engine: str = "random",
    targets: list[str] | None = None,
    modes: tuple[bool, ...] = (True, False),
    seed: int = 0,
    chunk: int = 50_000,
    work: Path | None = None,
    corpus: Path = CORPUS,
    progress: bool = False,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the campaign; returns inputs and findings per (entry point, mode) and every finding."""
    work = work or Path(tempfile.mkdtemp(prefix="tc-fuzz-"))
    jobs = []
    for native in modes:
        for target in targets or list(TARGETS):
            for k, start in enumerate(range(0, inputs, chunk)):
                runs = min(chunk, inputs - start)
                name = f"{target}-{'native' if native else 'python'}-{k}"
                jobs.append(pool.Job(name, [target], native, runs, engine, seed=seed * 1000 + k))
    began = time.monotonic()
    pool.run_jobs(jobs, work, [corpus], workers, extra, progress)
    rows: dict[str, dict[str, Any]] = {}
    found = []
    for job in jobs:
        row = rows.setdefault(
            f"{job.targets[0]} {'native' if job.native else 'python'}", {"inputs": 0, "findings": Counter()}
        )
        row["inputs"] += job.done
        for f in pool.findings(work, job):
            row["findings"][f["category"]] += 1
            found.append({**f, "native": job.native, "path": str(work / job.name / f["file"]) if f["file"] else ""})
    return {"rows": rows, "findings": found, "seconds": time.monotonic() - began, "work": str(work)}


def save(found: list[dict[str, Any]], corpus: Path = CORPUS) -> list[Path]:
    """Copies every saved finding's input into the corpus, named by its content hash."""
    out = []
    for f in found:
        if f["path"]:
            dest = corpus / TARGETS[f["target"]][0] / Path(f["path"]).name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f["path"], dest)
                out.append(dest)
    return out


def report(result: dict[str, Any]) -> str:
    lines = [f"{'entry point':24} {'inputs':>10}  findings", "-" * 60]
    total = 0
    for name, row in sorted(result["rows"].items()):
        total += row["inputs"]
        cats = ", ".join(f"{c}: {n}" for c, n in sorted(row["findings"].items())) or "none"
        lines.append(f"{name:24} {row['inputs']:>10}  {cats}")
    lines.append(f"{'total':24} {total:>10}  in {result['seconds']:.0f} s")
    kinds = Counter((f["target"], f["category"], f["detail"]) for f in result["findings"])
    if kinds:
        lines += ["", "findings by kind (entry point, category, detail): count"]
        lines += [f"  {t} {c} {d}: {n}" for (t, c, d), n in sorted(kinds.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per entry point and mode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", choices=("random", "atheris"), default="random")
    parser.add_argument("--targets", help="comma-separated entry points; default: " + ",".join(TARGETS))
    parser.add_argument("--mode", choices=sorted(MODES), default="both", help="with the C extensions, without, both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=50_000, help="inputs per worker run")
    parser.add_argument("--work", type=Path, help="folder for logs and findings (default: a new temporary one)")
    parser.add_argument("--no-save", action="store_true", help="do not copy findings into tests/fuzz_corpus")
    parser.add_argument("--write-seeds", action="store_true", help="rewrite the corpus' seed files and exit")
    args, extra = parser.parse_known_args(argv)
    if args.write_seeds:
        print(f"{write_seeds()} seed files in {CORPUS}")
        return 0
    if args.engine == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install 'tensorcodec[fuzz]'); falling back to --engine random")
            args.engine = "random"
    targets = args.targets.split(",") if args.targets else None
    result = campaign(
        args.inputs,
        args.workers,
        args.engine,
        targets,
        MODES[args.mode],
        args.seed,
        args.chunk,
        args.work,
        progress=True,
        extra=extra,
    )
    print(report(result))
    if not args.no_save:
        for path in save(result["findings"]):
            print(f"saved {path.relative_to(pool.ROOT)}")
    print(f"logs and findings: {result['work']}")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
