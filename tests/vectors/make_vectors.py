"""Writes the test vectors of wire format v1 (tests/vectors/): messages and streams with their exact values.

Each vector is two files: ``NAME.bin``, the bytes a decoder is given, and ``NAME.json``, what it
must make of them (``docs/format.md`` section 11 describes both). ``tables.json`` holds the
built-in codecs' code tables as float32 bit patterns. The script is deterministic: running it again
writes the same bytes, and ``tests/test_vectors.py`` checks that it does.

    python tests/vectors/make_vectors.py            # (re)writes tests/vectors/
    python tests/vectors/make_vectors.py --check    # exit status 1 if a committed file differs
    python tests/vectors/make_vectors.py --tables   # the code tables of docs/codecs.md, as markdown
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: this checkout's tensorcodec, not an installed one
    sys.path.insert(0, str(ROOT))

import tensorcodec as tc  # noqa: E402
from tensorcodec import kernels  # noqa: E402
from tensorcodec.codecs import Quantized  # noqa: E402
from tensorcodec.dtypes import DTYPES  # noqa: E402

HERE = Path(__file__).resolve().parent
STREAM_ID = 0x0123456789ABCDEF
PREAMBLE = struct.Struct("<4sBBHII")
FRAME = struct.Struct("<4sBBHQIIII")

# ---------------------------------------------------------------------------- values as JSON


def element_bits(data: bytes, itemsize: int) -> list[str]:
    """Each element's bytes read as one little-endian unsigned integer, in hex of 2 x itemsize digits."""
    return [data[i : i + itemsize][::-1].hex() for i in range(0, len(data), itemsize)]


def _tensor(raw: bytes, dtype: str, shape: list[int], ref: int) -> dict[str, Any]:
    itemsize = tc.dtypes.BY_NAME[dtype].itemsize
    return {"$tensor": {"ref": ref, "dtype": dtype, "shape": shape, "bits": element_bits(raw, itemsize)}}


def describe(value: Any) -> Any:
    """A decoded tree (default framework) as JSON: tagged where JSON has no exact type of its own."""
    torch = sys.modules.get("torch")
    if value is None or type(value) is bool or type(value) is str:
        return value
    if type(value) is int:
        return {"$int": str(value)}
    if type(value) is float:
        return {"$float": struct.pack("<d", value)[::-1].hex()}
    if type(value) is bytes:
        return {"$bytes": value.hex()}
    if type(value) is bytearray:
        return {"$bytearray": bytes(value).hex()}
    if type(value) is list:
        return [describe(v) for v in value]
    if type(value) is tuple:
        return {"$tuple": [describe(v) for v in value]}
    if type(value) is dict:
        return {"$map": [[k, describe(v)] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        row = tc.dtypes.from_numpy(value.dtype)
        return _tensor(np.ascontiguousarray(value).tobytes(), row.name, list(value.shape), 1)
    if isinstance(value, np.generic):
        row = tc.dtypes.from_numpy(value.dtype)
        return _tensor(np.asarray(value).tobytes(), row.name, [], 3)
    if torch is not None and isinstance(value, torch.Tensor):
        row = tc.dtypes.from_torch(value.dtype)
        raw = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return _tensor(raw, row.name, list(value.shape), 2)
    raise TypeError(f"no JSON form for {type(value).__name__}")


# ---------------------------------------------------------------------------- message surgery


def split(message: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A message's header map and its segments' bytes, in order (the layout of format.md section 6)."""
    hlen = struct.unpack_from("<I", message, 8)[0]
    header = msgpack.unpackb(message[16 : 16 + hlen], raw=False)
    pos, segments = 16 + hlen, []
    for entry in header["tensors"]:
        specs = [entry] if len(entry) == 2 else [s[2:] for s in entry[3]]
        for dtype, shape in specs[:1] if len(entry) == 2 else specs:
            n = int(np.prod(shape, dtype=object)) * tc.dtypes.BY_NAME[dtype].itemsize
            start = -(-pos // 64) * 64 if n else pos
            segments.append(message[start : start + n])
            pos = start + n
    return header, segments


def join(header: Any, segments: list[bytes], packed: bytes | None = None) -> bytes:
    """The message of a header (or its ``packed`` bytes) and segments, with a correct CRC and layout."""
    body = packed if packed is not None else msgpack.packb(header, use_bin_type=True)
    out = bytearray(PREAMBLE.pack(b"TCDC", 1, 0, 0, len(body), zlib.crc32(body)) + body)
    for seg in segments:
        if seg:
            out += bytes(-len(out) % 64) + seg
    return bytes(out)


def edit(message: bytes, change: Callable[[dict[str, Any], list[bytes]], None]) -> bytes:
    header, segments = split(message)
    change(header, segments)
    return join(header, segments)


def ref(index: int, kind: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(kind, bytes([index]))


def packed_tree(tree: Any) -> bytes:
    return msgpack.packb(tree, use_bin_type=True)


def frames_of(stream: bytes) -> list[bytes]:
    """A stream file cut back into its frames (each frame says its own length)."""
    out, pos = [], 0
    while pos < len(stream):
        length = struct.unpack_from("<I", stream, pos + 20)[0]
        out.append(stream[pos : pos + 32 + length])
        pos += 32 + length
    return out


def frame(body: bytes, seq: int, flags: int, stream_id: int = STREAM_ID) -> bytes:
    return FRAME.pack(b"TCSF", 1, flags, 0, stream_id, seq, len(body), zlib.crc32(body), 0) + body


def record(fields: dict[str, Any]) -> bytes:
    packed = msgpack.packb(fields, use_bin_type=True)
    return struct.pack("<I", len(packed)) + packed


# ---------------------------------------------------------------------------- the vectors


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def coded(x: Any, codec: Any) -> bytes:
    """``{"x": x}`` with every tensor through ``codec`` (a codec, a precision name or a chain)."""
    message = tc.encode({"x": x}, policy=tc.Policy({"*": codec}, min_elements=0))
    assert len(split(message)[0]["tensors"][0]) == 4, f"{codec!r} left the vector's tensor raw"
    return message


def dtype_values(name: str) -> np.ndarray[Any, Any]:
    """Bit patterns worth checking for one dtype: every special value it has, a few ordinary ones."""
    row = tc.dtypes.BY_NAME[name]
    if name == "bool":
        return np.array([False, True, True, False])
    if name in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(row.numpy)  # type: ignore[no-untyped-call]
        return np.arange(int(info.min), int(info.max) + 1).astype(row.numpy)
    if name.startswith(("int", "uint")):
        info = np.iinfo(row.numpy)
        return np.array([info.min, -1 if info.min else 1, 0, 1, 2, info.max], dtype=row.numpy)
    if name.startswith("complex"):
        parts = np.array([1.0, -0.0, np.inf, np.nan, 1e-45, -2.5], dtype=np.float64)
        return (parts[::2] + 1j * parts[1::2]).astype(row.numpy)
    if row.itemsize == 1 and name.startswith("float"):
        bits = 8 if name.startswith("float8") else int(name[5])
        return np.arange(1 << bits, dtype=np.uint8).view(row.numpy)  # every code
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[row.itemsize]
    finfo = np.finfo(np.float16 if name == "bfloat16" else row.numpy)
    if name == "bfloat16":
        specials = [0x0000, 0x8000, 0x0001, 0x807F, 0x3F80, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFFF]
        return np.array(specials, dtype=width).view(row.numpy)
    m = finfo.nmant
    e = row.itemsize * 8 - 1 - m
    sign, inf = 1 << (row.itemsize * 8 - 1), ((1 << e) - 1) << m
    one = ((1 << (e - 1)) - 1) << m
    specials = [0, sign, 1, sign | ((1 << m) - 1), one, inf - 1, inf, sign | inf, inf | (1 << (m - 1)), inf | 1]
    return np.array(specials, dtype=width).view(row.numpy)


def valid_vectors() -> dict[str, tuple[str, Any, dict[str, Any]]]:
    """name -> (about, bytes to decode, extra JSON fields)."""
    import torch

    out: dict[str, tuple[str, Any, dict[str, Any]]] = {}
    for row in DTYPES:
        x = dtype_values(row.name)
        out[f"dtype_{row.name}"] = (f"a raw {row.name} tensor: its special bit patterns", tc.encode({"x": x}), {})
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / np.float32(8)
    shared = np.array([1.5, -2.0], np.float32)
    out["shapes"] = (
        "raw tensors of shapes [], [0], [2, 0, 3], [3, 4], [1, 1, 1, 2]; 64-byte padding between segments",
        tc.encode(
            {
                "scalar_array": np.array(7, np.int32),
                "empty": np.zeros(0, np.float32),
                "empty3": np.zeros((2, 0, 3), np.int16),
                "w": w,
                "odd": np.array([[[[1, 2]]]], np.uint8),
            }
        ),
        {},
    )
    tree = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 127, -(2**63), 2**64 - 1],
        "big": [2**64, -(2**63) - 1, 2**100, -(2**71), -(2**200)],
        "floats": [0.5, -0.0, float("inf"), float("nan"), 5e-324],
        "str": "v\u00e9ctor \u2713",
        "bytes": b"\x00\x01\xff",
        "bytearray": bytearray(b"ba"),
        "tuple": (1, (2, "three"), ()),
        "list": [[], {}, [[1]]],
        "numpy": w,
        "torch": torch.tensor([1.0, -2.0], dtype=torch.bfloat16),
        "scalar": np.float64(-1.25),
        "i8": np.int8(-5),
    }
    out["tree"] = ("every kind of tree value: ext 1-6, big ints, tuples, nested containers", tc.encode(tree), {})
    out["shared"] = (
        "one tensor referenced three times (ext 1 twice, ext 2 once): one table entry, sent once",
        tc.encode({"a": shared, "b": [shared], "t": torch.from_numpy(shared)}),
        {},
    )
    out["shared_cap"] = (
        "a tensor referenced twice decodes under max_decoded_bytes = its size: it counts once",
        tc.encode({"a": shared, "b": shared}),
        {"limits": {"max_decoded_bytes": 8}},
    )
    for algo in ("xxh3_64", "crc32c"):
        out[f"checksum_{algo}"] = (f"segment checksums, {algo}", tc.encode({"w": w, "e": shared}, checksum=algo), {})
    nested: Any = 1
    for _ in range(63):
        nested = [nested]
    out["depth_64"] = ("a tree nesting 64 arrays deep, the default max_depth: accepted", tc.encode({"d": nested}), {})

    g = rng(1).standard_normal(150).astype(np.float32)
    g[:3] = [0.0, -0.0, 3.0]
    out["cast_fp16"] = ("cast to float16 from float32", coded(g * 1e3, "fp16"), {})
    out["cast_bf16"] = ("cast to bfloat16 from float32", coded(g, "bf16"), {})
    out["cast_bf16_from_f64"] = ("cast to bfloat16 from float64", coded(g.astype(np.float64) / 3, "bf16"), {})
    big16 = np.array([65504, -65504, 65000, 1, -0.0], dtype=np.float16)
    as_bf16 = big16.astype(np.float32).astype(ml_dtypes.bfloat16)  # 65504 rounds to 65536
    pre = Quantized("float16", (5,), [("cast", {"to": "bfloat16"}, {})], {"data": ("payload", as_bf16)})
    out["cast_bf16_of_f16"] = (
        "a float16 tensor cast to bfloat16 (+-65504 became +-65536), decoded clamped to +-65504",
        tc.encode({"x": pre}),
        {},
    )
    for fmt in ("e4m3", "e5m2"):
        out[f"fp8_{fmt}"] = (f"fp8 {fmt}, one scale per tensor", coded(g, tc.FP8(fmt)), {})
    out["fp8_e4m3_block32"] = (
        "fp8 e4m3, blocks of 32 (150 elements: a partial last block)",
        coded(g, tc.FP8(block=32)),
        {},
    )
    out["fp8_bf16_source"] = ("fp8 e5m2 of a bfloat16 tensor", coded(g.astype(ml_dtypes.bfloat16), "fp8_e5m2"), {})
    out["blockwise8"] = ("blockwise8, blocks of 64 (150 elements)", coded(g, tc.Blockwise8(64)), {})
    out["blockwise8_default"] = ("blockwise8, default blocks of 4096", coded(g, "blockwise8"), {})
    out["blockwise8_f16"] = ("blockwise8 of a float16 tensor", coded(g.astype(np.float16), tc.Blockwise8(128)), {})
    long = rng(2).standard_normal(8257).astype(np.float32)  # 259 blocks of 32: two absmax_scale values
    for kind in ("nf4", "fp4"):
        out[kind] = (f"{kind}, blocks of 64, double quant (151 elements: odd count)", coded(g[:151] * 4, kind), {})
        out[f"{kind}_plain"] = (f"{kind} without double quant", coded(g[:151], tc.Quant4(kind, 64, False)), {})
    out["nf4_259_blocks"] = (
        "nf4, blocks of 32, double quant over 259 blocks: two absmax_scale values",
        coded(long, tc.Quant4("nf4", 32)),
        {},
    )
    out["nf4_bf16"] = ("nf4 of a bfloat16 tensor", coded(g.astype(ml_dtypes.bfloat16), "nf4"), {})
    out["nf4_f64"] = ("nf4 of a float64 tensor", coded(g.astype(np.float64), "nf4"), {})
    for bits in (1, 2, 3, 4, 5, 8, 12, 16):
        out[f"minmax{bits}"] = (f"minmax, {bits} bits, one range", coded(g, tc.MinMax(bits)), {})
    out["minmax3_block7"] = ("minmax, 3 bits, blocks of 7 (a partial last block)", coded(g, tc.MinMax(3, block=7)), {})
    const = np.full(100, 2.5, np.float32)
    out["minmax_constant"] = ("minmax of a constant tensor: no codes segment", coded(const, "minmax4"), {})
    mixed = np.concatenate([np.full(8, -1.0, np.float32), g[:8]])
    out["minmax_constant_block"] = ("minmax, blocks of 8, the first constant", coded(mixed, tc.MinMax(4, block=8)), {})
    out["minmax_stochastic"] = (
        "minmax, 4 bits, stochastic rounding (params carry the stream)",
        coded(g, tc.MinMax(4, stochastic=True, seed=7).with_stream("x")),
        {},
    )
    out["minmax_f16"] = ("minmax of a float16 tensor", coded(g.astype(np.float16), tc.MinMax(8, block=64)), {})
    out["chain_bf16_fp8"] = ("a chain: cast to bfloat16, then fp8 e4m3", coded(g, ["bf16", "fp8_e4m3"]), {})
    out["chain_fp16_nf4"] = ("a chain: cast to float16, then nf4", coded(g, ["fp16", "nf4"]), {})
    out["chain_bf16_minmax"] = ("a chain: cast to bfloat16, then minmax 5 bits", coded(g, ["bf16", tc.MinMax(5)]), {})

    stream_tree = {"w": w, "coded": g, "n": 3, "s": np.float32(2.0)}
    policy = tc.Policy({"coded": "nf4"}, min_elements=0)
    for name, kw in (
        ("stream", {"max_frame_bytes": 100}),
        ("stream_crc32c", {"max_frame_bytes": 1000, "checksum": "crc32c", "names": False}),
        ("stream_one_frame", {"checksum": "xxh3_64"}),
    ):
        buf = io.BytesIO()
        tc.dump(stream_tree, buf, policy=policy, stream_id=STREAM_ID, **kw)
        out[name] = (f"a stream of frames ({kw})", buf.getvalue(), {"kind": "stream"})
    return out


def refusal_vectors() -> dict[str, tuple[str, bytes, dict[str, Any]]]:
    """name -> (the rule it breaks, bytes, extra JSON fields); each must raise DecodeError."""
    base = tc.encode({"w": np.arange(6, dtype=np.float32), "v": np.ones(3, np.int16)})
    nf4 = coded(rng(1).standard_normal(150).astype(np.float32), "nf4")
    mm = coded(rng(1).standard_normal(150).astype(np.float32), "minmax4")
    out: dict[str, tuple[str, bytes, dict[str, Any]]] = {}

    def add(name: str, why: str, data: bytes, **extra: Any) -> None:
        out[name] = (why, data, extra)

    add("magic", "format.md 1: wrong magic", b"TCDX" + base[4:])
    add("version", "format.md 1: version 2", base[:4] + b"\x02" + base[5:])
    add("flags", "format.md 1: non-zero flags", base[:5] + b"\x01" + base[6:])
    add("header_crc", "format.md 1: header CRC does not match", base[:12] + bytes(4) + base[16:])
    add("short", "format.md 1: shorter than the preamble", base[:15])
    hlen = struct.unpack_from("<I", base, 8)[0]
    add("header_past_end", "format.md 1: header length beyond the message", base[: 16 + hlen - 1])
    add("trailing", "format.md 6: a byte after the last segment", base + b"\x00")
    add("truncated", "format.md 6: the last segment cut short", base[:-1])
    pad = -(-(16 + hlen) // 64) * 64 + 24  # just after tensor 0's 24 bytes, before tensor 1's
    add("padding", "format.md 6: a non-zero padding byte", base[:pad] + b"\x01" + base[pad + 1 :])
    add("header_not_map", "format.md 2: the header is an array", join(None, [], packed_tree([1, 2])))
    add("header_key", "format.md 2: an unknown header key", edit(base, lambda h, s: h.update(extra=1)))
    tensors, tree = split(base)[0]["tensors"], split(base)[0]["tree"]
    dup = b"\x83" + packed_tree("tensors") + packed_tree(tensors) + (packed_tree("tree") + packed_tree(tree)) * 2
    add("header_duplicate_key", "format.md 2: a header key twice", join(None, split(base)[1], dup))
    add("dtype", "format.md 4: an unknown dtype name", edit(base, lambda h, s: h["tensors"][1].__setitem__(0, "int12")))
    add(
        "dim_negative",
        "format.md 3: a negative dimension",
        edit(base, lambda h, s: h["tensors"][1][1].__setitem__(0, -3)),
    )
    add("ndim", "format.md 8: 65 dimensions", edit(base, lambda h, s: h["tensors"][1].__setitem__(1, [1] * 64 + [3])))
    add(
        "shape_overflow",
        "format.md 3: shape bytes beyond 2^63 - 1",
        edit(base, lambda h, s: h["tensors"][1].__setitem__(1, [2**62, 3])),
    )
    add(
        "unreferenced",
        "format.md 5: a table entry the tree never references",
        edit(base, lambda h, s: h.update(tree=packed_tree({"w": ref(0)}))),
    )
    add(
        "bad_reference",
        "format.md 5: a reference past the table",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), ref(1), ref(2)]))),
    )
    add(
        "reference_3_bytes",
        "format.md 5: a 3-byte reference payload",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), msgpack.ExtType(1, b"\x01\x00\x00")]))),
    )
    add(
        "ext_unknown",
        "format.md 5: ext type 7",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), ref(1), msgpack.ExtType(7, b"")]))),
    )
    add(
        "ext_timestamp",
        "format.md 5: msgpack's timestamp ext (-1)",
        edit(
            base,
            lambda h, s: h.update(tree=b"\x93" + packed_tree(ref(0)) + packed_tree(ref(1)) + b"\xd6\xff" + bytes(4)),
        ),
    )
    add(
        "ext5_empty",
        "format.md 5: an empty big-int payload",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), ref(1), msgpack.ExtType(5, b"")]))),
    )
    add(
        "key_not_str",
        "format.md 5: a map key that is not a str",
        edit(
            base, lambda h, s: h.update(tree=b"\x82\x01" + packed_tree(ref(0)) + packed_tree("v") + packed_tree(ref(1)))
        ),
    )
    add(
        "key_duplicate",
        "format.md 5: a map key twice",
        edit(
            base,
            lambda h, s: h.update(
                tree=b"\x82" + (packed_tree("w") + packed_tree(ref(0))) + packed_tree("w") + packed_tree(ref(1))
            ),
        ),
    )
    deep: Any = [ref(0), ref(1)]
    for _ in range(64):
        deep = [deep]
    add(
        "depth_65",
        "format.md 5: a tree nesting 65 arrays deep",
        edit(base, lambda h, s: h.update(tree=packed_tree(deep))),
    )
    add(
        "tree_trailing",
        "format.md 5: bytes after the tree's value",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), ref(1)]) + b"\xc0")),
    )
    add(
        "checksum_mismatch",
        "format.md 7: a segment whose xxh3_64 does not match",
        edit(
            tc.encode({"w": np.ones(4, np.float32)}, checksum="xxh3_64"), lambda h, s: h["checksums"].__setitem__(0, 1)
        ),
    )
    add(
        "checksum_count",
        "format.md 7: one checksum short",
        edit(tc.encode({"w": np.ones(4, np.float32)}, checksum="xxh3_64"), lambda h, s: h["checksums"].pop()),
    )
    add(
        "checksum_algorithm",
        "format.md 7: an unknown checksum algorithm",
        edit(base, lambda h, s: h.update(checksum="md5", checksums=[0, 0])),
    )
    add(
        "cap", "format.md 8: decoded bytes over len(message) + max_decoded_bytes", base, limits={"max_decoded_bytes": 0}
    )

    def stage(change: Callable[[list[Any]], None]) -> Callable[[dict[str, Any], list[bytes]], None]:
        return lambda h, s: change(h["tensors"][0])

    add("codec_unknown", "codecs.md: an unknown codec id", edit(nf4, stage(lambda e: e[2][0].__setitem__(0, "nf5"))))
    add("config_key", "codecs.md: an unknown config key", edit(nf4, stage(lambda e: e[2][0][1].update(foo=1))))
    add(
        "config_value",
        "codecs.md: a blocksize bitsandbytes does not take",
        edit(nf4, stage(lambda e: e[2][0][1].update(blocksize=48))),
    )
    add("minmax_bits", "codecs.md: minmax bits 17", edit(mm, stage(lambda e: e[2][0][1].update(bits=17))))
    add(
        "segment_missing",
        "codecs.md: nf4 without its absmax_scale",
        edit(nf4, lambda h, s: (h["tensors"][0][3].pop(), s.pop())),
    )
    add(
        "segment_short",
        "codecs.md: codes one byte short",
        edit(nf4, lambda h, s: (h["tensors"][0][3][0][3].__setitem__(0, 75 - 1), s.__setitem__(0, s[0][:-1]))),
    )
    add("segment_dtype", "codecs.md: codes as int8", edit(nf4, stage(lambda e: e[3][0].__setitem__(2, "int8"))))
    add("param_type", "codecs.md: nf4 offset as a str", edit(nf4, stage(lambda e: e[2][0][2].update(offset="0.5"))))
    add(
        "stages_5",
        "format.md 3: five stages",
        edit(nf4, stage(lambda e: e[2].__setitem__(slice(0, 0), [["cast", {"to": "float16"}, {}]] * 4))),
    )
    add(
        "stage_not_cast",
        "format.md 3: a stage before the last that is not array-to-array",
        edit(nf4, stage(lambda e: e[2].insert(0, ["minmax", {}, {}]))),
    )
    add(
        "codec_dtype",
        "codecs.md: a codec asked for an int32 tensor",
        edit(nf4, stage(lambda e: e.__setitem__(0, "int32"))),
    )
    add(
        "minmax_no_codes",
        "codecs.md: minmax without codes for a tensor that is not constant",
        edit(mm, lambda h, s: (h["tensors"][0][3].pop(), s.pop())),
    )
    # Issue 10's hardening: strict where a second implementation could otherwise differ.
    add(
        "config_float",
        "codecs.md: quant4 blocksize 64.0, a float",
        edit(nf4, stage(lambda e: e[2][0][1].update(blocksize=64.0))),
    )
    add(
        "config_bool_type",
        'codecs.md: quant4 double_quant "yes", not a bool',
        edit(nf4, stage(lambda e: e[2][0][1].update(double_quant="yes"))),
    )
    add(
        "config_stochastic_int",
        "codecs.md: minmax stochastic 1, not a bool",
        edit(mm, stage(lambda e: e[2][0][1].update(stochastic=1))),
    )
    add(
        "segment_role",
        "format.md 3: nf4 codes with the role meta",
        edit(nf4, stage(lambda e: e[3][0].__setitem__(1, "meta"))),
    )
    add(
        "segment_unused",
        "format.md 3: a segment the codec does not use",
        edit(nf4, lambda h, s: (h["tensors"][0][3].append(["extra", "meta", "uint8", [1]]), s.append(b"\x00"))),
    )
    add(
        "segment_shape",
        "format.md 3: codes of shape [5, 15] instead of [75]",
        edit(nf4, stage(lambda e: e[3][0].__setitem__(3, [5, 15]))),
    )
    add(
        "params_nested",
        "format.md 3: a params value that is a map",
        edit(nf4, stage(lambda e: e[2][0][2].update(extra={"a": 1}))),
    )
    add(
        "config_nested",
        "format.md 3: a config value nested in arrays",
        edit(mm, stage(lambda e: e[2][0][1].update(bits=[[4]]))),
    )
    deep_param: Any = 0
    for _ in range(400):
        deep_param = [deep_param]
    add(
        "header_depth",
        "format.md 2: a header nesting 400 arrays deep",
        edit(nf4, stage(lambda e: e[2][0][2].update(extra=deep_param))),
    )
    add(
        "bool_byte",
        "format.md 4: a bool byte 2",
        edit(tc.encode({"b": np.array([True, False])}), lambda h, s: s.__setitem__(0, b"\x01\x02")),
    )
    add(
        "int4_high_bits",
        "format.md 4: an int4 byte with high bits set",
        edit(tc.encode({"q": np.zeros(2, ml_dtypes.int4)}), lambda h, s: s.__setitem__(0, b"\x00\xf0")),
    )
    add(
        "float4_high_bits",
        "format.md 4: a float4_e2m1fn byte with high bits set",
        edit(tc.encode({"q": np.zeros(2, ml_dtypes.float4_e2m1fn)}), lambda h, s: s.__setitem__(0, b"\x10\x00")),
    )
    add(
        "ext3_not_0d",
        "format.md 5: ext 3 (a scalar) referring to a 1-d entry",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0, 3), ref(1)]))),
    )
    add(
        "ext5_in_range",
        "format.md 5: ext 5 holding 1, which fits in 64 bits",
        edit(base, lambda h, s: h.update(tree=packed_tree([ref(0), ref(1), msgpack.ExtType(5, b"\x01")]))),
    )
    add(
        "ext5_long_form",
        "format.md 5: ext 5 not in its shortest form",
        edit(
            base,
            lambda h, s: h.update(
                tree=packed_tree([ref(0), ref(1), msgpack.ExtType(5, (2**64).to_bytes(10, "little"))])
            ),
        ),
    )
    add(
        "cap_expansion",
        "format.md 8: minmax of a constant tensor of 2^40 elements in a 300-byte message",
        edit(coded(np.full(8, 1.0, np.float32), "minmax4"), stage(lambda e: e.__setitem__(1, [1 << 40]))),
    )

    good = frames_of(small_stream())
    add(
        "stream_magic",
        "format.md 9: a frame with magic TCSX",
        b"".join([b"TCSX" + good[0][4:], *good[1:]]),
        kind="stream",
    )
    add(
        "stream_crc",
        "format.md 9: a frame body whose CRC does not match",
        b"".join([good[0][:24] + bytes(4) + good[0][28:], *good[1:]]),
        kind="stream",
    )
    add(
        "stream_skip",
        "format.md 9: a frame missing (sequence 0, 2, ...)",
        b"".join([good[0], *good[2:]]),
        kind="stream",
    )
    add(
        "stream_swap",
        "format.md 9: two frames swapped",
        b"".join([good[0], good[2], good[1], *good[3:]]),
        kind="stream",
    )
    add("stream_no_last", "format.md 9: the last frame missing", b"".join(good[:-1]), kind="stream")
    add(
        "stream_id",
        "format.md 9: a frame of another stream",
        b"".join([good[0], frame(good[1][32:], 1, 0, 7), *good[2:]]),
        kind="stream",
    )
    add(
        "stream_first_twice",
        "format.md 9: frame 1 flagged first",
        b"".join([good[0], frame(good[1][32:], 1, 1), *good[2:]]),
        kind="stream",
    )
    last = good[-1]
    add(
        "stream_after_end",
        "format.md 9: bytes after the end record",
        b"".join([*good[:-1], frame(last[32:] + b"\x00", len(good) - 1, last[5])]),
        kind="stream",
    )
    add(
        "stream_after_last",
        "format.md 9: a frame after the last one",
        b"".join([*good, frame(b"\x00", len(good), 0)]),
        kind="stream",
    )
    tree = packed_tree({"x": ref(0)})
    seg = np.ones(2, np.float32).tobytes()
    one = [["float32", [2]]]
    recs = {
        "stream_index": ([record({"index": 1, "entry": one[0]}), seg], "a tensor record numbered 1 first"),
        "stream_count": (
            [record({"index": 0, "entry": one[0]}), seg, record({"tree": tree, "count": 2})],
            "an end record whose count is wrong",
        ),
        "stream_record_key": (
            [record({"index": 0, "entry": one[0], "size": 8}), seg],
            "a tensor record with an unknown key",
        ),
        "stream_zero_record": ([b"\x00\x00\x00\x00"], "a record of length 0"),
        "stream_end_key": ([record({"tree": tree, "count": 0, "x": 1})], "an end record with an unknown key"),
        "stream_checksum_type": (
            [record({"index": 0, "entry": one[0], "checksum": [1], "checksums": [0]}), seg],
            "a checksum algorithm that is an array",
        ),
    }
    nest: Any = one[0]
    for _ in range(400):
        nest = [nest]
    recs["stream_record_depth"] = (
        [record({"index": 0, "entry": nest}), seg],
        "a tensor record nesting 400 arrays deep",
    )
    for name, (parts, why) in recs.items():
        body = b"".join(parts)
        if name not in ("stream_count", "stream_end_key"):
            body += record({"tree": tree, "count": 1})
        add(name, f"format.md 9: {why}", frame(body, 0, 3), kind="stream")
    return out


def small_stream() -> bytes:
    """A stream of a raw and an nf4 tensor in frames of 100 bytes, the base of the stream refusals."""
    buf = io.BytesIO()
    g = rng(1).standard_normal(150).astype(np.float32)
    policy = tc.Policy({"coded": "nf4"}, min_elements=0)
    tc.dump(
        {"w": np.arange(12, dtype=np.float32), "coded": g}, buf, policy=policy, stream_id=STREAM_ID, max_frame_bytes=100
    )
    return buf.getvalue()


# ---------------------------------------------------------------------------- code tables


def code_tables() -> dict[str, list[str]]:
    """The built-in codecs' code tables as float32 bit patterns (8 hex digits), in code order."""
    tables = {"dynamic": kernels.dynamic_map(), "nf4": kernels.NF4_TABLE, "fp4": kernels.FP4_TABLE}
    return {name: [f"{b:08x}" for b in t.astype(np.float32).view(np.uint32).tolist()] for name, t in tables.items()}


def _value(bits: str) -> str:
    return f"{float(np.array([int(bits, 16)], np.uint32).view(np.float32)[0]):.9g}"


def tables_markdown() -> str:
    """The tables of docs/codecs.md, generated here so that the page cannot drift from the code."""
    t = code_tables()
    lines = ["| code | bits | value | | code | bits | value |", "|---:|---|---|---|---:|---|---|"]
    for i in range(8):
        a, b = t["nf4"][i], t["nf4"][i + 8]
        lines.append(f"| {i} | `{a}` | {_value(a)} | | {i + 8} | `{b}` | {_value(b)} |")
    nf4 = "\n".join(lines)
    lines = ["| code | bits | value | | code | bits | value |", "|---:|---|---|---|---:|---|---|"]
    for i in range(8):
        a, b = t["fp4"][i], t["fp4"][i + 8]
        lines.append(f"| {i} | `{a}` | {_value(a)} | | {i + 8} | `{b}` | {_value(b)} |")
    fp4 = "\n".join(lines)
    lines = ["| codes | +0 | +1 | +2 | +3 | +4 | +5 | +6 | +7 |", "|---:|---|---|---|---|---|---|---|---|"]
    for row in range(32):
        cells = " | ".join(f"`{b}`" for b in t["dynamic"][row * 8 : row * 8 + 8])
        lines.append(f"| {row * 8} | {cells} |")
    dynamic = "\n".join(lines)
    return f"NF4:\n\n{nf4}\n\nFP4:\n\n{fp4}\n\nThe dynamic 8-bit map:\n\n{dynamic}\n"


# ---------------------------------------------------------------------------- files


def files() -> dict[str, bytes]:
    """Every file of tests/vectors/ this script writes, by name."""
    out: dict[str, bytes] = {}

    def put(name: str, data: bytes, meta: dict[str, Any]) -> None:
        out[f"{name}.bin"] = data
        text = json.dumps(meta, indent=1, ensure_ascii=True)
        text = re.sub(r'"bits": \[[^\]]*\]', lambda m: re.sub(r"\s+", "", m.group(0)).replace(":", ": ", 1), text)
        out[f"{name}.json"] = (text + "\n").encode()

    for name, (about, data, extra) in valid_vectors().items():
        kind = extra.get("kind", "message")
        limits = tc.Limits(**extra.get("limits", {}))
        value = tc.load(io.BytesIO(data), limits=limits) if kind == "stream" else tc.decode(data, limits=limits)
        put(name, data, {"about": about, "kind": kind, **extra, "value": describe(value)})
    for name, (why, data, extra) in refusal_vectors().items():
        put(f"refuse_{name}", data, {"about": why, "kind": extra.get("kind", "message"), "refuse": True, **extra})
    out["tables.json"] = (json.dumps(code_tables(), indent=1) + "\n").encode()
    return out


def main(argv: list[str]) -> int:
    if "--tables" in argv:
        print(tables_markdown(), end="")
        return 0
    wanted = files()
    if "--check" in argv:
        stale = [n for n, data in wanted.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != data]
        extra = {p.name for p in HERE.iterdir() if p.suffix in (".bin", ".json")} - set(wanted)
        for name in sorted({*stale, *extra}):
            print(f"differs: {name}")
        return 1 if stale or extra else 0
    for path in HERE.iterdir():
        if path.suffix in (".bin", ".json") and path.name not in wanted:
            path.unlink()
    for name, data in wanted.items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(wanted)} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
