#!/usr/bin/env python3
"""Server-side aggregation: ``tc.Aggregator`` over N client messages of a large model, against decoding them.

The model is ``--tensors`` float32 tensors of ``--elements`` each (default 64 x 4 Mi = 1.07 GB);
``--distinct`` client messages are encoded once (the model plus seeded noise, with
``--precision``) and written to a temporary directory. A child process then reads the files
``--clients`` times in turn, one message in memory at a time, as a server receives them:

- *decode*: ``tc.decode`` of each message, the result dropped at once (the time a server spends
  anyway to read N messages);
- *aggregate*: ``Aggregator.add`` of each message with a weight, then ``result()``.

Peak memory is the child's peak RSS (VmHWM) above its RSS before the first message (the
interpreter and imports), against the target of one model plus two messages.

    python benchmarks/aggregation.py                            # 100 clients, 1.07 GB model, nf4
    python benchmarks/aggregation.py --clients 10 --elements 1048576   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tensorcodec as tc


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """VmHWM, this process's own peak (``ru_maxrss`` would carry the parent's across exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def child(mode: str, paths: list[str], clients: int) -> None:
    """Decodes (``mode`` "decode") or aggregates ``clients`` messages read from ``paths`` in turn; prints JSON."""
    base = _rss()
    agg = tc.Aggregator()
    model_bytes = 0
    start = time.perf_counter()
    for i in range(clients):
        message = Path(paths[i % len(paths)]).read_bytes()
        if mode == "decode":
            model_bytes = sum(t.nbytes for t in tc.decode(message).values())
        else:
            agg.add(message, weight=1 + i % 7)
        del message
    if mode == "aggregate":
        model_bytes = sum(t.nbytes for t in agg.result().values())
    seconds = time.perf_counter() - start
    peak = _peak_rss() - base
    print(json.dumps({"seconds": seconds, "peak": peak, "model_bytes": model_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--distinct", type=int, default=4)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--elements", type=int, default=4 << 20)
    parser.add_argument("--precision", default="nf4")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:], args.clients)
        return
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for c in range(args.distinct):
            model = {
                f"layer{i}.weight": rng.standard_normal(args.elements, dtype=np.float32) * (1 + c / 10)
                for i in range(args.tensors)
            }
            path = Path(tmp) / f"client{c}.tc"
            path.write_bytes(tc.encode(model, precision=args.precision))
            paths.append(str(path))
            del model
        message_bytes = max(Path(p).stat().st_size for p in paths)
        got = {
            mode: json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--clients", str(args.clients), "--child", mode, *paths],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for mode in ("decode", "aggregate")
        }
    model_bytes = got["aggregate"]["model_bytes"]
    target = model_bytes + 2 * message_bytes
    print(
        f"model {model_bytes / 1e9:.2f} GB ({args.tensors} x {args.elements} float32), "
        f"{args.clients} clients, {args.precision} messages of {message_bytes / 1e6:.1f} MB"
    )
    print("| | seconds | GB/s of model | peak RSS above start |")
    print("|---|---|---|---|")
    for mode, what in (("decode", "decode each message"), ("aggregate", "Aggregator.add each, then result()")):
        seconds, peak = got[mode]["seconds"], got[mode]["peak"]
        rate = args.clients * model_bytes / seconds / 1e9
        print(f"| {what} | {seconds:.1f} | {rate:.2f} | {peak / 1e9:.2f} GB |")
    ratio = got["aggregate"]["seconds"] / got["decode"]["seconds"]
    peak = got["aggregate"]["peak"]
    print(
        f"aggregate / decode time: {ratio:.2f}x (target <= 2x); peak {peak / 1e9:.2f} GB against"
        f" model + 2 messages = {target / 1e9:.2f} GB ({'met' if peak <= target else 'missed'})"
    )


if __name__ == "__main__":
    main()
