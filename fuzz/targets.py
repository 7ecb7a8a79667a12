"""The entry points under test, and the check that turns one run into an outcome.

An outcome is ``ok`` (decoded, or refused with DecodeError) or a finding: ``exception`` (any other
exception; its detail names the type and the innermost tensorcodec frame), ``memory`` (the process
would have grown past ``budget(data)``, the address-space limit set for this one input), or
``slow`` (over ``TIME_LIMIT`` seconds of CPU). ``crash`` and ``hang`` are the pool's: the worker
died, or ran past the watchdog.
"""

from __future__ import annotations

import io
import os
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import tensorcodec as tc
from tensorcodec.accounting import inspect

from . import layout

MAX_DECODED = 1 << 20
"""The ``max_decoded_bytes`` every entry point is called with: a server's setting for small messages."""
SLACK = 48 << 20
"""The constant of the memory bound: interpreter, allocator and numpy temporaries of a decode."""
TIME_LIMIT = 1.0
"""CPU seconds one input may take."""
LIMITS = tc.Limits(max_decoded_bytes=MAX_DECODED)


def budget(data: bytes) -> int:
    """Bytes the process may grow by while it decodes ``data``: len(message) + max_decoded_bytes + SLACK."""
    return len(data) + MAX_DECODED + SLACK


def _chunks(data: bytes) -> list[bytes]:
    """``data`` as ``decode`` frames: preamble, header, then pieces that straddle segment boundaries."""
    size = int.from_bytes(data[8:12], "little") if len(data) >= 16 else 0
    cut = min(16 + size, len(data))
    parts = [data[:16], data[16:cut]]
    parts += [data[p : p + 96] for p in range(cut, len(data), 96)]
    return [p for p in parts if p] if len(data) % 5 else parts  # empty frames too, sometimes


def _feed(data: bytes, copy: bool) -> Any:
    decoder = tc.StreamDecoder(copy=copy, limits=LIMITS)
    for f in layout.split_frames(data):
        decoder.feed(f)
    return decoder.result()


TARGETS: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    "decode": ("message", lambda d: tc.decode(d, limits=LIMITS)),
    "decode_view": ("message", lambda d: tc.decode(d, copy=False, limits=LIMITS)),
    "frames": ("message", lambda d: tc.decode(_chunks(d), limits=LIMITS)),
    "frames_view": ("message", lambda d: tc.decode(_chunks(d), copy=False, limits=LIMITS)),
    "inspect": ("message", lambda d: inspect(d, limits=LIMITS)),
    "feed": ("stream", lambda d: _feed(d, True)),
    "feed_view": ("stream", lambda d: _feed(d, False)),
    "load": ("stream", lambda d: tc.load(io.BytesIO(d), limits=LIMITS)),
}
"""Entry point name: (the kind of input it takes, the call)."""
KINDS = ("message", "stream")


def targets_of(kind: str) -> list[str]:
    return [name for name, (k, _) in TARGETS.items() if k == kind]


class Outcome(NamedTuple):
    category: str
    """ok, exception, memory, slow (here); crash, hang (the pool)."""
    detail: str
    seconds: float


_PAGE = os.sysconf("SC_PAGE_SIZE")


def address_space() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * _PAGE


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "tensorcodec" in f.filename]
    if not frames:
        return type(exc).__name__
    f = frames[-1]
    name = f.filename.split("tensorcodec/")[-1]
    return f"{type(exc).__name__} at {name}:{f.name}"


def check(target: str, data: bytes) -> Outcome:
    """Runs one input through one entry point, within ``budget(data)`` bytes of new address space."""
    call = TARGETS[target][1]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space() + budget(data)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    start = time.process_time()
    try:
        result = call(data)
        del result
        category, detail = "ok", ""
    except tc.DecodeError:
        category, detail = "ok", ""
    except MemoryError as e:
        category, detail = "memory", _where(e)
    except BaseException as e:  # everything else is what the fuzzer looks for
        if isinstance(e, KeyboardInterrupt):
            raise
        category, detail = "exception", _where(e)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    seconds = time.process_time() - start
    if category == "ok" and seconds > TIME_LIMIT:
        category, detail = "slow", f"{seconds:.2f} s CPU"
    return Outcome(category, detail, seconds)
