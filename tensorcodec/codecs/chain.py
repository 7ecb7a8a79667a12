"""Stage chains: rebuilding the codecs a message names, running a chain both ways, pre-encoded tensors."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import dtypes
from ..dtypes import DType
from ..errors import DecodeError
from .base import Codec, DecodeItem, Segments, get_codec


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

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> codec = tc.MinMax(8)
        >>> encoded = codec.encode(np.linspace(0, 1, 16, dtype=np.float32))
        >>> stages = [(codec.codec_id, codec.get_config(), encoded.params)]
        >>> q = tc.Quantized("float32", (4, 4), stages, encoded.segments)
        >>> tc.decode(tc.encode({"w": q}))["w"].shape
        (4, 4)
        >>> bool(np.array_equal(tc.decode(tc.encode({"w": q}))["w"], q.dequantize()))
        True
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
    codecs, dts = _chain(stages, dtype, built)
    if "data" in segments and len(codecs) > 1:
        raise DecodeError("segment name 'data' is reserved between stages of a chain")
    out = _run_decode(codecs[-1], segments, stages[-1][2], dts[-1], count)
    for k in range(len(codecs) - 2, -1, -1):
        out = _run_decode(codecs[k], {**segments, "data": out}, stages[k][2], dts[k], count)
    return out


def _chain(
    stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...], dtype: DType, built: BuiltCodecs | None
) -> tuple[list[Codec], list[DType]]:
    """A tensor's codecs, rebuilt, and the dtype each stage decodes to; refuses chains that cannot run."""
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
    return codecs, dts


def check_layout(codec: Codec, dtype: DType, count: int, segments: Sequence[Any]) -> None:
    """Each segment must be one that ``codec.segment_layout`` names, with its role, dtype and exact shape."""
    layout = codec.segment_layout(dtype, count)
    if layout is None:
        return
    for seg in segments:
        stated = layout.get(seg.name)
        if stated is None:
            raise DecodeError(f"codec {codec.codec_id!r} uses no segment {seg.name!r} (it uses {sorted(layout)})")
        role, dt, shape = stated
        if seg.role != role or seg.dtype.name != dt or list(seg.shape) != list(shape):
            raise DecodeError(
                f"codec {codec.codec_id!r}: segment {seg.name!r} is {seg.role} {seg.dtype.name} {list(seg.shape)}, "
                f"expected {role} {dt} {list(shape)} for {count} elements"
            )


def check_coded(
    stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...],
    segments: Sequence[Any],
    dtype: DType,
    count: int,
    built: BuiltCodecs | None,
    budget: Any,
) -> None:
    """The generic checks of an encoded tensor, before anything is decoded or allocated for it.

    Each segment must be one that the last stage's ``segment_layout`` names, with its role, dtype and
    exact shape (a segment it leaves out, as minmax does for a constant tensor, is the codec's to ask
    for). The outputs of the stages before the final one (``Cast``'s float32 ahead of its target) are
    counted against ``budget``; the final output is the entry's own size, counted with the message.
    """
    codecs, dts = _chain(stages, dtype, built)
    check_layout(codecs[-1], dts[-1], count, segments)
    for stage_dtype in dts[1:]:
        budget.take(count * stage_dtype.itemsize, f"codec {codecs[0].codec_id!r} intermediate {stage_dtype.name}")


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
