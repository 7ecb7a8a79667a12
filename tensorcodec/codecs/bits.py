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
