"""``topk``, ``randk`` and ``sign``: sparsification and 1-bit scaled sign, for updates in training loops.

``topk`` keeps the k largest magnitudes, ``randk`` k seeded random elements; both send the kept
values exactly (in the source dtype) and their positions as a bitmap or as gaps in LEB128 varints,
whichever is smaller for that tensor (param ``index``). ``sign`` sends one sign bit per element and
one scale, the mean |x| of its block. All three are contractive, so error feedback is sound for them
(``tensorcodec.ErrorFeedback``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import DecodeError
from .base import (
    EPS32,
    SUB32,
    Codec,
    Encoded,
    Segments,
    block_span,
    finite_range,
    float32,
    per_element,
    register_codec,
    restore,
    rounding_factor,
)
from .bits import pack_bits, packed_size, unpack_bits

_MAX_VARINT = 5
"""Bytes of the longest gap varint: 35 bits, beyond any tensor's element count."""


def kept_count(fraction: float, count: int) -> int:
    """Elements a sparse codec keeps of ``count``: ceil(fraction * count), at least 1 of a non-empty tensor."""
    return 0 if count == 0 else min(count, max(1, math.ceil(fraction * count)))


def _varint_gaps(idx: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Sorted unique indices as gaps (first index + 1, then differences, all >= 1) in LEB128 bytes."""
    gaps = np.diff(idx.astype(np.int64), prepend=-1).astype(np.uint64)
    out = []
    for _ in range(_MAX_VARINT):
        more = gaps >= 128
        out.append(((gaps & np.uint64(127)) | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8))
        if not more.any():
            break
        gaps = gaps >> np.uint64(7)
    width = len(out)
    table = np.stack(out, axis=1)  # element i's bytes in row i; a row ends after its first byte < 128
    lengths = np.ones(gaps.size, dtype=np.int64)
    for j in range(1, width):
        lengths += table[:, j - 1] >= 128
    keep = np.arange(width)[None, :] < lengths[:, None]
    packed: np.ndarray[Any, Any] = table[keep]
    return packed


def _read_varint_gaps(data: np.ndarray[Any, Any], k: int, count: int) -> np.ndarray[Any, Any]:
    """The indices back from gap varints; DecodeError unless canonical, k of them, sorted, unique, < count."""
    ends = data < 128
    if int(ends.sum()) != k or (data.size and not ends[-1]):
        raise DecodeError(f"segment 'indices' holds {int(ends.sum())} complete varints, expected {k}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    group = np.concatenate([[0], np.cumsum(ends[:-1])])
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    pos = np.arange(data.size) - starts[group]
    lengths = np.diff(np.append(starts, data.size))
    if int(pos.max()) >= _MAX_VARINT:
        raise DecodeError("segment 'indices' holds a varint longer than 5 bytes")
    if bool(np.any((lengths > 1) & (data[np.flatnonzero(ends)] == 0))):
        raise DecodeError("segment 'indices' holds a non-canonical (overlong) varint")
    gaps = np.zeros(k, dtype=np.int64)
    np.add.at(gaps, group, (data & 127).astype(np.int64) << (7 * pos))
    if bool(np.any(gaps == 0)):
        raise DecodeError("segment 'indices' repeats an index (a gap of 0)")
    idx = np.cumsum(gaps) - 1
    if int(idx[-1]) >= count:
        raise DecodeError(f"segment 'indices' names element {int(idx[-1])} of a {count}-element tensor")
    return idx


class _Sparse(Codec):
    """What top-k and random-k share: k from the fraction, the index coding, decode and the bound."""

    contractive = True

    def __init__(self, fraction: float) -> None:
        if not isinstance(fraction, float) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"{self.codec_id} fraction must be a float in (0, 1], not {fraction!r}")
        self.fraction = fraction

    def bits_per_element(self, dtype: DType, count: int) -> float:
        """An upper bound (the index coding depends on the data): values plus the smaller worst case."""
        k = kept_count(self.fraction, count)
        per_gap = max(1, -(-max(count, 1).bit_length() // 7))
        index_bytes = min(-(-count // 8), k * per_gap)
        return (k * 8.0 * dtype.numpy.itemsize + 8.0 * index_bytes) / max(count, 1)

    def choose(self, x: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        raise NotImplementedError

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        n = x.size
        x64 = x.astype(np.float64)
        if np.isnan(x64).any():
            raise ValueError(f"{self.codec_id} cannot encode NaN values; send this tensor losslessly (policy None)")
        k = kept_count(self.fraction, n)
        idx = np.sort(self.choose(x64, k)).astype(np.int64)
        varint = _varint_gaps(idx)
        bitmap_size = -(-n // 8)
        params: dict[str, Any] = dict(self.extra_params())
        if varint.size <= bitmap_size:
            params["index"] = "varint"
            indices = varint
        else:
            params["index"] = "bitmap"
            mask = np.zeros(n, dtype=np.uint32)
            mask[idx] = 1
            indices = pack_bits(mask, 1)
        values = np.ascontiguousarray(x[idx])
        segments: Segments = {"values": ("payload", values), "indices": ("meta", indices.astype(np.uint8))}
        return Encoded(segments, params)

    def extra_params(self) -> dict[str, Any]:
        return {}

    def kept(self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], count: int) -> Any:
        """The kept indices, validated: exactly k of them, sorted, unique and in range."""
        k = kept_count(self.fraction, count)
        how = self.param(params, "index", str)
        data = segments.get("indices")
        if data is None:
            raise DecodeError("segment 'indices' is missing")
        if how == "bitmap":
            data = self.segment(segments, "indices", "uint8", -(-count // 8))
            mask = unpack_bits(data, 1, count).astype(bool)
            if int(mask.sum()) != k or bytes(pack_bits(mask.astype(np.uint32), 1)) != bytes(data):
                raise DecodeError(f"segment 'indices' marks {int(mask.sum())} elements (or stray bits), expected {k}")
            return np.flatnonzero(mask)
        if how != "varint":
            raise DecodeError(f"parameter 'index' is {how!r}, expected 'bitmap' or 'varint'")
        limit = k * _MAX_VARINT
        if data.size > limit:
            raise DecodeError(f"segment 'indices' has {data.size} bytes, more than {limit} for {k} varints")
        return _read_varint_gaps(self.segment(segments, "indices", "uint8", data.size), k, count)

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        idx = self.kept(segments, params, count)
        values = self.segment(segments, "values", dtype.name, kept_count(self.fraction, count))
        out = np.zeros(count, dtype=dtype.numpy)
        out[idx] = values
        return out

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """0 at the kept elements (sent exactly), |x| at the others (they decode as 0)."""
        arrays = {name: arr for name, (_, arr) in encoded.segments.items()}
        bound: np.ndarray[Any, Any] = np.abs(x.astype(np.float64))
        bound[self.kept(arrays, encoded.params, x.size)] = 0.0
        return bound


@register_codec
class TopK(_Sparse):
    """The k = ceil(fraction * n) largest magnitudes, exactly; the rest decode as 0.

    Error bound: 0 at kept elements, |x| elsewhere, and every dropped |x| is at most the smallest
    kept one (so ||x - x̂||² <= (1 - k/n) ||x||²: contractive). Ties go to the lower index. NaN is
    refused with ValueError; ±Inf ranks largest and is kept exactly.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> update = {"w": np.array([0.5, -3.0, 0.25, 2.0], np.float32)}
        >>> policy = tc.Policy({"*": tc.TopK(0.5)}, min_elements=0)
        >>> tc.decode(tc.encode(update, policy=policy))["w"].tolist()
        [0.0, -3.0, 0.0, 2.0]
    """

    codec_id = "topk"

    def __init__(self, fraction: float = 0.01) -> None:
        super().__init__(fraction)

    def get_config(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def choose(self, x: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        if k >= x.size:
            return np.arange(x.size)
        order = np.argsort(-np.abs(x), kind="stable")  # stable: ties go to the lower index
        chosen: np.ndarray[Any, Any] = order[:k]
        return chosen


@register_codec
class RandK(_Sparse):
    """k = ceil(fraction * n) elements drawn uniformly without replacement, exactly; the rest decode as 0.

    The draw comes from a Philox generator keyed by ``seed`` and the tensor's ``stream`` param (the
    CRC-32 of its dotted name, as for stochastic minmax), so a run is reproducible; decoding needs
    neither, the indices travel. The same seed, name and size draw the same indices on every call:
    in a training loop pass a new seed each round (``RandK(0.01, seed=round)``), or only those
    coordinates ever move. Error bound as ``topk``'s: 0 at kept elements, |x| elsewhere;
    E||x - x̂||² = (1 - k/n) ||x||² (contractive in expectation). NaN is refused with ValueError.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> update = {"w": np.array([0.5, -3.0, 0.25, 2.0], np.float32)}
        >>> policy = tc.Policy({"*": tc.RandK(0.5, seed=1)}, min_elements=0)
        >>> tc.decode(tc.encode(update, policy=policy))["w"].tolist()
        [0.5, 0.0, 0.0, 2.0]
    """

    codec_id = "randk"

    def __init__(self, fraction: float = 0.01, seed: int = 0) -> None:
        super().__init__(fraction)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
            raise ValueError(f"randk seed must be an unsigned 64-bit integer, not {seed!r}")
        self.seed = seed
        self._stream_hint = 0

    def get_config(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": self.seed}

    def with_stream(self, name: str) -> RandK:
        """A copy whose draw is keyed by a tensor name, so every tensor gets its own."""
        twin = RandK(self.fraction, self.seed)
        twin._stream_hint = zlib.crc32(name.encode())
        return twin

    def extra_params(self) -> dict[str, Any]:
        return {"stream": self._stream_hint, "seed": self.seed}

    def choose(self, x: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        rng = np.random.Generator(np.random.Philox(key=[self.seed, self._stream_hint]))
        chosen: np.ndarray[Any, Any] = rng.choice(x.size, size=k, replace=False) if k else np.zeros(0, np.int64)
        return chosen


@register_codec
class ScaledSign(Codec):
    """1 bit per element and one scale per block: x̂ = +s if x >= 0 (sign bit clear) else -s, s = mean |x|.

    s is the block's mean |x| computed in float64, rounded to fp32. Error bound: | |x| - s | per
    element (exact by construction, the sign is kept) plus fp32 rounding of s; x̂ minimises
    ||x - x̂|| over sign patterns scaled by one s with this sign, and ||x - x̂||² = ||x||² - n s²
    <= ||x||² (contractive). NaN/Inf (and float64 beyond fp32) are refused with ValueError.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> update = {"w": np.array([0.5, -3.0, 0.25, 2.0], np.float32)}
        >>> policy = tc.Policy({"*": tc.ScaledSign()}, min_elements=0)
        >>> tc.decode(tc.encode(update, policy=policy))["w"].tolist()
        [1.4375, -1.4375, 1.4375, 1.4375]
    """

    codec_id = "sign"
    contractive = True

    def __init__(self, block: int = 0) -> None:
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or block > 1 << 24:
            raise ValueError(f"sign block must be 0 (per tensor) or a positive block size, not {block!r}")
        self.block = block

    def get_config(self) -> dict[str, Any]:
        return {"block": self.block}

    def _blocks(self, count: int) -> int:
        return 1 if self.block == 0 else max(1, -(-count // self.block))

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return (8.0 * packed_size(count, 1) + 32.0 * self._blocks(count)) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {
            "signs": ("payload", "uint8", [packed_size(count, 1)]),
            "scale": ("meta", "float32", [self._blocks(count)]),
        }

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        x32 = float32(x)
        n = x32.size
        if n:
            finite_range(x32, "sign")
        size = max(block_span(self.block, n), 1)
        nblocks = self._blocks(n)
        padded = np.zeros(nblocks * size)
        padded[:n] = np.abs(x32.astype(np.float64))
        lengths = np.full(nblocks, size, dtype=np.float64)
        lengths[-1] = max(n - (nblocks - 1) * size, 1)
        scale = (padded.reshape(nblocks, size).sum(axis=1) / lengths).astype(np.float32)
        signs = pack_bits(np.signbit(x32).astype(np.uint32), 1)
        return Encoded({"signs": ("payload", signs), "scale": ("meta", scale)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        signs = self.segment(segments, "signs", "uint8", packed_size(count, 1))
        scale = self.segment(segments, "scale", "float32", self._blocks(count))
        if not bool(np.all(np.isfinite(scale))) or bool(np.any(scale < 0)):
            raise DecodeError("segment 'scale' holds a negative or non-finite scale")
        negative = unpack_bits(signs, 1, count).astype(bool)
        s = per_element(scale, self.block, count)
        return restore(np.where(negative, -s, s).astype(np.float32), dtype)

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any]:
        """| |x| - s | with the scale each block sent, plus fp32 rounding; NaN/Inf are refused by encode."""
        n = x.size
        x64 = x.astype(np.float64)
        s = per_element(encoded.segments["scale"][1].astype(np.float64), self.block, n)
        slack = 4 * EPS32 * s + 4 * SUB32 + np.abs(x64 - x.astype(np.float32))
        bound: np.ndarray[Any, Any] = (np.abs(np.abs(x64) - s) + slack) * rounding_factor(x.dtype)
        return bound
