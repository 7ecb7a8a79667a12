"""Size accounting, exact to the byte, and reconstruction quality.

Every byte of a message is one of three things: **payload** (the tensors'
values, quantized or not), **meta** (scales, statistics, tables a codec needs
to dequantize) or **framing** (preamble, header, names, padding, checksums).
``payload + meta + framing == len(message)`` always holds. Framing is split
between tensors (their table entry, their checksums, the padding before their
segments) and the message (preamble, tree with its names, msgpack containers).

A report comes three ways: ``report`` encodes and measures, ``inspect`` reads
an encoded message's header without touching the payload, and ``predict``
computes it from names, dtypes and shapes alone for codecs whose output size
is fixed by the input size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np

from . import dtypes, wire
from .codecs import Codec
from .core import decode, encode
from .leaves import SCALAR, leaf_from_torch, values
from .materialize import scalar_error
from .policy import Policy, Precision
from .wire.tree import named_leaves, unflatten

__all__ = ["TensorRow", "Report", "report", "inspect", "predict", "MIB", "MB"]

MIB = 1 << 20
MB = 1_000_000


@dataclass
class TensorRow:
    """One tensor of a message."""

    name: str
    """Dotted path in the tree; a tensor sent once under several names lists them joined by ' = '."""
    dtype: str
    shape: tuple[int, ...]
    codec: str
    """"raw" for lossless, else the codec id and its config."""
    original_bytes: int
    """The tensor's size as given (elements x itemsize), once per name it is sent under."""
    fp32_bytes: int
    """Its size if it were fp32 (non-floating tensors count as they are), once per name."""
    payload_bytes: int
    meta_bytes: int
    framing_bytes: int
    """Its table entry, its checksums and the padding before its segments."""
    rel_mse: float | None = None
    sqnr_db: float | None = None
    max_abs_err: float | None = None

    @property
    def wire_bytes(self) -> int:
        return self.payload_bytes + self.meta_bytes + self.framing_bytes


@dataclass
class Report:
    """Per-tensor rows and totals of one message; all sizes in bytes."""

    rows: list[TensorRow]
    message_bytes: int
    message_framing_bytes: int
    """Framing that belongs to no single tensor: preamble, the tree with its names, containers."""
    quality: dict[str, float | None] = field(default_factory=dict)

    @property
    def payload_bytes(self) -> int:
        return sum(r.payload_bytes for r in self.rows)

    @property
    def meta_bytes(self) -> int:
        return sum(r.meta_bytes for r in self.rows)

    @property
    def framing_bytes(self) -> int:
        return self.message_framing_bytes + sum(r.framing_bytes for r in self.rows)

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.rows)

    @property
    def fp32_bytes(self) -> int:
        return sum(r.fp32_bytes for r in self.rows)

    def percent_of_fp32(self) -> float:
        return 100.0 * self.message_bytes / self.fp32_bytes if self.fp32_bytes else math.nan

    def percent_of_original(self) -> float:
        return 100.0 * self.message_bytes / self.original_bytes if self.original_bytes else math.nan

    def totals(self) -> dict[str, Any]:
        return {
            "tensors": len(self.rows),
            "message_bytes": self.message_bytes,
            "payload_bytes": self.payload_bytes,
            "meta_bytes": self.meta_bytes,
            "framing_bytes": self.framing_bytes,
            "original_bytes": self.original_bytes,
            "fp32_bytes": self.fp32_bytes,
            "percent_of_fp32": self.percent_of_fp32(),
            "percent_of_original": self.percent_of_original(),
            **self.quality,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "tensors": [asdict(r) for r in self.rows]}


def _fp32_bytes(row: dtypes.DType, count: int) -> int:
    return 4 * count if row.is_floating else row.itemsize * count


def _codec_label(stages: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]) -> str:
    if not stages:
        return "raw"
    return " > ".join(f"{cid}({', '.join(f'{k}={v}' for k, v in cfg.items())})" for cid, cfg, _ in stages)


def _packed_len(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


class _Ref:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _names(tree: bytes, entries: list[wire.Entry], limits: wire.Limits) -> list[list[str]]:
    """Every dotted path under which each table entry appears in the tree."""
    count = len(entries)
    found: list[list[str]] = [[] for _ in range(count)]

    def ref(index: int, kind: int) -> _Ref:
        if kind == SCALAR and entries[index].shape:
            raise scalar_error(index, entries[index].shape)
        return _Ref(index)

    root = unflatten(tree, ref, count, limits.max_depth)
    for path, leaf in named_leaves(root, lambda node: isinstance(node, _Ref)):
        found[leaf.index].append(path)
    return [sorted(names) for names in found]


def inspect(message: Any, *, limits: wire.Limits = wire.DEFAULT_LIMITS) -> Report:
    """The report of an encoded message, from its header alone (no payload is read or decoded)."""
    return _inspect_rope(wire.Rope(message), limits, check_padding=True)


def _inspect_rope(rope: wire.Rope, limits: wire.Limits, check_padding: bool) -> Report:
    header = wire.parse_message(rope, limits, verify=False, check_padding=check_padding)
    hlen = int.from_bytes(rope.view(8, 4), "little")
    raw_header = wire.read_msgpack(rope.view(wire.PREAMBLE_SIZE, hlen), "header")
    names = _names(header.tree, header.entries, limits)
    rows = []
    pos = wire.PREAMBLE_SIZE + hlen
    per_tensor_framing = 0
    for i, entry in enumerate(header.entries):
        segs = entry.all_segments()
        payload = sum(s.nbytes for s in segs if s.role == "payload")
        meta = sum(s.nbytes for s in segs if s.role == "meta")
        padding = 0
        for s in segs:
            if s.nbytes:
                start = wire.aligned(pos)
                padding += start - pos
                pos = start + s.nbytes
        framing = padding + _packed_len(raw_header["tensors"][i])
        if header.checksum:
            framing += sum(
                _packed_len(c) for c in header.checksums[entry.first_segment : entry.first_segment + len(segs)]
            )
        per_tensor_framing += framing
        count = entry.nbytes // entry.dtype.itemsize
        rows.append(
            TensorRow(
                name=" = ".join(names[i]) or f"#{i}",
                dtype=entry.dtype.name,
                shape=entry.shape,
                codec=_codec_label(entry.stages),
                original_bytes=entry.nbytes * max(1, len(names[i])),
                fp32_bytes=_fp32_bytes(entry.dtype, count) * max(1, len(names[i])),
                payload_bytes=payload,
                meta_bytes=meta,
                framing_bytes=framing,
            )
        )
    used = sum(r.payload_bytes + r.meta_bytes for r in rows) + per_tensor_framing
    return Report(rows, rope.total, rope.total - used)


def _quality(original: np.ndarray[Any, Any], decoded: np.ndarray[Any, Any]) -> tuple[float, float, float, float]:
    """(sum of squared error, sum of squared signal, max abs error, count) over finite elements, in float64."""
    a = np.asarray(original).astype(np.float64).reshape(-1)
    b = np.asarray(decoded).astype(np.float64).reshape(-1)
    finite = np.isfinite(a)
    if not finite.all():
        a, b = a[finite], b[finite]
    err = a - b
    return float(err @ err), float(a @ a), float(np.max(np.abs(err))) if err.size else 0.0, float(a.size)


def _metrics(err2: float, sig2: float, count: float) -> tuple[float | None, float | None]:
    if count == 0:
        return None, None
    rel = err2 / sig2 if sig2 > 0 else (0.0 if err2 == 0 else math.inf)
    sqnr = math.inf if err2 == 0 else 10 * math.log10(sig2 / err2) if sig2 > 0 else -math.inf
    return rel, sqnr


def report(
    obj: Any,
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    quality: bool = False,
) -> tuple[bytes, Report]:
    """Encode ``obj`` and measure the message; with ``quality``, also the reconstruction error per tensor."""
    message = encode(obj, precision=precision, policy=policy, checksum=checksum)
    rep = inspect(message)
    if quality:
        _add_quality(rep, obj, message)
    return message, rep


def _leaves_by_name(obj: Any) -> dict[str, Any]:
    return dict(named_leaves(obj, lambda node: hasattr(node, "dtype") and hasattr(node, "shape")))


def _as_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A numpy view of an original tensor (bf16 and fp8 torch tensors as ml_dtypes arrays)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    leaf = leaf_from_torch(x)
    if leaf is None:
        raise TypeError(f"dtype {x.dtype} cannot be measured")
    return values(leaf).reshape(leaf.shape)


def _add_quality(rep: Report, obj: Any, message: bytes) -> None:
    originals = _leaves_by_name(obj)
    decoded = _leaves_by_name(decode(message, framework="numpy", copy=False))
    totals = [0.0, 0.0, 0.0, 0.0]
    for row in rep.rows:
        name = row.name.split(" = ")[0]
        if name not in originals or name not in decoded or row.codec == "raw":
            row.rel_mse, row.sqnr_db, row.max_abs_err = (0.0, math.inf, 0.0) if row.codec == "raw" else (None,) * 3
            if row.codec == "raw" and dtypes.by_name(row.dtype) is not None and dtypes.BY_NAME[row.dtype].is_floating:
                a = _as_numpy(originals[name]) if name in originals else None
                if a is not None:
                    sig = a.astype(np.float64).reshape(-1)
                    sig = sig[np.isfinite(sig)]
                    totals[1] += float(sig @ sig)
                    totals[3] += sig.size
            continue
        if not (dtypes.BY_NAME[row.dtype].is_floating):
            continue
        err2, sig2, maxerr, count = _quality(_as_numpy(originals[name]), decoded[name])
        row.rel_mse, row.sqnr_db = _metrics(err2, sig2, count)
        row.max_abs_err = maxerr
        totals[0] += err2
        totals[1] += sig2
        totals[2] = max(totals[2], maxerr)
        totals[3] += count
    rel, sqnr = _metrics(totals[0], totals[1], totals[3])
    rep.quality = {"rel_mse": rel, "sqnr_db": sqnr, "max_abs_err": totals[2]}


# ---------------------------------------------------------------------------- prediction


def _spec_rows(spec: Mapping[str, Any]) -> Iterable[tuple[str, dtypes.DType, tuple[int, ...], Any]]:
    """(name, dtype row, shape, identity) from arrays, tensors (meta tensors work) or (dtype, shape) pairs.

    The identity says which values ``encode`` would send once: the same array object, or torch
    tensors over the same memory with the same layout. Pairs are never the same tensor (equal
    tuple literals may be one object); ``shared=`` ties them.
    """
    for name, value in spec.items():
        identity: Any
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            row = dtypes.by_name(value[0])
            shape = tuple(int(d) for d in value[1])
            identity = ("pair", name)
        else:
            dt = value.dtype
            row = dtypes.from_numpy(dt) if isinstance(dt, np.dtype) else dtypes.from_torch(dt)
            shape = tuple(int(d) for d in value.shape)
            identity = id(value)
            if not isinstance(value, np.ndarray) and hasattr(value, "data_ptr") and value.data_ptr():
                identity = ("torch", value.data_ptr(), str(dt), shape, tuple(value.stride()), str(value.device))
        if row is None:
            raise TypeError(f"{name!r}: dtype of {value!r} cannot be encoded")
        yield name, row, shape, identity


def predict(
    spec: Mapping[str, Any],
    *,
    precision: Precision = None,
    policy: Any = None,
    checksum: str | None = None,
    shared: Mapping[str, str] | None = None,
) -> Report:
    """The report that encoding a flat ``{name: tensor}`` dict would give, computed from shapes alone.

    ``spec`` values may be arrays, tensors (``device="meta"`` tensors cost no
    memory) or ``(dtype name, shape)`` pairs; ``shared`` maps a name to the name
    whose tensor it shares (tied weights), which is then sent once. Exact for
    codecs whose segment sizes depend only on the element count; raises
    ValueError for the others.
    """
    rules = Policy.of(precision, policy)
    shared = dict(shared or {})
    tree: dict[str, Any] = {}
    entries: list[list[Any]] = []
    seen: dict[Any, int] = {}
    sizes: list[int] = []
    index_of: dict[str, int] = {}
    for name, row, shape, identity in _spec_rows(spec):
        target = shared.get(name)
        if target is not None and target in index_of:
            index = index_of[target]
        elif identity in seen:
            index = seen[identity]
        else:
            index = len(entries)
            seen[identity] = index
            count = math.prod(shape)
            chain: list[Codec] | None = rules.choose(name, row, count) if rules is not None else None
            if chain is None:
                entries.append([row.name, list(shape)])
                sizes.append(count * row.itemsize)
            else:
                stage_dtype = row
                for codec in chain[:-1]:
                    stage_dtype = codec.output_dtype(stage_dtype) or stage_dtype
                layout = chain[-1].segment_layout(stage_dtype, count)
                if layout is None:
                    raise ValueError(f"{name!r}: {chain} has data-dependent sizes; use report()")
                described = []
                for seg_name, (role, seg_dtype, seg_shape) in layout.items():
                    described.append([seg_name, role, seg_dtype, seg_shape])
                    sizes.append(math.prod(seg_shape) * dtypes.BY_NAME[seg_dtype].itemsize)
                stages = [[c.codec_id, c.get_config(), c.predicted_params()] for c in chain]
                entries.append([row.name, list(shape), stages, described])
        index_of[name] = index
        tree[name] = msgpack.ExtType(2, index.to_bytes(1 if index < 256 else 2 if index < 65536 else 4, "little"))
    tree_bytes = msgpack.packb(tree, use_bin_type=True)
    # Stand-ins as long as a real value: xxh3_64 values take 9 msgpack bytes, crc32c ones 5 (a
    # value below 2^16 would take 3, a 1-in-65536 chance); an empty segment's value is known.
    sums: list[int] = []
    if checksum:
        standin, empty = ((1 << 32) - 1, 0) if checksum == "crc32c" else ((1 << 64) - 1, wire.CHECKSUMS[checksum](b""))
        sums = [standin if n else empty for n in sizes]
    prefix = wire.pack_header(entries, tree_bytes, checksum, sums)
    pos = len(prefix)
    for n in sizes:
        if n:
            pos = wire.aligned(pos) + n
    rope = wire.Rope(prefix)
    rope.total = pos  # the header alone; the segments' bytes are never read
    return _inspect_rope(rope, wire.DEFAULT_LIMITS, check_padding=False)


# ---------------------------------------------------------------------------- NVFlare-compatible view

NVFLARE_PRECISIONS = ("fp32", "fp16", "bf16", "blockwise8", "nf4", "fp4")
_NVFLARE_SOURCES = {"float32": 32, "float16": 16, "bfloat16": 16}


def nvflare_view(spec: Mapping[str, Any], precision: str) -> tuple[int, int]:
    """(model bytes, quantization meta bytes) as NVFlare's quantization filters count them.

    Only tensor bytes count (no names, framing or headers); every tensor ships
    its own bitsandbytes state: 8-bit = one fp32 absmax per 4096 elements plus
    the 256-entry fp32 code table, 4-bit = two codes per byte, one fp32 absmax
    per 64 elements plus the 16-entry table. A tensor is left as it is when its
    source is not fp32/fp16/bf16 or the target is not narrower. Tied tensors
    count once per name, as NVFlare sends them.
    """
    if precision not in NVFLARE_PRECISIONS:
        raise ValueError(f"the NVFlare view knows {NVFLARE_PRECISIONS}, not {precision!r}")
    model = meta = 0
    for _name, row, shape, _identity in _spec_rows(spec):
        count = math.prod(shape)
        source_bits = _NVFLARE_SOURCES.get(row.name)
        target_bits = {"fp32": 32, "fp16": 16, "bf16": 16, "blockwise8": 8, "nf4": 4, "fp4": 4}[precision]
        if source_bits is None or target_bits >= source_bits:
            model += count * row.itemsize
        elif target_bits == 16:
            model += 2 * count
        elif target_bits == 8:
            model += count
            meta += 4 * -(-count // 4096) + 4 * 256
        else:
            model += -(-count // 2)
            meta += 4 * -(-count // 64) + 4 * 16
    return model, meta
