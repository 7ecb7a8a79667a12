"""The ``Codec`` base class, its ``Encoded`` result, the registry and the helpers the families share.

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
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from .. import dtypes
from ..dtypes import DType
from ..errors import DecodeError, UnknownCodecError

FLOAT_SOURCES = frozenset({"float32", "float16", "bfloat16", "float64"})
"""Dtypes the built-in lossy codecs accept; integers, bool and complex always travel losslessly."""

Segments = dict[str, tuple[str, np.ndarray[Any, Any]]]
"""name -> (role, array): role is "payload" (the values) or "meta" (scales, tables, statistics)."""

DecodeItem = tuple[Mapping[str, np.ndarray[Any, Any]], Mapping[str, Any], int]
"""One tensor for ``Codec.decode_batch``: its segments, its params and its element count."""


class Encoded:
    """What ``Codec.encode`` returns: named segments and JSON-able per-tensor params.

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> encoded = tc.Quant4("nf4").encode(np.ones(128, np.float32))
        >>> for name, (role, array) in encoded.segments.items():
        ...     print(name, role, array.dtype, array.shape)
        codes payload uint8 (64,)
        absmax_codes meta uint8 (2,)
        absmax_scale meta float32 (1,)
        >>> encoded.params
        {'offset': 1.0}
    """

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

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> codec = tc.MinMax(8)
        >>> x = np.linspace(-1, 1, 5, dtype=np.float32)
        >>> encoded = codec.encode(x)
        >>> segments = {name: array for name, (role, array) in encoded.segments.items()}
        >>> y = codec.decode(segments, encoded.params, next(row for row in tc.DTYPES if row.name == "float32"), x.size)
        >>> bool(np.all(np.abs(x - y) <= codec.error_bound(x, encoded)))
        True
    """

    codec_id: ClassVar[str] = ""
    sources: ClassVar[frozenset[str]] = FLOAT_SOURCES
    lossless: ClassVar[bool] = False
    contractive: ClassVar[bool] = False
    """Whether ||x - x̂|| <= δ ||x|| with δ < 1 for every input: what makes ``ErrorFeedback`` converge.

    True of lossless codecs, of absmax codes with an exact zero (an element never moves further than
    to 0) and of sparsifiers; false of min/max, whose levels need not include 0.
    """

    def get_config(self) -> dict[str, Any]:
        """The JSON-able keyword arguments that rebuild this codec."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Codec:
        return cls(**config)

    def bits_per_element(self, dtype: DType, count: int) -> float:
        """Encoded bits per element (payload + metadata) for a source of ``dtype``; decides skipping."""
        raise NotImplementedError

    def max_bits_per_element(self, dtype: DType, count: int) -> float:
        """The most bits per element (segments only) that ``encode`` gives; ``bits_per_element`` where sizes are fixed.

        A codec whose size depends on the data (``segment_layout`` None) states its typical size in
        ``bits_per_element``, which the policy compares with the source, and its worst case here.
        """
        return self.bits_per_element(dtype, count)

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

    def error_bound(self, x: np.ndarray[Any, Any], encoded: Encoded) -> np.ndarray[Any, Any] | None:
        """The largest |x - x̂| this codec allows at each element of ``x``, given ``encoded = encode(x)``.

        ``x`` is what ``encode`` was given (flat, of a dtype in ``sources``); x̂ is what ``decode``
        returns, in that dtype, compared in float64. None means lossless: x̂ has x's bits. Otherwise a
        float64 array of ``x.size`` entries, each
        - a number (+inf included): |x - x̂| <= it, where NaN from NaN and ±Inf from the same ±Inf
          count as exact and any other NaN x̂ fails;
        - NaN: unconstrained, for inputs the codec documents as unsupported (x̂ may be anything).
        ``tensorcodec.testing.check_codec`` checks every decode against it.
        """
        if self.lossless:
            return None
        raise NotImplementedError(
            f"{type(self).__name__} is lossy and states no error bound: override Codec.error_bound "
            "(or set lossless = True if its decode gives back the input's bits)"
        )

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

REGISTRY: dict[str, type[Codec]] = {}
"""codec id -> class: what ``register_codec`` adds to and ``get_codec`` reads (tests swap in a copy)."""
_ENTRY_POINT_GROUP = "tensorcodec.codecs"
_entry_points_loaded = False
_INSTALL_HINTS: dict[str, str] = {}
"""Codec ids known to live in optional packages, with what to install."""


def register_codec(cls: type[Codec], *, replace: bool = False) -> type[Codec]:
    """Add a codec class to the registry (usable as a class decorator).

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> @tc.register_codec
        ... class Negate(tc.Codec):  # a toy: lossless, its own inverse
        ...     codec_id = "example.negate"
        ...     lossless = True
        ...     def encode(self, x):
        ...         return tc.Encoded({"data": ("payload", -x)})
        ...     def decode(self, segments, params, dtype, count):
        ...         return -self.segment(segments, "data", dtype.name, count)
        >>> tc.get_codec("example.negate") is Negate
        True
        >>> tc.decode(tc.encode({"w": np.arange(3.0)}, precision=Negate(), policy=None))["w"]
        array([0., 1., 2.])
    """
    if not (isinstance(cls, type) and issubclass(cls, Codec)) or not cls.codec_id:
        raise TypeError(f"{cls!r} is not a Codec subclass with a codec_id")
    current = REGISTRY.get(cls.codec_id)
    if current is not None and current is not cls and not replace:
        raise ValueError(
            f"codec id {cls.codec_id!r} is already registered to {current.__module__}.{current.__qualname__}; "
            "pass replace=True to override it"
        )
    REGISTRY[cls.codec_id] = cls
    return cls


def _load_entry_points() -> None:
    """Registers plugins advertised under the ``tensorcodec.codecs`` entry-point group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP):
        if ep.name in REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must not break decoding of other codecs
            _INSTALL_HINTS.setdefault(ep.name, f"its plugin failed to load ({type(e).__name__}: {e})")
            continue
        if isinstance(cls, type) and issubclass(cls, Codec) and cls.codec_id == ep.name:
            REGISTRY[ep.name] = cls


def get_codec(codec_id: str) -> type[Codec]:
    """The registered class for ``codec_id``; raises UnknownCodecError naming what to install.

    Examples:
        >>> import tensorcodec as tc
        >>> tc.get_codec("quant4") is tc.Quant4
        True
        >>> tc.get_codec("no.such.codec")
        Traceback (most recent call last):
            ...
        tensorcodec.errors.UnknownCodecError: ...
    """
    cls = REGISTRY.get(codec_id)
    if cls is None:
        _load_entry_points()
        cls = REGISTRY.get(codec_id)
    if cls is None:
        raise UnknownCodecError(codec_id, _INSTALL_HINTS.get(codec_id, ""))
    return cls


def registered_codecs() -> dict[str, type[Codec]]:
    """Every registered codec by id, in registration order, with the ones of installed entry points.

    Examples:
        >>> import tensorcodec as tc
        >>> list(tc.registered_codecs())[:5]
        ['cast', 'fp8', 'minmax', 'blockwise8', 'quant4']
    """
    _load_entry_points()
    return dict(REGISTRY)


# ---------------------------------------------------------------------------- helpers


def float32(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return x if x.dtype == np.float32 else x.astype(np.float32)


def restore(values: np.ndarray[Any, Any], dtype: DType) -> np.ndarray[Any, Any]:
    """float32 values to the original dtype (round to nearest even)."""
    return values if values.dtype == dtype.numpy else values.astype(dtype.numpy)


def finite_range(x: np.ndarray[Any, Any], what: str) -> tuple[float, float]:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"{what} cannot encode NaN or Inf values (or float64 values beyond the float32 range);"
            " send this tensor losslessly (policy None)"
        )
    return lo, hi


EPS32 = 2.0**-24
SUB32 = 2.0**-149
"""fp32's unit roundoff and its smallest subnormal: "plus fp32 rounding" in a bound is a few of each."""


def rounding_factor(dtype: Any) -> float:
    """What the final cast to a source dtype does to a bound: float16/bfloat16 at most double it.

    The source value is itself a candidate of that round-to-nearest, so |r - x| <= |r - y| + |y - x| <= 2 |y - x|.
    """
    return 2.0 if np.dtype(dtype).itemsize == 2 else 1.0


def block_span(block: int, count: int) -> int:
    """Elements in a full block of a ``count``-element tensor: ``block``, or ``count`` when one block holds it all.

    A block size larger than the tensor (``block`` may be 2^24) must not size any buffer: the tensor
    is then one block of ``count`` elements.
    """
    return block if 0 < block < count else count


def per_element(values: np.ndarray[Any, Any], block: int, count: int) -> np.ndarray[Any, Any]:
    """One value per block (``block`` 0: one for the tensor) repeated for each of ``count`` elements."""
    return np.repeat(values, max(block_span(block, count), 1))[:count]


def block_absmax(x: np.ndarray[Any, Any], block: int) -> np.ndarray[Any, Any]:
    """Per-block max |x| in float64 over finite values (0 for an all-non-finite or empty block)."""
    n = x.size
    size = max(block_span(block, n), 1)
    nblocks = max(1, -(-n // size))
    padded = np.zeros(nblocks * size)
    padded[:n] = np.where(np.isfinite(x), np.abs(x), 0.0)
    out: np.ndarray[Any, Any] = padded.reshape(nblocks, size).max(axis=1)
    return out


def unsupported_blocks(bound: np.ndarray[Any, Any], x32: np.ndarray[Any, Any], block: int) -> np.ndarray[Any, Any]:
    """``bound`` with every element of a block that holds a non-finite (fp32) value unconstrained (NaN)."""
    bad = ~np.isfinite(x32)
    if bad.any():
        n = x32.size
        size = block if block else max(n, 1)
        padded = np.zeros(-(-n // size) * size, dtype=bool)
        padded[:n] = bad
        blocks_bad = np.asarray(padded.reshape(-1, size).any(axis=1))
        bound = np.where(per_element(blocks_bad, block, n), np.nan, bound)
    return bound


def check_source(codec: Codec, dtype: DType) -> None:
    if dtype.name not in codec.sources:
        raise TypeError(f"codec {codec.codec_id!r} encodes {sorted(codec.sources)}, not {dtype.name}")


# ---------------------------------------------------------------------------- bitsandbytes formats


def torch_kernel_source(t: Any) -> bool:
    """Whether the torch kernels take this tensor as it is (float32/float16/bfloat16)."""
    import torch

    return bool(t.dtype in (torch.float32, torch.float16, torch.bfloat16))


def to_host(t: Any) -> np.ndarray[Any, Any]:
    """A torch result as a CPU numpy array (one device-to-host copy of the small encoded form)."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def kernel_source(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The kernels take float32/float16/bfloat16: a float64 source goes in as its float32 values."""
    return x.astype(np.float32) if x.dtype == np.float64 else x


def kernel_target(dtype: DType) -> Any:
    """The dtype to ask the kernels for; float64 comes back as float32 and is widened by ``restore``."""
    return np.dtype(np.float32) if dtype.name == "float64" else dtype.numpy
