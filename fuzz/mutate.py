"""Mutators: structure-aware edits of a parsed message or stream, and blind byte edits.

The structure-aware mutator parses the input (``layout``), edits one or a few nodes of the header
(shapes, dtypes, codec ids, configs, params, segment descriptors, tree references, checksums,
map keys), nests values deeply, repeats entries and records, splices parts of other inputs, then
re-packs with every CRC and checksum recomputed, so that the mutant reaches the checks behind the
integrity checks. The blind mutator flips, overwrites, inserts and deletes bytes, and for half of
its mutants recomputes the header or frame CRCs.
"""

from __future__ import annotations

import math
import struct
import zlib
from random import Random
from typing import Any

import msgpack

from . import layout
from .layout import Message, Pairs, Raw, Record

MAX_SIZE = 1 << 18
EDGE_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 4095, 4096, 4097, 65535,
             65536, 1 << 20, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 53, (1 << 62),
             (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -1, -2, -64, -(1 << 31), -(1 << 63))  # fmt: skip
DEPTHS = (2, 63, 64, 65, 100, 511, 513, 1000, 5000, 100_000)
STRINGS = ["", "x", "data", "codes", "payload", "meta", "absmax", "scale", "range", "offset", "nf4", "fp4",
           "cast", "fp8", "minmax", "blockwise8", "quant4", "e4m3", "e5m2", "float32", "bfloat16", "int4",
           "bool", "uint8", "complex32", "float4_e2m1fn", "tensors", "tree", "checksum", "checksums",
           "xxh3_64", "crc32c", "index", "entry", "name", "count", "a.b.0", "\udcff"]  # fmt: skip


class Pools:
    """Parts harvested from the seeds, for splicing: strings, entries, stages, configs."""

    def __init__(self, messages: list[bytes]) -> None:
        self.strings = list(STRINGS)
        self.entries: list[Any] = []
        self.stages: list[Any] = []
        self.trees: list[Any] = []
        for m in messages:
            parsed = layout.parse_message(m)
            if parsed is None:
                continue
            self.trees.append(parsed.tree)
            for e in parsed.header["tensors"]:
                self.entries.append(e)
                if len(e) == 4:
                    self.stages.append(e[2])
            _strings(parsed.header, self.strings)
        self.strings = sorted(set(self.strings))


def _strings(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)


def deep(rng: Random, inner: Any = 0) -> Raw:
    """A value nested many levels deep: arrays, maps, tuples (ext 4) or a mix."""
    n = rng.choice(DEPTHS)
    core = layout.pack(inner)
    style = rng.randrange(4)
    if style == 0:
        return Raw(b"\x91" * n + core)
    if style == 1:
        return Raw(b"\x81\xa1k" * n + core)
    if style == 2:
        return Raw(b"\x91\x81\xa1k" * (n // 2) + core)
    data = core
    for _ in range(min(n, 2000)):
        data = layout.pack(msgpack.ExtType(4, b"\x91" + data))
    return Raw(data)


def weird(rng: Random, pools: Pools) -> Any:
    """A value of any msgpack type, biased to edges."""
    k = rng.randrange(14)
    if k < 4:
        return rng.choice(EDGE_INTS)
    if k == 4:
        return rng.choice((math.nan, math.inf, -math.inf, -0.0, 0.5, 1e300, 5e-324, 2.0**64))
    if k == 5:
        return rng.choice(pools.strings)
    if k == 6:
        return rng.choice((None, True, False, b"", b"\x00" * 9, [], {}))
    if k == 7:
        return deep(rng, rng.choice((0, "float32", [1], {})))
    if k == 8:
        return [rng.choice(EDGE_INTS) for _ in range(rng.choice((0, 1, 2, 3, 64, 65, 1000)))]
    if k == 9:
        return msgpack.ExtType(rng.choice((1, 2, 3, 4, 5, 6, 0, 7, 127, -1)), _ext_payload(rng))
    if k == 10:
        return {rng.choice(pools.strings): weird(rng, pools) for _ in range(rng.randrange(3))}
    if k == 11:
        return rng.choice(pools.entries) if pools.entries else 0
    if k == 12:
        return rng.choice(pools.stages) if pools.stages else 0
    return rng.randrange(-(1 << 70), 1 << 70) >> rng.randrange(70)


def _ext_payload(rng: Random) -> bytes:
    k = rng.randrange(6)
    if k == 0:
        return rng.randrange(256).to_bytes(1, "little")
    if k == 1:
        return rng.randrange(1 << 16).to_bytes(rng.choice((2, 3)), "little")
    if k == 2:
        return rng.randrange(1 << 32).to_bytes(rng.choice((4, 8)), "little")
    if k == 3:
        return layout.pack([msgpack.ExtType(1, b"\x00")] * rng.randrange(4))
    if k == 4:
        return rng.randbytes(rng.choice((0, 1, 8, 9, 16, 100)))
    return (rng.randrange(-(1 << 63), 1 << 63)).to_bytes(rng.choice((1, 8, 9)), "little", signed=True)


def _nodes(obj: Any, path: tuple[Any, ...], out: list[tuple[tuple[Any, ...], Any]], limit: int) -> None:
    if len(out) >= limit:
        return
    out.append((path, obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            _nodes(v, (*path, k), out, limit)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _nodes(v, (*path, i), out, limit)


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return root


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


def mutate_value(root: Any, rng: Random, pools: Pools) -> Any:
    """``root`` with one node, chosen at random, changed according to its type."""
    nodes: list[tuple[tuple[Any, ...], Any]] = []
    _nodes(root, (), nodes, 4000)
    path, node = rng.choice(nodes)
    op = rng.randrange(10)
    if op == 0:
        return _set(root, path, weird(rng, pools))
    if op == 1:
        return _set(root, path, deep(rng, node if not isinstance(node, Raw) else 0))
    if isinstance(node, bool) or node is None:
        return _set(root, path, rng.choice((0, 1, 2, not node, None, "true")))
    if isinstance(node, int):
        new = rng.choice(
            (
                rng.choice(EDGE_INTS),
                node + rng.choice((-1, 1)),
                node * rng.choice((2, 64, 1 << 20)),
                -node,
                float(node),
                node ^ (1 << rng.randrange(64)),
            )
        )
        return _set(root, path, new)
    if isinstance(node, float):
        return _set(
            root, path, rng.choice((math.nan, math.inf, -node, node * 1e30, int(node) if math.isfinite(node) else 0))
        )
    if isinstance(node, str):
        return _set(root, path, rng.choice(pools.strings) if op < 8 else node + rng.choice(pools.strings))
    if isinstance(node, bytes):
        return _set(root, path, _blind(node, rng, []) if node else rng.randbytes(rng.randrange(12)))
    if isinstance(node, msgpack.ExtType):
        if op < 5:
            return _set(root, path, msgpack.ExtType(node.code, _ext_payload(rng)))
        code = rng.choice((1, 2, 3, 4, 5, 6, 0, 7, 127, -128))
        return _set(root, path, msgpack.ExtType(code, node.data))
    if isinstance(node, list):
        new = list(node)
        if op == 2 and new:
            del new[rng.randrange(len(new))]
        elif op == 3 and new:
            new.extend([new[rng.randrange(len(new))]] * rng.choice((1, 2, 15, 16, 100, 1000, 5000)))
        elif op == 4 and new:
            i, j = rng.randrange(len(new)), rng.randrange(len(new))
            new[i], new[j] = new[j], new[i]
        elif op == 5:
            new.insert(rng.randrange(len(new) + 1), weird(rng, pools))
        else:
            new = new[: rng.randrange(len(new) + 1)]
        return _set(root, path, new)
    if isinstance(node, dict):
        new = dict(node)
        keys = list(new)
        if op in (2, 3) and keys:
            del new[rng.choice(keys)]
        elif op in (4, 5):
            new[rng.choice(pools.strings) if op == 4 else rng.choice((0, 1.5, None, b"k"))] = weird(rng, pools)
        elif keys:  # a repeated key: the later value wins in a lax reader
            k = rng.choice(keys)
            return _set(root, path, Pairs([*new.items(), (k, weird(rng, pools))]))
        return _set(root, path, new)
    return root


def _refs(rng: Random, count: int) -> Any:
    """A tree that references ``count`` entries, by kinds and index widths picked at random."""

    def ref(i: int) -> msgpack.ExtType:
        width = rng.choice((1, 2, 4)) if i < 256 else 2 if i < 65536 else 4
        return msgpack.ExtType(rng.choice((1, 1, 2, 3)), i.to_bytes(width, "little"))

    if rng.randrange(2):
        return [ref(i) for i in range(count)]
    return {f"t{i}": ref(i) for i in range(count)}


def mutate_message(msg: Message, rng: Random, pools: Pools) -> bytes:
    header = _copy(msg.header)
    tree = _copy(msg.tree)
    segments = list(msg.segments)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if len(layout.pack(header)) + len(layout.pack(tree)) > MAX_SIZE:
            break  # mutants stay small: repeated growth stops here
        op = rng.randrange(12)
        tensors = header.get("tensors")
        if op < 5 and isinstance(tensors, list) and tensors:
            header["tensors"] = mutate_value(tensors, rng, pools)
        elif op == 5:
            tree = mutate_value(tree, rng, pools)
        elif op == 6 and isinstance(tensors, list):  # many entries (quantized ones cost the most), all referenced
            entry = rng.choice(tensors + pools.entries) if tensors or pools.entries else ["uint8", [1]]
            header["tensors"] = [*tensors, *[entry] * rng.choice((10, 30, 100, 300, 2000))]
            tree = _refs(rng, len(header["tensors"]))
        elif op == 7 and isinstance(tensors, list) and tensors:  # a bigger output from the same payload
            i = rng.randrange(len(tensors))
            e = tensors[i]
            if isinstance(e, list) and len(e) >= 2:
                e[1] = [rng.choice((1 << 10, 1 << 16, 1 << 20, 1 << 31)), rng.choice((1, 64, 1 << 10))]
                if rng.randrange(2) and len(e) == 4 and isinstance(e[3], list):
                    for s in e[3]:
                        if isinstance(s, list) and len(s) == 4:
                            s[3] = [rng.choice((1, 2, 64, 4096, 1 << 16))]
        elif op == 8 and isinstance(tensors, list) and tensors and pools.stages:  # another codec's stages
            e = rng.choice(tensors)
            if isinstance(e, list) and len(e) == 4:
                e[2] = _copy(rng.choice(pools.stages)) if rng.randrange(3) else [*e[2], *rng.choice(pools.stages)]
        elif op == 9:
            header = mutate_value(header, rng, pools)
        elif op == 10:
            tree = (
                deep(rng, tree if not isinstance(tree, Raw) else 0)
                if rng.randrange(2)
                else _refs(rng, rng.randrange(len(tensors) + 2) if isinstance(tensors, list) else 1)
            )
        else:
            header["checksum"] = rng.choice(("xxh3_64", "crc32c", "md5", 0))
            if rng.randrange(2):
                header.pop("checksum")
    fix = rng.randrange(20)
    return layout.build_message(Message(header, tree, segments), fix_sums=fix != 0, fix_crc=fix != 1, relayout=fix != 2)


def mutate_stream(stream_id: int, records: list[Record], rng: Random, pools: Pools) -> bytes:
    records = [Record(_copy(r.fields), list(r.segments)) for r in records]
    for _ in range(rng.choice((1, 1, 2, 3))):
        if sum(len(layout.pack(r.fields)) for r in records) > MAX_SIZE:
            break
        op = rng.randrange(9)
        if not records:
            records.append(Record({"tree": layout.pack(None), "count": 0}, []))
        i = rng.randrange(len(records))
        fields = records[i].fields
        if op < 4:
            if isinstance(fields, dict) and "entry" in fields and op < 3:
                fields["entry"] = mutate_value(fields["entry"], rng, pools)
            else:
                fields = mutate_value(fields, rng, pools)
            records[i] = Record(fields, records[i].segments)
        elif op == 4 and isinstance(fields, dict) and isinstance(fields.get("tree"), bytes):
            try:
                tree = layout.unpack(fields["tree"])
            except Exception:
                tree = None
            fields["tree"] = layout.pack(mutate_value(tree, rng, pools) if rng.randrange(2) else deep(rng, tree))
        elif op == 5:
            records.insert(rng.randrange(len(records) + 1), records[i])
        elif op == 6 and len(records) > 1:
            del records[i]
        elif op == 7:
            j = rng.randrange(len(records))
            records[i], records[j] = records[j], records[i]
        else:  # many copies of one tensor record, renumbered, then an end record referencing them
            tensor = [r for r in records if isinstance(r.fields, dict) and "entry" in r.fields]
            if tensor:
                n = rng.choice((10, 100, 1000))
                base = tensor[rng.randrange(len(tensor))]
                records = [Record({**base.fields, "index": k}, base.segments) for k in range(n)]
                records.append(Record({"tree": layout.pack(_refs(rng, n)), "count": n}, []))
    body_max = rng.choice((1, 3, 31, 64, 200, 4096, 1 << 20))
    out = layout.build_stream(stream_id, records, body_max, fix_sums=rng.randrange(20) != 0)
    if rng.randrange(8) == 0:
        out = _frame_edit(out, rng)
    return out


def _frame_edit(data: bytes, rng: Random) -> bytes:
    frames = layout.split_frames(data)
    if not frames:
        return data
    i = rng.randrange(len(frames))
    op = rng.randrange(5)
    if op == 0:
        frames.insert(i, frames[i])
    elif op == 1 and len(frames) > 1:
        del frames[i]
    elif op == 2:
        j = rng.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    elif len(frames[i]) >= layout.FRAME.size:
        head = list(layout.FRAME.unpack_from(frames[i]))
        field = rng.choice((1, 2, 3, 4, 5, 6, 8))
        width = (4, 1, 1, 2, 8, 4, 4, 4, 4)[field]
        head[field] = rng.choice(EDGE_INTS) & ((1 << 8 * width) - 1)
        body = frames[i][layout.FRAME.size :]
        if op == 3:
            head[7] = zlib.crc32(body)
        frames[i] = layout.FRAME.pack(*head) + body
    return b"".join(frames)


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xc0", b"\xc1", b"\xd4", b"\xdc", b"\xdd", b"\xde", b"\xdf",
                b"\xc9", b"\x91", b"\x81", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\x40\x00")  # fmt: skip


def _blind(data: bytes, rng: Random, others: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        n = len(buf)
        op = rng.randrange(8)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            v = rng.choice(_INTERESTING)
            p = rng.randrange(n)
            buf[p : p + len(v)] = v
        elif op == 2:
            p = rng.randrange(n + 1)
            buf[p:p] = rng.randbytes(rng.choice((1, 2, 4, 16, 64)))
        elif op == 3 and n:
            p = rng.randrange(n)
            del buf[p : p + rng.choice((1, 2, 4, 16, 64, 1000))]
        elif op == 4 and n:
            p = rng.randrange(n)
            q = rng.randrange(p, min(n, p + 256) + 1)
            buf[p:p] = buf[p:q] * rng.choice((1, 2, 16))
        elif op == 5 and n:
            del buf[rng.randrange(n) :]
        elif op == 6 and n >= 4:
            p = rng.randrange(n - 3)
            buf[p : p + 4] = struct.pack("<I", rng.choice(EDGE_INTS) & 0xFFFFFFFF)
        elif others:
            other = rng.choice(others)
            p, q = rng.randrange(n + 1), rng.randrange(len(other) + 1)
            buf[p:] = other[q:]
    return bytes(buf)


def _fix_crcs(data: bytes, kind: str) -> bytes:
    buf = bytearray(data)
    if kind == "message" and len(buf) >= 16:
        size = struct.unpack_from("<I", buf, 8)[0]
        if 16 + size <= len(buf):
            struct.pack_into("<I", buf, 12, zlib.crc32(buf[16 : 16 + size]))
        return bytes(buf)
    pos = 0
    while pos + layout.FRAME.size <= len(buf):
        n = struct.unpack_from("<I", buf, pos + 20)[0]
        end = pos + layout.FRAME.size + n
        if end > len(buf):
            break
        struct.pack_into("<I", buf, pos + 24, zlib.crc32(buf[pos + layout.FRAME.size : end]))
        pos = end
    return bytes(buf)


def mutate(data: bytes, kind: str, rng: Random, pools: Pools, others: list[bytes]) -> bytes:
    """One mutant of ``data``, a ``kind`` ("message" or "stream") input; structure-aware 3 times in 4."""
    out = b""
    if rng.randrange(4):
        try:
            if kind == "message":
                parsed = layout.parse_message(data)
                if parsed is not None:
                    out = mutate_message(parsed, rng, pools)
            else:
                stream = layout.parse_stream(data)
                if stream is not None:
                    out = mutate_stream(*stream, rng, pools)
        except Exception:
            out = b""  # a mutant the mutator cannot re-pack: fall back to bytes
    if not out:
        out = _blind(data, rng, others)
        if rng.randrange(2):
            out = _fix_crcs(out, kind)
    return out if len(out) <= MAX_SIZE else out[:MAX_SIZE]
