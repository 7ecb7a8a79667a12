"""A fuzzing worker process: ``python -m fuzz.worker`` (started by ``fuzz.pool``, not by hand).

It warms up (every import a decode may need happens before the limits), then caps its own address
space at its size + ``HEADROOM``, so that no input can take the machine down, and runs inputs:
mutants from its corpus (engine ``random``), libFuzzer's choices under atheris' coverage feedback
(engine ``atheris``), or a list of files (engine ``replay``). Before each input it writes the
input, the input's number and its target to ``--current``, so that when it dies or hangs the pool
knows which input did it. Findings that leave the worker alive are written to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

HEADROOM = 1 << 30
"""Address space a worker may add to what it holds after warming up (the hard limit)."""
_CURRENT = struct.Struct("<QII")  # input number, target index, length


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        from . import targets

        self.targets = args.targets.split(",")
        self.out = Path(args.out)
        self.current = os.open(args.current, os.O_RDWR | os.O_CREAT, 0o600)
        self.count = args.start
        self.check = targets.check
        self.saved: dict[str, int] = {}
        self.results = None
        if args.engine == "replay":
            self.results = open(self.out / "results.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - the process's life

    def run(self, target: int, data: bytes) -> str:
        name = self.targets[target]
        os.pwrite(self.current, _CURRENT.pack(self.count, target, len(data)) + data, 0)
        outcome = self.check(name, data)
        self.count += 1
        if self.results is not None:
            self.results.write(json.dumps([self.count - 1, name, outcome.category, outcome.detail]) + "\n")
            self.results.flush()
        elif outcome.category != "ok":
            self.finding(name, outcome.category, outcome.detail, data, outcome.seconds)
        return outcome.category

    def finding(self, target: str, category: str, detail: str, data: bytes, seconds: float) -> None:
        key = f"{target}|{category}|{detail}"
        file = ""
        if self.saved.get(key, 0) < 3:  # a few inputs per kind of finding are enough to reproduce it
            self.saved[key] = self.saved.get(key, 0) + 1
            file = f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
            (self.out / file).write_bytes(data)
        line = {"target": target, "category": category, "detail": detail, "file": file, "seconds": round(seconds, 3)}
        with open(self.out / "findings.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _warm_up(worker: Worker, inputs: list[bytes]) -> None:
    """Every import and lazy initialisation that a decode may trigger, before the limits apply."""
    from . import targets

    try:
        import torch

        torch.ones(4).sum()
    except ImportError:  # pragma: no cover - torch is optional
        pass
    for name in targets.TARGETS:
        for data in inputs[:50]:
            with contextlib.suppress(Exception):  # only the side effects matter here
                targets.TARGETS[name][1](data)


def _corpus(dirs: list[str], kind: str) -> list[bytes]:
    out = []
    for d in dirs:
        folder = Path(d) / kind
        if folder.is_dir():
            out += [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".bin"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("random", "atheris", "replay"), default="random")
    parser.add_argument("--targets", required=True, help="comma-separated entry points (one unless replaying)")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0, help="number of the first input (after a restart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", action="append", default=[])
    parser.add_argument("--files", help="replay: a file listing target<TAB>path per line")
    parser.add_argument("--current", required=True)
    parser.add_argument("--out", required=True)
    args, rest = parser.parse_known_args(argv)
    warnings.simplefilter("ignore")
    if args.engine == "atheris":
        _instrumented_import()
    from . import mutate, targets

    worker = Worker(args)
    kind = targets.TARGETS[worker.targets[0]][0]
    seeds = _corpus(args.corpus, kind)
    _warm_up(worker, seeds + _corpus(args.corpus, "stream" if kind == "message" else "message"))
    resource.setrlimit(resource.RLIMIT_AS, (targets.address_space() + HEADROOM,) * 2)
    if args.engine == "replay":
        jobs = [line.split("\t") for line in Path(args.files).read_text().splitlines()]
        for name, path in jobs[args.start :]:
            worker.run(worker.targets.index(name), Path(path).read_bytes())
    elif args.engine == "random":
        _random(worker, seeds, mutate.Pools(_corpus(args.corpus, "message")), kind, args)
    else:
        _atheris(worker, mutate.Pools(_corpus(args.corpus, "message")), kind, args, rest)


def _instrumented_import() -> None:
    """Imports every tensorcodec module with atheris' coverage counters in its bytecode."""
    import importlib
    import pkgutil

    import atheris

    with atheris.instrument_imports(include=["tensorcodec"]):
        import tensorcodec

        for info in pkgutil.walk_packages(tensorcodec.__path__, "tensorcodec."):
            if not info.name.startswith(("tensorcodec.transports.", "tensorcodec.testing")):
                importlib.import_module(info.name)


def _random(worker: Worker, seeds: list[bytes], pools: Any, kind: str, args: argparse.Namespace) -> None:
    """Mutants of the seeds and of mutants that decoded (those reached furthest into the decoder)."""
    from .mutate import mutate

    rng = random.Random(f"{args.seed}/{args.start}/{worker.targets[0]}")
    passed: list[bytes] = []
    for _ in range(args.runs - args.start):
        base = rng.choice(passed) if passed and rng.randrange(3) == 0 else rng.choice(seeds)
        data = mutate(base, kind, rng, pools, seeds)
        if worker.run(0, data) == "ok" and len(passed) < 1000 and rng.randrange(20) == 0 and _decodes(worker, data):
            passed.append(data)


def _decodes(worker: Worker, data: bytes) -> bool:
    """Whether ``data`` decodes (it runs the input again, so only a few are asked)."""
    from . import targets

    try:
        targets.TARGETS[worker.targets[0]][1](data)
    except Exception:
        return False
    return True


def _atheris(worker: Worker, pools: Any, kind: str, args: argparse.Namespace, rest: list[str]) -> None:
    """libFuzzer, instrumented on tensorcodec's Python code, with the structure-aware mutator."""
    import atheris

    from .mutate import mutate

    remaining = args.runs - args.start

    def one(data: bytes) -> None:
        worker.run(0, data)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.randrange(8) == 0:
            return bytes(atheris.Mutate(data, max_size))
        return mutate(data, kind, rng, pools, [])[:max_size]

    corpus_dir = Path(args.out) / f"libfuzzer-{kind}"
    corpus_dir.mkdir(exist_ok=True)
    argv = [sys.argv[0], f"-runs={remaining}", "-max_len=262144", "-rss_limit_mb=0", "-timeout=60"]
    argv += [*rest, str(corpus_dir), *[str(Path(d) / kind) for d in args.corpus]]
    atheris.Setup(argv, one, custom_mutator=mutator)
    atheris.Fuzz()  # exits the process when the runs are done


if __name__ == "__main__":
    main()
