"""Blockwise 8-bit and 4-bit (NF4 / FP4) quantization, bit-compatible with bitsandbytes 0.50 on CPU.

The kernels give the same codes and absmax as ``bitsandbytes.functional.quantize_blockwise`` and
``quantize_4bit`` (with and without ``compress_statistics``, nested state included) run on CPU, and
dequantize to the same bits as its dequantize functions, without bitsandbytes at run time. Inputs
are flat arrays (the caller owns shapes; other shapes are read in C order) of float32, float16 or
bfloat16 (``ml_dtypes``). The kernels run on a small thread pool in chunks; the ``*_batch``
functions take many small tensors in one pass, where a call per tensor would be dominated by Python
overhead. The ``*_torch`` functions take tensors on any device: CPU tensors go through these
kernels, others through torch ops doing the same float32 arithmetic (``impl="torch"`` forces those,
to test them on CPU).

Each kernel has two implementations with bit-identical results: the C accelerator
``tensorcodec._native`` (built at install when a C compiler is there; it does a block in one pass
where numpy needs many) and numpy (always there). Which one runs is the C seam's switch
(``tensorcodec.set_native``).

What bitsandbytes 0.50 does on CPU, and so what these kernels do (from its source, each rule
checked against it in ``tests/test_kernels.py``):

* 8-bit (native C kernel): absmax = max |x| per block in float32, NaN ignored; ``c = x * (1 /
  absmax)`` in float32; the code is *not* the nearest map entry but a 65536-entry lookup,
  ``lut[int((clamp(c, -1, 1) + 1) * 0.5 * 65535 + 0.5)]``, ``lut[i]`` being the entry nearest the
  grid point ``-1 + 2i/65535`` (ties to the lower entry). So an exact 0 encodes to code 131
  (2.125e-5 * absmax), the map entry nearest the grid point +1.5e-5. A NaN element gets code 0; an
  all-zero or all-NaN block gets absmax 0 and codes 0. Any positive blocksize is accepted.
* 4-bit (torch fallback kernel): absmax = max |x| per block in float32, NaN propagating; full
  blocks use ``c = x * (1 / max(absmax, 1e-38))``, but a tensor's last, partial block uses ``c = x /
  max(absmax, 1e-38)`` and stores that clamped absmax; ``c`` is clamped to [-1, 1] and bucketized
  against the midpoints of the sorted table (ties to the lower entry, NaN to the top); an odd count
  gets one more *scaled* value, 0.0. bitsandbytes' FP4 table holds +0.0 twice (codes 0 and 8):
  values in (0, 0.0026] get code 8 and values in [-0.0026, 0] code 0.
* Double quantization: ``offset = mean(absmax)`` exactly as torch's CPU float32 mean computes it
  (a cascade sum whose order depends on vector width and thread count, emulated by
  :func:`absmax_mean`), then ``absmax - offset`` quantized 8-bit in blocks of 256 with the dynamic map.
* Dequantization: ``table[q] * absmax`` in float32, rounded to nearest-even into the output dtype.

Where bitsandbytes' own CPU paths disagree with each other, these kernels take one side: its scalar
C path decodes FP4 code 8 as -0.0 (its other paths, and here: +0.0); its AVX512-BF16 path flushes
bfloat16 subnormal results (|x| < 1.2e-38) to zero (here they are rounded like other values); its
scalar bfloat16 rounding turns a NaN with all mantissa bits set into 0 (here NaN stays NaN). NaN
payloads are not reproduced (a NaN absmax is some NaN).

Non-finite input, as bitsandbytes treats it: 8-bit ignores NaN in absmax and gives it code 0
(decoding to -0.993 * absmax); a block holding +-inf gets absmax inf, its finite values decode to
+inf and its infinities to -inf. 4-bit: a NaN makes its whole block decode to NaN; an inf makes
its block's finite values decode to NaN and its infinities to +inf. A finite input never decodes to
NaN, with one exception under double quantization: if the block absmax values sum past the float32
limit (values near 3e38), the mean overflows and the statistics become NaN. Double quantization can
also push a float16 block at the 65504 limit to inf.
"""

from __future__ import annotations

import os
import sys
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any, Literal

import ml_dtypes
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from torch import Tensor
else:
    Tensor = Any

from . import _c

__all__ = [
    "dequantize_4bit_batch",
    "dequantize_absmax_batch",
    "dequantize_blockwise8_batch",
    "quantize_4bit_batch",
    "quantize_blockwise8_batch",
    "BLOCKSIZES_4BIT",
    "FP4_TABLE",
    "NF4_TABLE",
    "absmax_mean",
    "dequantize_4bit",
    "dequantize_4bit_torch",
    "dequantize_absmax",
    "dequantize_absmax_torch",
    "dequantize_blockwise8",
    "dequantize_blockwise8_torch",
    "dynamic_map",
    "error_bound",
    "get_num_threads",
    "quantize_4bit",
    "quantize_4bit_torch",
    "quantize_absmax",
    "quantize_absmax_batch",
    "quantize_absmax_torch",
    "quantize_blockwise8",
    "quantize_blockwise8_torch",
    "set_num_threads",
]

F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]
AnyArray = npt.NDArray[Any]
QuantType = Literal["nf4", "fp4"]

# ================================================================================================ shared
# Dtypes, buffers, the block layout and the one thread scheduler: what every family's kernels use.

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
U8 = np.dtype(np.uint8)
SOURCE_DTYPES = (F32, F16, BF16)
KINDS = {F32: 0, F16: 1, BF16: 2}  # element kinds as the C kernels number them
INF_BITS = {F32: 0x7F800000, F16: 0x7C00, BF16: 0x7F80}
ABS_MASK = {F32: 0x7FFFFFFF, F16: 0x7FFF, BF16: 0x7FFF}


def readonly(a: AnyArray) -> AnyArray:
    a.flags.writeable = False
    return a


def as_source(x: Any) -> AnyArray:
    """A flat C-contiguous float32/float16/bfloat16 array (copying only when needed)."""
    if type(x) is np.ndarray and x.ndim == 1 and x.flags.c_contiguous and x.dtype in SOURCE_DTYPES:
        return x
    a = np.asarray(x)
    if a.dtype not in SOURCE_DTYPES:
        raise TypeError(f"quantization takes float32, float16 or bfloat16, not {a.dtype}")
    return np.ascontiguousarray(a.reshape(-1))


def flat(a: Any, dtype: np.dtype[Any]) -> AnyArray:
    """A flat C-contiguous array of ``dtype`` (copying only when needed)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.ndim == 1 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(np.asarray(a, dtype=dtype).reshape(-1))


def out_dtype(dtype: Any) -> np.dtype[Any]:
    d: np.dtype[Any] = np.dtype(dtype)
    if d not in SOURCE_DTYPES:
        raise TypeError(f"dequantization produces float32, float16 or bfloat16, not {d}")
    return d


def check_blocksize(blocksize: int) -> int:
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive integer, not {blocksize!r}")
    return int(blocksize)


def nblocks_of(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


@lru_cache(maxsize=1)
def _f16_table() -> F32Array:
    return readonly(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32))


def to_f32(x: AnyArray, out: AnyArray) -> AnyArray:
    """Exact float32 values of a source slice into ``out`` (float16 by table: numpy's cast is slow)."""
    if x.dtype == F16:
        np.take(_f16_table(), x.view(np.uint16), out=out, mode="clip")
    else:
        np.copyto(out, x, casting="unsafe")
    return out


def abs_bits(x: AnyArray) -> AnyArray:
    """|x| as unsigned bit patterns (a per-thread scratch buffer): an integer max puts NaN above inf."""
    u = x.view(np.uint32 if x.dtype == F32 else np.uint16)
    out = scratch("absbits", u.size, u.dtype)
    np.bitwise_and(u, u.dtype.type(ABS_MASK[x.dtype]), out=out)
    return out


def bits_to_f32(m: AnyArray, dtype: np.dtype[Any]) -> F32Array:
    if dtype == F32:
        return m.view(np.float32)
    if dtype == BF16:
        return (m.astype(np.uint32) << 16).view(np.float32)
    return m.view(np.float16).astype(np.float32)


_local = threading.local()


def scratch(name: str, size: int, dtype: Any) -> AnyArray:
    """A per-thread reusable buffer: fresh large arrays would page-fault on every chunk."""
    bufs: dict[str, AnyArray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
        buf = bufs[name] = np.empty(max(size, NUMPY_CHUNK), dtype=dtype)
    return buf[:size]


@lru_cache(maxsize=64)
def _regular_starts(nblocks: int, blocksize: int) -> npt.NDArray[np.intp]:
    return readonly(np.arange(0, (nblocks + 1) * blocksize, blocksize, dtype=np.intp))


class Blocks:
    """A run of consecutive blocks of a layout, as one kernel body sees it: element ``starts`` (one more
    than blocks: the last is the run's size), ``partial`` (the tensor's last block, shorter than the
    block size) and ``pads`` (positions of 4-bit pad elements). ``regular``: the blocks of one tensor, all
    full but perhaps the last, so per-block work is a reshape."""

    __slots__ = ("_starts", "blocksize", "count", "pads", "partial", "regular", "size")

    def __init__(
        self,
        blocksize: int,
        size: int,
        partial: npt.NDArray[np.bool_],
        pads: npt.NDArray[np.intp],
        starts: npt.NDArray[np.intp] | None,
    ) -> None:
        self.blocksize, self.size, self.partial, self.pads = blocksize, size, partial, pads
        self.count = partial.size
        self.regular = starts is None
        self._starts = starts

    @property
    def starts(self) -> npt.NDArray[np.intp]:
        if self._starts is None:
            s = _regular_starts(self.count, self.blocksize).copy()
            s[-1] = self.size
            self._starts = s
        return self._starts

    @property
    def lens(self) -> npt.NDArray[np.intp]:
        return np.diff(self.starts)

    def max(self, v: AnyArray) -> AnyArray:
        """Per-block maximum of ``v`` (one value per element)."""
        bs = self.blocksize
        full = (self.size // bs) * bs if self.regular else 0
        if self.regular and (bs >= 512 or full < self.size):
            out = np.empty(self.count, dtype=v.dtype)
            if full:
                np.max(v[:full].reshape(-1, bs), axis=1, out=out[: full // bs])
            if full < self.size:
                out[-1] = v[full:].max()
            return out
        starts = _regular_starts(self.count, bs)[:-1] if self.regular else self.starts[:-1]
        return np.maximum.reduceat(v, starts)

    def scale(self, v: AnyArray, per_block: AnyArray, out: AnyArray) -> None:
        """``out = v * per_block[block of each element]``."""
        if not self.regular:
            np.multiply(v, np.repeat(per_block, self.lens), out=out)
            return
        n, bs = self.size, self.blocksize
        full = (n // bs) * bs
        if full:
            np.multiply(v[:full].reshape(-1, bs), per_block[: full // bs, None], out=out[:full].reshape(-1, bs))
        if full < n:
            np.multiply(v[full:], per_block[-1], out=out[full:n])

    def elements(self, mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Positions of the elements of the blocks ``mask`` selects, and each one's block."""
        blocks = np.flatnonzero(mask)
        lens = self.lens[blocks]
        block_of = np.repeat(blocks, lens)
        first = np.repeat(self.starts[blocks] - np.cumsum(lens) + lens, lens)
        return first + np.arange(block_of.size), block_of

    def block_of(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        if self.regular:
            return positions // self.blocksize
        return np.searchsorted(self.starts, positions, side="right") - 1


class BlockLayout:
    """Tensors of ``sizes`` elements laid end to end, each starting its own blocks of ``blocksize``.

    Every kernel writes its outputs in this layout: codes at the tensor's positions (4-bit: half of
    them, bytes), one absmax per block. With ``pad_odd`` (4-bit) a tensor of odd size takes one more
    position, bitsandbytes' pad element (a 0.0 in its last block), so that every tensor starts a byte.
    A single tensor is a layout of one; a thread's share of the work is a run of its blocks (:meth:`run`).
    """

    def __init__(self, sizes: Sequence[int], blocksize: int, pad_odd: bool) -> None:
        self.sizes = sizes
        self.blocksize = blocksize
        self.pad_odd = pad_odd
        bs = blocksize
        self.ends = list(accumulate([n + (n & 1) for n in sizes] if pad_odd else sizes, initial=0))
        self.block_ends = list(accumulate([-(-n // bs) for n in sizes], initial=0))
        self.total = self.ends[-1]
        self.nblocks = self.block_ends[-1]
        self._arrays: tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_], npt.NDArray[np.intp]] | None = None

    def _block_arrays(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """Element starts of all blocks (and the total), partial flags, pad positions."""
        if self._arrays is None:
            n = np.array(self.sizes, dtype=np.intp)
            bs = self.blocksize
            nb = np.diff(np.array(self.block_ends, dtype=np.intp))
            span = np.diff(np.array(self.ends, dtype=np.intp))
            lens = np.full(self.nblocks, bs, dtype=np.intp)
            last = np.array(self.block_ends[1:], dtype=np.intp)[nb > 0] - 1
            lens[last] = (span - (nb - 1) * bs)[nb > 0]
            starts = np.zeros(self.nblocks + 1, dtype=np.intp)
            np.cumsum(lens, out=starts[1:])
            partial = np.zeros(self.nblocks, dtype=bool)
            partial[last] = (n % bs != 0)[nb > 0]
            pads = (np.array(self.ends[1:], dtype=np.intp) - 1)[(n & 1).astype(bool)] if self.pad_odd else n[:0]
            self._arrays = (starts, partial, pads)
        return self._arrays

    def block_start(self, b: int) -> int:
        """Position of block ``b``'s first element (``total`` for ``b == nblocks``)."""
        t = bisect_right(self.block_ends, b) - 1
        if t >= len(self.sizes):
            return self.total
        return self.ends[t] + (b - self.block_ends[t]) * self.blocksize

    def run(self, b0: int, b1: int) -> Blocks:
        """Blocks ``[b0, b1)`` as a kernel body sees them, positions counted from block ``b0``."""
        bs = self.blocksize
        t = bisect_right(self.block_ends, b0) - 1
        e0, e1 = self.block_start(b0), self.block_start(b1)
        if b1 <= self.block_ends[t + 1]:  # within one tensor
            partial = np.zeros(b1 - b0, dtype=bool)
            pads = np.zeros(0, dtype=np.intp)
            if b1 == self.block_ends[t + 1]:
                n = self.sizes[t]
                partial[-1:] = n % bs != 0
                if self.pad_odd and n & 1:
                    pads = np.array([e1 - e0 - 1], dtype=np.intp)
            return Blocks(bs, e1 - e0, partial, pads, None)
        starts, partial_all, pads_all = self._block_arrays()
        pads = pads_all[(pads_all >= e0) & (pads_all < e1)] - e0
        return Blocks(bs, e1 - e0, partial_all[b0:b1], pads, starts[b0 : b1 + 1] - e0)

    def gather(self, arrays: Sequence[AnyArray], b0: int, b1: int, unit: int = 1) -> AnyArray:
        """The part of per-tensor arrays that blocks ``[b0, b1)`` cover, as one array, zero at pads.

        ``unit``: positions per array item (1: elements, 2: packed 4-bit bytes; 0: the arrays hold one
        item per block, absmax). Zero-copy when the run lies in one tensor and holds no pad, else a
        concatenation (in float32 if the dtypes differ: sources only, whose float32 values are exact).
        """
        if unit:
            lo, hi = self.block_start(b0) // unit, self.block_start(b1) // unit
            ends = self.ends if unit == 1 else [e // unit for e in self.ends]
        else:
            lo, hi, ends = b0, b1, self.block_ends
        i, j = bisect_right(ends, lo) - 1, bisect_left(ends, hi)
        if i + 1 >= j and i < len(arrays) and hi - ends[i] <= arrays[i].size:
            return arrays[i][lo - ends[i] : hi - ends[i]]
        parts: list[AnyArray] = []
        zero = np.zeros(1, dtype=arrays[i].dtype)
        for k in range(i, j):
            a = arrays[k]
            piece = a[max(lo, ends[k]) - ends[k] : min(hi, ends[k + 1]) - ends[k]]
            parts.append(piece)
            if min(hi, ends[k + 1]) - ends[k] > a.size:
                parts.append(zero)
        if len({p.dtype for p in parts}) > 1:
            return np.concatenate(parts, dtype=np.float32, casting="unsafe")
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def part(self, b0: int, b1: int) -> tuple[slice, slice, slice, tuple[int, int]]:
        """The tensors that blocks ``[b0, b1)`` touch, their positions, their blocks, and the span counted from them.

        A C call gets only those tensors (the kernels take every tensor's buffer they are handed)."""
        if b0 == b1:
            return slice(0, 0), slice(0, 0), slice(0, 0), (0, 0)
        be = self.block_ends
        i, j = bisect_right(be, b0) - 1, bisect_right(be, b1 - 1)
        return slice(i, j), slice(self.ends[i], self.ends[j]), slice(be[i], be[j]), (b0 - be[i], b1 - be[i])

    def split(self, codes: AnyArray, absmax: F32Array, unit: int = 1) -> list[tuple[AnyArray, F32Array]]:
        """Each tensor's codes (``unit`` positions per code) and absmax: views into the shared outputs."""
        ends = self.ends if unit == 1 else [e // unit for e in self.ends]  # a padded tensor's span is even
        return [
            (codes[c0:c1], absmax[b0:b1])
            for (c0, c1), (b0, b1) in zip(pairwise(ends), pairwise(self.block_ends), strict=True)
        ]

    def values(self, out: AnyArray) -> list[AnyArray]:
        """Each tensor's values in a dequantized output laid out like this layout (pads skipped)."""
        if not self.pad_odd:
            return [out[e0:e1] for e0, e1 in pairwise(self.ends)]
        return [out[e : e + n] for e, n in zip(self.ends, self.sizes, strict=False)]


# ------------------------------------------------------------------------------------------------ the scheduler

NUMPY_CHUNK = 1 << 16  # elements per numpy body call: the working set of a chunk stays in L2
NATIVE_CHUNK = 1 << 20  # most elements per C call when work is split between threads
PARALLEL_MIN = 1 << 18  # below this many elements one thread is faster (a hand-off costs ~50 µs)
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_num_threads = 0


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads the kernels use for large inputs (None: one per available CPU)."""
    global _num_threads, _pool
    with _lock:
        _num_threads = _default_threads() if n is None else max(1, int(n))
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def get_num_threads() -> int:
    """Threads the kernels use for large inputs."""
    if _num_threads == 0:
        set_num_threads(None)
    return _num_threads


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool on demand."""
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, _num_threads - 1), thread_name_prefix="tensorcodec-kernel")
        return _pool


def run_blocks(layout: BlockLayout, call: Callable[[int, int], None], chunk: int | None) -> None:
    """Run ``call(b0, b1)`` over all blocks of ``layout``: the one scheduler of every kernel.

    Runs of about ``chunk`` elements (numpy: to stay in L2), or for the C kernels (``chunk=None``) the
    whole layout at once on one thread and runs of up to NATIVE_CHUNK, two or more per thread, on
    many; the threads take runs from a shared queue, which keeps every core busy when one is slowed.
    The C kernels and numpy's large loops release the GIL, so runs proceed in parallel.
    """
    nb, total = layout.nblocks, layout.total
    threads = get_num_threads()
    parallel = threads > 1 and total >= PARALLEL_MIN and nb > 1
    if chunk is None:
        if not parallel:
            call(0, nb)
            return
        chunk = min(NATIVE_CHUNK, total // (2 * threads))
    if len(layout.sizes) == 1:
        per = max(1, chunk // layout.blocksize)
        cuts = [*range(0, nb, per), nb]
    else:
        starts = layout._block_arrays()[0]
        marks = np.searchsorted(starts, np.arange(0, total, max(1, chunk)), side="left")
        cuts = [*sorted({0, *marks.tolist()} - {nb}), nb] if nb else [0]
    runs = iter(list(pairwise(cuts)))
    if not parallel:
        for b0, b1 in runs:
            call(b0, b1)
        return
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                run = next(runs, None)
            if run is None:
                return
            call(*run)

    futures = [_executor().submit(worker) for _ in range(threads - 1)]
    worker()
    for f in futures:
        f.result()


# ------------------------------------------------------------------------------------------------ dispatch

QuantizeBody = Callable[[AnyArray, Blocks, Any, U8Array, F32Array], None]
DequantizeBody = Callable[[U8Array, Blocks, F32Array, Any, AnyArray], None]


def quantize_layout(
    arrays: list[AnyArray],
    bs: int,
    pad_odd: bool,
    kernel: Callable[..., None] | None,
    tables: tuple[Any, Any],
    body: QuantizeBody,
) -> list[tuple[U8Array, F32Array]]:
    """``(codes, absmax)`` of each tensor, laid end to end, by a family's C ``kernel`` (None: its numpy ``body``).

    ``tables``: what the C kernel takes and what the body takes; ``pad_odd``: 4-bit (two codes a byte).
    """
    unit = 2 if pad_odd else 1
    lay = BlockLayout([a.size for a in arrays], bs, pad_odd)
    codes = np.empty(lay.total // unit, dtype=np.uint8)
    absmax = np.empty(lay.nblocks, dtype=np.float32)
    if kernel is not None:
        c_kernel, kinds = kernel, bytes([KINDS[a.dtype] for a in arrays])

        def call(b0: int, b1: int) -> None:
            t, e, b, span = lay.part(b0, b1)
            c_kernel((arrays[t], kinds[t]), bs, tables[0], (codes[e.start // unit : e.stop // unit], absmax[b]), span)

        run_blocks(lay, call, None)
    else:

        def run(b0: int, b1: int) -> None:
            e0, e1 = lay.block_start(b0) // unit, lay.block_start(b1) // unit
            with np.errstate(all="ignore"):
                body(lay.gather(arrays, b0, b1), lay.run(b0, b1), tables[1], codes[e0:e1], absmax[b0:b1])

        run_blocks(lay, run, NUMPY_CHUNK)
    return lay.split(codes, absmax, unit)


def dequantize_layout(
    codes: list[U8Array],
    absmaxes: list[F32Array],
    counts: list[int],
    bs: int,
    dtype: np.dtype[Any],
    kernel: Callable[..., None] | None,
    tables: tuple[Any, Any],
    body: DequantizeBody,
    pad_odd: bool,
) -> list[AnyArray]:
    """Values of tensors' codes and absmax by a family's C ``kernel`` (None: its numpy ``body``), in one buffer."""
    unit = 2 if pad_odd else 1
    for q, am, n in zip(codes, absmaxes, counts, strict=True):
        if n < 0 or q.size != (n + unit - 1) // unit:
            raise ValueError(f"{n} codes take {(n + unit - 1) // unit} bytes, got {q.size}")
        if am.size != nblocks_of(n, bs):
            raise ValueError(f"{n} codes in blocks of {bs} need {nblocks_of(n, bs)} absmax values, got {am.size}")
    lay = BlockLayout(counts, bs, pad_odd)
    out = np.empty(lay.total, dtype=dtype)
    if kernel is not None:
        c_kernel, kind = kernel, KINDS[dtype]

        def call(b0: int, b1: int) -> None:
            t, e, _, span = lay.part(b0, b1)
            src = (codes[t], absmaxes[t], counts[t]) if pad_odd else (codes[t], absmaxes[t])
            c_kernel(src, bs, tables[0], (out[e], kind), span)

        run_blocks(lay, call, None)
    else:

        def run(b0: int, b1: int) -> None:
            e0, e1 = lay.block_start(b0), lay.block_start(b1)
            q, am = lay.gather(codes, b0, b1, unit), lay.gather(absmaxes, b0, b1, unit=0)
            with np.errstate(all="ignore"):
                body(q, lay.run(b0, b1), am, tables[1], out[e0:e1])

        run_blocks(lay, run, NUMPY_CHUNK)
    return lay.values(out)


# ================================================================================================ 8-bit
# The dynamic map, bitsandbytes' 65536-entry code lookup, the one 8-bit body and its entry points.


def _linspace_f32(steps: int) -> F32Array:
    """torch.linspace(0.1, 1, steps, dtype=float32) on CPU: each point one fused multiply-add, rounded once."""
    start, end = float(np.float32(0.1)), 1.0
    step = float(np.float32(np.float32(end - start) / np.float32(steps - 1)))
    half = steps // 2
    # The product and the sum are exact in float64 (24 + 7 bits), so one rounding to float32 is the fma's.
    vals = [start + step * i if i < half else end - step * (steps - i - 1) for i in range(steps)]
    return np.array(vals, dtype=np.float64).astype(np.float32)


@lru_cache(maxsize=1)
def _dynamic_map() -> F32Array:
    parts = [np.array([0.0, 1.0], dtype=np.float32)]
    for i in range(7):
        b = _linspace_f32(2**i + 1)
        means = (b[:-1] + b[1:]) / np.float32(2.0)
        scale = np.float32(10.0 ** (i - 6))
        parts += [scale * means, -scale * means]
    out = np.sort(np.concatenate(parts)).astype(np.float32)
    assert out.size == 256
    return readonly(out)


def dynamic_map() -> F32Array:
    """bitsandbytes' ``create_dynamic_map(signed=True)``: 256 sorted float32 values, computed here."""
    return _dynamic_map().copy()


class Lut8:
    """bitsandbytes' CPU 8-bit code lookup for one sorted 256-entry map (built once per map)."""

    def __init__(self, code: F32Array) -> None:
        if code.shape != (256,) or not np.all(code[1:] >= code[:-1]):
            raise ValueError("an 8-bit code must be 256 sorted float32 values")
        self.code: F32Array = readonly(code.copy())
        mids = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
        grid = (np.float32(-1.0) + (np.float32(2.0) * np.arange(65536, dtype=np.float32)) / np.float32(65535.0)).astype(
            np.float32
        )
        # lut[i] = number of midpoints strictly below grid point i (the C kernel's forward walk).
        self.lut: U8Array = readonly(np.searchsorted(mids, grid, side="left").astype(np.uint8))
        self._pairs: npt.NDArray[np.uint64] | None = None

    @property
    def pairs(self) -> npt.NDArray[np.uint64]:
        """Values of two consecutive codes read as one little-endian uint16, as a float32 pair: one gather per two."""
        if self._pairs is None:
            p = np.empty((65536, 2), dtype=np.float32)
            p[:, 0] = np.tile(self.code, 256)
            p[:, 1] = np.repeat(self.code, 256)
            self._pairs = readonly(p.view(np.uint64).reshape(65536))
        return self._pairs


@lru_cache(maxsize=8)
def _lut8_cached(code_bytes: bytes) -> Lut8:
    return Lut8(np.frombuffer(code_bytes, dtype=np.float32))


def lut8(code: AnyArray | None) -> Lut8:
    """The lookup of an 8-bit map (None: the dynamic map), built once per map."""
    if code is None:
        return _lut8_cached(_dynamic_map().tobytes())
    return _lut8_cached(np.ascontiguousarray(np.asarray(code, dtype=np.float32)).tobytes())


def lut_index(c: F32Array) -> npt.NDArray[np.uint16]:
    """The lookup's grid index of scaled values: NaN as -1, clamped to [-1, 1], (c + 1) * 32767.5 + 0.5 in float32."""
    c = np.array(c, dtype=np.float32)  # a copy we may scribble on
    nan = np.isnan(c)
    np.clip(c, np.float32(-1.0), np.float32(1.0), out=c)
    c[nan] = -1.0
    c += np.float32(1.0)
    c *= np.float32(32767.5)  # (t * 0.5) * 65535, the halving being exact
    c += np.float32(0.5)
    return c.astype(np.uint16)


def quantize8_blocks(x: AnyArray, blocks: Blocks, lut: Lut8, codes: U8Array, absmax: F32Array) -> None:
    """The 8-bit arithmetic, the spec of the C ``quantize8``: codes of the elements ``x`` and absmax of ``blocks``.

    absmax = max |x| per block, NaN ignored; c = x * (1 / absmax); code = lut[index(c)]. A block whose
    absmax is 0 (all zero or NaN) gets codes 0; one whose 1/absmax is not a finite normal number, or
    holding a NaN, takes the clamping index; the others need no clamp (|c| <= 1 + ulp).
    """
    mbits = blocks.max(abs_bits(x))
    am = bits_to_f32(mbits, x.dtype)
    has_nan = mbits > INF_BITS[x.dtype]
    if has_nan.any():
        am = am.copy()
        where, block_of = blocks.elements(has_nan)
        ax = np.abs(to_f32(x[where], np.empty(where.size, np.float32)))
        ax[np.isnan(ax)] = 0.0  # NaN ignored, as bitsandbytes' 8-bit kernel does
        am[has_nan] = 0.0
        np.maximum.at(am, block_of, ax)
    absmax[:] = am
    inv = np.float32(1.0) / am
    normal = (am > 0) & (inv < np.inf) & (am < np.inf) & ~has_nan
    all_normal = bool(normal.all())
    v = to_f32(x, scratch("f32", x.size, np.float32))
    blocks.scale(v, inv if all_normal else np.where(normal, inv, np.float32(0.0)), v)
    v += np.float32(1.0)  # (c + 1) * 32767.5 + 0.5, each step rounded in float32
    v *= np.float32(32767.5)
    v += np.float32(0.5)
    idx = scratch("u16", x.size, np.uint16)
    np.copyto(idx, v, casting="unsafe")
    np.take(lut.lut, idx, out=codes, mode="clip")
    if not all_normal:
        where, block_of = blocks.elements(~normal)
        c = to_f32(x[where], np.empty(where.size, np.float32)) * inv[block_of]
        special = lut.lut[lut_index(c)]
        special[am[block_of] == 0] = 0  # an all-zero (or all-NaN) block
        codes[where] = special


def dequantize8_blocks(q: U8Array, blocks: Blocks, absmax: F32Array, lut: Lut8, out: AnyArray) -> None:
    """The 8-bit decode, the spec of the C ``dequantize8``: ``code[q] * absmax`` in float32, rounded into out."""
    n = q.size
    if n % 2 == 0:  # two codes per gather
        v = np.take(lut.pairs, q.view(np.uint16), out=scratch("u64", n // 2, np.uint64), mode="clip").view(np.float32)
    else:
        v = np.take(lut.code, q, out=scratch("f32", n, np.float32), mode="clip")
    blocks.scale(v, absmax, v)
    np.copyto(out, v, casting="unsafe")


def quantize_blockwise8(x: Any, blocksize: int = 4096, code: AnyArray | None = None) -> tuple[U8Array, F32Array]:
    """8-bit blockwise quantization as bitsandbytes' ``quantize_blockwise`` on CPU: ``(codes, absmax)``.

    ``codes`` has one uint8 per element, ``absmax`` one float32 per block of ``blocksize`` (any
    positive size, like bitsandbytes on CPU; the last block may be partial). ``code`` is a sorted
    256-entry map in [-1, 1], by default :func:`dynamic_map`.

    Error bound (finite input, block absmax >= 2**-126): the decoded float32 value is within
    ``absmax * error_bound("dynamic")`` of x, where the bound (0.007047) is half the largest gap
    between adjacent map entries (0.0140625, near +-1) plus the lookup grid's error (1/65535); the
    final cast to the source dtype adds its own rounding (half an ulp). In blocks with a smaller
    absmax, 1/absmax overflows and only ``|x - x̂| <= 2 * absmax`` holds (zeros there decode to
    -0.993 * absmax).
    """
    return _quantize8([as_source(x)], check_blocksize(blocksize), lut8(code))[0]


def _quantize8(arrays: list[AnyArray], bs: int, lut: Lut8) -> list[tuple[U8Array, F32Array]]:
    native = _c.kernels()
    kernel = None if native is None else native.quantize8
    return quantize_layout(arrays, bs, False, kernel, (lut.lut, lut), quantize8_blocks)


def _dequantize8(qs: list[U8Array], ams: list[F32Array], bs: int, dtype: Any, lut: Lut8) -> list[AnyArray]:
    native = _c.kernels()
    kernel = None if native is None else native.dequantize8
    counts = [q.size for q in qs]
    return dequantize_layout(qs, ams, counts, bs, out_dtype(dtype), kernel, (lut.code, lut), dequantize8_blocks, False)


def quantize_blockwise8_batch(
    xs: Sequence[Any], blocksize: int = 4096, code: AnyArray | None = None
) -> list[tuple[U8Array, F32Array]]:
    """:func:`quantize_blockwise8` of many tensors at once, each starting its own blocks; same results.

    For many small tensors, whose per-call overhead would dominate: one layout, one pass. Results
    may be views into shared buffers.
    """
    return _quantize8([as_source(x) for x in xs], check_blocksize(blocksize), lut8(code))


def dequantize_blockwise8(
    codes: Any, absmax: Any, blocksize: int = 4096, dtype: Any = np.float32, code: AnyArray | None = None
) -> AnyArray:
    """Values of 8-bit codes: ``code[q] * absmax`` in float32, rounded to nearest-even into ``dtype``."""
    bs = check_blocksize(blocksize)
    return _dequantize8([flat(codes, U8)], [flat(absmax, F32)], bs, dtype, lut8(code))[0]


def dequantize_blockwise8_batch(
    items: Sequence[tuple[Any, Any]], blocksize: int = 4096, dtype: Any = np.float32, code: AnyArray | None = None
) -> list[AnyArray]:
    """:func:`dequantize_blockwise8` of many ``(codes, absmax)`` pairs at once; same results (views into one buffer)."""
    bs = check_blocksize(blocksize)
    dt = out_dtype(dtype)
    return _dequantize8([flat(c, U8) for c, _ in items], [flat(a, F32) for _, a in items], bs, dt, lut8(code))


# ================================================================================================ 4-bit
# The NF4 / FP4 tables, the one 4-bit body and its entry points.

#: Block sizes bitsandbytes accepts for 4-bit (its CPU path accepts the same list as CUDA).
BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)

NF4_TABLE: F32Array = readonly(
    np.array(
        [
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ],
        dtype=np.float32,
    )
)
"""NF4's 16 values (normal-distribution quantiles), code order = sorted order, 0 at index 7."""

FP4_TABLE: F32Array = readonly(
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32) / np.float32(12.0)
)
"""FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, scaled to [-1, 1] as bitsandbytes does."""


# ------------------------------------------------------------------------------------------------ 8-bit lookup


GRID4_SCALE = 16384.0  # grid cells per unit of the scaled value
GRID4_OFFSET = GRID4_SCALE + 2.0  # keeps the grid index positive for c down to -1 - a few ulps
_TINY4 = 2.0**-100  # below this absmax, 1/absmax * GRID4_SCALE could overflow: not the fused grid product


def _grid4(c: F32Array) -> npt.NDArray[np.int64]:
    """Grid cell of scaled values, with the very float32 operations of the kernels."""
    v = np.asarray(c, dtype=np.float32) * np.float32(GRID4_SCALE)
    v = v + np.float32(GRID4_OFFSET)
    return v.astype(np.int64)


class Table4:
    """One 4-bit type: midpoints, sorted-position -> code, and a grid lookup table for the fast path."""

    def __init__(self, values: F32Array) -> None:
        self.values: F32Array = values
        order = np.argsort(values, kind="stable")  # +0 (code 0) sorts before -0 (code 8), as in torch
        sv = values[order]
        self.bounds: F32Array = readonly(((sv[:-1] + sv[1:]) / np.float32(2.0)).astype(np.float32))
        self.order: U8Array = readonly(order.astype(np.uint8))
        self.pad_code = int(self.order[int(np.searchsorted(self.bounds, np.float32(0.0), side="left"))])
        # The sorted position is #{bounds < c} = #{s_k <= c} with s_k the float just above bound k.
        steps = np.nextafter(self.bounds, np.float32(np.inf)).astype(np.float32)
        j_step, j_prev = _grid4(steps), _grid4(self.bounds)
        size = int(_grid4(np.array([1.0009765625], dtype=np.float32))[0]) + 1
        cells = np.arange(size)
        count = np.searchsorted(j_step, cells, side="left")  # steps entirely below each cell
        first = j_prev < j_step  # the step is its cell's first float: the whole cell is past it
        np.add.at(count, j_step[first], 1)
        ambiguous = np.zeros(size, dtype=bool)
        ambiguous[j_step[~first]] = True
        table = self.order[np.minimum(count, 15)].astype(np.uint8)
        table[ambiguous] |= 0x80
        self.grid: U8Array = readonly(table)
        self.grid_size = size
        self.native = (self.grid, self.bounds, self.order)  # what the C quantize4 takes
        # Codes of a byte's two nibbles as a float32 pair, for dequantization.
        pairs = np.empty((256, 2), dtype=np.float32)
        pairs[:, 0] = np.repeat(values, 16)
        pairs[:, 1] = np.tile(values, 16)
        self.pairs: npt.NDArray[np.uint64] = readonly(pairs.view(np.uint64).reshape(256))

    def exact(self, c: AnyArray) -> U8Array:
        """Codes of scaled values by the definition: clamp, count midpoints below, NaN to the top."""
        c = np.clip(c, np.float32(-1.0), np.float32(1.0))
        pos = np.searchsorted(self.bounds, c, side="left")
        pos[np.isnan(c)] = 15
        return self.order[pos]

    def codes(self, c: F32Array) -> U8Array:
        """Codes of finite scaled values: the grid, searched exactly where a cell holds a midpoint."""
        cells = c * np.float32(GRID4_SCALE)
        cells += np.float32(GRID4_OFFSET)
        codes: U8Array = np.take(self.grid, cells.astype(np.uint16), mode="clip")
        hit = np.flatnonzero(codes >= 0x80)
        codes[hit] = self.exact(c[hit])
        return codes


TABLES4 = {"nf4": Table4(NF4_TABLE), "fp4": Table4(FP4_TABLE)}


def table4(quant_type: str) -> Table4:
    try:
        return TABLES4[quant_type]
    except KeyError:
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', not {quant_type!r}") from None


def check_4bit(quant_type: str, blocksize: int) -> tuple[Table4, int]:
    t = table4(quant_type)
    if blocksize not in BLOCKSIZES_4BIT:
        raise ValueError(f"4-bit blocksize must be one of {BLOCKSIZES_4BIT}, not {blocksize!r}")
    return t, int(blocksize)


def quantize4_blocks(x: AnyArray, blocks: Blocks, table: Table4, packed: U8Array, absmax: F32Array) -> None:
    """The 4-bit arithmetic, the spec of the C ``quantize4``: packed codes of ``x`` and absmax of ``blocks``.

    absmax = max |x| per block, NaN propagating; a full block scales c = x * (1 / max(absmax, 1e-38)),
    a tensor's last, partial block c = x / max(absmax, 1e-38) and stores that clamped absmax; the code
    is the table entry nearest clamp(c, -1, 1) (ties low, NaN top); pad elements get the code of 0.0;
    two codes a byte, the first in the high nibble. Full blocks with a finite, not tiny absmax find
    their code in one product ``x * (s * 2**14)`` (exact scaling) and a grid look-up.
    """
    n = x.size
    am = bits_to_f32(blocks.max(abs_bits(x)), x.dtype)
    amc = np.maximum(am, np.float32(1e-38))
    s = np.float32(1.0) / amc
    absmax[:] = am
    partial = blocks.partial
    absmax[partial] = amc[partial]
    fast = ((am == 0) | ((am >= np.float32(_TINY4)) & (am < np.inf))) & ~partial
    v = to_f32(x, scratch("f32", n, np.float32))
    blocks.scale(v, np.where(fast & (am > 0), s * np.float32(GRID4_SCALE), np.float32(0.0)), v)
    v += np.float32(GRID4_OFFSET)
    cells = scratch("u16", n, np.uint16)
    np.copyto(cells, v, casting="unsafe")
    codes = np.take(table.grid, cells, out=scratch("u8", n + (n & 1), np.uint8)[:n], mode="clip")
    if codes.max(initial=0) >= 0x80:  # cells holding a midpoint: those few elements exactly
        hit = np.flatnonzero(codes >= 0x80)
        codes[hit] = table.exact(to_f32(x[hit], np.empty(hit.size, np.float32)) * s[blocks.block_of(hit)])
    if not fast.all():
        where, block_of = blocks.elements(~fast)
        xs = to_f32(x[where], np.empty(where.size, np.float32))
        c = np.where(partial[block_of], xs / amc[block_of], xs * s[block_of])
        codes[where] = table.codes(c) if bool(np.isfinite(amc[~fast]).all()) else table.exact(c)
    codes[blocks.pads] = table.pad_code  # bitsandbytes pads the *scaled* values with 0.0
    _pack(codes, packed)


def _pack(codes: U8Array, packed: U8Array) -> None:
    """Two codes (< 16) per byte, the first in the high nibble, via 16-bit lanes (strided uint8 ops are slow)."""
    w = codes.view(np.uint16)  # little-endian: first code in the low byte
    hi = np.left_shift(w, 4, out=scratch("pack", w.size, np.uint16))
    np.bitwise_or(hi, w >> 8, out=hi)
    np.copyto(packed, hi, casting="unsafe")


def dequantize4_blocks(p: U8Array, blocks: Blocks, absmax: F32Array, table: Table4, out: AnyArray) -> None:
    """The 4-bit decode, the spec of the C ``dequantize4``: ``table[q] * absmax`` in float32, rounded into out."""
    v = np.take(table.pairs, p, out=scratch("u64", p.size, np.uint64), mode="clip").view(np.float32)  # both nibbles
    blocks.scale(v, absmax, v)
    np.copyto(out, v[: out.size], casting="unsafe")


def quantize_4bit(x: Any, quant_type: str = "nf4", blocksize: int = 64) -> tuple[U8Array, F32Array]:
    """4-bit quantization as bitsandbytes' ``quantize_4bit`` on CPU: ``(packed, absmax)``.

    ``packed`` holds two codes per byte, element 0 in the high nibble, ``ceil(n / 2)`` bytes (an odd
    count is padded with the code of 0.0); ``absmax`` one float32 per block (the last partial block's
    absmax is clamped to >= 1e-38, as bitsandbytes stores it).

    Error bound (finite input, block absmax >= 2**-126): the decoded float32 value is within
    ``absmax * error_bound(quant_type)`` of x: half the largest gap of the table (NF4: 0.15190,
    between -1 and -0.696; FP4: 0.16667, between 2/3 and 1) plus float32 rounding of the scaling;
    the final cast to the source dtype adds its own rounding (half an ulp). Below absmax 1e-38 the
    scale is clamped and only ``|x - x̂| <= 2 * absmax`` holds.
    """
    table, bs = check_4bit(quant_type, blocksize)
    return _quantize4([as_source(x)], bs, table)[0]


def _quantize4(arrays: list[AnyArray], bs: int, table: Table4) -> list[tuple[U8Array, F32Array]]:
    native = _c.kernels()
    kernel = None if native is None else native.quantize4
    return quantize_layout(arrays, bs, True, kernel, (table.native, table), quantize4_blocks)


def _dequantize4(
    ps: list[U8Array], ams: list[F32Array], ns: list[int], bs: int, dtype: Any, table: Table4
) -> list[AnyArray]:
    native = _c.kernels()
    kernel = None if native is None else native.dequantize4
    return dequantize_layout(ps, ams, ns, bs, out_dtype(dtype), kernel, (table.values, table), dequantize4_blocks, True)


def quantize_4bit_batch(
    xs: Sequence[Any], quant_type: str = "nf4", blocksize: int = 64
) -> list[tuple[U8Array, F32Array]]:
    """:func:`quantize_4bit` of many tensors at once, each starting its own blocks and bytes; same results.

    For many small tensors, whose per-call overhead would dominate: one layout, one pass. Results
    may be views into shared buffers.
    """
    table, bs = check_4bit(quant_type, blocksize)
    return _quantize4([as_source(x) for x in xs], bs, table)


def dequantize_4bit(
    packed: Any, absmax: Any, n: int, quant_type: str = "nf4", blocksize: int = 64, dtype: Any = np.float32
) -> AnyArray:
    """Values of ``n`` packed 4-bit codes: ``table[q] * absmax`` in float32, rounded to nearest-even into ``dtype``."""
    table, bs = check_4bit(quant_type, blocksize)
    return _dequantize4([flat(packed, U8)], [flat(absmax, F32)], [int(n)], bs, dtype, table)[0]


def dequantize_4bit_batch(
    items: Sequence[tuple[Any, Any, int]], quant_type: str = "nf4", blocksize: int = 64, dtype: Any = np.float32
) -> list[AnyArray]:
    """:func:`dequantize_4bit` of many ``(packed, absmax, n)`` at once; same results (views into one buffer)."""
    table, bs = check_4bit(quant_type, blocksize)
    dt = out_dtype(dtype)
    ps = [flat(p, U8) for p, _, _ in items]
    ams = [flat(a, F32) for _, a, _ in items]
    return _dequantize4(ps, ams, [int(n) for _, _, n in items], bs, dt, table)


# ================================================================================================ absmax statistics
# bitsandbytes double quantization of the 4-bit statistics: torch's CPU mean, emulated, then 8-bit.


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else (x - 1).bit_length()


def _seq_sum(rows: F32Array) -> F32Array:
    """Sum along axis 0 one row after another, in float32 (not numpy's pairwise order)."""
    acc: F32Array = np.zeros(rows.shape[1:], dtype=np.float32)
    for r in rows:
        acc += r
    return acc


def _grouped_seq_sum(rows: F32Array, step: int) -> tuple[F32Array, F32Array]:
    """Sequential sums of consecutive groups of ``step`` rows, and of the leftover rows."""
    ng = rows.shape[0] // step
    grouped = rows[: ng * step].reshape(ng, step, *rows.shape[1:])
    sums = np.zeros((ng, *rows.shape[1:]), dtype=np.float32)
    for j in range(step if ng else 0):  # (no group: nothing to add, and short inputs are the common case)
        sums += grouped[:, j]
    return sums, _seq_sum(rows[ng * step :])


def _multi_row_sum(data: F32Array) -> F32Array:
    """torch's cascade ``multi_row_sum``: four levels of accumulators, flushed every 2**level_power rows."""
    size = data.shape[0]
    step = 1 << max(4, _ceil_log2(size) // 4)
    level0, acc0 = _grouped_seq_sum(data, step)
    level1, acc1 = _grouped_seq_sum(level0, step)
    level2, acc2 = _grouped_seq_sum(level1, step)
    acc3 = _seq_sum(level2)
    return acc0 + acc1 + acc2 + acc3  # left to right, as torch folds them


def _row_sum(rows: F32Array) -> F32Array:
    """torch's ``row_sum``: four interleaved accumulators (ilp), their cascade, then the leftovers."""
    size = rows.shape[0]
    groups = size // 4
    part = _multi_row_sum(rows[: groups * 4].reshape(groups, 4, *rows.shape[1:]))
    acc: F32Array = part[0].copy()
    for i in range(groups * 4, size):
        acc += rows[i]
    for k in (1, 2, 3):
        acc += part[k]
    return acc


def _chunk_sum(x: F32Array, width: int) -> np.float32:
    return np.float32(_chunk_sums(x[:, None], width)[0])


def _chunk_sums(cols: F32Array, width: int) -> F32Array:
    """torch's sum of one chunk, for every column of ``cols`` (n, k) at once: each column is added in its own order."""
    n = cols.shape[0]
    total: F32Array = np.zeros(cols.shape[1:], dtype=np.float32)
    if n < width:
        return total + _row_sum(cols)
    nvec = n // width
    lanes = _row_sum(cols[: nvec * width].reshape(nvec, width, *cols.shape[1:]))
    for t in cols[nvec * width :]:
        total += t
    for t in lanes:
        total += t
    return np.float32(0.0) + total


_GRAIN = 32768  # torch's at::internal::GRAIN_SIZE


def _torch_threads() -> int:
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None:
        return int(torch_mod.get_num_threads())
    return _default_threads()


def absmax_mean(absmax: Any, *, vector_width: int = 8, num_threads: int | None = None) -> np.float32:
    """``torch.mean`` of a flat float32 array on CPU, bit for bit, without torch.

    bitsandbytes' double quantization subtracts this mean, so the offset it stores depends on the
    order torch adds in: a cascade of per-lane sums over ``vector_width`` lanes (8 for x86 builds
    of torch 2.x), split between threads when there are more than 32768 values. ``num_threads``
    defaults to torch's own setting when torch is imported, else to the available CPUs.
    """
    x = np.ascontiguousarray(np.asarray(absmax, dtype=np.float32).reshape(-1))
    n = x.size
    if n == 0:
        return np.float32(np.nan)
    threads = _torch_threads() if num_threads is None else max(1, int(num_threads))
    with np.errstate(all="ignore"):
        return _torch_mean(x, vector_width, threads)


def _torch_mean(x: F32Array, vector_width: int, threads: int) -> np.float32:
    n = x.size
    if n < _GRAIN or threads == 1:
        total = _chunk_sum(x, vector_width)
    else:
        tasks = min(threads, -(-n // _GRAIN)) if n > _GRAIN else 1
        size = -(-n // tasks)
        total = np.float32(0.0)
        for i in range(tasks):
            if i * size < n:
                total = np.float32(total + _chunk_sum(x[i * size : (i + 1) * size], vector_width))
        total = np.float32(np.float32(0.0) + total)
    return np.float32(total / np.float32(n))


def quantize_absmax_batch(absmaxes: Sequence[Any], blocksize: int = 256) -> list[tuple[np.float32, U8Array, F32Array]]:
    """:func:`quantize_absmax` of many statistics arrays at once; the same bits.

    The mean emulation costs dozens of numpy calls per array, so arrays of one length (below
    torch's grain, where the thread count plays no part) are stacked and summed column by column
    together; the deviations then go through one :func:`quantize_blockwise8_batch`.
    """
    ams = [flat(a, F32) for a in absmaxes]
    by_size: dict[int, list[int]] = {}
    for i, am in enumerate(ams):
        by_size.setdefault(am.size, []).append(i)
    offsets: list[np.float32] = [np.float32(0.0)] * len(ams)
    devs = list(ams)  # each replaced by its deviations below
    for n, members in by_size.items():
        if n == 0 or n >= _GRAIN or len(members) == 1:
            for i in members:
                offsets[i] = absmax_mean(ams[i])
                with np.errstate(invalid="ignore"):
                    devs[i] = ams[i] - offsets[i]
            continue
        rows = np.stack([ams[i] for i in members])  # (k, n): each array's deviations stay a contiguous row
        with np.errstate(all="ignore"):
            means = _chunk_sums(rows.T, 8) / np.float32(n)
        with np.errstate(invalid="ignore"):
            dev = rows - means[:, None]
        for i, mean, row in zip(members, means, dev, strict=True):
            offsets[i], devs[i] = mean, row
    quantized = quantize_blockwise8_batch(devs, blocksize)
    return [(offset, codes, nested) for offset, (codes, nested) in zip(offsets, quantized, strict=True)]


def quantize_absmax(absmax: Any, blocksize: int = 256) -> tuple[np.float32, U8Array, F32Array]:
    """bitsandbytes' double quantization of 4-bit statistics: ``(offset, codes, nested_absmax)``.

    ``offset`` is :func:`absmax_mean`; ``absmax - offset`` is quantized 8-bit in blocks of 256 with
    the dynamic map. Decoded statistics are within ``nested_absmax * error_bound("dynamic")`` of the
    originals (plus float32 rounding of the offset addition), so a decoded value moves by at most
    that times its table entry. If the statistics sum past the float32 limit the mean is inf and
    the decoded statistics NaN, as in bitsandbytes.
    """
    return quantize_absmax_batch([absmax], blocksize)[0]


def dequantize_absmax_batch(items: Sequence[tuple[Any, Any, Any]], blocksize: int = 256) -> list[F32Array]:
    """:func:`dequantize_absmax` of many ``(offset, codes, nested_absmax)``; same results (views into one buffer)."""
    devs = dequantize_blockwise8_batch([(codes, nested) for _, codes, nested in items], blocksize, np.float32)
    if not devs:
        return []
    sizes = [d.size for d in devs]
    offsets = np.repeat(np.array([offset for offset, _, _ in items], dtype=np.float32), sizes)
    with np.errstate(invalid="ignore", over="ignore"):
        flat_sum = np.concatenate(devs) + offsets
    return [flat_sum[o:e] for o, e in pairwise(accumulate(sizes, initial=0))]


def dequantize_absmax(offset: Any, codes: Any, nested_absmax: Any, blocksize: int = 256) -> F32Array:
    """Statistics back from :func:`quantize_absmax`: ``dynamic[q] * nested_absmax + offset`` in float32."""
    return dequantize_absmax_batch([(offset, codes, nested_absmax)], blocksize)[0]


def error_bound(kind: str) -> float:
    """Largest |c - decoded code| over scaled values c in [-1, 1]: "dynamic" (8-bit), "nf4" or "fp4".

    Multiply by a block's absmax for the bound on |x - x̂| before the final cast.
    """
    if kind in TABLES4:
        sv = np.sort(TABLES4[kind].values.astype(np.float64))
        return float(np.max(np.diff(sv)) / 2) + 2.0**-22
    if kind == "dynamic":
        lut = lut8(None)
        grid = -1.0 + 2.0 * np.arange(65536) / 65535.0
        code = lut.code.astype(np.float64)[lut.lut]
        # Each grid cell spans +-1/65535 around its point (plus float32 rounding of the index arithmetic).
        return float(np.max(np.abs(grid - code)) + 1.0 / 65535.0 + 2.0**-22)
    raise ValueError(f"unknown kind {kind!r}")


# ================================================================================================ torch
# The same steps in torch ops, for tensors on accelerators (CPU tensors take the kernels above).


def _torch() -> Any:
    import torch

    return torch


_TORCH_TO_NP = {"float32": F32, "float16": F16, "bfloat16": BF16}


def _tensor_to_numpy(t: Tensor) -> AnyArray:
    """A numpy view of a CPU tensor (bfloat16 through its bits)."""
    torch = _torch()
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return np.asarray(t.numpy())


def _numpy_to_tensor(a: AnyArray, device: Any) -> Tensor:
    torch = _torch()
    if a.dtype == BF16:
        t: Tensor = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
    else:
        t = torch.from_numpy(a).to(device)
    return t


def _np_dtype(dtype: Any) -> np.dtype[Any]:
    name = str(dtype).replace("torch.", "")
    if name not in _TORCH_TO_NP:
        raise TypeError(f"dequantization produces float32, float16 or bfloat16, not {dtype}")
    d: np.dtype[Any] = _TORCH_TO_NP[name]
    return d


def _code_np(code: Any) -> AnyArray | None:
    if code is None:
        return None
    if hasattr(code, "detach"):
        code = code.detach().cpu().numpy()
    return np.asarray(code, dtype=np.float32)


def _use_numpy(t: Tensor, impl: str) -> bool:
    if impl not in ("auto", "numpy", "torch"):
        raise ValueError(f"impl must be 'auto', 'numpy' or 'torch', not {impl!r}")
    return impl == "numpy" or (impl == "auto" and t.device.type == "cpu")


def _check_source_tensor(x: Tensor) -> Tensor:
    torch = _torch()
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"quantization takes float32, float16 or bfloat16, not {x.dtype}")
    return x.detach().contiguous().reshape(-1)


def _lut_index_torch(c: Tensor) -> Tensor:
    torch = _torch()
    nan = torch.isnan(c)
    c = torch.clamp(c, -1.0, 1.0)
    c = torch.where(nan, torch.full_like(c, -1.0), c)
    c = torch.add(c, 1.0)
    c = torch.mul(c, 32767.5)
    c = torch.add(c, 0.5)
    return c.to(torch.int64)


def _per_block(v: Tensor, n: int, bs: int) -> Tensor:
    """A (blocks, bs) view of ``v`` padded with zeros."""
    torch = _torch()
    nb = nblocks_of(n, bs)
    if nb * bs != n:
        v = torch.cat([v, v.new_zeros(nb * bs - n)])
    return v.reshape(nb, bs)


def quantize_blockwise8_torch(
    x: Tensor, blocksize: int = 4096, code: Any = None, *, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`quantize_blockwise8` for a tensor on any device; results on the tensor's device.

    ``impl="auto"`` runs CPU tensors through the numpy kernels and others through torch ops that do
    the same float32 arithmetic (``"torch"`` forces the latter, to test it on CPU).
    """
    torch = _torch()
    x = _check_source_tensor(x)
    bs = check_blocksize(blocksize)
    if _use_numpy(x, impl):
        q_np, am_np = quantize_blockwise8(_tensor_to_numpy(x), bs, code)
        return _numpy_to_tensor(q_np, x.device), _numpy_to_tensor(am_np, x.device)
    lut = lut8(_code_np(code))
    n = x.numel()
    xf = x.float()
    a = torch.abs(xf)
    a = torch.where(torch.isnan(a), torch.zeros_like(a), a)
    absmax = _per_block(a, n, bs).amax(dim=1) if n else xf.new_empty(0)
    inv = 1.0 / absmax
    c = (_per_block(xf, n, bs) * inv[:, None]).reshape(-1)[:n]
    table = torch.from_numpy(lut.lut.astype(np.uint8)).to(x.device)
    codes = table[_lut_index_torch(c)]
    zero = (absmax == 0).repeat_interleave(bs)[:n]
    codes = torch.where(zero, torch.zeros_like(codes), codes)
    return codes, absmax


def dequantize_blockwise8_torch(
    codes: Tensor,
    absmax: Tensor,
    blocksize: int = 4096,
    dtype: Any = None,
    code: Any = None,
    *,
    impl: str = "auto",
) -> Tensor:
    """:func:`dequantize_blockwise8` for tensors on any device (``dtype`` a torch dtype, default float32)."""
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype
    bs = check_blocksize(blocksize)
    codes = codes.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if _use_numpy(codes, impl):
        res = dequantize_blockwise8(codes.cpu().numpy(), absmax.cpu().numpy(), bs, _np_dtype(dtype), _code_np(code))
        return _numpy_to_tensor(res, codes.device)
    n = codes.numel()
    if absmax.numel() != nblocks_of(n, bs):
        raise ValueError(f"{n} codes in blocks of {bs} need {nblocks_of(n, bs)} absmax values, got {absmax.numel()}")
    table = torch.from_numpy(lut8(_code_np(code)).code.copy()).to(codes.device)
    v = table[codes.to(torch.int64)]
    out: Tensor = (_per_block(v, n, bs) * absmax[:, None]).reshape(-1)[:n].to(dtype)
    return out


def _q4_codes_torch(xf: Tensor, n: int, bs: int, t: Table4) -> tuple[Tensor, Tensor]:
    torch = _torch()
    nb = nblocks_of(n, bs)
    nfull = n // bs
    a = torch.abs(xf)
    absmax = _per_block(a, n, bs).amax(dim=1)  # NaN propagates
    clamped = torch.clamp(absmax, min=1e-38)
    c = torch.empty_like(xf)
    if nfull:
        s = 1.0 / clamped[:nfull]
        c[: nfull * bs] = (xf[: nfull * bs].reshape(nfull, bs) * s[:, None]).reshape(-1)
    if nfull < nb:
        c[nfull * bs :] = xf[nfull * bs :] / clamped[-1]
        absmax = torch.cat([absmax[:nfull], clamped[-1:]])
    nan = torch.isnan(c)
    c = torch.clamp(c, -1.0, 1.0)
    bounds = torch.from_numpy(t.bounds.copy()).to(xf.device)
    pos = torch.bucketize(c, bounds, right=False)
    pos = torch.where(nan, torch.full_like(pos, 15), pos)
    order = torch.from_numpy(t.order.astype(np.int64)).to(xf.device)
    return order[pos].to(torch.uint8), absmax


def quantize_4bit_torch(
    x: Tensor, quant_type: str = "nf4", blocksize: int = 64, *, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`quantize_4bit` for a tensor on any device; results on the tensor's device."""
    torch = _torch()
    t, bs = check_4bit(quant_type, blocksize)
    x = _check_source_tensor(x)
    if _use_numpy(x, impl):
        p_np, am_np = quantize_4bit(_tensor_to_numpy(x), quant_type, bs)
        return _numpy_to_tensor(p_np, x.device), _numpy_to_tensor(am_np, x.device)
    n = x.numel()
    if n == 0:
        return x.new_empty(0, dtype=torch.uint8), x.new_empty(0, dtype=torch.float32)
    codes, absmax = _q4_codes_torch(x.float(), n, bs, t)
    if n % 2:
        codes = torch.cat([codes, codes.new_full((1,), t.pad_code)])
    packed = torch.bitwise_or(torch.bitwise_left_shift(codes[0::2], 4), codes[1::2])
    return packed, absmax


def dequantize_4bit_torch(
    packed: Tensor,
    absmax: Tensor,
    n: int,
    quant_type: str = "nf4",
    blocksize: int = 64,
    dtype: Any = None,
    *,
    impl: str = "auto",
) -> Tensor:
    """:func:`dequantize_4bit` for tensors on any device (``dtype`` a torch dtype, default float32)."""
    torch = _torch()
    t, bs = check_4bit(quant_type, blocksize)
    dtype = torch.float32 if dtype is None else dtype
    packed = packed.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if _use_numpy(packed, impl):
        res = dequantize_4bit(packed.cpu().numpy(), absmax.cpu().numpy(), n, quant_type, bs, _np_dtype(dtype))
        return _numpy_to_tensor(res, packed.device)
    n = int(n)
    if packed.numel() != (n + 1) // 2 or absmax.numel() != nblocks_of(n, bs):
        raise ValueError("packed codes or absmax do not match the element count")
    p = packed.to(torch.int64)
    nib = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[:n]
    table = torch.from_numpy(t.values.copy()).to(packed.device)
    out: Tensor = (_per_block(table[nib], n, bs) * absmax[:, None]).reshape(-1)[:n].to(dtype)
    return out


def quantize_absmax_torch(absmax: Tensor, blocksize: int = 256, *, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """:func:`quantize_absmax` for a tensor on any device (the mean is always the CPU emulation)."""
    torch = _torch()
    am = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    offset = absmax_mean(am.cpu().numpy())
    off_t = torch.tensor(float(offset), dtype=torch.float32, device=am.device)
    codes, nested = quantize_blockwise8_torch(am - off_t, blocksize, impl=impl)
    return off_t, codes, nested


def dequantize_absmax_torch(
    offset: Any, codes: Tensor, nested_absmax: Tensor, blocksize: int = 256, *, impl: str = "auto"
) -> Tensor:
    """:func:`dequantize_absmax` for tensors on any device."""
    torch = _torch()
    dev = dequantize_blockwise8_torch(codes, nested_absmax, blocksize, torch.float32, impl=impl)
    off = torch.as_tensor(offset, dtype=torch.float32, device=dev.device)
    out: Tensor = dev + off
    return out
