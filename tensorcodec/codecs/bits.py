"""Bit packing: unsigned codes of 1..16 bits each, little-endian in bytes."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    if bits < 8:  # 8 codes make ``bits`` bytes: assemble them in a 64-bit word
        groups = np.zeros((-(-n // 8), 8), dtype=np.uint64)
        groups.reshape(-1)[:n] = q
        word = np.zeros(groups.shape[0], dtype="<u8")
        for i in range(8):
            word |= groups[:, i] << np.uint64(i * bits)
        return np.ascontiguousarray(word.view(np.uint8).reshape(-1, 8)[:, :bits]).reshape(-1)[: packed_size(n, bits)]
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
    if bits < 8:
        m = -(-count // 8)
        raw = np.zeros((m, 8), dtype=np.uint8)
        flat = np.zeros(m * bits, dtype=np.uint8)
        flat[: min(packed.size, m * bits)] = packed[: m * bits]
        raw[:, :bits] = flat.reshape(m, bits)
        word = raw.view("<u8").reshape(m)
        mask64 = np.uint64((1 << bits) - 1)
        out = np.empty((m, 8), dtype=np.uint32)
        for i in range(8):
            out[:, i] = (word >> np.uint64(i * bits)) & mask64
        return out.reshape(-1)[:count]
    bitplanes = np.unpackbits(packed, bitorder="little", count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    codes: np.ndarray[Any, Any] = (bitplanes.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)
    return codes


def packed_size(count: int, bits: int) -> int:
    return -(-count * bits // 8)
