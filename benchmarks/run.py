#!/usr/bin/env python3
"""tensorcodec against its peers, measured side by side in one run.

The method is that of the shared peer benchmark (/work/shared/bench/peers.py),
so the numbers compare with its peers-baseline.md:

* every repetition runs every codec of a workload, round-robin with a rotating
  start, so that noise on this shared machine hits all codecs alike; tables
  give medians over the timed repetitions, after untimed warm-up ones;
* GC is off inside timed calls, and the objects alive at start are frozen out
  of it so that collecting between calls is cheap;
* glibc is pinned to serve every block >= 128 kB with a fresh mmap ("cold"):
  each call pays for the memory it writes, as any message > 32 MB does under
  glibc defaults anyway, instead of depending on what ran before; minor page
  faults per MB are reported so this cost stays visible;
* peak memory is measured in one child process per workload (peak RSS reset
  through /proc/self/clear_refs), as a multiple of the message size: in the
  steady state after a full-size round trip (the shared benchmark warms up on
  tiny tensors instead), and for tensorcodec also from a trimmed heap, where
  every byte a call allocates counts.

Units: MB = 1e6 B, GB/s = 1e9 B/s of raw tensor bytes.

    python benchmarks/run.py                        # full run, writes docs/benchmarks.md
    python benchmarks/run.py --quick                # smaller sizes, fewer repetitions
    python benchmarks/run.py --workloads llm-bf16 --out ''
    python benchmarks/run.py --profile              # cProfile of small-fp32 encode / decode, then exit
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import cProfile
import ctypes
import datetime
import gc
import importlib
import io
import json
import os
import pickle
import platform
import pstats
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pictures
import workloads

import tensorcodec as tc
from tensorcodec import wire
from tensorcodec.wire import tree

# Zero-copy decoders hand out tensors over read-only memory on purpose; the
# tables report aliasing explicitly instead of torch's warning.
warnings.filterwarnings("ignore", message=r".*(not writable|non-writable).*")

ROOT = Path(__file__).resolve().parent.parent
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ============================================================================
# Codecs: tensorcodec's ways in and out, and the peers it replaces
# ============================================================================


@dataclass
class Codec:
    encode: Callable[[Any], Any]
    """dict of tensors -> message: one bytes-like object or a list of them (frames)."""
    decode: Callable[[Any], Any]
    note: str
    numpy_input: bool = False
    """Fed numpy views of the workload's tensors instead of the torch tensors."""
    prepare: Callable[[Any], None] | None = None
    """Called once per workload, untimed: what a real sender sets up once (a reusable buffer)."""


class IntoBuffer:
    """``encode_into`` one buffer that is allocated and written once per workload and reused,
    as a sender with a long-lived send buffer would; the message is a view of it."""

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)

    def prepare(self, tensors: Any) -> None:
        size = sum(memoryview(f).nbytes for f in tc.encode_frames(tensors))
        self.buf = np.ones(size, dtype=np.uint8)  # written, so its pages are resident before timing

    def encode(self, tensors: Any) -> memoryview:
        return memoryview(self.buf)[: tc.encode_into(tensors, self.buf)]


def _tagged(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, np.ndarray[Any, Any]]]:
    """numpy views for pickle: bf16 as int16 plus a dtype tag, since numpy has no bf16 that
    pickle sends out of band (an ml_dtypes array pickles in-band)."""
    return {
        k: (str(t.dtype), t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy())
        for k, t in tensors.items()
    }


def _untagged(obj: dict[str, tuple[str, np.ndarray[Any, Any]]]) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(a).view(torch.bfloat16) if dt == "torch.bfloat16" else torch.from_numpy(a)
        for k, (dt, a) in obj.items()
    }


def _pickle_oob_encode(tensors: dict[str, torch.Tensor]) -> list[Any]:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(_tagged(tensors), protocol=5, buffer_callback=buffers.append)
    return [head, *(b.raw() for b in buffers)]


def _torch_save(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def _msgpack_numpy_encode(tensors: dict[str, torch.Tensor]) -> bytes:
    import msgpack
    import msgpack_numpy

    return msgpack.packb({k: t.numpy() for k, t in tensors.items()}, default=msgpack_numpy.encode)


def _msgpack_numpy_decode(msg: bytes) -> dict[str, torch.Tensor]:
    import msgpack
    import msgpack_numpy

    return {k: torch.from_numpy(a) for k, a in msgpack.unpackb(msg, object_hook=msgpack_numpy.decode).items()}


def codecs() -> dict[str, Codec]:
    """All codecs, tensorcodec first. A fresh set per call: IntoBuffer holds per-workload state."""
    import safetensors.torch

    into = IntoBuffer()
    view = dict(copy=False)
    return {
        "tc": Codec(tc.encode, lambda m: tc.decode(m, **view), "encode -> bytes; decode(copy=False): read-only views"),
        "tc +xxh3_64": Codec(
            lambda d: tc.encode(d, checksum="xxh3_64"),
            lambda m: tc.decode(m, **view),
            "encode(checksum='xxh3_64'); decode(copy=False) verifies every segment",
        ),
        "tc +crc32c": Codec(
            lambda d: tc.encode(d, checksum="crc32c"),
            lambda m: tc.decode(m, **view),
            "encode(checksum='crc32c'); decode(copy=False) verifies every segment",
        ),
        "tc copy=True": Codec(
            tc.encode, tc.decode, "encode -> bytes; decode(copy=True): writable tensors of their own"
        ),
        "tc frames": Codec(
            tc.encode_frames, lambda m: tc.decode(m, **view), "encode_frames; decode(frames, copy=False)"
        ),
        "tc into-buffer": Codec(
            into.encode,
            lambda m: tc.decode(m, **view),
            "encode_into a reused numpy buffer; decode(copy=False)",
            prepare=into.prepare,
        ),
        "tc numpy-in": Codec(tc.encode, lambda m: tc.decode(m, **view), "numpy arrays in; decode(copy=False)", True),
        "tc numpy-in copy=True": Codec(tc.encode, tc.decode, "numpy arrays in; decode(copy=True)", True),
        "safetensors": Codec(safetensors.torch.save, safetensors.torch.load, "safetensors.torch.save / load (bytes)"),
        "torch.save": Codec(
            _torch_save,
            lambda m: torch.load(io.BytesIO(m), weights_only=True),
            "torch.save into BytesIO / torch.load(weights_only=True)",
        ),
        "pickle5": Codec(
            lambda d: pickle.dumps(_tagged(d), protocol=5),
            lambda m: _untagged(pickle.loads(m)),
            "pickle protocol 5 of numpy views, in-band (unsafe on untrusted input)",
        ),
        "pickle5 oob": Codec(
            _pickle_oob_encode,
            lambda m: _untagged(pickle.loads(m[0], buffers=m[1:])),
            "pickle 5 with buffer_callback: [header, *buffers] frames (unsafe on untrusted input)",
        ),
        "msgpack-numpy": Codec(
            _msgpack_numpy_encode, _msgpack_numpy_decode, "msgpack + msgpack_numpy of tensor.numpy()"
        ),
    }


# ============================================================================
# Measurement
# ============================================================================


def timed(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float, int]:
    """(result, seconds, minor page faults) of one call, with GC off inside."""
    gc.collect()
    gc.disable()
    try:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        out = fn(arg)
        dt = time.perf_counter() - t0
        return out, dt, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    finally:
        gc.enable()


def pin_malloc_cold() -> str:
    """Fresh mmap for every block >= 128 kB, so page-fault costs do not depend on history."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(-3, 128 << 10) and libc.mallopt(-1, 128 << 10):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
            return "cold (mallopt: mmap and trim thresholds 128 kB)"
    except (OSError, AttributeError):
        pass
    return "glibc defaults (mallopt unavailable)"


def _span(obj: Any) -> tuple[int, int]:
    """(address, bytes) of a tensor, array or bytes-like object."""
    if isinstance(obj, torch.Tensor):
        return obj.data_ptr(), obj.numel() * obj.element_size()
    if not isinstance(obj, np.ndarray):
        obj = np.frombuffer(obj, dtype=np.uint8)
    return obj.__array_interface__["data"][0], obj.nbytes


def _frames(msg: Any) -> list[Any]:
    return list(msg) if isinstance(msg, list) else [msg]


def aliased_bytes(inner: list[Any], outer: list[Any]) -> int:
    """Bytes of the ``inner`` objects that lie inside the memory of one of the ``outer`` objects."""
    ranges = sorted((p, p + n) for p, n in map(_span, outer) if n)
    starts = [s for s, _ in ranges]
    total = 0
    for p, n in map(_span, inner):
        i = bisect.bisect_right(starts, p) - 1
        if n and i >= 0 and p + n <= ranges[i][1]:
            total += n
    return total


def _raw(v: Any) -> np.ndarray[Any, Any]:
    if isinstance(v, torch.Tensor):
        return v.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(v).reshape(-1).view(np.uint8)


def mismatch(src: dict[str, Any], out: Any) -> str | None:
    """Why ``out`` is not a bit-exact copy of ``src`` (same framework, dtype, shape, bytes), or None."""
    if not isinstance(out, dict) or set(out) != set(src):
        return "keys differ"
    for k, a in src.items():
        b = out[k]
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return f"{k}: {type(a).__name__} came back as {type(b).__name__}"
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return f"{k}: {a.dtype}{tuple(a.shape)} came back as {b.dtype}{tuple(b.shape)}"
        if not np.array_equal(_raw(a), _raw(b)):
            return f"{k}: bytes differ"
    return None


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"


def inputs_of(wl: workloads.Workload) -> dict[bool, dict[str, Any]]:
    return {False: wl.tensors, True: {k: workloads.numpy_view(t) for k, t in wl.tensors.items()}}


def bench_workload(wl: workloads.Workload, all_codecs: dict[str, Codec], reps: int, warmup: int) -> dict[str, dict]:
    inputs = inputs_of(wl)
    rows: dict[str, dict[str, Any]] = {
        n: {"enc": [], "dec": [], "fenc": [], "fdec": [], "status": "ok"} for n in all_codecs
    }
    for c in all_codecs.values():
        if c.prepare:
            c.prepare(inputs[c.numpy_input])
    names = list(all_codecs)
    for r in range(warmup + reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            row, c = rows[name], all_codecs[name]
            if row["status"] != "ok":
                continue
            src, stage, msg, out = inputs[c.numpy_input], "encode", None, None
            try:
                msg, te, fe = timed(c.encode, src)
                stage = "decode"
                out, td, fd = timed(c.decode, msg)
                if r >= warmup:
                    for key, value in zip(("enc", "dec", "fenc", "fdec"), (te, td, fe, fd), strict=True):
                        row[key].append(value)
                if r == warmup + reps - 1:
                    stage = "check"
                    frames = _frames(msg)
                    row["size"] = sum(_span(f)[1] for f in frames)
                    row["alias_enc"] = aliased_bytes(frames, list(src.values())) / wl.raw_bytes
                    row["alias_dec"] = aliased_bytes(list(out.values()), frames) / wl.raw_bytes
                    bad = mismatch(src, out)
                    if bad:
                        row["status"] = f"WRONG: {bad}"
            except Exception as e:  # a failing codec is a result, not the end of the run
                row["status"] = f"FAIL {stage}: {_first_line(e)}"
            del msg, out
    return rows


# --- peak memory, in a child process -----------------------------------------
def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _peak(fn: Callable[[Any], Any], arg: Any, trimmed: bool = False) -> tuple[Any, int]:
    """(result, peak RSS growth in bytes) of one call.

    Steady state (default): what the allocator kept from the round trip before is reused, as in a sender
    that encodes again and again; glibc's automatic trimming is off during the call, so that giving back
    earlier garbage cannot hide growth. ``trimmed``: the heap is trimmed first, so every byte the call
    allocates counts (a process's first call).
    """
    gc.collect()
    libc = _libc()
    if libc and trimmed:
        libc.malloc_trim(0)
    if libc:
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    try:
        base = _proc_status("VmRSS:")
        _reset_peak()
        out = fn(arg)
        return out, _proc_status("VmHWM:") - base
    finally:
        if libc:
            libc.mallopt(-1, 128 << 10)


def memory_child(args: argparse.Namespace) -> None:
    """Prints the peak extra RSS of every codec's encode and decode on one workload as JSON.

    RSS, not tracemalloc: it counts what torch, numpy and the allocators really take from the system.
    """
    wl = build(args, args.mem_child)
    inputs = inputs_of(wl)
    result = {}
    for name, c in codecs().items():
        src, msg, out = inputs[c.numpy_input], None, None
        try:
            if c.prepare:
                c.prepare(src)
            # One full-size round trip first: measure the steady state of a sender that encodes again and
            # again, not lazy imports or the Python allocator growing its arenas on a process's first call
            # (which otherwise depends on which codec happened to run before).
            c.decode(c.encode(src))
            msg, enc = _peak(c.encode, src)
            out, dec = _peak(c.decode, msg)
            msg = out = None
            msg, enc_trimmed = _peak(c.encode, src, trimmed=True)
            result[name] = [enc, dec, enc_trimmed]
        except Exception:  # the timing run reports failures
            pass
        del msg, out, c
    print("MEMJSON " + json.dumps(result))


def measure_peaks(args: argparse.Namespace, name: str) -> dict[str, list[int]]:
    # Fixed thresholds: big blocks are mmapped and unmapped on free, so RSS tracks live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--_mem-child", name]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("MEMJSON "):
            return json.loads(line.removeprefix("MEMJSON "))
    log(f"  memory child for {name} failed (rc {p.returncode}): {p.stderr.strip()[-300:]}")
    return {}


# --- checksums and copies: the ceilings that encode and verified decode hit ---
def bench_bandwidth(nbytes: int, reps: int) -> list[tuple[str, float]]:
    """GB/s of each checksum and of plain copies over the same random bytes, round-robin."""
    import google_crc32c
    import xxhash

    data = np.random.default_rng(0).integers(0, 256, size=nbytes, dtype=np.uint8)
    warm = data.copy()
    cases: dict[str, Callable[[Any], Any]] = {
        "xxh3_64 (xxhash.xxh3_64_intdigest)": xxhash.xxh3_64_intdigest,
        f"crc32c (google_crc32c.value, {google_crc32c.implementation} implementation)": google_crc32c.value,
        "crc32 (zlib.crc32)": zlib.crc32,
        "memcpy: np.copyto into a warm preallocated buffer": lambda d: np.copyto(warm, d),
        "copy into fresh bytes: bytes(memoryview) (what encode -> bytes pays)": lambda d: bytes(memoryview(d)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(reps + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _, dt, _ = timed(cases[name], data)
            if r:
                times[name].append(dt)
    return [(k, nbytes / statistics.median(v) / 1e9) for k, v in times.items()]


# --- where tensorcodec's time goes on many small tensors ----------------------
ENCODE_STAGE = "encode (+ join into bytes)"
DECODE_VIEW_STAGE = "decode copy=False (+ views, tree)"
DECODE_COPY_STAGE = "decode copy=True"


def breakdown(wl: workloads.Workload, reps: int) -> list[tuple[str, float | str, float | str]]:
    """µs per tensor of each stage of encode and decode, for torch and numpy inputs.

    ``tree.flatten`` and ``wire.parse_message`` are internals, timed alone to
    split encode into walk / header / join and decode into header / tensors;
    if their signatures change, their rows say so instead of failing the run.
    """
    inputs = inputs_of(wl)
    limits = wire.DEFAULT_LIMITS
    # (label, function, takes the message rather than the tensors)
    stages: list[tuple[str, Callable[[Any], Any], bool]] = [
        ("walk the tree, make leaves (tree.flatten)", lambda d: tree.flatten(d, limits.max_depth), False),
        ("encode_frames (+ header; no tensor bytes copied)", tc.encode_frames, False),
        (ENCODE_STAGE, tc.encode, False),
        (
            "parse and validate the header (wire.parse_message)",
            lambda m: wire.parse_message(wire.Rope(m), limits, True),
            True,
        ),
        (DECODE_VIEW_STAGE, lambda m: tc.decode(m, copy=False), True),
        (DECODE_COPY_STAGE, tc.decode, True),
        ("decode(encode_frames(...)) copy=False, frames as sent", lambda m: tc.decode(m, copy=False), True),
    ]
    messages = {kind: (tc.encode(d), tc.encode_frames(d)) for kind, d in inputs.items()}

    def arg(i: int, kind: bool) -> Any:
        label, _, on_message = stages[i]
        return messages[kind][1 if "frames as sent" in label else 0] if on_message else inputs[kind]

    times: dict[tuple[int, bool], list[float] | str] = {}
    for i, (_, fn, _) in enumerate(stages):
        for kind in inputs:
            try:
                fn(arg(i, kind))
                times[(i, kind)] = []
            except Exception as e:
                times[(i, kind)] = f"n/a ({_first_line(e)})"
    keys = [k for k, v in times.items() if isinstance(v, list)]
    for r in range(reps + 1):
        for i, kind in keys[r % len(keys) :] + keys[: r % len(keys)]:
            _, dt, _ = timed(stages[i][1], arg(i, kind))
            if r:
                times[(i, kind)].append(dt)  # type: ignore[union-attr]

    def cell(i: int, kind: bool) -> float | str:
        v = times[(i, kind)]
        return v if isinstance(v, str) else statistics.median(v) / wl.n_tensors * 1e6

    return [(label, cell(i, False), cell(i, True)) for i, (label, _, _) in enumerate(stages)]


def profile(wl: workloads.Workload, calls: int = 20) -> None:
    """cProfile top-10 (by own time) of encode and decode on ``wl``, printed to stdout.

    cProfile's own cost per Python call inflates code that makes many small calls: read the ranking, and
    take absolute times from the breakdown table of a normal run.
    """
    msg = tc.encode(wl.tensors)
    cases = {
        "encode (torch in)": lambda: tc.encode(wl.tensors),
        "decode copy=False": lambda: tc.decode(msg, copy=False),
        "decode copy=True": lambda: tc.decode(msg),
    }
    for title, fn in cases.items():
        fn()
        gc.collect()
        gc.disable()  # as in the timed runs: a collection would be charged to whatever function it hit
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        gc.enable()
        print(f"\n## {title}: {calls} calls on {wl.name} ({wl.n_tensors} tensors)")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(10)


# ============================================================================
# Report
# ============================================================================


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 2**20

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "-"

    dists = ("torch", "numpy", "safetensors", "msgpack", "msgpack-numpy", "ml_dtypes", "xxhash", "google-crc32c")
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
        f"torch threads {torch.get_num_threads()}",
        "memory": f"{mem:.1f} GiB",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "libraries": f"tensorcodec {tc.__version__} (commit {revision()}), "
        + ", ".join(f"{d} {ver(d)}" for d in dists),
    }


def revision() -> str:
    """The commit measured, and whether tensorcodec/ differed from it: the library changes quickly."""

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (
        " + uncommitted changes in tensorcodec/" if git("status", "--porcelain", "--", "tensorcodec") else ""
    )


def f_num(x: float | None) -> str:
    """3 significant digits, never scientific: the tables span 0.01 to 10,000."""
    if x is None or x != x:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def f_bytes(n: float) -> str:
    return f"{n:,.0f} B" if abs(n) < 1e4 else f"{n / 1e3:,.1f} kB" if abs(n) < 1e7 else f"{n / 1e6:,.2f} MB"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in (header, align, *rows)] + [""]


def _med(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def summarize(wl: workloads.Workload, rows: dict[str, dict], peaks: dict[str, list[int]]) -> None:
    """Adds medians and derived figures to ``rows`` in place."""
    st = rows["safetensors"]
    for name, r in rows.items():
        if not r["enc"]:
            continue
        r["enc_s"], r["dec_s"] = _med(r["enc"]), _med(r["dec"])
        r["spread"] = [(max(v) - min(v)) / _med(v) for v in (r["enc"], r["dec"])]
        r["raw"] = wl.raw_bytes
        r["x_st"] = (_med(st["enc"]) / r["enc_s"], _med(st["dec"]) / r["dec_s"]) if st["enc"] else None
        # Ratio of the fastest repetitions: less sensitive to other jobs on the machine than the medians.
        r["x_best"] = (min(st["enc"]) / min(r["enc"]), min(st["dec"]) / min(r["dec"])) if st["enc"] else None
        r["overhead"] = (r["size"] - wl.raw_bytes) / wl.n_tensors
        r["overhead_nokeys"] = (r["size"] - wl.raw_bytes - wl.key_bytes) / wl.n_tensors
        if name in peaks:
            r["peak"] = peaks[name]


def workload_table(wl: workloads.Workload, rows: dict[str, dict]) -> list[str]:
    header = [
        "codec",
        "enc GB/s",
        "dec GB/s",
        "enc / dec ms",
        "x safetensors enc / dec",
        "µs per tensor enc / dec",
        "faults/MB enc / dec",
        "message",
        "overhead B/tensor (excl. keys)",
        "peak extra enc / dec (x message)",
        "zero-copy enc / dec",
        "spread enc / dec",
        "bit-exact",
    ]
    out = []
    mb = wl.raw_bytes / 1e6
    for name, r in rows.items():
        if "enc_s" not in r:
            out.append([name] + ["-"] * (len(header) - 2) + [r["status"]])
            continue
        peak = r.get("peak")
        out.append(
            [
                name,
                f_num(wl.raw_bytes / r["enc_s"] / 1e9),
                f_num(wl.raw_bytes / r["dec_s"] / 1e9),
                f"{f_num(r['enc_s'] * 1e3)} / {f_num(r['dec_s'] * 1e3)}",
                f"{f_num(r['x_st'][0])} / {f_num(r['x_st'][1])}" if r["x_st"] else "-",
                f"{f_num(r['enc_s'] / wl.n_tensors * 1e6)} / {f_num(r['dec_s'] / wl.n_tensors * 1e6)}",
                f"{_med(r['fenc']) / mb:.0f} / {_med(r['fdec']) / mb:.0f}",
                f_bytes(r["size"]),
                f"{r['overhead']:.1f} ({r['overhead_nokeys']:.1f})",
                f"{peak[0] / r['size']:.2f} / {peak[1] / r['size']:.2f}" if peak else "-",
                f"{r['alias_enc']:.0%} / {r['alias_dec']:.0%}",
                f"{r['spread'][0]:.0%} / {r['spread'][1]:.0%}",
                "yes" if r["status"] == "ok" else r["status"],
            ]
        )
    return md_table(header, out)


def targets(results: dict[str, dict[str, dict]], small_us: list[tuple[str, Any, Any]]) -> list[str]:
    """Each target with the measured figure and a plain verdict (speed verdicts go by the medians)."""
    lines = []

    def verdict(ok: bool, what: str, measured: str) -> None:
        lines.append(f"- **{'MET' if ok else 'NOT MET'}** — {what}: {measured}.")

    def beside(within: bool, what: str, measured: str) -> None:
        """A stricter reading than the issue's target, shown beside it."""
        lines.append(f"- *beside the targets, {'within' if within else 'over'}* — {what}: {measured}.")

    def row(wl: str, codec: str) -> dict[str, Any] | None:
        r = results.get(wl, {}).get(codec)
        return r if r and "enc_s" in r else None

    def speedup(r: dict[str, Any], i: int) -> str:
        return f"{f_num(r['x_st'][i])}x (fastest repetitions: {f_num(r['x_best'][i])}x)"

    def close(x: float, goal: float) -> str:
        near = goal / 2 < x < goal * 2
        return " (within 2x of the goal: on this shared machine such a verdict can flip between runs)" if near else ""

    for codec, goal, what in (
        ("tc", 400, "decode copy=False on llm-bf16 ≥ 400x safetensors decode speed"),
        ("tc +xxh3_64", 2.5, "decode with xxh3_64 verification on llm-bf16 ≥ 2.5x safetensors decode speed"),
    ):
        if r := row("llm-bf16", codec):
            np_in = row("llm-bf16", "tc numpy-in") if codec == "tc" else None
            extra = f"; numpy in and out {speedup(np_in, 1)}" if np_in else ""
            x = r["x_st"][1]
            verdict(x >= goal, what, f"{speedup(r, 1)}, {f_num(r['dec_s'] * 1e3)} ms{extra}{close(x, goal)}")
    enc = {wl: r for wl in results if (r := row(wl, "tc"))}
    if enc:
        worst = min(r["x_st"][0] for r in enc.values())
        verdict(
            worst >= 2,
            "encode to bytes ≥ 2x safetensors encode speed (every workload)",
            ", ".join(f"{wl} {speedup(r, 0)}" for wl, r in enc.items()) + close(worst, 2),
        )
    frames = {wl: r for wl in results if (r := row(wl, "tc frames"))}
    if frames:
        each = ", ".join(
            f"{wl} {r['alias_enc']:.2%} of tensor bytes aliased, {_med(r['fenc']):.0f} page faults, peak extra "
            f"{f_bytes(r['peak'][0]) if 'peak' in r else '-'} (header {f_bytes(r['size'] - r['raw'])})"
            for wl, r in frames.items()
        )
        verdict(
            all(r["alias_enc"] >= 0.9999 for r in frames.values()),
            "encode_frames copies no tensor bytes (every tensor byte of the frames is the source's own memory)",
            each,
        )
    by = {label: (t, n) for label, t, n in small_us}
    if all(isinstance(x, float) for k in (ENCODE_STAGE, DECODE_VIEW_STAGE, DECODE_COPY_STAGE) for x in by.get(k, "-")):
        e = by[ENCODE_STAGE]
        for label, stage in (("decode(copy=False)", DECODE_VIEW_STAGE), ("decode(copy=True)", DECODE_COPY_STAGE)):
            d = by[stage]
            # The target compares with pickle 5 out-of-band, whose decode is zero-copy like copy=False.
            (verdict if stage == DECODE_VIEW_STAGE else beside)(
                max(e[0] + d[0], e[1] + d[1]) <= 5,
                f"small-fp32: encode + {label} ≤ 5 µs per tensor",
                f"torch in {e[0] + d[0]:.2f} µs ({e[0]:.2f} + {d[0]:.2f}), "
                f"numpy in {e[1] + d[1]:.2f} µs ({e[1]:.2f} + {d[1]:.2f})",
            )
    over = {wl: r for wl in results if (r := row(wl, "tc"))}
    if over:
        each = ", ".join(f"{wl} {r['overhead']:.1f} ({r['overhead_nokeys']:.1f})" for wl, r in over.items())
        verdict(
            max(r["overhead_nokeys"] for r in over.values()) <= 64,
            "wire overhead ≤ 64 B per tensor, keys excluded (keys are user content)",
            f"B per tensor with keys (without): {each}",
        )
        beside(max(r["overhead"] for r in over.values()) <= 64, "the wire overhead counting the keys", "see above")
    peaks = [
        f"{wl}{label} {r['peak'][0] / r['size']:.2f}x"
        for wl in results
        for codec, label in (("tc", ""), ("tc numpy-in", " (numpy in)"))
        if (r := row(wl, codec)) and "peak" in r
    ]
    if peaks:
        worst = max(float(p.rsplit(" ", 1)[1][:-1]) for p in peaks)
        trimmed = [
            f"{wl}{label} {r['peak'][2] / r['size']:.2f}x"
            for wl in results
            for codec, label in (("tc", ""), ("tc numpy-in", " (numpy in)"))
            if (r := row(wl, codec)) and len(r.get("peak", ())) > 2
        ]
        verdict(
            worst <= 1.0,
            "peak extra memory of encode ≤ 1.0x message size (steady state, as shown, 2 decimals)",
            ", ".join(peaks) + (f"; a first call from a trimmed heap: {', '.join(trimmed)}" if trimmed else ""),
        )
    return lines


def render(run: dict[str, Any]) -> str:
    m = run["machine"]
    lines = [
        "# tensorcodec benchmarks",
        "",
        f"- **Date**: {run['date']}",
        f"- **Machine**: {m['cpu']}; {m['memory']} memory; {m['os']}; Python {m['python']}",
        f"- **Libraries**: {m['libraries']}",
        f"- **Command**: `{run['command']}` (total {run['elapsed_s']:.0f} s)",
        f"- **Settings**: {run['settings']}",
        f"- **Load average** (1 min; other jobs share this machine): {run['load']}",
        "",
        "Method: every repetition runs all codecs of a workload round-robin with a rotating start; the "
        "tables give medians of the timed repetitions (the machine is shared and noisy: compare rows of one run, "
        "as ratios). GC is off inside timed calls. The allocator is pinned so that every block ≥ 128 kB is a "
        "fresh mmap: a call that returns new memory pays its page faults every time (*faults/MB*; writing a fresh "
        "4 KiB-paged buffer costs 244 per MB). Units: MB = 1e6 B, GB/s = 1e9 B/s of raw tensor bytes. "
        "The code is `benchmarks/run.py`; workloads (same shapes and seeds as the shared peer baseline) are in "
        "`benchmarks/workloads.py`.",
        "",
        "![Encode and decode throughput of tensorcodec and its peers per workload, log scale](img/speed.png)",
        "",
        "The picture is drawn from this page's workload tables by `python benchmarks/pictures.py` (run.py redraws "
        "it when it writes the page). tensorcodec's decode bars are zero-copy (`copy=False`, read-only views into "
        "the message); `tc frames` is `encode_frames`, which sends the tensors' own memory.",
        "",
        "## Targets",
        "",
        "Computed by `benchmarks/run.py` from this run's numbers. Speed verdicts use the ratio of medians against "
        "safetensors; the ratio of the fastest repetitions of each is shown beside it.",
        "",
        *run["targets"],
        "",
        "## Checksums and copies",
        "",
        f"{f_bytes(run['bandwidth_bytes'])} of random bytes, median of {run['reps']} round-robin repetitions.",
        "",
        *md_table(["operation", "GB/s"], [[k, f_num(v)] for k, v in run["bandwidth"]]),
        "## Workloads",
        "",
        *md_table(
            ["workload", "tensors", "dtypes", "raw bytes", "key bytes", "description"],
            [
                [
                    w.name,
                    str(w.n_tensors),
                    ", ".join(f"{k}x{v}" for k, v in w.dtype_counts().items()),
                    f_bytes(w.raw_bytes),
                    f_bytes(w.key_bytes),
                    w.note,
                ]
                for w in run["workloads"]
            ],
        ),
        "Columns: *x safetensors* = speed relative to safetensors in this run (higher is faster). *overhead* = "
        "(message - raw tensor bytes) / tensors; in brackets without the UTF-8 bytes of the dict keys. "
        "*peak extra* = peak RSS growth during the call in a child process, output included, as a multiple of "
        "the message size, after one untimed full-size round trip of the same codec (steady state: memory the "
        "allocator kept is reused; glibc's trimming is off during the call, so that returning earlier garbage "
        "cannot hide growth). "
        "*zero-copy* = share of the raw tensor bytes that the message aliases in the source tensors (enc) and that "
        "the decoded tensors alias in the message (dec). *spread* = (max - min) / median of the timed repetitions: "
        "a large one marks a row that noise hit. *bit-exact* = same framework, dtype, shape and bytes as the source.",
        "",
    ]
    for wl in run["workloads"]:
        lines += [f"### {wl.name} — {f_bytes(wl.raw_bytes)} raw, {wl.n_tensors} tensors", ""]
        lines += workload_table(wl, run["results"][wl.name])
    if run["small"]:
        lines += [
            "## Where tensorcodec's time goes on small-fp32",
            "",
            f"µs per tensor (median of {run['reps_small']} round-robin repetitions); each stage includes the ones "
            "above it in its group.",
            "",
            *md_table(["stage", "torch in", "numpy in"], [[s, f"{t:.2f}", f"{n:.2f}"] for s, t, n in run["small"]]),
        ]
    lines += ["## Codecs", "", *(f"- **{k}**: {c.note}" for k, c in codecs().items()), ""]
    return "\n".join(lines)


def keep_sections(path: Path) -> str:
    """Sections that other scripts put into the same report between ``<!-- name:begin -->`` and
    ``<!-- name:end -->`` (benchmarks/bench_stream.py does), so that a rerun of this one keeps them."""
    old = path.read_text() if path.exists() else ""
    blocks = [m.group(0) for m in re.finditer(r"<!-- ([\w.-]+):begin -->.*?<!-- \1:end -->", old, re.S)]
    return "".join(f"\n{b}\n" for b in blocks)


# ============================================================================
# Entry point
# ============================================================================


def build(args: argparse.Namespace, name: str) -> workloads.Workload:
    return workloads.build(name, llm_mb=args.llm_mb, small_count=args.small_count)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="llm 32 MB, 500 small tensors, 3 repetitions, 64 MB checksums")
    ap.add_argument(
        "--workloads", default=",".join(workloads.NAMES), help="comma list of " + ", ".join(workloads.NAMES)
    )
    ap.add_argument(
        "--out",
        default=None,
        help="Markdown report ('' for none; default docs/benchmarks.md, benchmarks/out/quick.md with --quick)",
    )
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per codec")
    ap.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    ap.add_argument("--llm-mb", type=float, default=256, help="size of the synthetic LLM workload (MB)")
    ap.add_argument("--small-count", type=int, default=2000, help="tensors in small-fp32")
    ap.add_argument("--bandwidth-mb", type=float, default=256, help="bytes for the checksum / memcpy benchmark (MB)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--profile", action="store_true", help="print cProfile top-10 of small-fp32 encode/decode; exit")
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.llm_mb, args.small_count, args.reps, args.bandwidth_mb = 32, 500, 3, 64
    if args.out is None:
        args.out = str(ROOT / ("benchmarks/out/quick.md" if args.quick else "docs/benchmarks.md"))
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.mem_child:
        memory_child(args)
        return 0
    if args.profile:
        profile(build(args, "small-fp32"))
        return 0
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(names) - set(workloads.NAMES)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; choose from {', '.join(workloads.NAMES)}")

    malloc = pin_malloc_cold()
    for module in ("google_crc32c", "msgpack_numpy", "safetensors.torch", "xxhash"):
        importlib.import_module(module)  # the codecs import lazily: import before freezing the GC
    gc.collect()
    gc.freeze()  # torch alone tracks ~1e5 objects; a full collection before every timed call would cost ~0.2 s
    run: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/run.py", *argv]),
        "settings": f"{args.reps} timed repetitions after {args.warmup} warm-up, llm-bf16 {args.llm_mb:g} MB, "
        f"small-fp32 {args.small_count} tensors, allocator {malloc}",
        "reps": args.reps,
        "workloads": [],
        "results": {},
        "small": [],
        "load": f"{os.getloadavg()[0]:.2f}",
    }
    log(f"{run['machine']['cpu']} | allocator {malloc}")
    nbytes = int(args.bandwidth_mb * 1e6)
    run["bandwidth"], run["bandwidth_bytes"] = bench_bandwidth(nbytes, args.reps), nbytes
    log("checksums and copies: " + ", ".join(f"{k.split(' ')[0]} {v:.2f} GB/s" for k, v in run["bandwidth"]))
    for name in names:
        wl = build(args, name)
        log(f"{name}: {wl.n_tensors} tensors, {wl.raw_bytes / 1e6:.1f} MB")
        rows = bench_workload(wl, codecs(), args.reps, args.warmup)
        peaks = {} if args.no_memory else measure_peaks(args, name)
        summarize(wl, rows, peaks)
        if name == "small-fp32":
            run["reps_small"] = 3 * args.reps
            run["small"] = breakdown(wl, run["reps_small"])
        run["workloads"].append(wl)
        run["results"][name] = rows
        tc_row = rows["tc"]
        log(f"  done; tc enc {tc_row.get('enc_s', 0) * 1e3:.1f} ms, dec {tc_row.get('dec_s', 0) * 1e3:.2f} ms")
    run["targets"] = targets(run["results"], run["small"])
    run["elapsed_s"] = time.perf_counter() - _T0
    run["load"] = f"{run['load']} at start, {os.getloadavg()[0]:.2f} at end"
    report = render(run)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + keep_sections(out))
        log(f"wrote {args.out}")
        if out.resolve() == pictures.DOCS.resolve():
            with contextlib.suppress(ImportError):  # matplotlib is in the bench extra; the page stands without it
                pictures.main([])
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
