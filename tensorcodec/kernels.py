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
from bisect import bisect_left
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

_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_U8 = np.dtype(np.uint8)
_SOURCE_DTYPES = (_F32, _F16, _BF16)

#: Block sizes bitsandbytes accepts for 4-bit (its CPU path accepts the same list as CUDA).
BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _readonly(a: AnyArray) -> AnyArray:
    a.flags.writeable = False
    return a


# ------------------------------------------------------------------------------------------------ tables


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
    return _readonly(out)


def dynamic_map() -> F32Array:
    """bitsandbytes' ``create_dynamic_map(signed=True)``: 256 sorted float32 values, computed here."""
    return _dynamic_map().copy()


NF4_TABLE: F32Array = _readonly(
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

FP4_TABLE: F32Array = _readonly(
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32) / np.float32(12.0)
)
"""FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, scaled to [-1, 1] as bitsandbytes does."""


# ------------------------------------------------------------------------------------------------ 8-bit lookup


class _Lut8:
    """bitsandbytes' CPU 8-bit code lookup for one sorted 256-entry map (built once per map)."""

    def __init__(self, code: F32Array) -> None:
        if code.shape != (256,) or not np.all(code[1:] >= code[:-1]):
            raise ValueError("an 8-bit code must be 256 sorted float32 values")
        self.code: F32Array = _readonly(code.copy())
        mids = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
        grid = (np.float32(-1.0) + (np.float32(2.0) * np.arange(65536, dtype=np.float32)) / np.float32(65535.0)).astype(
            np.float32
        )
        # lut[i] = number of midpoints strictly below grid point i (the C kernel's forward walk).
        self.lut: U8Array = _readonly(np.searchsorted(mids, grid, side="left").astype(np.uint8))
        self._pairs: npt.NDArray[np.uint64] | None = None

    @property
    def pairs(self) -> npt.NDArray[np.uint64]:
        """Values of two consecutive codes read as one little-endian uint16, as a float32 pair: one gather per two."""
        if self._pairs is None:
            p = np.empty((65536, 2), dtype=np.float32)
            p[:, 0] = np.tile(self.code, 256)
            p[:, 1] = np.repeat(self.code, 256)
            self._pairs = _readonly(p.view(np.uint64).reshape(65536))
        return self._pairs


@lru_cache(maxsize=8)
def _lut8_cached(code_bytes: bytes) -> _Lut8:
    return _Lut8(np.frombuffer(code_bytes, dtype=np.float32))


def _lut8(code: AnyArray | None) -> _Lut8:
    if code is None:
        return _lut8_cached(_dynamic_map().tobytes())
    return _lut8_cached(np.ascontiguousarray(np.asarray(code, dtype=np.float32)).tobytes())


def _lut_index(c: F32Array) -> npt.NDArray[np.uint16]:
    """The C kernel's grid index of scaled values (NaN -> 0), exactly in float32."""
    c = np.array(c, dtype=np.float32)  # a copy we may scribble on
    nan = np.isnan(c)
    np.clip(c, np.float32(-1.0), np.float32(1.0), out=c)
    c[nan] = -1.0
    c += np.float32(1.0)
    c *= np.float32(32767.5)  # (t * 0.5) * 65535, the halving being exact
    c += np.float32(0.5)
    return c.astype(np.uint16)


# ------------------------------------------------------------------------------------------------ 4-bit tables

_K4 = 16384.0  # grid cells per unit of the scaled value
_K4_OFF = _K4 + 2.0  # keeps the grid index positive for c down to -1 - a few ulps
_TINY4 = 2.0**-100  # below this absmax, 1/absmax * _K4 could overflow: exact path instead


def _grid4(c: F32Array) -> npt.NDArray[np.int64]:
    """Grid cell of scaled values, with the very float32 operations of the fast path."""
    v = np.asarray(c, dtype=np.float32) * np.float32(_K4)
    v = v + np.float32(_K4_OFF)
    return v.astype(np.int64)


class _Table4:
    """One 4-bit type: midpoints, sorted-position -> code, and a grid lookup table for the fast path."""

    def __init__(self, values: F32Array) -> None:
        self.values: F32Array = values
        order = np.argsort(values, kind="stable")  # +0 (code 0) sorts before -0 (code 8), as in torch
        sv = values[order]
        self.bounds: F32Array = _readonly(((sv[:-1] + sv[1:]) / np.float32(2.0)).astype(np.float32))
        self.order: U8Array = _readonly(order.astype(np.uint8))
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
        self.grid: U8Array = _readonly(table)
        self.grid_size = size
        # Codes of a byte's two nibbles as a float32 pair, for dequantization.
        pairs = np.empty((256, 2), dtype=np.float32)
        pairs[:, 0] = np.repeat(values, 16)
        pairs[:, 1] = np.tile(values, 16)
        self.pairs: npt.NDArray[np.uint64] = _readonly(pairs.view(np.uint64).reshape(256))

    def exact(self, c: AnyArray) -> U8Array:
        """Codes of scaled values by the definition: clamp, count midpoints below, NaN to the top."""
        c = np.clip(c, np.float32(-1.0), np.float32(1.0))
        pos = np.searchsorted(self.bounds, c, side="left")
        pos[np.isnan(c)] = 15
        return self.order[pos]


_TABLES4 = {"nf4": _Table4(NF4_TABLE), "fp4": _Table4(FP4_TABLE)}


def _table4(quant_type: str) -> _Table4:
    try:
        return _TABLES4[quant_type]
    except KeyError:
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', not {quant_type!r}") from None


# ------------------------------------------------------------------------------------------------ threads

_CHUNK = 1 << 16  # elements per chunk: the working set of a chunk stays in L2
_PARALLEL_MIN = 1 << 18  # below this many elements one thread does it all
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_num_threads = 0


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads the numpy kernels use for large inputs (None: one per available CPU)."""
    global _num_threads, _pool
    with _lock:
        _num_threads = _default_threads() if n is None else max(1, int(n))
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def get_num_threads() -> int:
    """Threads the numpy kernels use for large inputs."""
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


_local = threading.local()


def _scratch(name: str, size: int, dtype: Any) -> AnyArray:
    """A per-thread reusable buffer: fresh large arrays would page-fault on every chunk."""
    bufs: dict[str, AnyArray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
        buf = bufs[name] = np.empty(max(size, _CHUNK), dtype=dtype)
    return buf[:size]


def _parallel_blocks(nblocks: int, blocksize: int, work: Callable[[int, int], None]) -> None:
    """Run ``work(first_block, end_block)`` over all blocks, in chunks, on up to ``get_num_threads()`` threads.

    Chunks are whole blocks so every block is scaled by one call; the caller's thread takes a share.
    """
    per_chunk = max(1, _CHUNK // blocksize)
    threads = get_num_threads()
    if threads == 1 or nblocks * blocksize < _PARALLEL_MIN:
        for b in range(0, nblocks, per_chunk):
            work(b, min(nblocks, b + per_chunk))
        return
    chunks = [(b, min(nblocks, b + per_chunk)) for b in range(0, nblocks, per_chunk)]
    spans = [chunks[i::threads] for i in range(threads)]

    def run(span: list[tuple[int, int]]) -> None:
        for lo, hi in span:
            work(lo, hi)

    futures = [_executor().submit(run, span) for span in spans[1:] if span]
    run(spans[0])
    for f in futures:
        f.result()


# ------------------------------------------------------------------------------------------------ helpers


def _as_source(x: Any) -> AnyArray:
    """A flat C-contiguous float32/float16/bfloat16 array (copying only when needed)."""
    if type(x) is np.ndarray and x.ndim == 1 and x.flags.c_contiguous and x.dtype in _SOURCE_DTYPES:
        return x
    a = np.asarray(x)
    if a.dtype not in _SOURCE_DTYPES:
        raise TypeError(f"quantization takes float32, float16 or bfloat16, not {a.dtype}")
    return np.ascontiguousarray(a.reshape(-1))


def _bits(a: AnyArray) -> AnyArray:
    return a.view(np.uint32 if a.dtype == _F32 else np.uint16)


_INF_BITS = {_F32: 0x7F800000, _F16: 0x7C00, _BF16: 0x7F80}
_ABS_MASK = {_F32: 0x7FFFFFFF, _F16: 0x7FFF, _BF16: 0x7FFF}


@lru_cache(maxsize=1)
def _f16_table() -> F32Array:
    return _readonly(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32))


def _to_f32(x: AnyArray, out: AnyArray) -> AnyArray:
    """Exact float32 values of a source slice into ``out`` (float16 by table: numpy's cast is slow)."""
    if x.dtype == _F16:
        np.take(_f16_table(), x.view(np.uint16), out=out, mode="clip")
    else:
        np.copyto(out, x, casting="unsafe")
    return out


def _block_max_bits(x: AnyArray, nblocks: int, blocksize: int) -> AnyArray:
    """Per-block max of |x| as bit patterns (integer max: NaN patterns sort above inf)."""
    u = _bits(x)
    m = np.bitwise_and(u, u.dtype.type(_ABS_MASK[x.dtype]), out=_scratch("absbits", u.size, u.dtype))
    full = (u.size // blocksize) * blocksize
    if blocksize >= 512 or u.size != full:
        out = np.empty(nblocks, dtype=m.dtype)
        if full:
            np.max(m[:full].reshape(-1, blocksize), axis=1, out=out[: full // blocksize])
        if full < u.size:
            out[-1] = m[full:].max()
        return out
    return np.maximum.reduceat(m, _starts(nblocks, blocksize))


@lru_cache(maxsize=64)
def _starts(nblocks: int, blocksize: int) -> npt.NDArray[np.intp]:
    return _readonly(np.arange(0, nblocks * blocksize, blocksize, dtype=np.intp))


def _bits_to_f32(m: AnyArray, dtype: np.dtype[Any]) -> F32Array:
    if dtype == _F32:
        return m.view(np.float32)
    if dtype == _BF16:
        return (m.astype(np.uint32) << 16).view(np.float32)
    return m.view(np.float16).astype(np.float32)


def _nblocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def _check_blocksize(blocksize: int) -> int:
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive integer, not {blocksize!r}")
    return int(blocksize)


# ------------------------------------------------------------------------------------------------ native

_KIND = {_F32: 0, _F16: 1, _BF16: 2}  # element kinds as the C kernels number them
_NATIVE_CHUNK = 1 << 20  # most elements per C call when work is split between threads
_NATIVE_PARALLEL_MIN = 1 << 18  # below this many elements one thread is faster (a hand-off costs ~50 µs)


def _native_blocks(nblocks: int, blocksize: int, call: Callable[[int, int], None]) -> None:
    """Run the C kernel ``call(first_block, end_block)`` over all blocks, at once or in chunks taken by the threads.

    The C kernels release the GIL, so chunks run in parallel; taking chunks from a shared queue
    keeps both cores busy when one is slowed by other load.
    """
    n = nblocks * blocksize
    threads = get_num_threads()
    if threads == 1 or n < _NATIVE_PARALLEL_MIN or nblocks < 2:
        call(0, nblocks)
        return
    per = max(1, min(_NATIVE_CHUNK, n // (2 * threads)) // blocksize)  # two chunks a thread or more
    chunks = iter(range(0, nblocks, per))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                b = next(chunks, None)
            if b is None:
                return
            call(b, min(nblocks, b + per))

    futures = [_executor().submit(run) for _ in range(threads - 1)]
    run()
    for f in futures:
        f.result()


def _native_spans(ends: list[int], call: Callable[[int, int], None]) -> None:
    """Run ``call(i, j)`` over items ``[i, j)`` of a batch in spans of about equal work, one per thread.

    ``ends`` holds the cumulative work (elements) of the items, starting with 0.
    """
    count, total = len(ends) - 1, ends[-1]
    threads = min(get_num_threads(), count)
    if threads <= 1 or total < _NATIVE_PARALLEL_MIN:
        call(0, count)
        return
    cuts = sorted({0, count, *(bisect_left(ends, total * k // threads) for k in range(1, threads))})
    spans = list(pairwise(cuts))
    futures = [_executor().submit(call, i, j) for i, j in spans[1:]]
    call(*spans[0])
    for f in futures:
        f.result()


def _q8_native(native: Any, a: AnyArray, bs: int, lut: _Lut8) -> tuple[U8Array, F32Array]:
    codes = np.empty(a.size, dtype=np.uint8)
    absmax = np.empty(_nblocks(a.size, bs), dtype=np.float32)
    kind = _KIND[a.dtype]
    _native_blocks(absmax.size, bs, lambda b0, b1: native.quantize8(a, kind, bs, lut.lut, codes, absmax, b0, b1))
    return codes, absmax


def _q4_native(native: Any, a: AnyArray, bs: int, table: _Table4) -> tuple[U8Array, F32Array]:
    packed = np.empty((a.size + 1) // 2, dtype=np.uint8)
    absmax = np.empty(_nblocks(a.size, bs), dtype=np.float32)
    kind = _KIND[a.dtype]

    def call(b0: int, b1: int) -> None:
        native.quantize4(a, kind, bs, table.grid, table.bounds, table.order, packed, absmax, b0, b1)

    _native_blocks(absmax.size, bs, call)
    return packed, absmax


def _q_batch_native(
    native: Any,
    arrays: list[AnyArray],
    bs: int,
    four_bit: bool,
    single: Callable[[AnyArray], tuple[U8Array, F32Array]],
    tables: tuple[AnyArray, ...],
) -> list[tuple[U8Array, F32Array]]:
    """Many tensors in one C call per thread, laid end to end in shared outputs (the results are views)."""
    sizes = [a.size for a in arrays]
    if sizes and max(sizes) > _NATIVE_CHUNK:  # a large tensor alone, split between the threads by ``single``
        out = [single(a) if a.size > _NATIVE_CHUNK else None for a in arrays]
        small = [i for i, r in enumerate(out) if r is None]
        for i, r in zip(
            small, _q_batch_native(native, [arrays[i] for i in small], bs, four_bit, single, tables), strict=True
        ):
            out[i] = r
        return [r for r in out if r is not None]
    nbs = [-(-n // bs) for n in sizes]
    ends = list(accumulate(sizes, initial=0))
    bends = list(accumulate(nbs, initial=0))
    cends = list(accumulate([(n + 1) // 2 for n in sizes], initial=0)) if four_bit else ends
    codes = np.empty(cends[-1], dtype=np.uint8)
    absmax = np.empty(bends[-1], dtype=np.float32)
    kinds = bytes([_KIND[a.dtype] for a in arrays])
    fn: Callable[..., None] = native.quantize4_batch if four_bit else native.quantize8_batch

    def call(i: int, j: int) -> None:
        fn(arrays[i:j], kinds[i:j], bs, *tables, codes[cends[i] : cends[j]], absmax[bends[i] : bends[j]])

    _native_spans(ends, call)
    return [(codes[c0:c1], absmax[b0:b1]) for (c0, c1), (b0, b1) in zip(pairwise(cends), pairwise(bends), strict=True)]


def _flat(a: Any, dtype: np.dtype[Any]) -> AnyArray:
    """A flat C-contiguous array of ``dtype`` (copying only when needed)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.ndim == 1 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(np.asarray(a, dtype=dtype).reshape(-1))


# ------------------------------------------------------------------------------------------------ 8-bit

_SMALL = 1 << 15  # up to this many elements a tensor is done in one go on the calling thread


class _Layout:
    """Tensors laid end to end, each starting its own blocks (for 4-bit also its own byte): block geometry."""

    def __init__(self, sizes: Sequence[int], bs: int, even: bool) -> None:
        n = np.asarray(sizes, dtype=np.int64)
        span = n + (n & 1) if even else n  # an odd 4-bit tensor carries bitsandbytes' padding 0.0
        nb = -(-n // bs)
        self.offsets = np.concatenate([[0], np.cumsum(span)[:-1]]).astype(np.int64)
        self.block_offsets = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(np.int64)
        self.total = int(span.sum())
        nblocks = int(nb.sum())
        lens = np.full(nblocks, bs, dtype=np.int64)
        last = (self.block_offsets + nb - 1)[nb > 0]
        lens[last] = (span - (nb - 1) * bs)[nb > 0]
        self.lens = lens
        self.starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.intp) if nblocks else np.zeros(0, np.intp)
        partial = np.zeros(nblocks, dtype=bool)
        partial[last] = (n % bs != 0)[nb > 0]
        self.partial = partial
        self.pads = (self.offsets + n)[(n & 1).astype(bool)] if even else np.zeros(0, np.int64)
        marks = np.zeros(self.total, dtype=np.intp)
        marks[self.starts[1:]] = 1
        self.block_of = np.cumsum(marks, out=marks)  # block index of every element
        self.sizes = [int(v) for v in n]
        self.nblocks = [int(v) for v in nb]


class _NoErrstate:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


_NO_ERRSTATE = _NoErrstate()


def _block_absmax(ax: F32Array, lay: _Layout, nan_ignoring: bool) -> F32Array:
    """Max of |x| per block of a layout (NaN ignored like the 8-bit C kernel, or propagated like torch)."""
    if nan_ignoring:
        ax = _nan_to_zero(ax)  # an all-NaN block has absmax 0
    if len(lay.starts) == 1:
        return np.array([ax.max()], dtype=np.float32)
    return np.maximum.reduceat(ax, lay.starts)


def _nan_to_zero(ax: F32Array) -> F32Array:
    """|x| with NaN as 0, for a max that ignores NaN (np.fmax does not ignore a signalling NaN everywhere)."""
    return np.where(np.isnan(ax), np.float32(0.0), ax)


def _per_element(v: AnyArray, lay: _Layout) -> Any:
    """A per-block array spread over the elements (a scalar for a single block)."""
    return v[0] if len(lay.starts) == 1 else np.take(v, lay.block_of, mode="clip")


def _q8_seg(buf: AnyArray, lay: _Layout, lut: _Lut8) -> tuple[U8Array, F32Array]:
    """8-bit codes and absmax of the blocks of a layout, in a few numpy calls (same arithmetic as the chunked path)."""
    xf = _to_f32(buf, np.empty(buf.size, dtype=np.float32))
    ax = np.abs(xf)
    am = _block_absmax(ax, lay, nan_ignoring=True)
    if am.min() >= np.float32(2.0**-126) and am.max() < np.inf and not np.isnan(ax.max()):
        c = xf * _per_element(np.float32(1.0) / am, lay)
        c += np.float32(1.0)  # (c + 1) * 32767.5 + 0.5, each step rounded in float32 as in the C kernel
        c *= np.float32(32767.5)
        c += np.float32(0.5)
        return np.take(lut.lut, c.astype(np.uint16), mode="clip"), am
    with np.errstate(all="ignore"):
        c = xf * _per_element(np.float32(1.0) / am, lay)
    codes = lut.lut[_lut_index(c)]
    zero = am == 0  # the C kernel's special case: all-zero (or all-NaN) block
    if zero.any():
        codes[np.take(zero, lay.block_of, mode="clip")] = 0
    return codes, am


def _codes4(c: F32Array, table: _Table4, finite: bool) -> U8Array:
    """4-bit codes of scaled values: a grid lookup, searched exactly where the grid cell is ambiguous
    (or everywhere, when a block's statistics are not finite)."""
    if not finite:
        return table.exact(c)
    cells = c * np.float32(_K4)
    cells += np.float32(_K4_OFF)
    codes: U8Array = np.take(table.grid, cells.astype(np.uint16), mode="clip")
    if codes.max() >= 0x80:
        hit = np.flatnonzero(codes >= 0x80)
        codes[hit] = table.exact(c[hit])
    return codes


def _q4_seg(buf: AnyArray, lay: _Layout, table: _Table4) -> tuple[U8Array, F32Array]:
    """Packed 4-bit codes and absmax of the blocks of an (even) layout, in a few numpy calls."""
    xf = _to_f32(buf, np.empty(buf.size, dtype=np.float32))
    am = _block_absmax(np.abs(xf), lay, nan_ignoring=False)
    amc = np.maximum(am, np.float32(1e-38))
    finite = bool(np.isfinite(amc).all())
    with np.errstate(all="ignore") if not finite else _NO_ERRSTATE:
        c = xf * _per_element(np.float32(1.0) / amc, lay)
        if lay.partial.any():
            # bitsandbytes divides in a tensor's last, partial block and stores that absmax clamped.
            if len(lay.starts) == 1:
                c = xf / amc[0]
            else:
                pe = np.flatnonzero(np.take(lay.partial, lay.block_of, mode="clip"))
                c[pe] = xf[pe] / amc[lay.block_of[pe]]
            am[lay.partial] = amc[lay.partial]
        codes = _codes4(c, table, finite)
        if not finite and lay.pads.size:
            codes[lay.pads] = table.pad_code  # bitsandbytes pads the *scaled* values with 0.0
    packed = np.empty(buf.size // 2, dtype=np.uint8)
    _pack(codes, packed)
    return packed, am


def _concat(arrays: Sequence[AnyArray], lay: _Layout) -> AnyArray:
    """The arrays end to end as the layout places them (with a 0.0 after each odd one for 4-bit)."""
    if lay.pads.size == 0:
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    zero = np.zeros(1, dtype=arrays[0].dtype)
    parts: list[AnyArray] = []
    for a in arrays:
        parts.append(a)
        if a.size & 1:
            parts.append(zero)
    return np.concatenate(parts)


def _groups(arrays: Sequence[AnyArray]) -> list[list[int]]:
    """Indices of small arrays of one dtype, in runs of about a chunk; large arrays alone."""
    runs: list[list[int]] = []
    open_runs: dict[np.dtype[Any], tuple[list[int], int]] = {}
    for i, a in enumerate(arrays):
        if a.size > _SMALL:
            runs.append([i])
            continue
        run, size = open_runs.get(a.dtype, ([], 0))
        if not run:
            runs.append(run)
        run.append(i)
        size += a.size
        open_runs[a.dtype] = ([], 0) if size >= _CHUNK else (run, size)
    return runs


def _map_groups(fn: Callable[[list[int]], None], groups: list[list[int]]) -> None:
    threads = get_num_threads()
    if threads == 1 or len(groups) < 2:
        for g in groups:
            fn(g)
        return

    def run(gs: list[list[int]]) -> None:
        with np.errstate(all="ignore"):
            for g in gs:
                fn(g)

    futures = [_executor().submit(run, groups[i::threads]) for i in range(1, threads)]
    run(groups[0::threads])
    for f in futures:
        f.result()


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
    a = _as_source(x)
    bs = _check_blocksize(blocksize)
    lut = _lut8(code)
    native = _c.kernels()
    if native is not None:
        return _q8_native(native, a, bs, lut)
    n = a.size
    codes = np.empty(n, dtype=np.uint8)
    absmax = np.empty(_nblocks(n, bs), dtype=np.float32)
    if n <= _SMALL:
        return _q8_one(a, bs, lut) if n else (codes, absmax)
    nfull = n // bs
    _q8_run(a[: nfull * bs], bs, lut, codes, absmax)
    if nfull * bs < n:
        _q8_blocks(a[nfull * bs :], bs, lut, codes[nfull * bs :], absmax[nfull:])
    return codes, absmax


def quantize_blockwise8_batch(
    xs: Sequence[Any], blocksize: int = 4096, code: AnyArray | None = None
) -> list[tuple[U8Array, F32Array]]:
    """:func:`quantize_blockwise8` of many tensors at once, each starting its own blocks; same results.

    For many small tensors, whose per-call overhead would dominate: they are laid end to end and
    quantized in a few numpy calls per ~64K elements. Results may be views into shared buffers.
    """
    arrays = [_as_source(x) for x in xs]
    bs = _check_blocksize(blocksize)
    lut = _lut8(code)
    native = _c.kernels()
    if native is not None:
        return _q_batch_native(native, arrays, bs, False, lambda a: _q8_native(native, a, bs, lut), (lut.lut,))
    out: list[tuple[U8Array, F32Array]] = [(np.empty(0, np.uint8), np.empty(0, np.float32))] * len(arrays)

    def group(idx: list[int]) -> None:
        if len(idx) == 1 and arrays[idx[0]].size > _SMALL:
            out[idx[0]] = quantize_blockwise8(arrays[idx[0]], bs, code)
            return
        lay = _Layout([arrays[i].size for i in idx], bs, even=False)
        if lay.total == 0:
            return
        codes, absmax = _q8_seg(_concat([arrays[i] for i in idx], lay), lay, lut)
        for i, o, b, nb in zip(idx, lay.offsets.tolist(), lay.block_offsets.tolist(), lay.nblocks, strict=True):
            out[i] = (codes[o : o + arrays[i].size], absmax[b : b + nb])

    _map_groups(group, _groups(arrays))
    return out


def _blockwise(
    v: AnyArray, bs: int, per_block: Callable[[AnyArray], AnyArray], last: Callable[[AnyArray], Any]
) -> AnyArray:
    """Per-block reduction of a flat array whose last block may be partial (few numpy calls)."""
    n = v.size
    nfull = n // bs
    if nfull * bs == n:
        return per_block(v.reshape(nfull, bs))
    out = np.empty(nfull + 1, dtype=v.dtype)
    if nfull:
        out[:nfull] = per_block(v[: nfull * bs].reshape(nfull, bs))
    out[nfull] = last(v[nfull * bs :])
    return out


def _scaled(xf: AnyArray, s: AnyArray, bs: int, out: AnyArray) -> None:
    """``out = xf * s[block]`` for a flat array whose last block may be partial."""
    n = xf.size
    full = (n // bs) * bs
    if full:
        np.multiply(xf[:full].reshape(-1, bs), s[: full // bs, None], out=out[:full].reshape(-1, bs))
    if full < n:
        np.multiply(xf[full:], s[-1], out=out[full:n])


def _q8_one(a: AnyArray, bs: int, lut: _Lut8) -> tuple[U8Array, F32Array]:
    """One small tensor in few numpy calls (the same arithmetic as the chunked path)."""
    xf = _to_f32(a, np.empty(a.size, dtype=np.float32))
    ax = np.abs(xf)
    am = _blockwise(_nan_to_zero(ax), bs, _max_rows, _max_all)  # NaN ignored, as the C kernel does
    c = np.empty_like(xf)
    if am.min() >= np.float32(2.0**-126) and am.max() < np.inf and ax.max() < np.inf:  # also: no NaN
        _scaled(xf, np.float32(1.0) / am, bs, c)
        c += np.float32(1.0)  # (c + 1) * 32767.5 + 0.5, each step rounded in float32 as in the C kernel
        c *= np.float32(32767.5)
        c += np.float32(0.5)
        return lut.lut.take(c.astype(np.uint16), mode="clip"), am
    with np.errstate(all="ignore"):
        _scaled(xf, np.float32(1.0) / am, bs, c)
    codes = lut.lut[_lut_index(c)]
    zero = np.repeat(am == 0, bs)[: a.size]
    codes[zero] = 0  # the C kernel's special case: all-zero (or all-NaN) block
    return codes, am


def _max_rows(v: AnyArray) -> AnyArray:
    return v.max(axis=1)  # type: ignore[no-any-return]


def _max_all(v: AnyArray) -> Any:
    return v.max()


def _q4_one(a: AnyArray, bs: int, table: _Table4) -> tuple[U8Array, F32Array]:
    """One small tensor in few numpy calls (the same arithmetic as the chunked path)."""
    n = a.size
    xf = _to_f32(a, np.empty(n, dtype=np.float32))
    am = _blockwise(np.abs(xf), bs, _max_rows, _max_all)  # NaN propagates, as torch's max does
    amc = np.maximum(am, np.float32(1e-38))
    c = np.empty(n + (n & 1), dtype=np.float32)
    finite = amc.max() < np.inf
    with _NO_ERRSTATE if finite else np.errstate(all="ignore"):
        _scaled(xf, np.float32(1.0) / amc, bs, c)
        tail = (n // bs) * bs
        if tail < n:  # bitsandbytes divides in the last, partial block and stores its absmax clamped
            np.divide(xf[tail:], amc[-1], out=c[tail:n])
            am[-1] = amc[-1]
        if n & 1:
            c[n] = 0.0  # bitsandbytes pads an odd count with a scaled 0.0
        codes = _codes4(c, table, finite)
        if not finite and n & 1:
            codes[n] = table.pad_code
    packed = np.empty((n + 1) // 2, dtype=np.uint8)
    _pack(codes, packed)
    return packed, am


def _q8_run(x: AnyArray, bs: int, lut: _Lut8, codes: U8Array, absmax: F32Array) -> None:
    """Full blocks of ``x``, in chunks over the thread pool."""

    def work(b0: int, b1: int) -> None:
        _q8_blocks(x[b0 * bs : b1 * bs], bs, lut, codes[b0 * bs : b1 * bs], absmax[b0:b1])

    _parallel_blocks(x.size // bs, bs, work)


def _q8_blocks(x: AnyArray, bs: int, lut: _Lut8, codes: U8Array, absmax: F32Array) -> None:
    """Quantize whole blocks (the last may be partial) of ``x`` into ``codes``/``absmax``."""
    n = x.size
    mbits = _block_max_bits(x, absmax.size, bs)
    am = _bits_to_f32(mbits, x.dtype)
    has_nan = mbits > _INF_BITS[x.dtype]
    if has_nan.any():
        am = am.copy()
        for b in np.flatnonzero(has_nan):
            xb = _to_f32(x[b * bs : (b + 1) * bs], np.empty(min(bs, n - int(b) * bs), dtype=np.float32))
            am[b] = _nan_to_zero(np.abs(xb)).max()  # NaN ignored, as the C kernel does
    absmax[:] = am
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.float32(1.0) / am
        normal = (am > 0) & (inv < np.inf) & (am < np.inf) & ~has_nan
        all_normal = bool(normal.all())
        scale = inv if all_normal else np.where(normal, inv, np.float32(0.0))
        v = _to_f32(x, _scratch("f32", n, np.float32))
        _scaled(v, scale, bs, v)
        # (c + 1) * 32767.5 + 0.5, each step rounded in float32 as in the C kernel; |c| <= 1 + ulp needs no clamp.
        v += np.float32(1.0)
        v *= np.float32(32767.5)
        v += np.float32(0.5)
        idx = _scratch("u16", n, np.uint16)
        np.copyto(idx, v, casting="unsafe")
    np.take(lut.lut, idx, out=codes, mode="clip")
    if not all_normal:
        for b in np.flatnonzero(~normal):
            lo = int(b) * bs
            hi = min(n, lo + bs)
            if am[b] == 0:
                codes[lo:hi] = 0  # the C kernel's special case: all-zero (or all-NaN) block
                continue
            xb = _to_f32(x[lo:hi], np.empty(hi - lo, dtype=np.float32))
            with np.errstate(invalid="ignore", over="ignore"):
                c = xb * inv[b]
            codes[lo:hi] = lut.lut[_lut_index(c)]


def dequantize_blockwise8(
    codes: Any, absmax: Any, blocksize: int = 4096, dtype: Any = np.float32, code: AnyArray | None = None
) -> AnyArray:
    """Values of 8-bit codes: ``code[q] * absmax`` in float32, rounded to nearest-even into ``dtype``."""
    q = _flat(codes, _U8)
    am = _flat(absmax, _F32)
    bs = _check_blocksize(blocksize)
    out_dtype = _out_dtype(dtype)
    n = q.size
    nb = _nblocks(n, bs)
    if am.size != nb:
        raise ValueError(f"{n} codes in blocks of {bs} need {nb} absmax values, got {am.size}")
    lut = _lut8(code)
    out = np.empty(n, dtype=out_dtype)
    native = _c.kernels()
    if native is not None:
        kind = _KIND[out_dtype]
        _native_blocks(nb, bs, lambda b0, b1: native.dequantize8(q, am, bs, lut.code, out, kind, b0, b1))
        return out
    if n <= _SMALL:
        if n:
            _dq8_blocks(q, am, bs, lut, out)
        return out
    nfull = n // bs
    _dq8_run(q[: nfull * bs], am, bs, lut, out)
    if nfull < nb:
        _dq8_blocks(q[nfull * bs :], am[nfull:], bs, lut, out[nfull * bs :])
    return out


def dequantize_blockwise8_batch(
    items: Sequence[tuple[Any, Any]], blocksize: int = 4096, dtype: Any = np.float32, code: AnyArray | None = None
) -> list[AnyArray]:
    """:func:`dequantize_blockwise8` of many ``(codes, absmax)`` pairs at once; same results (views into one buffer)."""
    bs = _check_blocksize(blocksize)
    out_dtype = _out_dtype(dtype)
    qs = [_flat(c, _U8) for c, _ in items]
    ams = [_flat(a, _F32) for _, a in items]
    for q, am in zip(qs, ams, strict=True):
        if am.size != _nblocks(q.size, bs):
            raise ValueError(f"{q.size} codes in blocks of {bs} need {_nblocks(q.size, bs)} absmax values")
    if not qs:
        return []
    table = _lut8(code).code
    native = _c.kernels()
    if native is not None:
        ends = list(accumulate([q.size for q in qs], initial=0))
        out = np.empty(ends[-1], dtype=out_dtype)
        kind = _KIND[out_dtype]

        def call(i: int, j: int) -> None:
            native.dequantize8_batch(qs[i:j], ams[i:j], bs, table, out[ends[i] : ends[j]], kind)

        _native_spans(ends, call)
        return [out[o:e] for o, e in pairwise(ends)]
    lay = _Layout([q.size for q in qs], bs, even=False)
    with np.errstate(all="ignore"):
        v = np.take(table, np.concatenate(qs), mode="clip") * _per_element(np.concatenate(ams), lay)
        out = _cast_f32(v, out_dtype)
    return [out[o : o + q.size] for q, o in zip(qs, lay.offsets.tolist(), strict=True)]


def _dq8_run(q: U8Array, am: F32Array, bs: int, lut: _Lut8, out: AnyArray) -> None:
    def work(b0: int, b1: int) -> None:
        _dq8_blocks(q[b0 * bs : b1 * bs], am[b0:b1], bs, lut, out[b0 * bs : b1 * bs])

    _parallel_blocks(q.size // bs, bs, work)


def _dq8_blocks(q: U8Array, am: F32Array, bs: int, lut: _Lut8, out: AnyArray) -> None:
    n = q.size
    with np.errstate(invalid="ignore", over="ignore"):
        if n % 2 == 0:
            v = np.take(lut.pairs, q.view(np.uint16), out=_scratch("u64", n // 2, np.uint64), mode="clip").view(
                np.float32
            )
        else:
            v = np.take(lut.code, q, out=_scratch("f32", n, np.float32), mode="clip")
        _scaled(v, am, bs, v)
        np.copyto(out, v, casting="unsafe")


def _out_dtype(dtype: Any) -> np.dtype[Any]:
    d: np.dtype[Any] = np.dtype(dtype)
    if d not in _SOURCE_DTYPES:
        raise TypeError(f"dequantization produces float32, float16 or bfloat16, not {d}")
    return d


def _cast_f32(v: F32Array, dtype: np.dtype[Any]) -> AnyArray:
    """Round float32 values to nearest-even into ``dtype`` (float32, float16 or bfloat16)."""
    if dtype == _F32:
        return v
    return v.astype(dtype)


# ------------------------------------------------------------------------------------------------ 4-bit


def _check_4bit(quant_type: str, blocksize: int) -> tuple[_Table4, int]:
    t = _table4(quant_type)
    if blocksize not in BLOCKSIZES_4BIT:
        raise ValueError(f"4-bit blocksize must be one of {BLOCKSIZES_4BIT}, not {blocksize!r}")
    return t, int(blocksize)


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
    table, bs = _check_4bit(quant_type, blocksize)
    a = _as_source(x)
    native = _c.kernels()
    if native is not None:
        return _q4_native(native, a, bs, table)
    n = a.size
    if n == 0:
        return np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.float32)
    if n <= _SMALL:
        return _q4_one(a, bs, table)
    nb = _nblocks(n, bs)
    nfull = n // bs
    packed = np.empty((n + 1) // 2, dtype=np.uint8)
    absmax = np.empty(nb, dtype=np.float32)
    _q4_run(a[: nfull * bs], bs, table, packed, absmax)
    if nfull < nb:
        packed[nfull * bs // 2 :], absmax[nfull:] = _q4_one(a[nfull * bs :], bs, table)
    return packed, absmax


def quantize_4bit_batch(
    xs: Sequence[Any], quant_type: str = "nf4", blocksize: int = 64
) -> list[tuple[U8Array, F32Array]]:
    """:func:`quantize_4bit` of many tensors at once, each starting its own blocks and bytes; same results.

    For many small tensors, whose per-call overhead would dominate: they are laid end to end and
    quantized in a few numpy calls per ~64K elements. Results may be views into shared buffers.
    """
    table, bs = _check_4bit(quant_type, blocksize)
    arrays = [_as_source(x) for x in xs]
    native = _c.kernels()
    if native is not None:
        tables = (table.grid, table.bounds, table.order)
        return _q_batch_native(native, arrays, bs, True, lambda a: _q4_native(native, a, bs, table), tables)
    out: list[tuple[U8Array, F32Array]] = [(np.empty(0, np.uint8), np.empty(0, np.float32))] * len(arrays)

    def group(idx: list[int]) -> None:
        if len(idx) == 1 and arrays[idx[0]].size > _SMALL:
            out[idx[0]] = quantize_4bit(arrays[idx[0]], quant_type, bs)
            return
        sizes = [arrays[i].size for i in idx]
        if sum(-(-n // bs) * bs for n in sizes) <= 1.5 * sum(sizes) + bs:
            # Little padding to whole blocks: then every block is scaled by broadcasting.
            for i, res in zip(idx, _q4_padded([arrays[i] for i in idx], bs, table), strict=True):
                out[i] = res
            return
        lay = _Layout(sizes, bs, even=True)
        if lay.total == 0:
            return
        packed, absmax = _q4_seg(_concat([arrays[i] for i in idx], lay), lay, table)
        for i, o, b, nb in zip(idx, lay.offsets.tolist(), lay.block_offsets.tolist(), lay.nblocks, strict=True):
            out[i] = (packed[o // 2 : o // 2 + (arrays[i].size + 1) // 2], absmax[b : b + nb])

    _map_groups(group, _groups(arrays))
    return out


def _q4_padded(arrays: Sequence[AnyArray], bs: int, table: _Table4) -> list[tuple[U8Array, F32Array]]:
    """Tensors each zero-padded to whole blocks, quantized as full blocks; then their partial last blocks redone."""
    sizes = [a.size for a in arrays]
    nbs = [-(-n // bs) for n in sizes]
    zeros = np.zeros(bs, dtype=arrays[0].dtype)
    parts: list[AnyArray] = []
    for a, nb in zip(arrays, nbs, strict=True):
        parts.append(a)
        if nb * bs > a.size:
            parts.append(zeros[: nb * bs - a.size])
    buf = np.concatenate(parts)
    total_blocks = buf.size // bs
    packed = np.empty(buf.size // 2, dtype=np.uint8)
    absmax = np.empty(total_blocks, dtype=np.float32)
    if total_blocks:
        _q4_full(buf, bs, table, packed, absmax)
    starts = [0]
    for nb in nbs:
        starts.append(starts[-1] + nb)
    partial = [(starts[k] + n // bs, n % bs) for k, n in enumerate(sizes) if n % bs]
    if partial:
        rows = [r for r, _ in partial]
        p_rows, am = _q4_rows(buf.reshape(total_blocks, bs)[rows], table, [c if c & 1 else -1 for _, c in partial])
        packed.reshape(total_blocks, bs // 2)[rows] = p_rows
        absmax[rows] = am
    half = bs // 2
    return [
        (packed[b * half : b * half + (n + 1) // 2], absmax[b : b + nb])
        for n, nb, b in zip(sizes, nbs, starts[:-1], strict=True)
    ]


def _q4_rows(rows: AnyArray, table: _Table4, pad_cols: list[int]) -> tuple[U8Array, F32Array]:
    """Zero-padded partial last blocks ``(k, bs)``: divided by their clamped absmax, which they store."""
    k, bs = rows.shape
    xf = _to_f32(rows.reshape(-1), np.empty(rows.size, dtype=np.float32)).reshape(k, bs)
    amc = np.maximum(np.abs(xf).max(axis=1), np.float32(1e-38))  # NaN propagates, like torch
    finite = amc.max() < np.inf
    with _NO_ERRSTATE if finite else np.errstate(all="ignore"):
        c = (xf / amc[:, None]).reshape(-1)
        codes = _codes4(c, table, finite)
        if not finite:
            pads = [r * bs + col for r, col in enumerate(pad_cols) if col >= 0]
            codes[pads] = table.pad_code  # bitsandbytes pads the *scaled* values with 0.0
    packed = np.empty((k, bs // 2), dtype=np.uint8)
    _pack(codes, packed.reshape(-1))
    return packed, amc


def _q4_run(x: AnyArray, bs: int, table: _Table4, packed: U8Array, absmax: F32Array) -> None:
    """Full blocks of ``x``, in chunks over the thread pool."""

    def work(b0: int, b1: int) -> None:
        _q4_full(x[b0 * bs : b1 * bs], bs, table, packed[b0 * bs // 2 : b1 * bs // 2], absmax[b0:b1])

    _parallel_blocks(x.size // bs, bs, work)


def _q4_full(x: AnyArray, bs: int, table: _Table4, packed: U8Array, absmax: F32Array) -> None:
    """Quantize whole full blocks of ``x``: ``c = x * (1 / max(absmax, 1e-38))``."""
    n = x.size
    nb = n // bs
    am = _bits_to_f32(_block_max_bits(x, nb, bs), x.dtype)  # NaN propagates, as torch's max does
    absmax[:] = am
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.float32(1.0) / np.maximum(am, np.float32(1e-38))
        normal = (am == 0) | ((am >= np.float32(_TINY4)) & (am < np.inf))
        all_normal = bool(normal.all())
        # s * 2**14 is exact, so x * (s * 2**14) == (x * s) * 2**14: the grid cell of c in one product.
        sk = np.where(normal & (am > 0), s * np.float32(_K4), np.float32(0.0))
        v = _to_f32(x, _scratch("f32", n, np.float32))
        v2 = v.reshape(nb, bs)
        np.multiply(v2, sk[:, None], out=v2)
        v += np.float32(_K4_OFF)
        cells = _scratch("u16", n, np.uint16)
        np.copyto(cells, v, casting="unsafe")
        codes = np.take(table.grid, cells, out=_scratch("u8", n, np.uint8), mode="clip")
        if codes.max() >= 0x80:
            # Cells holding a midpoint: decide those few elements exactly.
            hit = np.flatnonzero(codes >= 0x80)
            xs = _to_f32(x[hit], np.empty(hit.size, dtype=np.float32))
            codes[hit] = table.exact(xs * s[hit // bs])
        if not all_normal:
            for b in np.flatnonzero(~normal):
                xb = _to_f32(x[b * bs : (b + 1) * bs], np.empty(bs, dtype=np.float32))
                codes[b * bs : (b + 1) * bs] = table.exact(xb * s[b])
    _pack(codes, packed)


def _pack(codes: U8Array, packed: U8Array) -> None:
    """Two codes (< 16) per byte, the first in the high nibble, via 16-bit lanes (strided uint8 ops are slow)."""
    w = codes.view(np.uint16)  # little-endian: first code in the low byte
    hi = np.left_shift(w, 4, out=_scratch("pack", w.size, np.uint16))
    np.bitwise_or(hi, w >> 8, out=hi)
    np.copyto(packed, hi, casting="unsafe")


def dequantize_4bit(
    packed: Any, absmax: Any, n: int, quant_type: str = "nf4", blocksize: int = 64, dtype: Any = np.float32
) -> AnyArray:
    """Values of ``n`` packed 4-bit codes: ``table[q] * absmax`` in float32, rounded to nearest-even into ``dtype``."""
    table, bs = _check_4bit(quant_type, blocksize)
    p = _flat(packed, _U8)
    am = _flat(absmax, _F32)
    out_dtype = _out_dtype(dtype)
    n = int(n)
    _check_4bit_sizes(p, am, n, bs)
    out = np.empty(n, dtype=out_dtype)
    native = _c.kernels()
    if native is not None:
        kind = _KIND[out_dtype]
        _native_blocks(am.size, bs, lambda b0, b1: native.dequantize4(p, am, bs, table.values, out, kind, b0, b1))
        return out
    if n <= _SMALL:
        if n:
            _dq4_blocks(p, am, bs, table, out)
        return out
    nfull = n // bs
    _dq4_run(p, am, bs, table, out[: nfull * bs])
    if nfull * bs < n:
        _dq4_blocks(p[nfull * bs // 2 :], am[nfull:], bs, table, out[nfull * bs :])
    return out


def _check_4bit_sizes(p: U8Array, am: F32Array, n: int, bs: int) -> None:
    if n < 0 or p.size != (n + 1) // 2:
        raise ValueError(f"{n} 4-bit codes take {(n + 1) // 2} bytes, got {p.size}")
    if am.size != _nblocks(n, bs):
        raise ValueError(f"{n} codes in blocks of {bs} need {_nblocks(n, bs)} absmax values, got {am.size}")


def dequantize_4bit_batch(
    items: Sequence[tuple[Any, Any, int]], quant_type: str = "nf4", blocksize: int = 64, dtype: Any = np.float32
) -> list[AnyArray]:
    """:func:`dequantize_4bit` of many ``(packed, absmax, n)`` at once; same results (views into one buffer)."""
    table, bs = _check_4bit(quant_type, blocksize)
    out_dtype = _out_dtype(dtype)
    ps = [_flat(p, _U8) for p, _, _ in items]
    ams = [_flat(a, _F32) for _, a, _ in items]
    ns = [int(n) for _, _, n in items]
    for p, am, n in zip(ps, ams, ns, strict=True):
        _check_4bit_sizes(p, am, n, bs)
    if not ps:
        return []
    native = _c.kernels()
    if native is not None:
        ends = list(accumulate(ns, initial=0))
        out = np.empty(ends[-1], dtype=out_dtype)
        kind = _KIND[out_dtype]

        def call(i: int, j: int) -> None:
            native.dequantize4_batch(ps[i:j], ams[i:j], ns[i:j], bs, table.values, out[ends[i] : ends[j]], kind)

        _native_spans(ends, call)
        return [out[o:e] for o, e in pairwise(ends)]
    lay = _Layout(ns, bs, even=True)
    with np.errstate(all="ignore"):
        v = np.take(table.pairs, np.concatenate(ps), mode="clip").view(np.float32) * _per_element(
            np.concatenate(ams), lay
        )
        out = _cast_f32(v, out_dtype)
    return [out[o : o + n] for n, o in zip(ns, lay.offsets.tolist(), strict=True)]


def _dq4_run(p: U8Array, am: F32Array, bs: int, table: _Table4, out: AnyArray) -> None:
    """Full blocks (``out.size // bs`` of them), in chunks over the thread pool."""
    half = bs // 2

    def work(b0: int, b1: int) -> None:
        _dq4_blocks(p[b0 * half : b1 * half], am[b0:b1], bs, table, out[b0 * bs : b1 * bs])

    _parallel_blocks(out.size // bs, bs, work)


def _dq4_blocks(p: U8Array, am: F32Array, bs: int, table: _Table4, out: AnyArray) -> None:
    n = out.size
    v = np.take(table.pairs, p, out=_scratch("u64", p.size, np.uint64), mode="clip").view(np.float32)[
        :n
    ]  # both nibbles at once
    with np.errstate(invalid="ignore", over="ignore"):
        _scaled(v, am, bs, v)
        np.copyto(out, v, casting="unsafe")


# ------------------------------------------------------------------------------------------------ double quant


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


def quantize_absmax(absmax: Any, blocksize: int = 256) -> tuple[np.float32, U8Array, F32Array]:
    """bitsandbytes' double quantization of 4-bit statistics: ``(offset, codes, nested_absmax)``.

    ``offset`` is :func:`absmax_mean`; ``absmax - offset`` is quantized 8-bit in blocks of 256 with
    the dynamic map. Decoded statistics are within ``nested_absmax * error_bound("dynamic")`` of the
    originals (plus float32 rounding of the offset addition), so a decoded value moves by at most
    that times its table entry. If the statistics sum past the float32 limit the mean is inf and
    the decoded statistics NaN, as in bitsandbytes.
    """
    am = np.ascontiguousarray(np.asarray(absmax, dtype=np.float32).reshape(-1))
    offset = absmax_mean(am)
    with np.errstate(invalid="ignore"):
        dev = am - offset
    codes, nested = quantize_blockwise8(dev, blocksize)
    return offset, codes, nested


def quantize_absmax_batch(absmaxes: Sequence[Any], blocksize: int = 256) -> list[tuple[np.float32, U8Array, F32Array]]:
    """:func:`quantize_absmax` of many statistics arrays at once; the same bits.

    The mean emulation costs dozens of numpy calls per array, so arrays of one length (below
    torch's grain, where the thread count plays no part) are stacked and summed column by column
    together; the deviations then go through one :func:`quantize_blockwise8_batch`.
    """
    ams = [_flat(a, _F32) for a in absmaxes]
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


def dequantize_absmax_batch(items: Sequence[tuple[Any, Any, Any]], blocksize: int = 256) -> list[F32Array]:
    """:func:`dequantize_absmax` of many ``(offset, codes, nested_absmax)``; same results (views into one buffer)."""
    devs = dequantize_blockwise8_batch([(codes, nested) for _, codes, nested in items], blocksize, np.float32)
    if not devs:
        return []
    sizes = [d.size for d in devs]
    offsets = np.repeat(np.array([offset for offset, _, _ in items], dtype=np.float32), sizes)
    with np.errstate(invalid="ignore", over="ignore"):
        flat = np.concatenate(devs) + offsets
    return [flat[o:e] for o, e in pairwise(accumulate(sizes, initial=0))]


def dequantize_absmax(offset: Any, codes: Any, nested_absmax: Any, blocksize: int = 256) -> F32Array:
    """Statistics back from :func:`quantize_absmax`: ``dynamic[q] * nested_absmax + offset`` in float32."""
    dev = dequantize_blockwise8(codes, nested_absmax, blocksize, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return dev + np.float32(offset)


def error_bound(kind: str) -> float:
    """Largest |c - decoded code| over scaled values c in [-1, 1]: "dynamic" (8-bit), "nf4" or "fp4".

    Multiply by a block's absmax for the bound on |x - x̂| before the final cast.
    """
    if kind in _TABLES4:
        t = _TABLES4[kind]
        sv = np.sort(t.values.astype(np.float64))
        return float(np.max(np.diff(sv)) / 2) + 2.0**-22
    if kind == "dynamic":
        return _lut8_error(_lut8(None))
    raise ValueError(f"unknown kind {kind!r}")


def _lut8_error(lut: _Lut8) -> float:
    grid = -1.0 + 2.0 * np.arange(65536) / 65535.0
    code = lut.code.astype(np.float64)[lut.lut]
    # Each grid cell spans +-1/65535 around its point (plus float32 rounding of the index arithmetic).
    return float(np.max(np.abs(grid - code)) + 1.0 / 65535.0 + 2.0**-22)


# ------------------------------------------------------------------------------------------------ torch


def _torch() -> Any:
    import torch

    return torch


_TORCH_TO_NP = {"float32": _F32, "float16": _F16, "bfloat16": _BF16}


def _tensor_to_numpy(t: Tensor) -> AnyArray:
    """A numpy view of a CPU tensor (bfloat16 through its bits)."""
    torch = _torch()
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BF16)
    return np.asarray(t.numpy())


def _numpy_to_tensor(a: AnyArray, device: Any) -> Tensor:
    torch = _torch()
    if a.dtype == _BF16:
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
    nb = _nblocks(n, bs)
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
    bs = _check_blocksize(blocksize)
    if _use_numpy(x, impl):
        q_np, am_np = quantize_blockwise8(_tensor_to_numpy(x), bs, code)
        return _numpy_to_tensor(q_np, x.device), _numpy_to_tensor(am_np, x.device)
    lut = _lut8(_code_np(code))
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
    bs = _check_blocksize(blocksize)
    codes = codes.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if _use_numpy(codes, impl):
        res = dequantize_blockwise8(codes.cpu().numpy(), absmax.cpu().numpy(), bs, _np_dtype(dtype), _code_np(code))
        return _numpy_to_tensor(res, codes.device)
    n = codes.numel()
    if absmax.numel() != _nblocks(n, bs):
        raise ValueError(f"{n} codes in blocks of {bs} need {_nblocks(n, bs)} absmax values, got {absmax.numel()}")
    table = torch.from_numpy(_lut8(_code_np(code)).code.copy()).to(codes.device)
    v = table[codes.to(torch.int64)]
    out: Tensor = (_per_block(v, n, bs) * absmax[:, None]).reshape(-1)[:n].to(dtype)
    return out


def _q4_codes_torch(xf: Tensor, n: int, bs: int, t: _Table4) -> tuple[Tensor, Tensor]:
    torch = _torch()
    nb = _nblocks(n, bs)
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
    t, bs = _check_4bit(quant_type, blocksize)
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
    t, bs = _check_4bit(quant_type, blocksize)
    dtype = torch.float32 if dtype is None else dtype
    packed = packed.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if _use_numpy(packed, impl):
        res = dequantize_4bit(packed.cpu().numpy(), absmax.cpu().numpy(), n, quant_type, bs, _np_dtype(dtype))
        return _numpy_to_tensor(res, packed.device)
    n = int(n)
    if packed.numel() != (n + 1) // 2 or absmax.numel() != _nblocks(n, bs):
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
