"""Streams of bounded frames (docs/format.md section 9): equivalence with messages, bounds, rejection."""

from __future__ import annotations

import contextlib
import io
import struct
import tracemalloc
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import dtypes
from tensorcodec.codecs import FLOAT_SOURCES
from tensorcodec.stream import FRAME_HEADER_SIZE, MIN_FRAME_BYTES, StreamDecoder, decode_stream, encode_stream
from tensorcodec.testing import assert_tree_equal

FRAME = struct.Struct("<4sBBHQIIII")
FIRST, LAST = 1, 2

# ---------------------------------------------------------------------------- helpers

# Narrow types keep one value per byte in the low bits; the other bits must be zero.
_MASKS = {"bool": 0x01, "int4": 0x0F, "uint4": 0x0F, "float4_e2m1fn": 0x0F, "int2": 0x03, "uint2": 0x03}
_MASKS |= {"float6_e2m3fn": 0x3F, "float6_e3m2fn": 0x3F}


def random_array(row: dtypes.DType, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """Random bit patterns of ``row`` (NaN payloads, -0.0 and all) in ``shape``."""
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.random.default_rng(seed).integers(0, 256, size=count * row.itemsize, dtype=np.uint8)
    if row.name in _MASKS:
        raw &= _MASKS[row.name]
    return raw.view(row.numpy).reshape(shape)


def all_dtypes_tree(finite: bool = False) -> dict[str, Any]:
    """Every wire dtype as numpy (with empty and 0-d shapes), torch tensors, scalars and plain values.

    ``finite`` gives the dtypes that codecs quantize normal values instead of
    random bits, since quantizers refuse NaN and Inf.
    """
    tree: dict[str, Any] = {}
    for i, row in enumerate(dtypes.DTYPES):
        tree[row.name] = random_array(row, (3, 5 + i), i)
        if finite and row.name in FLOAT_SOURCES:
            tree[row.name] = np.random.default_rng(i).standard_normal((3, 5 + i)).astype(row.numpy)
    tree["empty"] = np.zeros((0, 4), np.float32)
    tree["empty_bf16"] = random_array(dtypes.BY_NAME["bfloat16"], (2, 0, 3), 1)
    tree["zero_d"] = np.array(2.5, np.float64)
    tree["scalar"] = np.float32(-0.0)
    tree["torch"] = {
        "f32": torch.randn(64, 80, generator=torch.Generator().manual_seed(0)),
        "bf16": torch.randn(4096, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
        "i64": torch.arange(10),
        "bool": torch.tensor([True, False]),
        "zero_d": torch.tensor(3.0),
        "empty": torch.zeros(0),
    }
    tree["big"] = np.random.default_rng(5).standard_normal((70, 100)).astype(np.float32)
    tree["tied"] = tree["big"]
    tree["meta"] = [1, (2.5, "x", b"y"), None, True, {"k": 1 << 70}, bytearray(b"z")]
    return tree


def body_of(frames: list[bytes]) -> bytes:
    return b"".join(bytes(f[FRAME_HEADER_SIZE:]) for f in frames)


def frame(body: bytes, seq: int, flags: int, sid: int = 7, **fields: int) -> bytes:
    """One frame with a correct CRC unless ``crc`` is given; other header fields overridable."""
    f = {"magic": b"TCSF", "version": 1, "reserved": 0, "length": len(body), "crc": zlib.crc32(body), "reserved2": 0}
    f.update(fields)
    head = FRAME.pack(f["magic"], f["version"], flags, f["reserved"], sid, seq, f["length"], f["crc"], f["reserved2"])
    return head + body


def reframe(body: bytes, size: int = 50, sid: int = 7) -> list[bytes]:
    """Valid frames around any stream body, so that body-level damage reaches the record parser."""
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        frame(c, i, (FIRST if i == 0 else 0) | (LAST if i == len(chunks) - 1 else 0), sid) for i, c in enumerate(chunks)
    ]


def record(fields: dict[str, Any]) -> bytes:
    packed = msgpack.packb(fields, use_bin_type=True)
    return struct.pack("<I", len(packed)) + packed


SMALL_TREE = {"w": np.arange(40, dtype=np.float32).reshape(5, 8), "b": np.arange(3, dtype=np.int16), "s": "x"}


# ---------------------------------------------------------------------------- equivalence with messages


@pytest.mark.parametrize("precision", [None, "minmax8", "bf16", "fp8_e4m3"])
@pytest.mark.parametrize("max_frame_bytes", [64, 1000, tc.DEFAULT_MAX_FRAME_BYTES])
def test_stream_decodes_to_the_same_tree_as_a_message(precision: str | None, max_frame_bytes: int) -> None:
    tree = all_dtypes_tree(finite=precision is not None)
    policy = tc.Policy({"*": precision}, min_elements=0) if precision else None
    expected = tc.decode(tc.encode(tree, policy=policy))
    frames = list(encode_stream(tree, policy=policy, max_frame_bytes=max_frame_bytes))
    assert all(len(f) <= max_frame_bytes for f in frames)
    assert_tree_equal(expected, decode_stream(frames))
    assert_tree_equal(expected, decode_stream(frames, copy=False))


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("copy", [True, False])
def test_framework_and_copy_match_decode(framework: str, copy: bool) -> None:
    keep = ("float32", "bfloat16", "int8", "torch", "scalar")
    tree = {k: v for k, v in all_dtypes_tree(finite=True).items() if k in keep}
    expected = tc.decode(tc.encode(tree, precision="minmax8"), framework=framework)  # type: ignore[arg-type]
    frames = list(encode_stream(tree, precision="minmax8", max_frame_bytes=200))
    got = decode_stream(frames, framework=framework, copy=copy)  # type: ignore[arg-type]
    assert_tree_equal(expected, got)


def test_copy_true_gives_writable_arrays_of_their_own() -> None:
    frames = list(encode_stream(SMALL_TREE))
    got = decode_stream(frames)
    assert got["w"].flags.writeable and got["w"].flags.owndata is False  # a view of its own buffer
    got["w"][0, 0] = 99.0
    assert decode_stream(frames)["w"][0, 0] == 0.0


def test_checksums_are_verified_per_segment() -> None:
    tree = {"a": np.arange(1000, dtype=np.float32), "q": np.linspace(0, 1, 5000, dtype=np.float32)}
    frames = list(encode_stream(tree, checksum="xxh3_64", precision="minmax8", max_frame_bytes=300))
    assert_tree_equal(tc.decode(tc.encode(tree, precision="minmax8")), decode_stream(frames))
    body = bytearray(body_of(frames))
    body[200] ^= 1  # inside tensor 0's bytes; the frame CRCs are recomputed, so only the checksum can tell
    with pytest.raises(tc.ChecksumError, match="tensor 0 segment 'data'"):
        decode_stream(reframe(bytes(body)))
    decode_stream(reframe(bytes(body)), verify=False)


@settings(max_examples=max(40, settings().max_examples // 2))
@given(
    st.integers(MIN_FRAME_BYTES, 3000),
    st.lists(st.integers(0, 300), min_size=0, max_size=6),
    st.sampled_from([None, "crc32c", "xxh3_64"]),
)
def test_frames_respect_the_bound_and_the_flags(max_frame_bytes: int, sizes: list[int], checksum: str | None) -> None:
    tree = [np.arange(n, dtype=np.float64) for n in sizes]
    frames = list(encode_stream(tree, max_frame_bytes=max_frame_bytes, checksum=checksum, stream_id=42))
    for i, f in enumerate(frames):
        magic, version, flags, _, sid, seq, length, crc, _ = FRAME.unpack_from(f)
        assert (magic, version, sid, seq) == (b"TCSF", 1, 42, i)
        assert flags == (FIRST if i == 0 else 0) | (LAST if i == len(frames) - 1 else 0)
        assert len(f) == FRAME_HEADER_SIZE + length <= max_frame_bytes
        assert length > 0 and (length == max_frame_bytes - FRAME_HEADER_SIZE or i == len(frames) - 1)
        assert crc == zlib.crc32(f[FRAME_HEADER_SIZE:])
    assert_tree_equal(tree, decode_stream(frames))


def test_tensors_arrive_before_the_tree_with_their_names() -> None:
    tree = {"layer": {"w": torch.ones(3, 4), "b": torch.zeros(4)}, "ids": np.arange(5), "again": None}
    tree["again"] = tree["layer"]["w"]  # tied: sent once, under its first name
    frames = list(encode_stream(tree, max_frame_bytes=64))
    decoder = StreamDecoder(framework="torch")
    arrived = []
    for f in frames:
        arrived += decoder.feed(f)
        if not decoder.done:
            with pytest.raises(tc.DecodeError, match="incomplete"):
                decoder.result()
    assert [(a.index, a.name) for a in arrived] == [(0, "layer.w"), (1, "layer.b"), (2, "ids")]
    assert all(isinstance(a.tensor, torch.Tensor) for a in arrived)
    out = decoder.result()
    assert out["again"] is out["layer"]["w"] is arrived[0].tensor
    seen: list[str | None] = []
    decode_stream(encode_stream(tree, names=False), on_tensor=lambda t: seen.append(t.name))
    assert seen == [None, None, None]


def test_encode_stream_checks_arguments_at_call_time() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        encode_stream(SMALL_TREE, max_frame_bytes=32)
    with pytest.raises(ValueError, match="checksum"):
        encode_stream(SMALL_TREE, checksum="md5")
    with pytest.raises(TypeError, match=r"root\['x'\]"):
        encode_stream({"x": object()})
    with pytest.raises(ValueError, match="framework"):
        StreamDecoder(framework="jax")  # type: ignore[arg-type]


def test_quantization_is_lazy() -> None:
    """A tensor is quantized when the iterator reaches it, not when the stream is created."""
    calls: list[int] = []

    class Spy(tc.Cast):
        codec_id = "cast"

        def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
            calls.append(x.size)
            return super().encode(x)

    tree = {"a": np.ones(5000, np.float32), "b": np.ones(6000, np.float32)}
    frames = encode_stream(tree, precision=Spy("bfloat16"), max_frame_bytes=4096)
    assert calls == []
    next(frames)
    assert calls == [5000]
    rest = list(frames)
    assert calls == [5000, 6000] and rest


# ---------------------------------------------------------------------------- damaged streams


def test_truncated_streams_are_incomplete() -> None:
    frames = list(encode_stream(SMALL_TREE, max_frame_bytes=64))
    for k in range(len(frames)):
        decoder = StreamDecoder()
        for f in frames[:k]:
            decoder.feed(f)
        assert not decoder.done
        with pytest.raises(tc.DecodeError, match="incomplete"):
            decoder.result()
        with pytest.raises(tc.DecodeError):
            decode_stream(frames[:k])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda fs: [fs[0], fs[1], fs[1], *fs[2:]], "sequence number 1, expected 2"),
        (lambda fs: [fs[0], fs[2], fs[1], *fs[3:]], "sequence number 2, expected 1"),
        (lambda fs: fs[1:], "does not start with its first frame"),
        (lambda fs: [*fs, fs[-1]], "after the last one"),
        (lambda fs: [b"XXXX" + fs[0][4:], *fs[1:]], "magic"),
        (lambda fs: [fs[0][:4] + b"\x02" + fs[0][5:], *fs[1:]], "version 2"),
        (lambda fs: [fs[0][:5] + b"\x05" + fs[0][6:], *fs[1:]], "flags"),
        (lambda fs: [fs[0][:28] + b"\x01" + fs[0][29:], *fs[1:]], "reserved"),
        (lambda fs: [fs[0][:-1], *fs[1:]], "body bytes"),
        (lambda fs: [fs[0][:20], *fs[1:]], "shorter than"),
        (lambda fs: [fs[0], fs[1][:-1] + bytes([fs[1][-1] ^ 0x10]), *fs[2:]], "checksum mismatch in frame 1"),
        (lambda fs: [fs[0], fs[1][:5] + b"\x01" + fs[1][6:], *fs[2:]], "flagged first"),
        (lambda fs: [fs[0], fs[1][:5] + b"\x02" + fs[1][6:], *fs[2:]], "before the stream's end record"),
        (lambda fs: [*fs[:-1], fs[-1][:5] + b"\x00" + fs[-1][6:]], "not flagged last"),
    ],
)
def test_damaged_frames_are_rejected(mutate: Any, message: str) -> None:
    frames = list(encode_stream(SMALL_TREE, max_frame_bytes=64))
    assert len(frames) > 4
    with pytest.raises(tc.DecodeError, match=message):
        decode_stream(mutate(frames))


def test_interleaved_streams_are_rejected() -> None:
    a = list(encode_stream(SMALL_TREE, max_frame_bytes=64))
    b = list(encode_stream(SMALL_TREE, max_frame_bytes=64))
    with pytest.raises(tc.DecodeError, match="interleaved"):
        decode_stream([a[0], b[1], *a[1:]])


def test_a_failed_decoder_stays_failed() -> None:
    frames = list(encode_stream(SMALL_TREE, max_frame_bytes=64))
    decoder = StreamDecoder()
    with pytest.raises(tc.DecodeError):
        decoder.feed(frames[1])
    with pytest.raises(tc.DecodeError, match="failed earlier"):
        decoder.feed(frames[0])
    with pytest.raises(tc.DecodeError, match="failed"):
        decoder.result()


_MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
    st.tuples(st.just("duplicate"), st.integers(0, 10_000)),
    st.tuples(st.just("swap"), st.integers(0, 10_000), st.integers(0, 10_000)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.integers(0, 1 << 20)),
    st.tuples(st.just("other"), st.integers(0, 10_000)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=8)),
)


def _mutate(frames: list[bytes], other: list[bytes], m: tuple[Any, ...]) -> list[bytes]:
    fs = list(frames)
    kind, *args = m
    i = args[0] % len(fs) if args and isinstance(args[0], int) else 0
    if kind == "drop":
        del fs[i]
    elif kind == "duplicate":
        fs.insert(i, fs[i])
    elif kind == "swap":
        j = args[1] % len(fs)
        fs[i], fs[j] = fs[j], fs[i]
    elif kind == "truncate":
        fs = fs[:i]
    elif kind == "flip" and fs[i]:
        f = bytearray(fs[i])
        f[args[1] % len(f)] ^= 1 << args[2]
        fs[i] = bytes(f)
    elif kind == "cut" and fs[i]:
        fs[i] = fs[i][: args[1] % len(fs[i])]
    elif kind == "other":
        fs.insert(i, other[i % len(other)])
    elif kind == "append":
        fs[-1] = fs[-1] + args[0]
    return fs


@settings(max_examples=max(300, settings().max_examples))
@given(st.lists(_MUTATIONS, min_size=1, max_size=3), st.sampled_from([64, 97, 500]))
def test_mutated_frame_sequences_decode_correctly_or_raise(mutations: list[tuple[Any, ...]], size: int) -> None:
    """Whatever a transport does to the frames, the result is the original tree or DecodeError."""
    tree = {"a": np.arange(60, dtype=np.float32), "b": [np.int8(3), "s"], "c": np.ones((2, 3), np.float16)}
    frames = list(encode_stream(tree, max_frame_bytes=size))
    other = list(encode_stream(tree, max_frame_bytes=size))
    mutated = frames
    for m in mutations:
        if not mutated:
            break
        mutated = _mutate(mutated, other, m)
    try:
        got = decode_stream(mutated)
    except tc.DecodeError:
        return
    assert_tree_equal(tree, got)
    # Only a stream id that no other frame contradicts can change unnoticed (and harmlessly).
    assert [f[:8] + f[16:] for f in mutated] == [f[:8] + f[16:] for f in frames]


@settings(max_examples=max(300, settings().max_examples))
@given(st.data())
def test_hostile_stream_bodies_raise_only_decode_error(data: st.DataObject) -> None:
    """Body-level damage under valid frame CRCs (what a malicious peer can send): DecodeError, never a crash."""
    tree = {"a": np.arange(30, dtype=np.float32), "q": np.linspace(-1, 1, 64, dtype=np.float32), "t": (1, "x")}
    body = bytearray(body_of(list(encode_stream(tree, policy=tc.Policy({"q": "minmax8"}, min_elements=0)))))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "byte", "delete", "insert"]))
        pos = data.draw(st.integers(0, len(body) - 1))
        if op == "flip":
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte":
            body[pos] = data.draw(st.sampled_from([0x00, 0x7F, 0xFF, 0xC1, 0xDC, 0xDF]))
        elif op == "delete":
            del body[pos : pos + data.draw(st.integers(1, 8))]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        if not body:
            body = bytearray(b"\0")
    limits = tc.Limits(max_decoded_bytes=1 << 20, max_header_bytes=1 << 16)
    with contextlib.suppress(tc.DecodeError):
        decode_stream(reframe(bytes(body), data.draw(st.sampled_from([7, 64, 4096]))), limits=limits)


# ---------------------------------------------------------------------------- hand-built bodies


def _entry_record(index: int, entry: list[Any], **extra: Any) -> bytes:
    return record({"index": index, "entry": entry, **extra})


def _end(tree: Any, count: int) -> bytes:
    return record({"tree": msgpack.packb(tree, use_bin_type=True), "count": count})


def _ref(i: int) -> msgpack.ExtType:
    return msgpack.ExtType(1, bytes([i]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_end([], 0) + b"\0", "1 bytes after the end record"),
        (_entry_record(0, ["float32", [1]]) + b"\0" * 4, "before the stream's end record"),
        (struct.pack("<I", 1 << 30) + b"\x80", "max_header_bytes"),
        (struct.pack("<I", 0), "length 0"),
        (_entry_record(1, ["float32", [0]]) + _end([_ref(0)], 1), "index 1, expected 0"),
        (_entry_record(0, ["float33", [0]]) + _end([_ref(0)], 1), "dtype 'float33'"),
        (_entry_record(0, ["int8", [-1]]) + _end([_ref(0)], 1), "dimension -1"),
        (_entry_record(0, ["int8", [0]], extra=1) + _end([_ref(0)], 1), "unknown record keys"),
        (_entry_record(0, ["int8", [0]], name=5) + _end([_ref(0)], 1), "name must be a str"),
        (_entry_record(0, ["int8", [1]], checksum="xxh3_64") + b"\0" + _end([_ref(0)], 1), "one value per segment"),
        (_entry_record(0, ["int8", [0]]) + _end([_ref(0)], 2), "count 2"),
        (_entry_record(0, ["int8", [0]]) + _end([], 1), "never references"),
        (_end([_ref(0)], 0), "reference to tensor 0"),
        (record({"tree": b"\x90"}), "keys must be"),
        (record({"foo": 1}), "neither a tensor record"),
        (struct.pack("<I", 2) + b"\x81\xa0", "malformed msgpack"),
        (struct.pack("<I", 5) + b"\x82\xa1a\x01\xa1a\x02"[:5], "malformed|duplicate"),
        (record([1, 2]), "must be a msgpack map"),  # type: ignore[arg-type]
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, message: str) -> None:
    with pytest.raises(tc.DecodeError, match=message):
        decode_stream(reframe(body, 9), limits=tc.Limits(max_header_bytes=1 << 20))


def test_an_unknown_codec_raises_unknown_codec_error() -> None:
    frames = list(encode_stream({"q": np.linspace(0, 1, 5000, dtype=np.float32)}, precision="minmax8"))
    body = body_of(frames).replace(b"minmax", b"minmbx")
    with pytest.raises(tc.UnknownCodecError, match="minmbx"):
        decode_stream(reframe(body))


def test_decoded_size_is_capped_before_anything_is_allocated() -> None:
    huge = ["float32", [1 << 32], [["minmax", {"bits": 8, "block": 0, "stochastic": False, "seed": 0}, {}]]]
    huge.append([["range", "meta", "float32", [2]]])
    with pytest.raises(tc.DecodeError, match="over the cap"):
        decode_stream(reframe(_entry_record(0, huge) + b"\0" * 8 + _end([_ref(0)], 1)))
    raw = _entry_record(0, ["uint8", [1 << 40]]) + b"\0" * 100
    with pytest.raises(tc.DecodeError, match="max_decoded_bytes"):
        decode_stream(reframe(raw), limits=tc.Limits(max_decoded_bytes=1 << 30))


def test_a_tensor_buffer_grows_only_with_the_bytes_that_arrived() -> None:
    n = 4 << 20
    frames = list(encode_stream({"big": np.zeros(n, np.uint8)}, max_frame_bytes=4096))
    decoder = StreamDecoder()
    fed = 0
    tracemalloc.start()
    try:
        for f in frames[:-1]:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            decoder.feed(f)
            fed += len(f)
            # a buffer at most as large as the bytes received (an over-allocating growth included)
            assert tracemalloc.get_traced_memory()[1] - before <= 2 * fed + (64 << 10)
    finally:
        tracemalloc.stop()
    decoder.feed(frames[-1])
    assert decoder.result()["big"].size == n


# ---------------------------------------------------------------------------- files


def test_dump_and_load_through_bytes_io() -> None:
    tree = all_dtypes_tree()
    buf = io.BytesIO()
    n = tc.dump(tree, buf, max_frame_bytes=1000)
    second = tc.dump({"next": 1}, buf)
    assert buf.tell() == n + second
    buf.seek(0)
    assert_tree_equal(tc.decode(tc.encode(tree)), tc.load(buf))
    assert buf.tell() == n  # exactly one stream was read
    assert tc.load(buf) == {"next": 1}
    with pytest.raises(tc.DecodeError, match="before the stream's last frame"):
        tc.load(buf)


def test_dump_and_load_through_a_file(tmp_path: Any) -> None:
    tree = {"w": torch.randn(300, 300), "q": np.linspace(0, 1, 10_000, dtype=np.float32), "meta": {"step": 3}}
    path = tmp_path / "model.tcs"
    with open(path, "wb") as f:
        tc.dump(tree, f, precision="bf16", checksum="xxh3_64", max_frame_bytes=4096)
    with open(path, "rb") as f:
        got = tc.load(f, framework="torch")
    assert_tree_equal(tc.decode(tc.encode(tree, precision="bf16"), framework="torch"), got)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 3000, 10, 40):
        with pytest.raises(tc.DecodeError, match="file ends"):
            tc.load(io.BytesIO(data[:cut]))


def test_load_does_not_trust_the_frame_length() -> None:
    lying = frame(b"", 0, FIRST | LAST, length=(1 << 32) - 1)
    with pytest.raises(tc.DecodeError, match="file ends after 0 of its 4294967295 bytes"):
        tc.load(io.BytesIO(lying))
    with pytest.raises(tc.DecodeError, match="magic"):
        tc.load(io.BytesIO(b"TCDC" + bytes(60)))
