"""``entropy``: lossless coding of byte planes, the exponent plane entropy-coded, the rest raw unless they shrink.

A float's exponent is where its redundancy is: trained weights use a few dozen of the 256
exponents, while the mantissa bits are close to uniform. Each element is rotated left one bit
(so that bfloat16's and float32's top byte is exactly the exponent and the sign sits beside the
mantissa) and cut into byte planes; each plane is coded in chunks, each chunk by the best of raw,
constant and entropy-coded (``codecs.huffman``, ours in C and numpy; or zstd, optional).
``docs/codecs.md`` gives the layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _c
from ..dtypes import DType
from ..errors import DecodeError
from . import huffman
from .base import Codec, Encoded, register_codec

zstandard: Any
try:  # optional: only the coder="zstd" option needs it, to encode and to decode its chunks
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

RAW, CONST, HUFFMAN, ZSTD = 0, 1, 2, 3
"""A chunk's method, the low two bits of its index entry (the length is the rest)."""
ROTATED = frozenset({"float16", "bfloat16", "float32", "float64"})
SOURCES = ROTATED | {
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2",
}  # fmt: skip
"""Every dtype whose values are whole bytes with no invalid patterns (not bool, nor the sub-byte types)."""
DEFAULT_CHUNK = 1 << 18
SAVING = 0.99
"""Entropy-code a chunk only if its order-0 entropy says it could shrink below this fraction of raw."""


@register_codec
class Entropy(Codec):
    """Lossless: byte planes of the (bit-rotated) elements, each chunk raw, constant or entropy-coded.

    ``coder``: ``"huffman"`` (ours, no dependency) or ``"zstd"`` (the ``zstandard`` package, extra
    ``entropy``; ``level`` 1..3). ``chunk``: symbols of a plane coded together (1024..2^20).
    Decoded bits are the input's bits (error bound: none).

    Examples:
        >>> import numpy as np, tensorcodec as tc
        >>> x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
        >>> message = tc.encode({"x": x}, precision="lossless")
        >>> len(message) < 0.85 * x.nbytes, bool(np.array_equal(tc.decode(message)["x"], x))
        (True, True)
    """

    codec_id = "entropy"
    sources = SOURCES
    lossless = True

    def __init__(self, coder: str = "huffman", level: int = 1, chunk: int = DEFAULT_CHUNK) -> None:
        if coder not in ("huffman", "zstd"):
            raise ValueError(f"entropy coder must be 'huffman' or 'zstd', not {coder!r}")
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 3:
            raise ValueError(f"entropy level must be an integer in 1..3, not {level!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1024 <= chunk <= huffman.MAX_CHUNK:
            raise ValueError(f"entropy chunk must be an integer in 1024..{huffman.MAX_CHUNK}, not {chunk!r}")
        self.coder = coder
        self.level = level
        self.chunk = chunk

    def get_config(self) -> dict[str, Any]:
        return {"coder": self.coder, "level": self.level, "chunk": self.chunk}

    def _chunks(self, count: int) -> int:
        return -(-count // self.chunk)

    def bits_per_element(self, dtype: DType, count: int) -> float:
        """A typical size, for the policy: a float's exponent byte in about 3 bits, the other planes raw."""
        index = 32.0 * dtype.itemsize * self._chunks(count) / max(count, 1)
        saved = 5.0 if dtype.name in ROTATED else 8.0 * dtype.itemsize * 0.1
        return 8.0 * dtype.itemsize - saved + index

    def max_bits_per_element(self, dtype: DType, count: int) -> float:
        """Every chunk raw, plus its index entry."""
        return 8.0 * dtype.itemsize + 32.0 * dtype.itemsize * self._chunks(count) / max(count, 1)

    def encode(self, x: np.ndarray[Any, Any]) -> Encoded:
        if self.coder == "zstd" and zstandard is None:
            raise ValueError("entropy coder 'zstd' needs the zstandard package: pip install 'tensorcodec[entropy]'")
        n, width = x.size, x.dtype.itemsize
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("<"))
        raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
        rotate = x.dtype.name in ROTATED and width > 1
        index = np.zeros(width * self._chunks(n), np.uint32)
        bodies: list[np.ndarray[Any, Any]] = []
        for c in range(self._chunks(n)):  # a chunk of elements at a time, its planes in cache
            planes = split_planes(raw[c * self.chunk * width : (c + 1) * self.chunk * width], width, rotate)
            m = planes.size // width
            hists = histograms(planes, m)
            for p in range(width):
                method, body = self._code(planes[p * m : (p + 1) * m], hists[p])
                index[c * width + p] = method | (body.size << 2)
                bodies.append(body)
        body = np.concatenate(bodies) if bodies else np.zeros(0, np.uint8)
        return Encoded({"index": ("meta", index), "body": ("payload", body)})

    def _code(self, piece: np.ndarray[Any, Any], hist: np.ndarray[Any, Any]) -> tuple[int, np.ndarray[Any, Any]]:
        """A chunk's method and body: constant, raw unless its counts say it shrinks, else coded if smaller."""
        m = piece.size
        present = hist[hist > 0]
        if present.size == 1:
            return CONST, piece[:1].copy()
        p = present / m
        if float(-(p * np.log2(p)).sum()) * m / 8 + huffman.header_size(m) >= SAVING * m:
            return RAW, piece
        if self.coder == "zstd":
            coded = np.frombuffer(zstandard.ZstdCompressor(level=self.level).compress(piece.data), np.uint8)
            method = ZSTD
        else:
            coded = huffman.encode_chunk(piece, huffman.code_lengths(hist))
            method = HUFFMAN
        return (method, coded) if coded.size < m else (RAW, piece)

    def decode(
        self, segments: Mapping[str, np.ndarray[Any, Any]], params: Mapping[str, Any], dtype: DType, count: int
    ) -> np.ndarray[Any, Any]:
        width, nchunks = dtype.itemsize, self._chunks(count)
        index = self.segment(segments, "index", "uint32", width * nchunks).astype(np.int64)
        methods, lengths = index & 3, index >> 2
        sizes = np.repeat(np.minimum(self.chunk, count - self.chunk * np.arange(nchunks)), width)
        _check_lengths(methods, lengths, sizes)
        body = self.segment(segments, "body", "uint8", int(lengths.sum()))
        out = np.empty(width * count, np.uint8)  # count * itemsize, as the message declares
        rotate = dtype.name in ROTATED and width > 1
        ends = np.cumsum(lengths)
        tables: dict[bytes, Any] = {}
        for c in range(nchunks):
            planes = []
            for k in range(c * width, (c + 1) * width):
                piece = body[int(ends[k] - lengths[k]) : int(ends[k])]
                method, m = int(methods[k]), int(sizes[k])
                if method == RAW:
                    planes.append(piece)
                elif method == CONST:
                    planes.append(np.full(m, piece[0], np.uint8))
                elif method == HUFFMAN:
                    plane = np.empty(m, np.uint8)
                    huffman.decode_chunk(piece, plane, tables)
                    planes.append(plane)
                else:
                    planes.append(_unzstd(piece, m))
            start = c * self.chunk * width
            join_planes(planes, rotate, out[start : start + width * int(sizes[c * width])])
        return out.view(dtype.numpy)


def _check_lengths(methods: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any], sizes: np.ndarray[Any, Any]) -> None:
    """Each chunk's stated length against its method, before anything is allocated for the chunks."""
    bad = (
        ((methods == RAW) & (lengths != sizes))
        | ((methods == CONST) & (lengths != 1))
        | ((methods >= HUFFMAN) & ((lengths < 1) | (lengths >= sizes)))
    )
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DecodeError(
            f"chunk {k}: method {int(methods[k])} with {int(lengths[k])} bytes for {int(sizes[k])} symbols"
        )


def _unzstd(piece: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    """A zstd chunk: one frame stating exactly ``size`` bytes, nothing after it; bounded by that size."""
    if zstandard is None:
        raise DecodeError("a chunk is zstd-coded: decoding it needs the zstandard package (tensorcodec[entropy])")
    data = piece.tobytes()
    try:
        if zstandard.frame_content_size(data) != size:
            raise DecodeError(f"a zstd chunk does not state its {size} bytes")
        reader = zstandard.ZstdDecompressor().decompressobj()
        out = reader.decompress(data)
        complete = reader.eof and not reader.unused_data
    except zstandard.ZstdError as e:
        raise DecodeError(f"a zstd chunk is corrupt: {e}") from None
    if len(out) != size or not complete:
        raise DecodeError(f"a zstd chunk gives {len(out)} bytes for {size}, or data beyond its frame")
    return np.frombuffer(out, np.uint8)


# ---------------------------------------------------------------------------- kernels (numpy twins of _native)


def split_planes(raw: np.ndarray[Any, Any], width: int, rotate: bool) -> np.ndarray[Any, Any]:
    """Byte planes, the top byte's first, of ``width``-byte little-endian elements (rotated left a bit)."""
    out = np.empty(raw.size, np.uint8)
    native = _c.kernels()
    if native is not None:
        native.split_planes(raw, width, rotate, out)
        return out
    if width == 1:
        out[:] = raw
        return out
    v = raw.view(f"<u{width}")
    if rotate:
        bits = 8 * width
        v = (v << 1) | (v >> (bits - 1))
    out.reshape(width, -1)[:] = v.astype(f"<u{width}", copy=False).view(np.uint8).reshape(-1, width)[:, ::-1].T
    return out


def join_planes(planes: list[np.ndarray[Any, Any]], rotate: bool, out: np.ndarray[Any, Any]) -> None:
    """The inverse of ``split_planes``: the elements' bytes from their planes (one array each) into ``out``."""
    width = len(planes)
    native = _c.kernels()
    if native is not None:
        native.join_planes(planes, rotate, out)
        return
    if width == 1:
        out[:] = planes[0]
        return
    grid = out.reshape(-1, width)
    for p, plane in enumerate(planes):
        grid[:, width - 1 - p] = plane
    if rotate:
        v = out.view(f"<u{width}")
        v[:] = (v >> 1) | (v << (8 * width - 1))


def histograms(plane: np.ndarray[Any, Any], chunk: int) -> np.ndarray[Any, Any]:
    """Byte counts of each ``chunk`` of ``plane``: uint32[chunks, 256]."""
    nchunks = -(-plane.size // chunk)
    out = np.zeros((nchunks, 256), np.uint32)
    native = _c.kernels()
    if native is not None:
        native.histograms(plane, chunk, out)
        return out
    for c in range(nchunks):
        out[c] = np.bincount(plane[c * chunk : (c + 1) * chunk], minlength=256)
    return out


__all__ = ["Entropy", "split_planes", "join_planes", "histograms"]
