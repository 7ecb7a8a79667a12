"""``blockwise8``: bitsandbytes' 8-bit blockwise quantization (the signed dynamic map).

The kernel, bit-compatible with ``bitsandbytes.functional.quantize_blockwise`` /
``dequantize_blockwise`` 0.50 on CPU (each rule checked in ``tests/test_kernels.py``): absmax = max |x|
per block in float32, NaN ignored; ``c = x * (1 / absmax)`` in float32; the code is *not* the nearest
map entry but a 65536-entry lookup, ``lut[int((clamp(c, -1, 1) + 1) * 0.5 * 65535 + 0.5)]``,
``lut[i]`` being the entry nearest the grid point ``-1 + 2i/65535`` (ties to the lower entry). So an
exact 0 encodes to code 131 (2.125e-5 * absmax), the map entry nearest the grid point +1.5e-5. A NaN
element gets code 0 (decoding to -0.993 * absmax); an all-zero or all-NaN block gets absmax 0 and
codes 0; a block holding +-inf gets absmax inf, its finite values decode to +inf and its infinities
to -inf. Any positive blocksize is accepted. Dequantization: ``code[q] * absmax`` in float32,
rounded to nearest-even into the output dtype (bitsandbytes' AVX512-BF16 path flushes bfloat16
subnormal results to zero and its scalar bfloat16 rounding turns an all-ones-mantissa NaN into 0:
here they are rounded like other values and NaN stays NaN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .. import _c
from ..dtypes import DType
from .base import (
    EPS32,
    SUB32,
    Codec,
    DecodeItem,
    Encoded,
    block_absmax,
    kernel_source,
    kernel_target,
    per_element,
    register_codec,
    restore,
    rounding_factor,
    to_host,
    torch_kernel_source,
    unsupported_blocks,
)
from .blocks import (
    F32,
    INF_BITS,
    U8,
    AnyArray,
    Blocks,
    F32Array,
    U8Array,
    abs_bits,
    as_source,
    bits_to_f32,
    check_blocksize,
    check_source_tensor,
    code_np,
    dequantize_layout,
    flat,
    nblocks_of,
    np_dtype,
    numpy_to_tensor,
    out_dtype,
    per_block,
    quantize_layout,
    readonly,
    scratch,
    tensor_to_numpy,
    to_f32,
    torch_module,
    use_numpy,
)

if TYPE_CHECKING:
    from torch import Tensor
else:
    Tensor = Any


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


def _lut_index_torch(c: Tensor) -> Tensor:
    torch = torch_module()
    nan = torch.isnan(c)
    c = torch.clamp(c, -1.0, 1.0)
    c = torch.where(nan, torch.full_like(c, -1.0), c)
    c = torch.add(c, 1.0)
    c = torch.mul(c, 32767.5)
    c = torch.add(c, 0.5)
    return c.to(torch.int64)


def quantize_blockwise8_torch(
    x: Tensor, blocksize: int = 4096, code: Any = None, *, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`quantize_blockwise8` for a tensor on any device; results on the tensor's device.

    ``impl="auto"`` runs CPU tensors through the numpy kernels and others through torch ops that do
    the same float32 arithmetic (``"torch"`` forces the latter, to test it on CPU).
    """
    torch = torch_module()
    x = check_source_tensor(x)
    bs = check_blocksize(blocksize)
    if use_numpy(x, impl):
        q_np, am_np = quantize_blockwise8(tensor_to_numpy(x), bs, code)
        return numpy_to_tensor(q_np, x.device), numpy_to_tensor(am_np, x.device)
    lut = lut8(code_np(code))
    n = x.numel()
    xf = x.float()
    a = torch.abs(xf)
    a = torch.where(torch.isnan(a), torch.zeros_like(a), a)
    absmax = per_block(a, n, bs).amax(dim=1) if n else xf.new_empty(0)
    inv = 1.0 / absmax
    c = (per_block(xf, n, bs) * inv[:, None]).reshape(-1)[:n]
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
    torch = torch_module()
    dtype = torch.float32 if dtype is None else dtype
    bs = check_blocksize(blocksize)
    codes = codes.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if use_numpy(codes, impl):
        res = dequantize_blockwise8(codes.cpu().numpy(), absmax.cpu().numpy(), bs, np_dtype(dtype), code_np(code))
        return numpy_to_tensor(res, codes.device)
    n = codes.numel()
    if absmax.numel() != nblocks_of(n, bs):
        raise ValueError(f"{n} codes in blocks of {bs} need {nblocks_of(n, bs)} absmax values, got {absmax.numel()}")
    table = torch.from_numpy(lut8(code_np(code)).code.copy()).to(codes.device)
    v = table[codes.to(torch.int64)]
    out: Tensor = (per_block(v, n, bs) * absmax[:, None]).reshape(-1)[:n].to(dtype)
    return out


HALF_GAP = 0.0070468
"""The bound per unit of absmax: half the largest gap of bitsandbytes' signed dynamic map (0.0140625 / 2),
plus the slack of its approximate CPU code lookup (``error_bound("dynamic")``)."""

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes' 8-bit blockwise quantization takes."""


@register_codec
class Blockwise8(Codec):
    """bitsandbytes' 8-bit blockwise quantization with the signed dynamic map; bit-compatible.

    Error bound: |x - x̂| <= absmax_block * ``error_bound("dynamic")`` (0.0070468: half
    the largest gap of the map, 0.0070313, plus the slack of bitsandbytes' approximate code
    lookup), before the final cast to the source dtype, for blocks whose absmax is at least
    2^-126 (fp32's smallest normal): like bitsandbytes, the kernel scales by 1 / absmax, which
    overflows below that, and such blocks are only within 2 * absmax. NaN/Inf inputs are not
    supported (as in bitsandbytes: a NaN decodes as an arbitrary value, an Inf turns its block
    into ±Inf). The map is referred to by name, never resent. A float64 source is quantized
    from its fp32 values.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
        >>> message = tc.encode({"x": x}, precision=tc.Blockwise8())
        >>> y = tc.decode(message)["x"]
        >>> len(message) < x.nbytes / 3, bool(np.all(np.abs(x - y) <= np.abs(x).max() * 0.0070468))
        (True, True)
    """

    codec_id = "blockwise8"
    contractive = True

    def __init__(self, blocksize: int = 4096) -> None:
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise ValueError(f"blockwise8 blocksize must be one of {BLOCKSIZES}, not {blocksize!r}")
        self.blocksize = blocksize

    def get_config(self) -> dict[str, Any]:
        return {"blocksize": self.blocksize}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 + 32.0 * max(1, -(-count // self.blocksize)) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", "uint8", [count]), "absmax": ("meta", "float32", [-(-count // self.blocksize)])}

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """absmax_block * (largest gap of the dynamic map) / 2, plus fp32 rounding; 2 * absmax for blocks
        whose absmax is below 2^-126; blocks holding NaN/Inf are unsupported (unconstrained)."""
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32).astype(np.float64)
        absmax = per_element(block_absmax(x32, self.blocksize), self.blocksize, x.size)
        with np.errstate(invalid="ignore"):
            slack = 4 * EPS32 * absmax + 4 * SUB32 + np.abs(x64 - x32)
        bound = (absmax * HALF_GAP * (1 + 1e-5) + slack) * rounding_factor(x.dtype)
        bound = np.where(absmax < 2.0**-126, 2 * absmax + slack, bound)  # 1 / absmax overflows
        return unsupported_blocks(bound, x32, self.blocksize)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        codes, absmax = quantize_blockwise8(kernel_source(x), self.blocksize)
        return Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)})

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        results = quantize_blockwise8_batch([kernel_source(x) for x in xs], self.blocksize)
        return [Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)}) for codes, absmax in results]

    def encode_torch(self, t: Any) -> Encoded | None:
        if not torch_kernel_source(t):
            return None
        codes, absmax = quantize_blockwise8_torch(t, self.blocksize)
        return Encoded({"codes": ("payload", to_host(codes)), "absmax": ("meta", to_host(absmax))})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        codes, absmax = self._read(segments, count)
        values = dequantize_blockwise8(codes, absmax, self.blocksize, kernel_target(dtype))
        return restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        pairs = [self._read(segments, count) for segments, _, count in items]
        values = dequantize_blockwise8_batch(pairs, self.blocksize, kernel_target(dtype))
        return [v.astype(dtype.numpy) for v in values]  # each its own copy, in the source dtype

    def _read(self, segments: Mapping[str, np.ndarray[Any, Any]], count: int) -> tuple[Any, Any]:
        """The checked ``(codes, absmax)`` of one tensor."""
        codes = self.segment(segments, "codes", "uint8", count)
        return codes, self.segment(segments, "absmax", "float32", -(-count // self.blocksize))
