"""The block machinery every quantization kernel shares: dtypes, buffers, the block layout, one scheduler.

Inputs are flat arrays (the caller owns shapes; other shapes are read in C order) of float32,
float16 or bfloat16 (``ml_dtypes``). Every kernel has two implementations with bit-identical
results: the C accelerator ``tensorcodec._native`` (built at install when a C compiler is there;
it does a block in one pass where numpy needs many) and a numpy body (always there); which one
runs is the C seam's switch (``tensorcodec.set_native``). :func:`quantize_layout` and
:func:`dequantize_layout` dispatch a family's kernel over a :class:`BlockLayout` (one tensor or
many laid end to end, the ``*_batch`` functions), and :func:`run_blocks` runs it on a small thread
pool in chunks. The torch helpers at the end serve the ``*_torch`` entry points: CPU tensors go
through the kernels, others through torch ops doing the same float32 arithmetic.
"""

from __future__ import annotations

import os
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


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads the kernels use for large inputs (None: one per available CPU)."""
    global _num_threads, _pool
    with _lock:
        _num_threads = default_threads() if n is None else max(1, int(n))
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


# ================================================================================================ torch
# The same steps in torch ops, for tensors on accelerators (CPU tensors take the kernels above).


def torch_module() -> Any:
    import torch

    return torch


_TORCH_TO_NP = {"float32": F32, "float16": F16, "bfloat16": BF16}


def tensor_to_numpy(t: Tensor) -> AnyArray:
    """A numpy view of a CPU tensor (bfloat16 through its bits)."""
    torch = torch_module()
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return np.asarray(t.numpy())


def numpy_to_tensor(a: AnyArray, device: Any) -> Tensor:
    torch = torch_module()
    if a.dtype == BF16:
        t: Tensor = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
    else:
        t = torch.from_numpy(a).to(device)
    return t


def np_dtype(dtype: Any) -> np.dtype[Any]:
    name = str(dtype).replace("torch.", "")
    if name not in _TORCH_TO_NP:
        raise TypeError(f"dequantization produces float32, float16 or bfloat16, not {dtype}")
    d: np.dtype[Any] = _TORCH_TO_NP[name]
    return d


def code_np(code: Any) -> AnyArray | None:
    if code is None:
        return None
    if hasattr(code, "detach"):
        code = code.detach().cpu().numpy()
    return np.asarray(code, dtype=np.float32)


def use_numpy(t: Tensor, impl: str) -> bool:
    if impl not in ("auto", "numpy", "torch"):
        raise ValueError(f"impl must be 'auto', 'numpy' or 'torch', not {impl!r}")
    return impl == "numpy" or (impl == "auto" and t.device.type == "cpu")


def check_source_tensor(x: Tensor) -> Tensor:
    torch = torch_module()
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"quantization takes float32, float16 or bfloat16, not {x.dtype}")
    return x.detach().contiguous().reshape(-1)


def per_block(v: Tensor, n: int, bs: int) -> Tensor:
    """A (blocks, bs) view of ``v`` padded with zeros."""
    torch = torch_module()
    nb = nblocks_of(n, bs)
    if nb * bs != n:
        v = torch.cat([v, v.new_zeros(nb * bs - n)])
    return v.reshape(nb, bs)
