"""The ``tensorcodec`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from . import __version__
from .core import decode, encode
from .errors import DecodeError
from .models import DEFAULT_MODEL, default_model_path, load_model

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    path = args.model or default_model_path()
    model = {k: np.array(v) for k, v in load_model(path).items()}  # in memory, so timings exclude disk reads
    raw = sum(np.asarray(v).nbytes for v in model.values())
    t0 = time.perf_counter()
    message = encode(model, checksum="xxh3_64")
    t1 = time.perf_counter()
    back = decode(message, copy=False)
    t2 = time.perf_counter()
    same = all(
        back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == np.asarray(v).tobytes()
        for k, v in model.items()
    )
    name = DEFAULT_MODEL if args.model is None else str(path)
    print(f"model      {name}: {len(model)} tensors, {raw:,} bytes of tensor data")
    print(f"message    {len(message):,} bytes ({len(message) - raw:,} bytes of framing, xxh3_64 checksums)")
    print(f"encode     {(t1 - t0) * 1e3:.1f} ms ({raw / (t1 - t0) / 1e9:.2f} GB/s)")
    print(f"decode     {(t2 - t1) * 1e3:.2f} ms, zero-copy views, checksums verified")
    print(f"round trip {'bit-exact' if same else 'MISMATCH'} for every tensor")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorcodec", description="Messages of tensors to compact bytes and back.")
    parser.add_argument("--version", action="version", version=f"tensorcodec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="encode and decode a model, report what happened")
    demo.add_argument("model", nargs="?", help=f"model file (default: the built-in {DEFAULT_MODEL} weights)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    try:
        result: Any = args.run(args)
        return int(result)
    except (OSError, ValueError, TypeError, DecodeError) as e:
        print(f"tensorcodec: error: {e}", file=sys.stderr)
        return 1
