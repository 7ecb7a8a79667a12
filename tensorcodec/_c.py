"""The one seam to C: the only module that imports tensorcodec's C extensions.

Three optional extensions, each a faster copy of Python code that exists beside it and gives the
same results (tests hold each pair to that, and CI runs the whole suite both ways):

* ``_native``: the blockwise 8-bit and 4-bit kernels of the codec families;
* ``_fastwire``: the wire format's loops (the tree walk of encode, the table layout of decode,
  joining frames, checking padding);
* ``_fasttree``: the tree decoder.

They are imported once, on first use, unless the environment variable ``TENSORCODEC_NATIVE=0`` is
set at import, in which case none is imported until ``set_native(True)`` asks for them. The one
run-time switch, :func:`set_native`, governs every C path at once. Callers ask this module for an
extension (``kernels()``, ``wire()``, ``tree()``) each time they need one and take the Python path
on None; this module knows no codec, no format and no tree.

It also offers :func:`fresh_bytes`, huge-page backed output memory through CPython's own API
(ctypes, no extension of ours), for the Python path of ``encode``; ``_fastwire.join_bytes`` does the
same in C.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["set_native", "native_enabled", "native_available", "kernels", "wire", "tree", "fresh_bytes"]

_NAMES = ("_native", "_fastwire", "_fasttree")

_built: dict[str, ModuleType | None] | None = None
"""The extensions as imported (None for one that was not built); None before the first import."""
_active: dict[str, ModuleType | None] = dict.fromkeys(_NAMES)
"""What the switch hands out now: the built extensions when on, None for each when off."""
_enabled = False


def _import_all() -> dict[str, ModuleType | None]:
    global _built
    if _built is None:
        found: dict[str, ModuleType | None] = {}
        for name in _NAMES:
            try:
                found[name] = importlib.import_module(f"tensorcodec.{name}")
            except ImportError:  # built without a C compiler: the Python code does the work
                found[name] = None
        _built = found
    return _built


def native_available() -> bool:
    """Whether every C extension was built at install (a C compiler was there); imports none that is not yet."""
    if _built is not None:
        return all(module is not None for module in _built.values())
    try:
        return all(importlib.util.find_spec(f"tensorcodec.{name}") is not None for name in _NAMES)
    except (ImportError, ValueError):  # a module set to None in sys.modules, as tests do to hide one
        return False


def set_native(enabled: bool) -> None:
    """Run every C path (``True``) or none (``False``); the results are identical either way.

    The default is on when the extensions were built, unless ``TENSORCODEC_NATIVE=0`` was set at
    import. Asking for C where none was built raises RuntimeError, naming the fix.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> was = tc.native_enabled()
        >>> tc.set_native(False)
        >>> pure = tc.encode({"w": np.ones(4096, np.float32)}, precision="nf4")
        >>> tc.set_native(was)
        >>> pure == tc.encode({"w": np.ones(4096, np.float32)}, precision="nf4")
        True
    """
    global _enabled
    if enabled:
        built = _import_all()
        if not any(module is not None for module in built.values()):
            raise RuntimeError(
                "tensorcodec's C extensions were not built (no C compiler at install?): only the Python code is "
                "available; reinstall with a C compiler to get them"
            )
        _active.update(built)
    else:
        _active.update(dict.fromkeys(_NAMES))
    _enabled = bool(enabled)


def native_enabled() -> bool:
    """Whether the C paths are in use (see :func:`set_native`).

    Examples:
        >>> import tensorcodec as tc
        >>> isinstance(tc.native_enabled(), bool)
        True
    """
    return _enabled


def kernels() -> ModuleType | None:
    """The C kernels (``tensorcodec._native``), or None when switched off or not built."""
    return _active["_native"]


def wire() -> ModuleType | None:
    """The C wire loops (``tensorcodec._fastwire``), or None when switched off or not built."""
    return _active["_fastwire"]


def tree() -> ModuleType | None:
    """The C tree decoder (``tensorcodec._fasttree``), or None when switched off or not built."""
    return _active["_fasttree"]


def fresh_bytes(size: int) -> tuple[bytes, np.ndarray[Any, Any]] | None:
    """An uninitialised bytes object of ``size`` and a writable view of it, backed by huge pages.

    Writing into freshly allocated 4 KiB pages runs at ~1.7 GB/s here (a page
    fault per page); asking for transparent huge pages before the first touch
    makes the one copy into the message 3-4x faster. This is what C extensions
    do with PyBytes_FromStringAndSize(NULL, n): the object is filled before
    anyone sees it. Returns None where that API is unavailable (not CPython).
    """
    api = _bytes_api()
    if api is None:
        return None
    new, madvise = api
    out = new(None, size)
    address = ctypes.cast(ctypes.c_char_p(out), ctypes.c_void_p).value
    if address is None:
        return None
    huge = 2 << 20
    start, end = (address + huge - 1) & -huge, (address + size) & -huge
    if madvise is not None and end > start:
        madvise(start, end - start, 14)  # MADV_HUGEPAGE; advice only, failure is harmless
    dst = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))
    return out, dst


@functools.cache
def _bytes_api() -> tuple[Any, Any] | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    except AttributeError:
        return None
    madvise = None
    if sys.platform.startswith("linux"):
        try:
            madvise = ctypes.CDLL(None).madvise
            madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            madvise = None
    return new, madvise


if os.environ.get("TENSORCODEC_NATIVE", "1") != "0":
    _import_all()
    if any(module is not None for module in (_built or {}).values()):
        set_native(True)
