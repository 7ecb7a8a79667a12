"""Precision codecs: the ``Codec`` base class, the registry and the built-in codecs.

A codec turns one array into named segments (payload and metadata) plus a few
per-tensor parameters, and back. Its id and config travel in the message with
every tensor it encoded, so a decoder needs no side configuration: it looks the
id up in the registry, builds the codec from the config and decodes. Decoding
only ever instantiates registered classes; nothing a message names is imported.

The rule, as in numcodecs: two codecs with the same id and config decode each
other's output. Changing what an existing id means is a format break; give a
changed codec a new id.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

from . import dtypes
from .dtypes import DType
from .errors import DecodeError, UnknownCodecError

__all__ = [
    "Codec",
    "Encoded",
    "Quantized",
    "register_codec",
    "get_codec",
    "registered_codecs",
    "Cast",
    "FP8",
    "MinMax",
    "Blockwise8",
    "Quant4",
    "PRECISIONS",
    "precision_codec",
    "FLOAT_SOURCES",
]

FLOAT_SOURCES = frozenset({"float32", "float16", "bfloat16", "float64"})
"""Dtypes the built-in lossy codecs accept; integers, bool and complex always travel losslessly."""

Segments = dict[str, tuple[str, np.ndarray[Any, Any]]]
"""name -> (role, array): role is "payload" (the values) or "meta" (scales, tables, statistics)."""

DecodeItem = tuple[Mapping[str, np.ndarray[Any, Any]], Mapping[str, Any], int]
"""One tensor for ``Codec.decode_batch``: its segments, its params and its element count."""


class Encoded:
    """What ``Codec.encode`` returns: named segments and JSON-able per-tensor params."""

    __slots__ = ("params", "segments")

    def __init__(self, segments: Segments, params: dict[str, Any] | None = None) -> None:
        self.segments = segments
        self.params = params or {}


class Codec:
    """A precision stage: encodes a flat array into segments, decodes them back.

    Subclasses set ``codec_id``, take their configuration as keyword arguments,
    return it from ``get_config`` and implement ``encode`` / ``decode``.
    ``encode`` receives a flat, C-contiguous numpy array of a dtype in
    ``sources``; ``decode`` must return a flat array of exactly ``dtype`` and
    ``count`` elements and must validate every segment it reads (use
    ``Codec.segment``), since segments come from the wire.
    """

    codec_id: ClassVar[str] = ""
    sources: ClassVar[frozenset[str]] = FLOAT_SOURCES
    lossless: ClassVar[bool] = False

    def get_config(self) -> dict[str, Any]:
        """The JSON-able keyword arguments that rebuild this codec."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Codec:
        return cls(**config)

    def bits_per_element(self, dtype: DType, count: int) -> float:
        """Encoded bits per element (payload + metadata) for a source of ``dtype``; decides skipping."""
        raise NotImplementedError

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]] | None:
        """``name -> (role, dtype, shape)`` of the segments for ``count`` elements, if fixed by size alone.

        Lets ``tensorcodec.predict`` size a message without quantizing anything;
        None for codecs whose output depends on the data.
        """
        return None

    def predicted_params(self) -> dict[str, Any]:
        """Stand-in per-tensor params of the same encoded size, for ``predict``."""
        return {}

    def output_dtype(self, dtype: DType) -> DType | None:
        """For an array-to-array stage, the dtype of the "data" segment it hands on; None otherwise."""
        return None

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        raise NotImplementedError

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        """``encode`` of many small tensors; override where one call can do them all faster."""
        return [self.encode(x) for x in xs]

    def encode_torch(self, t: Any) -> Encoded | None:
        """Encode a flat torch tensor where it lives (a GPU), or None to have it copied to the CPU first.

        Must give the same segments, bit for bit, as ``encode`` of the same values.
        """
        return None

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        raise NotImplementedError

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        """``decode`` of many small tensors of one dtype, each item ``(segments, params, count)``.

        Override where one call can do them all faster. An override must check every item as
        ``decode`` does and give the same arrays, each with memory of its own (not views of one
        shared buffer, which one kept tensor would keep alive whole).
        """
        return [self.decode(segments, params, dtype, count) for segments, params, count in items]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((self.codec_id, repr(sorted(self.get_config().items()))))

    @staticmethod
    def segment(
        segments: Mapping[str, np.ndarray[Any, Any]], name: str, dtype: str, count: int
    ) -> np.ndarray[Any, Any]:
        """Segment ``name`` as a flat array, after checking its dtype and element count."""
        arr = segments.get(name)
        if arr is None:
            raise DecodeError(f"segment {name!r} is missing")
        row = dtypes.BY_NAME.get(dtype)
        if (row is None or arr.dtype is not row.numpy) and dtypes.from_numpy(arr.dtype) is not row:
            raise DecodeError(f"segment {name!r} has dtype {arr.dtype}, expected {dtype}")
        if arr.size != count:
            raise DecodeError(f"segment {name!r} has {arr.size} elements, expected {count}")
        return arr if arr.ndim == 1 else arr.reshape(-1)

    @staticmethod
    def param(params: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
        """Per-tensor parameter ``name`` after checking its type."""
        value = params.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise DecodeError(f"parameter {name!r} is {value!r}, expected {kind}")
        return value


# ---------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Codec]] = {}
_ENTRY_POINT_GROUP = "tensorcodec.codecs"
_entry_points_loaded = False
_INSTALL_HINTS: dict[str, str] = {}
"""Codec ids known to live in optional packages, with what to install."""


def register_codec(cls: type[Codec], *, replace: bool = False) -> type[Codec]:
    """Add a codec class to the registry (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Codec)) or not cls.codec_id:
        raise TypeError(f"{cls!r} is not a Codec subclass with a codec_id")
    current = _REGISTRY.get(cls.codec_id)
    if current is not None and current is not cls and not replace:
        raise ValueError(
            f"codec id {cls.codec_id!r} is already registered to {current.__module__}.{current.__qualname__}; "
            "pass replace=True to override it"
        )
    _REGISTRY[cls.codec_id] = cls
    return cls


def _load_entry_points() -> None:
    """Registers plugins advertised under the ``tensorcodec.codecs`` entry-point group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must not break decoding of other codecs
            _INSTALL_HINTS.setdefault(ep.name, f"its plugin failed to load ({type(e).__name__}: {e})")
            continue
        if isinstance(cls, type) and issubclass(cls, Codec) and cls.codec_id == ep.name:
            _REGISTRY[ep.name] = cls


def get_codec(codec_id: str) -> type[Codec]:
    """The registered class for ``codec_id``; raises UnknownCodecError naming what to install."""
    cls = _REGISTRY.get(codec_id)
    if cls is None:
        _load_entry_points()
        cls = _REGISTRY.get(codec_id)
    if cls is None:
        raise UnknownCodecError(codec_id, _INSTALL_HINTS.get(codec_id, ""))
    return cls


def registered_codecs() -> dict[str, type[Codec]]:
    _load_entry_points()
    return dict(_REGISTRY)


# ---------------------------------------------------------------------------- helpers


def _float32(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _restore(values: np.ndarray[Any, Any], dtype: DType) -> np.ndarray[Any, Any]:
    """float32 values to the original dtype (round to nearest even)."""
    return values if values.dtype == dtype.numpy else values.astype(dtype.numpy)


def _finite_range(x: np.ndarray[Any, Any], what: str) -> tuple[float, float]:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"{what} cannot encode NaN or Inf values (or float64 values beyond the float32 range);"
            " send this tensor losslessly (policy None)"
        )
    return lo, hi


def _check_source(codec: Codec, dtype: DType) -> None:
    if dtype.name not in codec.sources:
        raise TypeError(f"codec {codec.codec_id!r} encodes {sorted(codec.sources)}, not {dtype.name}")


def pack_bits(q: np.ndarray[Any, Any], bits: int) -> np.ndarray[Any, Any]:
    """Unsigned codes of ``bits`` bits each, packed little-endian (code 0 in the lowest bits of byte 0)."""
    if bits == 8:
        return q.astype(np.uint8)
    if bits == 16:
        return q.astype("<u2").view(np.uint8)
    n = q.size
    if 8 % bits == 0:
        per = 8 // bits
        padded = np.zeros(-(-n // per) * per, dtype=np.uint8)
        padded[:n] = q
        lanes = padded.reshape(-1, per)
        out = np.zeros(lanes.shape[0], dtype=np.uint8)
        for i in range(per):
            out |= lanes[:, i] << np.uint8(i * bits)
        return out
    wide = q.astype(np.uint32)
    bitplanes = ((wide[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray[Any, Any], bits: int, count: int) -> np.ndarray[Any, Any]:
    """Inverse of ``pack_bits``: ``count`` codes as uint32 (uint8/uint16 for 8/16 bits)."""
    if bits == 8:
        return packed[:count]
    if bits == 16:
        return packed.view("<u2")[:count]
    if 8 % bits == 0:
        per = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        lanes = np.empty((packed.size, per), dtype=np.uint8)
        for i in range(per):
            lanes[:, i] = (packed >> np.uint8(i * bits)) & mask
        return lanes.reshape(-1)[:count]
    bitplanes = np.unpackbits(packed, bitorder="little", count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    codes: np.ndarray[Any, Any] = (bitplanes.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)
    return codes


def packed_size(count: int, bits: int) -> int:
    return -(-count * bits // 8)


# ---------------------------------------------------------------------------- cast


@register_codec
class Cast(Codec):
    """Cast to a narrower float: ``float16`` or ``bfloat16``, finite values clamped to the target's range.

    Error bound: round to nearest even, so |x - x̂| <= 2^-11 |x| (fp16) or 2^-8 |x|
    (bf16) for values in the target's normal range, and <= half the smallest
    subnormal (2^-25 fp16, 2^-134 bf16) below it; finite values beyond the
    largest finite value (65504 fp16, about 3.39e38 bf16) become that value with
    their sign, never Inf. NaN and ±Inf are kept.
    """

    codec_id = "cast"
    _TARGETS: ClassVar[dict[str, float]] = {
        "float16": 65504.0,
        "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),  # type: ignore[no-untyped-call]
    }
    """Target -> its largest finite value, the clamp for finite inputs."""

    def __init__(self, to: str) -> None:
        if to not in self._TARGETS:
            raise ValueError(f"cast target must be one of {sorted(self._TARGETS)}, not {to!r}")
        self.to = to
        self._target = dtypes.BY_NAME[to]

    def get_config(self) -> dict[str, Any]:
        return {"to": self.to}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 * self._target.itemsize

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"data": ("payload", self.to, [count])}

    def output_dtype(self, dtype: DType) -> DType:
        return self._target

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        limit = self._TARGETS[self.to]
        wide = x if x.dtype.itemsize >= 4 else x.astype(np.float32)  # clip where the limit is exact
        out = np.clip(wide, -limit, limit).astype(self._target.numpy)
        infinite = np.isinf(wide)
        if infinite.any():
            out[infinite] = wide[infinite]
        return Encoded({"data": ("payload", out)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        data = self.segment(segments, "data", self.to, count)
        out: np.ndarray[Any, Any] = data.astype(dtype.numpy)
        if dtype.name == "float16" and self.to == "bfloat16":
            # bf16 rounds fp16's largest values up past 65504: clamp them, as encode does, rather than give Inf.
            over = np.isinf(out) & np.isfinite(data)
            if over.any():
                out[over] = np.copysign(np.float16(65504), data[over].astype(np.float32))
        return out


# ---------------------------------------------------------------------------- fp8


@register_codec
class FP8(Codec):
    """Scaled fp8 (``e4m3`` = float8_e4m3fn, ``e5m2``): one fp32 scale per ``block`` elements (0: per tensor).

    scale = absmax / fp8_max (at least 2^-126, the smallest normal fp32, so that
    x / scale cannot overflow; 1 for an all-zero block), codes =
    round_to_nearest_even(x / scale). Error bound: |x - x̂| <= scale * 2^-4 *
    |x / scale| (e4m3, 3 mantissa bits) or 2^-3 (e5m2), plus the subnormal step
    near zero (scale * 2^-9 for e4m3, scale * 2^-16 for e5m2). NaN stays NaN;
    ±Inf stays ±Inf in e5m2 and becomes NaN in e4m3, which has no infinity;
    absmax is taken over finite values. Values are cast to fp32 first, so
    float64 magnitudes beyond the fp32 range count as ±Inf.
    """

    codec_id = "fp8"
    _FORMATS: ClassVar[dict[str, str]] = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}

    def __init__(self, format: str = "e4m3", block: int = 0) -> None:
        if format not in self._FORMATS:
            raise ValueError(f"fp8 format must be one of {sorted(self._FORMATS)}, not {format!r}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or block > 1 << 24:
            raise ValueError(f"fp8 block must be 0 (per tensor) or a positive block size, not {block!r}")
        self.format = format
        self.block = block
        self._dtype = dtypes.BY_NAME[self._FORMATS[format]]
        self._max = float(ml_dtypes.finfo(self._dtype.numpy).max)  # type: ignore[no-untyped-call]

    def get_config(self) -> dict[str, Any]:
        return {"format": self.format, "block": self.block}

    def _blocks(self, count: int) -> int:
        return 1 if self.block == 0 else max(1, -(-count // self.block))

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 + 32.0 * self._blocks(count) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", self._dtype.name, [count]), "scale": ("meta", "float32", [self._blocks(count)])}

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        x32 = _float32(x)
        n = x32.size
        nblocks = self._blocks(n)
        size = n if self.block == 0 else self.block
        padded = np.zeros(nblocks * size, dtype=np.float32)
        padded[:n] = x32
        blocks = padded.reshape(nblocks, size)
        finite = np.where(np.isfinite(blocks), np.abs(blocks), 0.0)
        absmax = finite.max(axis=1) if n else np.zeros(nblocks, np.float32)
        # A subnormal scale is too coarse: x / scale could exceed the fp8 range and become NaN/Inf.
        scale = np.maximum(absmax / self._max, np.float32(2.0**-126)).astype(np.float32)
        scale[absmax == 0] = 1.0
        codes = (blocks / scale[:, None]).astype(self._dtype.numpy).reshape(-1)[:n]
        return Encoded({"codes": ("payload", codes), "scale": ("meta", scale)})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        codes = self.segment(segments, "codes", self._dtype.name, count)
        nblocks = self._blocks(count)
        scale = self.segment(segments, "scale", "float32", nblocks)
        size = count if self.block == 0 else self.block
        values = codes.astype(np.float32)
        if count:
            full = np.zeros(nblocks * size, dtype=np.float32)
            full[:count] = values
            values = (full.reshape(nblocks, size) * scale[:, None]).reshape(-1)[:count]
        return _restore(values, dtype)


# ---------------------------------------------------------------------------- min/max


@register_codec
class MinMax(Codec):
    """n-bit (1..16) scalar quantization between the minimum and maximum, per tensor or per block.

    q = round((x - min) / (max - min) * (2^bits - 1)), bit-packed; x̂ = q / (2^bits - 1) *
    (max - min) + min computed in fp32. Error bound: |x - x̂| <= (max - min) / (2^bits - 1) / 2
    (round to nearest) or < (max - min) / (2^bits - 1) (stochastic), plus fp32 rounding.
    A constant tensor (or block) sends no codes. Stochastic rounding is unbiased and
    reproducible: uniform noise from a Philox generator keyed by ``seed`` and the
    tensor's ``stream`` id. Refused with ValueError: NaN/Inf inputs (float64 values beyond the fp32
    range count as Inf) and ranges whose max - min overflows fp32 (beyond 3.4e38).
    """

    codec_id = "minmax"

    def __init__(self, bits: int = 8, block: int = 0, stochastic: bool = False, seed: int = 0) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise ValueError(f"minmax bits must be an integer in 1..16, not {bits!r}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or block > 1 << 24:
            raise ValueError(f"minmax block must be 0 (per tensor) or a positive block size, not {block!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
            raise ValueError(f"minmax seed must be an unsigned 64-bit integer, not {seed!r}")
        self.bits = bits
        self.block = block
        self.stochastic = bool(stochastic)
        self.seed = seed
        self._stream_hint = 0

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "block": self.block, "stochastic": self.stochastic, "seed": self.seed}

    def _blocks(self, count: int) -> int:
        return 1 if self.block == 0 else max(1, -(-count // self.block))

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return self.bits + 64.0 * self._blocks(count) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        """The layout of a non-constant tensor (a constant one sends no codes)."""
        return {
            "range": ("meta", "float32", [2 * self._blocks(count)]),
            "codes": ("payload", "uint8", [packed_size(count, self.bits)]),
        }

    def predicted_params(self) -> dict[str, Any]:
        return {"stream": self._stream_hint} if self.stochastic else {}  # with_stream(name) set it, as for encode

    def with_stream(self, name: str) -> MinMax:
        """A copy whose stochastic noise is keyed by a tensor name, so every tensor gets its own stream."""
        twin = MinMax(self.bits, self.block, self.stochastic, self.seed)
        twin._stream_hint = zlib.crc32(name.encode())
        return twin

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        x32 = _float32(x)
        n = x32.size
        nblocks = self._blocks(n)
        size = n if self.block == 0 else self.block
        levels = (1 << self.bits) - 1
        if n == 0:
            lo = hi = np.zeros(1, np.float32)
        elif self.block == 0:
            a, b = _finite_range(x32, "minmax")
            lo, hi = np.array([a], np.float32), np.array([b], np.float32)
        else:
            padded = np.empty(nblocks * size, dtype=np.float32)
            padded[:n] = x32
            padded[n:] = x32[-1]
            blocks = padded.reshape(nblocks, size)
            lo, hi = blocks.min(axis=1), blocks.max(axis=1)
            _finite_range(np.concatenate([lo, hi]), "minmax")
        if n and float(np.max(hi.astype(np.float64) - lo)) > float(np.finfo(np.float32).max):
            raise ValueError("minmax cannot encode a range whose max - min overflows float32; send it losslessly")
        params: dict[str, Any] = {}
        ranges = np.stack([lo, hi], axis=1).reshape(-1)
        segments: Segments = {"range": ("meta", ranges)}
        if n and bool(np.any(hi > lo)):
            span = (hi - lo).astype(np.float32)
            span[span == 0] = 1.0
            per_elem_lo = np.repeat(lo, size)[:n] if self.block else lo[0]
            per_elem_span = np.repeat(span, size)[:n] if self.block else span[0]
            scaled = (x32 - per_elem_lo) / per_elem_span * np.float32(levels)
            if self.stochastic:
                params["stream"] = self._stream_hint
                rng = np.random.Generator(np.random.Philox(key=[self.seed, self._stream_hint]))
                scaled += rng.random(n, dtype=np.float32)
                q = np.floor(scaled)
            else:
                q = np.rint(scaled)
            q = np.clip(q, 0, levels).astype(np.uint32)
            segments["codes"] = ("payload", pack_bits(q, self.bits))
        return Encoded(segments, params)

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        nblocks = self._blocks(count)
        size = count if self.block == 0 else self.block
        ranges = self.segment(segments, "range", "float32", 2 * nblocks).reshape(nblocks, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
        if "codes" not in segments:
            if count and bool(np.any(hi != lo)):
                raise DecodeError("segment 'codes' is missing for a tensor that is not constant")
            return _restore(np.repeat(lo, size)[:count], dtype)
        packed = self.segment(segments, "codes", "uint8", packed_size(count, self.bits))
        q = unpack_bits(packed, self.bits, count).astype(np.float32)
        levels = np.float32((1 << self.bits) - 1)
        span = (hi - lo).astype(np.float32)
        if self.block == 0:
            values = q / levels * span[0] + lo[0]
        else:
            values = q / levels * np.repeat(span, size)[:count] + np.repeat(lo, size)[:count]
        return _restore(values.astype(np.float32, copy=False), dtype)


# ---------------------------------------------------------------------------- bitsandbytes formats


def _torch_kernel_source(t: Any) -> bool:
    """Whether the torch kernels take this tensor as it is (float32/float16/bfloat16)."""
    import torch

    return bool(t.dtype in (torch.float32, torch.float16, torch.bfloat16))


def _host(t: Any) -> np.ndarray[Any, Any]:
    """A torch result as a CPU numpy array (one device-to-host copy of the small encoded form)."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _kernel_source(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The kernels take float32/float16/bfloat16: a float64 source goes in as its float32 values."""
    return x.astype(np.float32) if x.dtype == np.float64 else x


def _kernel_target(dtype: DType) -> Any:
    """The dtype to ask the kernels for; float64 comes back as float32 and is widened by ``_restore``."""
    return np.dtype(np.float32) if dtype.name == "float64" else dtype.numpy


@register_codec
class Blockwise8(Codec):
    """bitsandbytes' 8-bit blockwise quantization with the signed dynamic map; bit-compatible.

    Error bound: |x - x̂| <= absmax_block * ``kernels.error_bound("dynamic")`` (0.0070468: half
    the largest gap of the map, 0.0070313, plus the slack of bitsandbytes' approximate code
    lookup), before the final cast to the source dtype, for blocks whose absmax is at least
    2^-126 (fp32's smallest normal): like bitsandbytes, the kernel scales by 1 / absmax, which
    overflows below that, and such blocks are only within 2 * absmax. NaN/Inf inputs are not
    supported (as in bitsandbytes: a NaN decodes as an arbitrary value, an Inf turns its block
    into ±Inf). The map is referred to by name, never resent. A float64 source is quantized
    from its fp32 values.
    """

    codec_id = "blockwise8"

    def __init__(self, blocksize: int = 4096) -> None:
        if blocksize not in _BLOCKSIZES_8:
            raise ValueError(f"blockwise8 blocksize must be one of {_BLOCKSIZES_8}, not {blocksize!r}")
        self.blocksize = blocksize

    def get_config(self) -> dict[str, Any]:
        return {"blocksize": self.blocksize}

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 8.0 + 32.0 * max(1, -(-count // self.blocksize)) / max(count, 1)

    def segment_layout(self, dtype: DType, count: int) -> dict[str, tuple[str, str, list[int]]]:
        return {"codes": ("payload", "uint8", [count]), "absmax": ("meta", "float32", [-(-count // self.blocksize)])}

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        from . import kernels

        codes, absmax = kernels.quantize_blockwise8(_kernel_source(x), self.blocksize)
        return Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)})

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        from . import kernels

        results = kernels.quantize_blockwise8_batch([_kernel_source(x) for x in xs], self.blocksize)
        return [Encoded({"codes": ("payload", codes), "absmax": ("meta", absmax)}) for codes, absmax in results]

    def encode_torch(self, t: Any) -> Encoded | None:
        from . import kernels

        if not _torch_kernel_source(t):
            return None
        codes, absmax = kernels.quantize_blockwise8_torch(t, self.blocksize)
        return Encoded({"codes": ("payload", _host(codes)), "absmax": ("meta", _host(absmax))})

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        from . import kernels

        codes, absmax = self._read(segments, count)
        values = kernels.dequantize_blockwise8(codes, absmax, self.blocksize, _kernel_target(dtype))
        return _restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        from . import kernels

        pairs = [self._read(segments, count) for segments, _, count in items]
        values = kernels.dequantize_blockwise8_batch(pairs, self.blocksize, _kernel_target(dtype))
        return [v.astype(dtype.numpy) for v in values]  # each its own copy, in the source dtype

    def _read(self, segments: Mapping[str, np.ndarray[Any, Any]], count: int) -> tuple[Any, Any]:
        """The checked ``(codes, absmax)`` of one tensor."""
        codes = self.segment(segments, "codes", "uint8", count)
        return codes, self.segment(segments, "absmax", "float32", -(-count // self.blocksize))


_BLOCKSIZES_8 = (64, 128, 256, 512, 1024, 2048, 4096)
_BLOCKSIZES_4 = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@register_codec
class Quant4(Codec):
    """bitsandbytes' 4-bit ``nf4`` / ``fp4``, two codes per byte (element 0 in the high nibble).

    With ``double_quant`` the fp32 absmax statistics are themselves quantized
    (offset = their mean, the rest 8-bit blockwise in blocks of 256), as
    bitsandbytes' ``compress_statistics=True``. Error bound: |x - x̂| <=
    absmax_block * (largest gap of the 16-entry table) / 2 (``kernels.error_bound``:
    0.1519 nf4, 0.1667 fp4) (+ the error of the quantized absmax when ``double_quant``), for
    blocks whose absmax is at least 2^-126; below that (fp32 subnormals) only within 2 *
    absmax, as in bitsandbytes. Tables are referred to by name. A float64 source is quantized
    from its fp32 values. NaN/Inf inputs are not supported: the block holding one decodes as
    NaN; with ``double_quant`` encoding refuses them (ValueError), as it refuses magnitudes
    whose block statistics overflow the fp32 mean (near 3.4e38).
    """

    codec_id = "quant4"

    def __init__(self, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True) -> None:
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant4 quant_type must be 'nf4' or 'fp4', not {quant_type!r}")
        if blocksize not in _BLOCKSIZES_4:
            raise ValueError(f"quant4 blocksize must be one of {_BLOCKSIZES_4}, not {blocksize!r}")
        self.quant_type = quant_type
        self.blocksize = blocksize
        self.double_quant = bool(double_quant)

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

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        from . import kernels

        if x.size == 0:  # nothing to quantize (the kernels need a block); the layout of an empty tensor
            none8, none32 = np.zeros(0, np.uint8), np.zeros(0, np.float32)
            if not self.double_quant:
                return Encoded({"codes": ("payload", none8), "absmax": ("meta", none32)})
            segments: Segments = {"codes": ("payload", none8), "absmax_codes": ("meta", none8)}
            return Encoded({**segments, "absmax_scale": ("meta", none32)}, {"offset": 0.0})
        packed, absmax = kernels.quantize_4bit(_kernel_source(x), self.quant_type, self.blocksize)
        return self._with_statistics(packed, absmax, kernels.quantize_absmax(absmax) if self.double_quant else None)

    def encode_batch(self, xs: list[np.ndarray[Any, Any]]) -> list[Encoded]:
        from . import kernels

        sources = [_kernel_source(x) for x in xs if x.size]  # an empty tensor has a layout of its own
        quantized = kernels.quantize_4bit_batch(sources, self.quant_type, self.blocksize)
        stats: list[Any] = [None] * len(quantized)
        if self.double_quant:
            stats = kernels.quantize_absmax_batch([absmax for _, absmax in quantized])
        done = iter([self._with_statistics(p, a, s) for (p, a), s in zip(quantized, stats, strict=True)])
        return [next(done) if x.size else self.encode(x) for x in xs]

    def encode_torch(self, t: Any) -> Encoded | None:
        from . import kernels

        if t.numel() == 0 or not _torch_kernel_source(t):
            return None
        packed, absmax = kernels.quantize_4bit_torch(t, self.quant_type, self.blocksize)
        if not self.double_quant:
            return self._with_statistics(_host(packed), _host(absmax), None)
        offset, codes, nested = kernels.quantize_absmax_torch(absmax)
        return self._with_statistics(_host(packed), None, (np.float32(offset.item()), _host(codes), _host(nested)))

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
        from . import kernels

        packed, stats = self._read(segments, params, count)
        if count == 0:
            return np.zeros(0, dtype.numpy)
        absmax = kernels.dequantize_absmax(*stats) if self.double_quant else stats
        values = kernels.dequantize_4bit(packed, absmax, count, self.quant_type, self.blocksize, _kernel_target(dtype))
        return _restore(np.asarray(values), dtype)

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        from . import kernels

        read = [self._read(segments, params, count) for segments, params, count in items]
        stats = [s for _, s in read]
        absmaxes = kernels.dequantize_absmax_batch(stats) if self.double_quant else stats
        work = [(packed, absmax, n) for (packed, _), absmax, (_, _, n) in zip(read, absmaxes, items, strict=True)]
        values = kernels.dequantize_4bit_batch(work, self.quant_type, self.blocksize, _kernel_target(dtype))
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


# ---------------------------------------------------------------------------- pre-encoded tensors


def _native(arr: Any) -> np.ndarray[Any, Any]:
    """A C-contiguous, native-byte-order numpy copy-if-needed of a segment (torch tensors too)."""
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr.detach().cpu().numpy())
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


class Quantized:
    """A tensor already encoded by a codec chain (e.g. taken over from bitsandbytes).

    Placed in a tree, it is sent as it is — no second quantization — and the
    receiver gets the dequantized tensor in ``framework``. ``dequantize()``
    decodes it locally. Segments are validated exactly as on the wire.
    """

    def __init__(
        self,
        dtype: str,
        shape: tuple[int, ...],
        stages: list[tuple[str, dict[str, Any], dict[str, Any]]],
        segments: Segments,
        framework: str = "numpy",
    ) -> None:
        row = dtypes.by_name(dtype)
        if row is None:
            raise TypeError(f"unknown dtype {dtype!r}")
        if framework not in ("numpy", "torch"):
            raise ValueError("framework must be 'numpy' or 'torch'")
        self.dtype = row
        self.shape = tuple(int(d) for d in shape)
        self.stages = [(str(cid), dict(cfg), dict(params)) for cid, cfg, params in stages]
        self.segments = {name: (role, _native(arr)) for name, (role, arr) in segments.items()}
        self.framework = framework

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def dequantize(self) -> np.ndarray[Any, Any]:
        arrays = {name: arr for name, (_, arr) in self.segments.items()}
        return decode_segments(tuple(self.stages), arrays, self.dtype, self.count).reshape(self.shape)

    def wire_entry(self) -> tuple[list[Any], list[np.ndarray[Any, Any]]]:
        """The tensor-table entry and the segments' bytes, in order."""
        described = []
        data = []
        for name, (role, arr) in self.segments.items():
            row = dtypes.from_numpy(arr.dtype)
            if row is None:
                raise TypeError(f"segment {name!r} has unsupported dtype {arr.dtype}")
            described.append([name, role, row.name, list(arr.shape)])
            data.append(arr.reshape(-1).view(np.uint8))
        stages = [[cid, cfg, params] for cid, cfg, params in self.stages]
        return [self.dtype.name, list(self.shape), stages, described], data


# ---------------------------------------------------------------------------- precision names

PRECISIONS: dict[str, Callable[[], Codec]] = {
    "fp16": lambda: Cast("float16"),
    "bf16": lambda: Cast("bfloat16"),
    "fp8_e4m3": lambda: FP8("e4m3"),
    "fp8_e5m2": lambda: FP8("e5m2"),
    "blockwise8": lambda: Blockwise8(),
    "nf4": lambda: Quant4("nf4"),
    "fp4": lambda: Quant4("fp4"),
    "minmax8": lambda: MinMax(8),
    "minmax4": lambda: MinMax(4),
    "minmax2": lambda: MinMax(2),
    "minmax1": lambda: MinMax(1),
}
"""Short precision names accepted by ``encode(precision=...)`` and policies."""


def precision_codec(precision: str | Codec) -> Codec:
    """The codec for a short name (see PRECISIONS) or a Codec instance."""
    if isinstance(precision, Codec):
        return precision
    make = PRECISIONS.get(precision) if isinstance(precision, str) else None
    if make is None:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)} or pass a Codec")
    return make()


MAX_STAGES = 4
"""Longest codec chain a decoder accepts."""


BuiltCodecs = dict[tuple[str, str], Codec]
"""Codecs already rebuilt from (codec id, repr of the config), for one decode call."""


def build_codec(codec_id: str, config: dict[str, Any], built: BuiltCodecs | None = None) -> Codec:
    """The codec a message names, rebuilt from its config; only once per config when given ``built``."""
    if built is None:
        return _build(codec_id, config)
    try:
        key = (codec_id, repr(config))  # repr tells 1, 1.0 and True apart, which compare equal
    except RecursionError:  # a hostile, deeply nested config: the build refuses it
        return _build(codec_id, config)
    codec = built.get(key)
    if codec is None:
        codec = built[key] = _build(codec_id, config)
    return codec


def _build(codec_id: str, config: dict[str, Any]) -> Codec:
    cls = get_codec(codec_id)
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise DecodeError(f"codec {codec_id!r}: bad config {config!r} ({e})") from None


def _run_decode(
    codec: Codec, segments: Mapping[str, np.ndarray[Any, Any]], params: Any, dtype: DType, count: int
) -> np.ndarray[Any, Any]:
    cid = codec.codec_id
    if dtype.name not in codec.sources:
        raise DecodeError(f"codec {cid!r} cannot produce dtype {dtype.name}")
    try:
        out = codec.decode(segments, params, dtype, count)
    except DecodeError as e:
        raise DecodeError(f"codec {cid!r}: {e}") from None
    except (TypeError, ValueError, IndexError, OverflowError) as e:
        raise DecodeError(f"codec {cid!r} failed: {type(e).__name__}: {e}") from None
    return _checked(cid, out, dtype, count)


def _checked(cid: str, out: Any, dtype: DType, count: int) -> np.ndarray[Any, Any]:
    """A codec's result, flat, after checking that it is what was asked for."""
    if not isinstance(out, np.ndarray) or out.dtype != dtype.numpy or out.size != count:
        got = getattr(out, "dtype", type(out))
        raise DecodeError(f"codec {cid!r} returned {got}, expected {count} x {dtype.name}")
    return out if out.ndim == 1 else out.reshape(-1)


def decode_batch(codec: Codec, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
    """Single-stage tensors of one codec and dtype, by one ``decode_batch`` call, checked as ``decode_segments`` does.

    On a DecodeError (or anything a codec raises) the caller decodes the tensors one by one, so that
    the error names its tensor.
    """
    cid = codec.codec_id
    if dtype.name not in codec.sources:
        raise DecodeError(f"codec {cid!r} cannot produce dtype {dtype.name}")
    outs = codec.decode_batch(items, dtype)
    if len(outs) != len(items):
        raise DecodeError(f"codec {cid!r} decoded {len(outs)} of a batch of {len(items)} tensors")
    return [_checked(cid, out, dtype, count) for out, (_, _, count) in zip(outs, items, strict=True)]


def decode_segments(
    stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...],
    segments: dict[str, np.ndarray[Any, Any]],
    dtype: DType,
    count: int,
    built: BuiltCodecs | None = None,
) -> np.ndarray[Any, Any]:
    """Runs a tensor's stage chain backwards; every failure becomes a DecodeError.

    Every stage but the last must hand its output to the next as the segment
    "data" (an array-to-array stage such as ``Cast``). ``built`` keeps the
    codecs rebuilt from the configs, to reuse for the next tensor.
    """
    if len(stages) > MAX_STAGES:
        raise DecodeError(f"{len(stages)} stages exceed the limit of {MAX_STAGES}")
    codecs = [build_codec(cid, cfg, built) for cid, cfg, _ in stages]
    dts = [dtype]
    for codec in codecs[:-1]:
        if dts[-1].name not in codec.sources:
            raise DecodeError(f"codec {codec.codec_id!r} cannot take dtype {dts[-1].name}")
        nxt = codec.output_dtype(dts[-1])
        if nxt is None:
            raise DecodeError(f"codec {codec.codec_id!r} cannot be followed by another stage")
        dts.append(nxt)
    if "data" in segments and len(codecs) > 1:
        raise DecodeError("segment name 'data' is reserved between stages of a chain")
    out = _run_decode(codecs[-1], segments, stages[-1][2], dts[-1], count)
    for k in range(len(codecs) - 2, -1, -1):
        out = _run_decode(codecs[k], {**segments, "data": out}, stages[k][2], dts[k], count)
    return out


def encode_chain(codecs: list[Codec], x: np.ndarray[Any, Any]) -> tuple[list[list[Any]], Segments]:
    """Runs ``codecs`` in order on ``x``: the wire stages and the final segments."""
    stages: list[list[Any]] = []
    segments: Segments = {}
    for k, codec in enumerate(codecs):
        encoded = codec.encode(x)
        stages.append([codec.codec_id, codec.get_config(), encoded.params])
        if k < len(codecs) - 1:
            data = encoded.segments.pop("data", None)
            if data is None:
                raise TypeError(f"codec {codec.codec_id!r} produced no 'data' segment for the next stage")
            x = data[1]
        for name, value in encoded.segments.items():
            if name in segments:
                raise TypeError(f"two stages of a chain both produced segment {name!r}")
            segments[name] = value
    return stages, segments
