"""Static canonical Huffman codes over bytes, written in lanes: the coder of ``codecs.entropy``.

One chunk of up to 2^20 symbols (bytes) is coded with its own code, at most ``MAX_LEN`` bits a
symbol, LSB first. The chunk's symbols are cut into lanes of ``lane_span`` symbols, each lane a
byte-aligned bit stream of its own, so that a decoder can run several lanes at once (the C decoder
interleaves four; the numpy one steps every lane of the chunk together, one symbol per step).

Body of a chunk: 128 bytes of code lengths (symbol 2i in the low nibble of byte i, 2i + 1 in the
high one; 0 for an absent symbol), one little-endian uint16 per lane (its length in bytes), the lanes.

A decoder accepts only a complete code (Kraft sum exactly 1, at least two symbols), so every
``MAX_LEN``-bit window decodes to a symbol; a lane must end exactly at its stated length with zero
padding bits. The code construction (here only) feeds both encoders, the C one (``_native``) and the
numpy one, and tests hold them to the same bytes.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from .. import _c
from ..errors import DecodeError

MAX_LEN = 11
"""Longest code, in bits: the decode table has 2^MAX_LEN entries."""
MIN_LANE = 256
MAX_LANES = 256
LENGTHS_BYTES = 128
MAX_CHUNK = 1 << 20
"""Most symbols in one chunk: a lane then holds at most 4096 symbols, under 2^16 bytes."""


def lane_span(m: int) -> tuple[int, int]:
    """(symbols per lane, lanes) of an ``m``-symbol chunk; every lane but the last is full."""
    span = max(MIN_LANE, -(-m // MAX_LANES))
    return span, -(-m // span)


def header_size(m: int) -> int:
    return LENGTHS_BYTES + 2 * lane_span(m)[1]


# ---------------------------------------------------------------------------- the code


def code_lengths(hist: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Huffman code lengths (uint8[256]) for symbol counts with at least two symbols present, <= MAX_LEN.

    Counts below 2^-10 of the total are raised to it, then all are halved (rounding up, so that no present
    symbol drops out) until the tree is shallow enough.
    """
    total = int(hist.sum())
    floor = max(1, total >> (MAX_LEN - 1))  # rare symbols counted as 2^-10: usually shallow enough at once
    freqs = [max(int(f), floor) if f else 0 for f in hist]
    while True:
        lengths = _tree_depths(freqs)
        if int(lengths.max()) <= MAX_LEN:
            return lengths
        freqs = [(f + 1) >> 1 for f in freqs]


def _tree_depths(freqs: list[int]) -> np.ndarray[Any, Any]:
    heap = [(f, s) for s, f in enumerate(freqs) if f]
    heapq.heapify(heap)
    parent: list[int] = []  # of node 256 + k
    up: dict[int, int] = {}
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        node = 256 + len(parent)
        parent.append(-1)
        for child in (a, b):
            if child >= 256:
                parent[child - 256] = node
            else:
                up[child] = node
        heapq.heappush(heap, (fa + fb, node))
    depth = [0] * len(parent)
    for k in range(len(parent) - 2, -1, -1):  # the root is the last node made
        depth[k] = depth[parent[k] - 256] + 1
    lengths = np.zeros(256, np.uint8)
    for s, node in up.items():
        lengths[s] = depth[node - 256] + 1
    return lengths


_REVERSED = np.array([int(format(v, f"0{MAX_LEN}b")[::-1], 2) for v in range(1 << MAX_LEN)], np.uint16)


def canonical_codes(lengths: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The canonical code of each symbol (by length, then symbol), bit-reversed for LSB-first writing.

    In that order a code is the Kraft sum of the codes before it, in its own length's units.
    """
    order = np.lexsort((np.arange(256), lengths))
    order = order[lengths[order] > 0]
    n = lengths[order].astype(np.int64)
    units = np.left_shift(1, MAX_LEN - n)
    code = (np.cumsum(units) - units) >> (MAX_LEN - n)
    codes = np.zeros(256, np.uint16)
    codes[order] = _REVERSED[code << (MAX_LEN - n)]
    return codes


def pack_lengths(lengths: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    pairs = lengths.reshape(128, 2)
    packed: np.ndarray[Any, Any] = (pairs[:, 0] | (pairs[:, 1] << 4)).astype(np.uint8)
    return packed


def decode_table(packed: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The 2^MAX_LEN-entry table (symbol | length << 8) of a chunk's 128 length bytes; refuses an incomplete code."""
    lengths = np.empty(256, np.uint8)
    lengths[0::2] = packed & 15
    lengths[1::2] = packed >> 4
    present = lengths > 0
    if int(lengths.max()) > MAX_LEN or int(np.count_nonzero(present)) < 2:
        raise DecodeError("a Huffman chunk's code lengths are out of range")
    kraft = int(np.sum(np.left_shift(1, MAX_LEN - lengths[present].astype(np.int64))))
    if kraft != 1 << MAX_LEN:
        raise DecodeError("a Huffman chunk's code is not complete")
    codes = canonical_codes(lengths)
    table = np.zeros(1 << MAX_LEN, np.uint16)
    for s in np.flatnonzero(present):
        n = int(lengths[s])
        table[int(codes[s]) :: 1 << n] = s | (n << 8)
    return table


# ---------------------------------------------------------------------------- encode


def encode_chunk(symbols: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The body of one chunk of ``symbols`` (uint8) under the code ``lengths`` (every symbol present in it)."""
    m = symbols.size
    span, lanes = lane_span(m)
    codes = canonical_codes(lengths)
    head = header_size(m)
    out = np.empty(head + (m * MAX_LEN + 7) // 8 + lanes + 8, np.uint8)  # 8: the C writer's last store
    out[:LENGTHS_BYTES] = pack_lengths(lengths)
    lane_bytes = np.zeros(lanes, np.uint16)
    native = _c.kernels()
    if native is not None:
        used = native.huff_encode(symbols, codes, lengths, span, out[head:], lane_bytes)
    else:
        used = _encode_lanes(symbols, codes, lengths, span, out[head:], lane_bytes)
    out[LENGTHS_BYTES:head] = lane_bytes.view(np.uint8)
    return out[: head + used]


def _encode_lanes(
    symbols: np.ndarray[Any, Any],
    codes: np.ndarray[Any, Any],
    lengths: np.ndarray[Any, Any],
    span: int,
    out: np.ndarray[Any, Any],
    lane_bytes: np.ndarray[Any, Any],
) -> int:
    """numpy twin of ``_native.huff_encode``: the lanes into ``out``, their lengths into ``lane_bytes``."""
    m = symbols.size
    lens = lengths[symbols].astype(np.int64)
    cds = codes[symbols].astype(np.int64)
    starts = np.arange(0, m, span)
    bits = np.add.reduceat(lens, starts)
    lane_bytes[:] = (bits + 7) // 8
    first_byte = np.concatenate([[0], np.cumsum(lane_bytes.astype(np.int64))])
    within = np.cumsum(lens) - lens  # bit offset from the chunk's first symbol
    within -= np.repeat(within[starts], np.diff(np.append(starts, m)))
    offset = np.repeat(first_byte[:-1] * 8, np.diff(np.append(starts, m))) + within
    total = int(first_byte[-1])
    stream = np.zeros(total * 8, np.uint8)
    for b in range(MAX_LEN):
        has = lens > b
        stream[offset[has] + b] = (cds[has] >> b) & 1
    out[:total] = np.packbits(stream, bitorder="little")
    return total


# ---------------------------------------------------------------------------- decode


def decode_chunk(body: np.ndarray[Any, Any], out: np.ndarray[Any, Any], tables: dict[bytes, Any]) -> None:
    """Decodes a chunk's ``body`` into ``out`` (its ``m`` symbols); DecodeError on any inconsistency.

    ``tables``: decode tables already built in this decode, by their 128 length bytes (chunks of a
    plane usually share their code).
    """
    m = out.size
    span = lane_span(m)[0]
    head = header_size(m)
    if body.size < head:
        raise DecodeError(f"a Huffman chunk of {body.size} bytes is shorter than its {head}-byte header")
    key = body[:LENGTHS_BYTES].tobytes()
    table = tables.get(key)
    if table is None:
        table = tables[key] = decode_table(body[:LENGTHS_BYTES])
    lane_bytes = body[LENGTHS_BYTES:head].view("<u2").astype(np.int64)
    streams = body[head:]
    if int(lane_bytes.sum()) != streams.size:
        raise DecodeError(f"a Huffman chunk's lanes add up to {int(lane_bytes.sum())} bytes, it holds {streams.size}")
    native = _c.kernels()
    if native is not None:
        bad = native.huff_decode(streams, lane_bytes.astype(np.uint32), table, span, out)
    else:
        bad = _decode_lanes(streams, lane_bytes, table, span, out)
    if bad >= 0:
        raise DecodeError(f"lane {bad} of a Huffman chunk does not end where its length says")


def _decode_lanes(
    streams: np.ndarray[Any, Any],
    lane_bytes: np.ndarray[Any, Any],
    table: np.ndarray[Any, Any],
    span: int,
    out: np.ndarray[Any, Any],
) -> int:
    """numpy twin of ``_native.huff_decode``: every lane a step at a time; the first bad lane, or -1.

    Bits beyond the streams read as zeros (so a lane that overruns decodes what C decodes, then fails).
    """
    m = out.size
    lanes = lane_bytes.size
    last = m - (lanes - 1) * span
    padded = np.concatenate([streams, np.zeros(3, np.uint8)]).astype(np.uint32)
    end = streams.size
    first = np.concatenate([[0], np.cumsum(lane_bytes)[:-1]]).astype(np.int64)
    pos = first * 8
    grid = np.zeros((lanes, span), np.uint8)
    mask = (1 << MAX_LEN) - 1
    for t in range(span):
        k = lanes if t < last else lanes - 1
        p = pos[:k]
        at = np.minimum(p >> 3, end)
        window = padded[at] | (padded[at + 1] << 8) | (padded[at + 2] << 16)
        entry = table[(window >> (p & 7).astype(np.uint32)) & mask]
        grid[:k, t] = entry & 255
        pos[:k] = p + (entry >> 8)
    out[:] = grid.reshape(-1)[:m]
    used = pos - first * 8
    ok = (used + 7) // 8 == lane_bytes
    tail = used % 8
    last_byte = padded[np.minimum(first + lane_bytes - 1, end)].astype(np.int64)
    ok &= (tail == 0) | ((last_byte >> tail) == 0)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else -1
