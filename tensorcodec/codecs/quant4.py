"""``quant4``: bitsandbytes' 4-bit nf4 / fp4, optionally with double-quantized statistics.

The kernel, bit-compatible with ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` 0.50
on CPU (its torch fallback; each rule checked in ``tests/test_kernels.py``): absmax = max |x| per
block in float32, NaN propagating; full blocks use ``c = x * (1 / max(absmax, 1e-38))``, but a
tensor's last, partial block uses ``c = x / max(absmax, 1e-38)`` and stores that clamped absmax;
``c`` is clamped to [-1, 1] and bucketized against the midpoints of the sorted table (ties to the
lower entry, NaN to the top); an odd count gets one more *scaled* value, 0.0. bitsandbytes' FP4
table holds +0.0 twice (codes 0 and 8): values in (0, 0.0026] get code 8 and values in [-0.0026, 0]
code 0 (its scalar C path decodes code 8 as -0.0; its other paths, and here: +0.0). Dequantization:
``table[q] * absmax`` in float32, rounded to nearest-even into the output dtype. A NaN makes its
whole block decode to NaN; an inf makes its block's finite values decode to NaN and its infinities
to +inf. NaN payloads are not reproduced (a NaN absmax is some NaN). The statistics' double
quantization is in :mod:`tensorcodec.codecs.absmax`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .. import _c
from ..dtypes import DType
from .absmax import (
    dequantize_absmax,
    dequantize_absmax_batch,
    quantize_absmax,
    quantize_absmax_batch,
    quantize_absmax_torch,
)
from .base import (
    EPS32,
    SUB32,
    Codec,
    DecodeItem,
    Encoded,
    Segments,
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
from .bits import packed_size
from .blocks import (
    F32,
    U8,
    AnyArray,
    Blocks,
    F32Array,
    U8Array,
    abs_bits,
    as_source,
    bits_to_f32,
    check_source_tensor,
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
from .blockwise8 import lut8

if TYPE_CHECKING:
    from torch import Tensor
else:
    Tensor = Any


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


def _q4_codes_torch(xf: Tensor, n: int, bs: int, t: Table4) -> tuple[Tensor, Tensor]:
    torch = torch_module()
    nb = nblocks_of(n, bs)
    nfull = n // bs
    a = torch.abs(xf)
    absmax = per_block(a, n, bs).amax(dim=1)  # NaN propagates
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
    torch = torch_module()
    t, bs = check_4bit(quant_type, blocksize)
    x = check_source_tensor(x)
    if use_numpy(x, impl):
        p_np, am_np = quantize_4bit(tensor_to_numpy(x), quant_type, bs)
        return numpy_to_tensor(p_np, x.device), numpy_to_tensor(am_np, x.device)
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
    torch = torch_module()
    t, bs = check_4bit(quant_type, blocksize)
    dtype = torch.float32 if dtype is None else dtype
    packed = packed.detach().contiguous().reshape(-1)
    absmax = absmax.detach().to(torch.float32).contiguous().reshape(-1)
    if use_numpy(packed, impl):
        res = dequantize_4bit(packed.cpu().numpy(), absmax.cpu().numpy(), n, quant_type, bs, np_dtype(dtype))
        return numpy_to_tensor(res, packed.device)
    n = int(n)
    if packed.numel() != (n + 1) // 2 or absmax.numel() != nblocks_of(n, bs):
        raise ValueError("packed codes or absmax do not match the element count")
    p = packed.to(torch.int64)
    nib = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[:n]
    table = torch.from_numpy(t.values.copy()).to(packed.device)
    out: Tensor = (per_block(table[nib], n, bs) * absmax[:, None]).reshape(-1)[:n].to(dtype)
    return out


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


HALF_GAPS = {"nf4": 0.3038072 / 2, "fp4": (1 - 0.6666667) / 2}
"""The bound per unit of absmax: half the largest gap of bitsandbytes' 16-entry nf4 and fp4 tables
(both include -1 and 1; ``error_bound``)."""

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes' 4-bit quantization takes."""


@register_codec
class Quant4(Codec):
    """bitsandbytes' 4-bit ``nf4`` / ``fp4``, two codes per byte (element 0 in the high nibble).

    With ``double_quant`` the fp32 absmax statistics are themselves quantized
    (offset = their mean, the rest 8-bit blockwise in blocks of 256), as
    bitsandbytes' ``compress_statistics=True``. Error bound: |x - x̂| <=
    absmax_block * (largest gap of the 16-entry table) / 2 (``error_bound``:
    0.1519 nf4, 0.1667 fp4) (+ the error of the quantized absmax when ``double_quant``), for
    blocks whose absmax is at least 2^-126; below that (fp32 subnormals) only within 2 *
    absmax, as in bitsandbytes. Tables are referred to by name. A float64 source is quantized
    from its fp32 values. NaN/Inf inputs are not supported: the block holding one decodes as
    NaN; with ``double_quant`` encoding refuses them (ValueError), as it refuses magnitudes
    whose block statistics overflow the fp32 mean (near 3.4e38).

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
        >>> message = tc.encode({"x": x}, precision=tc.Quant4("nf4", double_quant=True))
        >>> y = tc.decode(message)["x"]
        >>> len(message) < x.nbytes / 6, float(np.mean((x - y) ** 2) / np.mean(x**2)) < 0.02
        (True, True)
    """

    codec_id = "quant4"
    contractive = True

    def __init__(self, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True) -> None:
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant4 quant_type must be 'nf4' or 'fp4', not {quant_type!r}")
        if type(blocksize) is not int or blocksize not in BLOCKSIZES:
            raise ValueError(f"quant4 blocksize must be one of {BLOCKSIZES}, not {blocksize!r}")
        self.quant_type = quant_type
        self.blocksize = blocksize
        if not isinstance(double_quant, bool):
            raise TypeError(f"quant4 double_quant must be True or False, not {double_quant!r}")
        self.double_quant = double_quant

    def get_config(self) -> dict[str, Any]:
        return {"quant_type": self.quant_type, "blocksize": self.blocksize, "double_quant": self.double_quant}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        nblocks = max(1, -(-count // self.blocksize))
        stats = 8.0 * nblocks + 32.0 * -(-nblocks // 256) + 32.0 if self.double_quant else 32.0 * nblocks
        return (8.0 * packed_size(count, 4) + stats) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        nblocks = -(-count // self.blocksize)
        layout = {"codes": ("payload", "uint8", [packed_size(count, 4)])}
        if self.double_quant:
            layout["absmax_codes"] = ("meta", "uint8", [nblocks])
            layout["absmax_scale"] = ("meta", "float32", [-(-nblocks // 256)])
        else:
            layout["absmax"] = ("meta", "float32", [nblocks])
        return layout

    def predicted_params(self) -> dict[str, Any]:
        return {"offset": 0.0} if self.double_quant else {}

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """absmax_block * (largest gap of the table) / 2, plus the error of the quantized absmax, plus fp32
        rounding; 2 * absmax for blocks whose absmax is below 2^-126; blocks holding NaN/Inf are
        unsupported (unconstrained)."""
        x64 = x.astype(np.float64)
        x32 = x.astype(np.float32).astype(np.float64)
        true = block_absmax(x32, self.blocksize)
        seg = encoded.segments
        if self.double_quant:
            offset = np.float32(encoded.params["offset"])
            sent: np.ndarray[Any, Any] = np.asarray(
                dequantize_absmax(offset, seg["absmax_codes"][1], seg["absmax_scale"][1])
            )
        else:
            sent = seg["absmax"][1]
        sent = sent.astype(np.float64).reshape(-1)[: true.size]
        if sent.size < true.size:  # an empty tensor sends no statistics
            sent = np.concatenate([sent, np.zeros(true.size - sent.size)])
        absmax = per_element(true, self.blocksize, x.size)
        absmax_err = per_element(np.abs(sent - true), self.blocksize, x.size)
        with np.errstate(invalid="ignore"):
            slack = 4 * EPS32 * absmax + 4 * SUB32 + np.abs(x64 - x32)
        bound = (absmax * HALF_GAPS[self.quant_type] * (1 + 1e-5) + absmax_err + slack) * rounding_factor(x.dtype)
        bound = np.where(absmax < 2.0**-126, 2 * absmax + absmax_err + slack, bound)  # 1 / absmax overflows
        return unsupported_blocks(bound, x32, self.blocksize)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        if x.size == 0:  # nothing to quantize (the kernels need a block); the layout of an empty tensor
            none8, none32 = np.zeros(0, np.uint8), np.zeros(0, np.float32)
            if not self.double_quant:
                return Encoded({"codes": ("payload", none8), "absmax": ("meta", none32)})
            segments: Segments = {"codes": ("payload", none8), "absmax_codes": ("meta", none8)}
            return Encoded({**segments, "absmax_scale": ("meta", none32)}, {"offset": 0.0})
        packed, absmax = quantize_4bit(kernel_source(x), self.quant_type, self.blocksize)
        return self._with_statistics(packed, absmax, quantize_absmax(absmax) if self.double_quant else None)

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        sources = [kernel_source(x) for x in xs if x.size]  # an empty tensor has a layout of its own
        quantized = quantize_4bit_batch(sources, self.quant_type, self.blocksize)
        stats: list[Any] = [None] * len(quantized)
        if self.double_quant:
            stats = quantize_absmax_batch([absmax for _, absmax in quantized])
        done = iter([self._with_statistics(p, a, s) for (p, a), s in zip(quantized, stats, strict=True)])
        return [next(done) if x.size else self.encode(x) for x in xs]

    def encode_torch(self, t: Any) -> Encoded | None:
        if t.numel() == 0 or not torch_kernel_source(t):
            return None
        packed, absmax = quantize_4bit_torch(t, self.quant_type, self.blocksize)
        if not self.double_quant:
            return self._with_statistics(to_host(packed), to_host(absmax), None)
        offset, codes, nested = quantize_absmax_torch(absmax)
        return self._with_statistics(
            to_host(packed), None, (np.float32(offset.item()), to_host(codes), to_host(nested))
        )

    def _with_statistics(self, packed: Any, absmax: Any, stats: tuple[Any, Any, Any] | None) -> Encoded:
        """The segments of quantized codes and block statistics: ``absmax``, or with ``double_quant`` its
        ``(offset, codes, nested)`` from ``quantize_absmax``."""
        if stats is None:
            return Encoded({"codes": ("payload", packed), "absmax": ("meta", absmax)})
        offset, codes, nested = stats
        if not math.isfinite(float(offset)):
            # The fp32 mean of the statistics overflowed (Inf/NaN inputs, or magnitudes near 3.4e38):
            # every block would decode as NaN, silently.
            raise ValueError(
                "quant4 double_quant: the fp32 mean of the block absmax values is not finite (NaN/Inf values or "
                "magnitudes near the fp32 maximum); use double_quant=False or send this tensor losslessly"
            )
        return Encoded(
            {"codes": ("payload", packed), "absmax_codes": ("meta", codes), "absmax_scale": ("meta", nested)},
            {"offset": float(offset)},
        )

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        packed, stats = self._read(segments, params, count)
        if count == 0:
            return np.zeros(0, dtype.numpy)
        absmax = dequantize_absmax(*stats) if self.double_quant else stats
        values = dequantize_4bit(packed, absmax, count, self.quant_type, self.blocksize, kernel_target(dtype))
        return restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        read = [self._read(segments, params, count) for segments, params, count in items]
        stats = [s for _, s in read]
        absmaxes = dequantize_absmax_batch(stats) if self.double_quant else stats
        work = [(packed, absmax, n) for (packed, _), absmax, (_, _, n) in zip(read, absmaxes, items, strict=True)]
        values = dequantize_4bit_batch(work, self.quant_type, self.blocksize, kernel_target(dtype))
        return [v.astype(dtype.numpy) for v in values]  # each its own copy, in the source dtype

    def _read(self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], count: int) -> Any:
        """The checked packed codes of one tensor and its statistics: ``absmax``, or with ``double_quant``
        ``(offset, codes, nested)``."""
        nblocks = -(-count // self.blocksize)
        packed = self.segment(segments, "codes", "uint8", packed_size(count, 4))
        if not self.double_quant:
            return packed, self.segment(segments, "absmax", "float32", nblocks)
        codes = self.segment(segments, "absmax_codes", "uint8", nblocks)
        nested = self.segment(segments, "absmax_scale", "float32", -(-nblocks // 256))
        return packed, (np.float32(self.param(params, "offset", float)), codes, nested)
