"""The ``tensorcodec`` command line: report, encode, decode, inspect, demo.

Errors end the program with exit status 1 and one line on stderr, never a
traceback; every command takes ``--json`` (and the table commands ``--csv``) for
machine-readable output and ``-q`` / ``--quiet`` for none.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .accounting import MIB, Report, inspect, nvflare_view, report
from .budget import budget_policy
from .charts import size_chart
from .core import decode, encode
from .errors import DecodeError
from .models import DEFAULT_MODEL, default_model_path, load_model, write_safetensors
from .policy import DEFAULT_MIN_ELEMENTS, Policy
from .wire.tree import named_leaves

__all__ = ["main"]

REPORT_PRECISIONS = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "blockwise8", "nf4", "fp4", "minmax8", "minmax4")
"""Rows of ``tensorcodec report``; "fp32" means the model as it is, losslessly."""


class _Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            width = 24
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {what:<12}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "()"


def _sizes(row: Any) -> list[int]:
    return [row.original_bytes, row.payload_bytes, row.meta_bytes, row.framing_bytes]


def _emit(args: argparse.Namespace, headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    if args.quiet:
        return
    if args.json:
        print(json.dumps([dict(zip(headers, r, strict=True)) for r in rows], indent=1, default=str))
    elif args.csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        print(out.getvalue(), end="")
    else:
        if title:
            print(title)
        print(_table(headers, rows))


def _say(args: argparse.Namespace, text: str, result: dict[str, Any]) -> None:
    """A command's outcome: ``text`` for people, ``result`` as one JSON object (``--json``), or nothing (``-q``)."""
    if args.quiet:
        return
    print(json.dumps(result, default=str) if args.json else text)


def _load(path: str | None) -> tuple[dict[str, Any], str]:
    if path is None:
        return load_model(None), f"{DEFAULT_MODEL} (built-in default, {default_model_path().name})"
    return load_model(path), path


def _policy(args: argparse.Namespace) -> Policy | None:
    if getattr(args, "policy", None):
        text = args.policy
        rules = json.loads(Path(text).read_text() if Path(text).is_file() else text)
        if not isinstance(rules, dict):
            raise ValueError("--policy must be a JSON object of name patterns to precisions (or null)")
        return Policy(rules, min_elements=args.min_elements)
    if getattr(args, "precision", None) and args.precision != "fp32":
        return Policy({"*": args.precision}, min_elements=args.min_elements)
    return None


def _report(args: argparse.Namespace) -> int:
    model, label = _load(args.model)
    model = {k: np.array(v) if isinstance(v, np.memmap) else v for k, v in model.items()}
    precisions = args.precision or list(REPORT_PRECISIONS)
    budgets = args.budget or []
    progress = _Progress(len(precisions) + len(budgets), "report")
    results: list[tuple[str, Report, float]] = []
    choices: list[str] = []
    for p in precisions:
        policy = None if p == "fp32" else Policy({"*": p}, min_elements=args.min_elements)
        t0 = time.perf_counter()
        _message, rep = report(model, policy=policy, quality=not args.no_quality)
        results.append((p, rep, time.perf_counter() - t0))
        progress.step(p)
    for bits in budgets:
        t0 = time.perf_counter()
        chosen = budget_policy(model, bits=bits)
        _message, rep = report(model, policy=chosen, quality=not args.no_quality)
        row_name = f"budget {bits:g}"
        results.append((row_name, rep, time.perf_counter() - t0))
        counts = Counter(row.precision for row in chosen.rows)
        choices.append(f"{row_name}: " + ", ".join(f"{n} x {p}" for p, n in counts.most_common()))
        progress.step(row_name)
    progress.close()
    if args.per_tensor:
        p, rep, _ = results[-1]
        headers = ["tensor", "dtype", "shape", "codec", "original B", "payload B", "meta B", "framing B", "rel MSE"]
        rows = [[r.name, r.dtype, _shape(r.shape), r.codec, *_sizes(r), r.rel_mse] for r in rep.rows]
        _emit(args, headers, rows, f"{label}: {p}, per tensor (bytes)")
        return 0
    headers = ["precision", "message MiB", "payload MiB", "meta MiB", "framing KiB", "% of fp32", "% of original"]
    if not args.no_quality:
        headers += ["rel MSE", "SQNR dB", "max abs err"]
    headers += ["seconds"]
    rows = []
    for p, rep, seconds in results:
        row: list[Any] = [p, rep.message_bytes / MIB, rep.payload_bytes / MIB, rep.meta_bytes / MIB]
        row += [rep.framing_bytes / 1024, rep.percent_of_fp32(), rep.percent_of_original()]
        if not args.no_quality:
            row += [rep.quality.get("rel_mse"), rep.quality.get("sqnr_db"), rep.quality.get("max_abs_err")]
        rows.append([*row, seconds])
    n = len(results[0][1].rows) if results else 0
    title = (
        f"{label}: {n} tensors, {results[0][1].original_bytes:,} bytes as given"
        f" (quantizing floating tensors of >= {args.min_elements} elements; MiB = 2^20 bytes)"
        if results
        else label
    )
    _emit(args, headers, rows, title)
    if choices and not (args.json or args.csv or args.quiet):
        print("\n".join(["", "tensors per precision in each budget (tensorcodec.budget_policy):", *choices]))
    if args.plot:
        size_chart([(p, rep) for p, rep, _ in results], args.plot, f"{label.split(' (')[0]}: message size by precision")
    if args.nvflare and not (args.json or args.csv or args.quiet):
        print()
        nv_rows = []
        for p in ("fp32", "fp16", "bf16", "blockwise8", "nf4", "fp4"):
            size, meta = nvflare_view(model, p)
            fp32 = nvflare_view(model, "fp32")[0]
            nv_rows.append([p, size / MIB, meta / MIB, 100 * (size + meta) / fp32 if fp32 else math.nan])
        print(_table(["precision", "model MiB", "meta MiB", "% of fp32"], nv_rows))
        print("(NVFlare-compatible view: tensor bytes only, each tensor shipping its own bitsandbytes state)")
    return 0


def _encode(args: argparse.Namespace) -> int:
    model, _ = _load(args.input)
    policy = _policy(args)
    message = encode(model, policy=policy, checksum=None if args.checksum == "none" else args.checksum)
    Path(args.output).write_bytes(message)
    raw = inspect(message).original_bytes  # what was given, each tensor once per name; works for any tree
    share = 100 * len(message) / max(raw, 1)
    text = f"{args.output}: {len(message):,} bytes ({share:.2f} % of {raw:,} bytes given)"
    _say(args, text, {"output": args.output, "message_bytes": len(message), "given_bytes": raw, "percent": share})
    return 0


def _decode(args: argparse.Namespace) -> int:
    tree = decode(Path(args.input).read_bytes(), framework="numpy", copy=False)
    flat = {
        path: np.asarray(leaf) for path, leaf in named_leaves(tree, lambda n: isinstance(n, (np.ndarray, np.generic)))
    }
    write_safetensors(dict(sorted(flat.items())), args.output)
    _say(
        args,
        f"{args.output}: {len(flat)} tensors written as safetensors",
        {"output": args.output, "tensors": len(flat)},
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    rep = inspect(Path(args.message).read_bytes())
    headers = ["tensor", "dtype", "shape", "codec", "payload B", "meta B", "framing B"]
    rows = [
        [r.name, r.dtype, _shape(r.shape), r.codec, r.payload_bytes, r.meta_bytes, r.framing_bytes] for r in rep.rows
    ]
    rows.append(["(message)", "", "", "", rep.payload_bytes, rep.meta_bytes, rep.framing_bytes])
    _emit(args, headers, rows, f"{args.message}: {rep.message_bytes:,} bytes, {len(rep.rows)} tensors")
    return 0


def _demo(args: argparse.Namespace) -> int:
    model, label = _load(args.model)
    model = {k: np.array(v) for k, v in model.items()}  # in memory, so timings exclude disk reads
    raw = sum(v.nbytes for v in model.values())
    t0 = time.perf_counter()
    message = encode(model, checksum="xxh3_64")
    t1 = time.perf_counter()
    back = decode(message, copy=False)
    t2 = time.perf_counter()
    same = all(
        back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
        for k, v in model.items()
    )
    lines = [
        f"model      {label}: {len(model)} tensors, {raw:,} bytes of tensor data",
        f"message    {len(message):,} bytes ({len(message) - raw:,} bytes of framing, xxh3_64 checksums)",
        f"encode     {(t1 - t0) * 1e3:.1f} ms ({raw / (t1 - t0) / 1e9:.2f} GB/s)",
        f"decode     {(t2 - t1) * 1e3:.2f} ms, zero-copy views, checksums verified",
        f"round trip {'bit-exact' if same else 'MISMATCH'} for every tensor",
    ]
    result = {
        "model": label,
        "tensors": len(model),
        "tensor_bytes": raw,
        "message_bytes": len(message),
        "encode_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
        "bit_exact": same,
    }
    _say(args, "\n".join(lines), result)
    return 0 if same else 1


_EPILOG = """examples:
  tensorcodec report                          every precision of the built-in MiniLM model
  tensorcodec report model.safetensors --precision nf4 --json
  tensorcodec report --no-quality --plot sizes.png
  tensorcodec encode model.safetensors model.tc --policy '{"*.weight": "nf4", "*": "bf16"}'
  tensorcodec inspect model.tc --csv
  tensorcodec decode model.tc back.safetensors --quiet

exit status: 0 done; 1 an error (one line on stderr) or, for demo, a round trip that was not
bit-exact; 2 a usage error; 130 interrupted."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorcodec",
        description="Messages of tensors to compact bytes and back.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tensorcodec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = f"safetensors, torch checkpoint, .npz or tensorcodec message (default: the built-in {DEFAULT_MODEL})"

    def output_flags(p: argparse.ArgumentParser, tables: bool = True) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--json", action="store_true", help="print JSON")
        if tables:
            group.add_argument("--csv", action="store_true", help="print CSV")
        group.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit status tells")

    p = sub.add_parser("report", help="size and quality of a model at every precision")
    p.add_argument("model", nargs="?", help=model_help)
    p.add_argument("--precision", action="append", help="only these precisions (repeatable)")
    p.add_argument("--min-elements", type=int, default=DEFAULT_MIN_ELEMENTS, help="smaller tensors stay lossless")
    p.add_argument("--no-quality", action="store_true", help="skip the error columns (faster)")
    p.add_argument("--per-tensor", action="store_true", help="one row per tensor (for the last precision)")
    p.add_argument("--nvflare", action="store_true", help="also print the NVFlare-compatible size view")
    p.add_argument("--plot", metavar="FILE", help="also draw the sizes as stacked bars (.png, .svg; needs matplotlib)")
    p.add_argument(
        "--budget",
        type=float,
        action="append",
        metavar="BITS",
        help="also the least-error policy within BITS per element (repeatable)",
    )
    output_flags(p)
    p.set_defaults(run=_report)

    p = sub.add_parser("encode", help="encode a model file into a message")
    p.add_argument("input", help=model_help)
    p.add_argument("output")
    p.add_argument("--precision", help="one precision for every eligible tensor")
    p.add_argument("--policy", help='JSON (or a JSON file): {"*.weight": "nf4", "*norm*": null, "*": "bf16"}')
    p.add_argument("--min-elements", type=int, default=DEFAULT_MIN_ELEMENTS)
    p.add_argument("--checksum", default="xxh3_64", choices=["xxh3_64", "crc32c", "none"])
    output_flags(p, tables=False)
    p.set_defaults(run=_encode)

    p = sub.add_parser("decode", help="decode a message into a safetensors file")
    p.add_argument("input")
    p.add_argument("output")
    output_flags(p, tables=False)
    p.set_defaults(run=_decode)

    p = sub.add_parser("inspect", help="the header of a message, without decoding its payload")
    p.add_argument("message")
    output_flags(p)
    p.set_defaults(run=_inspect)

    p = sub.add_parser("demo", help="encode and decode a model losslessly, report what happened")
    p.add_argument("model", nargs="?", help=model_help)
    output_flags(p, tables=False)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (OSError, ValueError, TypeError, KeyError, DecodeError, ImportError) as e:
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line, always
        print(f"tensorcodec: error: {text or type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
