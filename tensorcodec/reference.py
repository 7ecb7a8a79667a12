"""Deltas against a reference model that the receiver already holds (``encode``/``decode`` ``reference=``).

In federated rounds the server and its clients hold the same global model, so an update need
only carry its difference from it. On encode every tensor whose dotted name the reference holds,
with the same dtype and shape, travels as a ``delta`` stage (``codecs/delta.py``): the bit
patterns XOR the reference's where the policy sends it losslessly (exact for any dtype, and
mostly zero bytes where little changed), else ``x - reference`` in float32 through the policy's
chain. On decode the reference is checked against the digest each tensor recorded and added back.
Tensors the reference lacks travel as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xxhash

from .codecs import Codec, Quantized, build_codec, decode_segments, encode_chain
from .codecs.base import Segments
from .codecs.chain import BuiltCodecs
from .dtypes import DType
from .errors import DecodeError
from .leaves import leaf_from_numpy, leaf_from_torch, values
from .policy import Policy
from .wire.tree import map_tensors, named_leaves

__all__ = ["References", "with_deltas", "delta_of", "is_delta", "rebuild", "digest", "is_tensor", "flat_values"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def is_tensor(node: Any) -> bool:
    return isinstance(node, np.ndarray) or (
        hasattr(node, "dtype") and hasattr(node, "shape") and hasattr(node, "data_ptr")
    )


def flat_values(value: Any) -> tuple[np.ndarray[Any, Any], DType, tuple[int, ...]] | None:
    """A tensor's values as a flat little-endian numpy array (bf16 and fp8 as ml_dtypes), its row and shape."""
    leaf = leaf_from_numpy(value) if isinstance(value, np.ndarray) else leaf_from_torch(value)
    if leaf is None:
        return None
    return values(leaf).reshape(-1), leaf.dtype, leaf.shape


def digest(flat: np.ndarray[Any, Any]) -> int:
    """xxh3_64 of a tensor's little-endian bytes: what a delta records of its reference."""
    return int(xxhash.xxh3_64_intdigest(np.ascontiguousarray(flat).view(np.uint8).data))


class References:
    """The reference model by dotted name, each tensor read and digested once (per encode or decode call)."""

    def __init__(self, reference: Any) -> None:
        if isinstance(reference, References):
            self._tensors: dict[str, Any] = reference._tensors
        else:
            self._tensors = dict(named_leaves(reference, is_tensor))
        self._read: dict[str, tuple[np.ndarray[Any, Any], DType, tuple[int, ...], int] | None] = {}

    def get(self, name: str) -> tuple[np.ndarray[Any, Any], DType, tuple[int, ...], int] | None:
        """(flat values, dtype, shape, digest) of the reference tensor ``name``, or None if it has none."""
        if name not in self._read:
            value = self._tensors.get(name)
            got = flat_values(value) if value is not None else None
            self._read[name] = None if got is None else (*got, digest(got[0]))
        return self._read[name]


def with_deltas(tree: Any, reference: Any, policy: Policy | None) -> Any:
    """``tree`` with every tensor that ``reference`` holds under its name replaced by its delta (a ``Quantized``)."""
    refs = reference if isinstance(reference, References) else References(reference)
    return map_tensors(tree, is_tensor, lambda node, path: _delta(node, path, refs, policy))


def _delta(x: Any, name: str, refs: References, policy: Policy | None) -> Any:
    got = flat_values(x)
    if got is None:
        return x
    flat, row, shape = got
    chain = policy.choose(name, row, flat.size) if policy is not None else None
    framework = "numpy" if isinstance(x, np.ndarray) else "torch"
    delta = delta_of(flat, row, shape, framework, name, refs, chain)
    return x if delta is None else delta


def delta_of(
    flat: np.ndarray[Any, Any],
    row: DType,
    shape: tuple[int, ...],
    framework: str,
    name: str,
    refs: References,
    chain: list[Codec] | None,
) -> Quantized | None:
    """The delta of one tensor (flat values) against ``refs[name]``, or None where the reference has no such tensor.

    ``chain`` (the policy's choice for the tensor) encodes ``x - reference``; without one the bit
    patterns are XORed.
    """
    ref = refs.get(name)
    if ref is None:
        return None
    ref_flat, ref_row, ref_shape, ref_digest = ref
    if ref_row is not row or ref_shape != shape:
        return None  # not the same tensor any more: sent whole
    params = {"name": name, "digest": ref_digest}
    if chain is None or row.name not in _FLOATS:
        data = (flat.view(_bits(row)) ^ ref_flat.view(_bits(row))).view(flat.dtype)
        segments: Segments = {"data": ("payload", data)}
        return Quantized(row.name, shape, [("delta", {"mode": "xor"}, params)], segments, framework)
    wide = np.float64 if row.name == "float64" else np.float32
    difference = flat.astype(wide) - ref_flat.astype(wide)
    stages, segments = encode_chain(list(chain), difference)
    stages = [["delta", {"mode": "sub"}, params], *stages]
    return Quantized(row.name, shape, [(cid, cfg, prm) for cid, cfg, prm in stages], segments, framework)


def _bits(row: DType) -> str:
    """The unsigned integer type a tensor's bit patterns are XORed as (complex128 as pairs of u8)."""
    return f"u{row.itemsize}" if row.itemsize in (1, 2, 4, 8) else "u8"


def is_delta(stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]) -> bool:
    return bool(stages) and stages[0][0] == "delta"


def rebuild(
    stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...],
    segments: Mapping[str, np.ndarray[Any, Any]],
    dtype: DType,
    shape: tuple[int, ...],
    refs: References | None,
    built: BuiltCodecs | None = None,
) -> np.ndarray[Any, Any]:
    """A delta tensor's flat values: its reference (checked against the recorded digest) plus what it sent.

    The stages after the delta are decoded as a chain of their own (``decode_segments``).
    """
    codec: Codec = build_codec(stages[0][0], stages[0][1], built)
    params = stages[0][2]
    name = Codec.param(params, "name", str)
    recorded = Codec.param(params, "digest", int)
    if refs is None:
        return codec.decode(segments, params, dtype, math.prod(shape))  # raises, naming the fix
    ref = refs.get(name)
    if ref is None:
        raise DecodeError(f"tensor {name!r} is a delta, but the reference given to decode has no tensor {name!r}")
    ref_flat, ref_row, ref_shape, ref_digest = ref
    if ref_row is not dtype or ref_shape != shape:
        raise DecodeError(
            f"tensor {name!r} is a delta against a {dtype.name} {list(shape)} tensor; "
            f"the reference's is {ref_row.name} {list(ref_shape)}"
        )
    if ref_digest != recorded:
        raise DecodeError(
            f"tensor {name!r}: the reference differs from the one it was encoded against "
            f"(xxh3_64 {ref_digest:#018x}, the sender's {recorded:#018x}); decode with the sender's model"
        )
    count = ref_flat.size
    mode = codec.get_config()["mode"]
    if mode == "xor":
        if len(stages) != 1:
            raise DecodeError(f"tensor {name!r}: a delta of mode 'xor' is the only stage of its tensor")
        data = Codec.segment(segments, "data", dtype.name, count)
        bits: np.ndarray[Any, Any] = np.ascontiguousarray(data).view(_bits(dtype)) ^ ref_flat.view(_bits(dtype))
        return bits.view(ref_flat.dtype)
    if len(stages) < 2:
        raise DecodeError(f"tensor {name!r}: a delta of mode 'sub' needs the stages that encoded the difference")
    wide_row = codec.output_dtype(dtype)
    if wide_row is None:
        raise DecodeError(f"tensor {name!r}: a delta of mode 'sub' cannot rebuild dtype {dtype.name}")
    difference = decode_segments(stages[1:], dict(segments), wide_row, count, built)
    out = ref_flat.astype(wide_row.numpy)
    out += difference
    return out.astype(dtype.numpy) if out.dtype != dtype.numpy else out
