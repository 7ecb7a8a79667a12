"""Wire format v1: layout, checksums, limits, and refusal of every kind of malformed or hostile message."""

from __future__ import annotations

import time
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
import xxhash
from _helpers import FASTWIRE, both_wire_paths, build, header_of, pack, raw_map, ref, slow, with_header
from hypothesis import event, given
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import wire
from tensorcodec.testing import assert_tree_equal, strategies
from tensorcodec.wire.tree import walk_tables

SMALL = {"a": np.arange(5, dtype=np.int16), "b": [np.float32(1.5), (np.zeros(0),)], "c": torch.ones(3)}


def tree(obj: Any) -> bytes:
    return pack(obj)


def raw_message(entries: list[Any], tree_obj: Any, segments: list[bytes] = (), **extra: Any) -> bytes:  # type: ignore[assignment]
    return build({"tensors": entries, "tree": tree(tree_obj), **extra}, segments)


def decode_error(data: Any, match: str | None = None, **kwargs: Any) -> tc.DecodeError:
    with pytest.raises(tc.DecodeError, match=match) as info:
        tc.decode(data, **kwargs)
    return info.value


# -- layout -----------------------------------------------------------------------------------------------------


def test_layout_of_a_small_message() -> None:
    message = tc.encode({"x": np.arange(3, dtype=np.int16), "y": np.arange(2, dtype=np.float64)})
    assert message[:4] == b"TCDC" and message[4:8] == b"\x01\x00\x00\x00"
    hlen = int.from_bytes(message[8:12], "little")
    assert int.from_bytes(message[12:16], "little") == zlib.crc32(message[16 : 16 + hlen])
    header = header_of(message)
    assert header["tensors"] == [["int16", [3]], ["float64", [2]]]
    assert set(header) == {"tensors", "tree"}
    first = -(-(16 + hlen) // 64) * 64
    assert message[16 + hlen : first] == bytes(first - 16 - hlen)
    assert message[first : first + 6] == np.arange(3, dtype=np.int16).tobytes()
    assert message[first + 64 :] == np.arange(2.0).tobytes()
    assert len(message) == first + 64 + 16


@given(strategies.trees())
def test_every_encoded_message_follows_the_layout(obj: Any) -> None:
    message = tc.encode(obj)
    hlen = int.from_bytes(message[8:12], "little")
    pos = 16 + hlen
    for dtype, shape in header_of(message)["tensors"]:
        n = int(np.prod(shape)) * tc.dtypes.by_name(dtype).itemsize  # type: ignore[union-attr]
        if n:
            start = -(-pos // 64) * 64
            assert message[pos:start] == bytes(start - pos)
            pos = start + n
    assert pos == len(message)


def test_empty_segments_take_no_bytes() -> None:
    message = tc.encode([np.zeros(0), np.zeros((3, 0)), np.zeros(0, np.int8)])
    assert len(message) == 16 + int.from_bytes(message[8:12], "little")


# -- checksums --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32c"])
def test_checksums_are_stored_per_segment_and_verified(algorithm: str) -> None:
    import google_crc32c

    obj = {"a": np.arange(100, dtype=np.float32), "e": np.zeros(0), "t": torch.arange(7)}
    message = tc.encode(obj, checksum=algorithm)
    header = header_of(message)
    assert header["checksum"] == algorithm
    fn = {"xxh3_64": xxhash.xxh3_64_intdigest, "crc32c": google_crc32c.value}[algorithm]
    segments = [np.arange(100, dtype=np.float32).tobytes(), b"", torch.arange(7).numpy().tobytes()]
    assert header["checksums"] == [fn(s) for s in segments]
    assert_tree_equal(obj, tc.decode(message))


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32c"])
def test_flipped_payload_byte_raises_checksum_error(algorithm: str) -> None:
    obj = {"a": np.arange(100, dtype=np.float32), "b": np.arange(10, dtype=np.int8)}
    message = bytearray(tc.encode(obj, checksum=algorithm))
    stored = header_of(bytes(message))["checksums"]
    message[-3] ^= 0x10
    with pytest.raises(tc.ChecksumError, match=r"tensor 1 segment 'data'") as info:
        tc.decode(bytes(message))
    assert info.value.stored == stored[1]
    assert info.value.computed != stored[1]
    assert f"{stored[1]:#x}" in str(info.value) and f"{info.value.computed:#x}" in str(info.value)
    assert isinstance(info.value, tc.DecodeError)
    back = tc.decode(bytes(message), verify=False)
    assert back["b"].tobytes() != obj["b"].tobytes()
    with pytest.raises(tc.ChecksumError):
        tc.decode([bytes(message[:100]), bytes(message[100:])])


def test_without_checksums_a_flipped_payload_byte_goes_unnoticed() -> None:
    message = bytearray(tc.encode({"b": np.arange(10, dtype=np.int8)}))
    message[-1] ^= 1
    assert tc.decode(bytes(message))["b"][-1] == 8


def test_header_crc_is_always_verified() -> None:
    message = bytearray(tc.encode(SMALL, checksum="xxh3_64"))
    message[20] ^= 0x01
    with pytest.raises(tc.ChecksumError, match="header") as info:
        tc.decode(bytes(message), verify=False)
    assert info.value.stored == int.from_bytes(message[12:16], "little")
    assert info.value.computed == zlib.crc32(bytes(message[16 : 16 + int.from_bytes(message[8:12], "little")]))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"checksum": "md5", "checksums": [0]}, "unknown checksum algorithm 'md5'"),
        ({"checksum": ["xxh3_64"], "checksums": [0]}, "unknown checksum algorithm"),
        ({"checksum": {"a": 1}, "checksums": [0]}, "unknown checksum algorithm"),
        ({"checksums": [0]}, "unknown checksum algorithm None"),
        ({"checksum": "xxh3_64"}, "'checksums' must list one value per segment"),
        ({"checksum": "xxh3_64", "checksums": []}, "one value per segment"),
        ({"checksum": "xxh3_64", "checksums": [0, 0]}, "one value per segment"),
        ({"checksum": "xxh3_64", "checksums": [-1]}, "unsigned 64-bit"),
        ({"checksum": "xxh3_64", "checksums": [1.0]}, "unsigned 64-bit"),
        ({"checksum": "xxh3_64", "checksums": [True]}, "unsigned 64-bit"),
        ({"checksum": "xxh3_64", "checksums": ["0"]}, "unsigned 64-bit"),
        ({"checksum": "xxh3_64", "checksums": 5}, "one value per segment"),
    ],
    ids=repr,
)
def test_malformed_checksum_fields(extra: dict[str, Any], match: str) -> None:
    decode_error(raw_message([["int8", [2]]], ref(0), [b"\x01\x02"], **extra), match, verify=False)


# -- limits -----------------------------------------------------------------------------------------------------


def test_max_header_bytes() -> None:
    message = tc.encode({"k" * 100: 1})
    hlen = int.from_bytes(message[8:12], "little")
    assert tc.decode(message, limits=tc.Limits(max_header_bytes=hlen)) == {"k" * 100: 1}
    decode_error(
        message,
        f"header of {hlen} bytes exceeds max_header_bytes={hlen - 1}",
        limits=tc.Limits(max_header_bytes=hlen - 1),
    )
    huge = bytearray(message)
    huge[8:12] = (0xFFFFFFFF).to_bytes(4, "little")
    decode_error(bytes(huge), "max_header_bytes")


def test_max_tensors() -> None:
    message = tc.encode([np.zeros(1) for _ in range(5)])
    assert len(tc.decode(message, limits=tc.Limits(max_tensors=5))) == 5
    decode_error(message, "5 tensors exceed max_tensors=4", limits=tc.Limits(max_tensors=4))
    decode_error(message, "max_tensors=1", limits=tc.Limits(max_tensors=1))
    decode_error(message, limits=tc.Limits(max_tensors=0))


def test_max_tensors_does_not_cap_shapes() -> None:
    """A low tensor count must not make msgpack refuse a legitimate 64-dimension shape."""
    message = tc.encode(np.zeros([1] * 64))
    assert tc.decode(message, limits=tc.Limits(max_tensors=1)).shape == (1,) * 64


def test_max_ndim() -> None:
    message = tc.encode(np.zeros([1] * 10))
    assert tc.decode(message, limits=tc.Limits(max_ndim=10)).ndim == 10
    decode_error(message, "10 dimensions exceed max_ndim=9", limits=tc.Limits(max_ndim=9))
    decode_error(raw_message([["int8", [1] * 65]], ref(0), [b"\x00"]), "65 dimensions exceed max_ndim=64")


def test_max_depth() -> None:
    obj: Any = np.zeros(2)
    for _ in range(10):
        obj = {"k": obj}
    message = tc.encode(obj)
    assert_tree_equal(obj, tc.decode(message, limits=tc.Limits(max_depth=10)))
    decode_error(message, "nesting deeper than max_depth=9", limits=tc.Limits(max_depth=9))


def test_max_decoded_bytes() -> None:
    message = tc.encode({"a": np.zeros(100, np.float32), "b": np.zeros(28, np.int8)})
    assert tc.decode(message, limits=tc.Limits(max_decoded_bytes=428))["a"].size == 100
    decode_error(message, "428 bytes.*max_decoded_bytes", limits=tc.Limits(max_decoded_bytes=427))


def test_max_segments_per_tensor() -> None:
    segments = [[f"s{i}", "meta", "uint8", [1]] for i in range(17)]
    entry = ["float32", [1], [["cast", {"to": "float16"}, {}]], segments]
    decode_error(raw_message([entry], ref(0), [b"\x00"] * 17), "at most 16")


def test_limits_are_keyword_dataclass_fields() -> None:
    assert tc.Limits().max_ndim == 64 and tc.Limits().max_depth == 64
    with pytest.raises(AttributeError):
        tc.Limits().max_ndim = 3  # type: ignore[misc]


# -- the preamble -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"magic": b"TCDD"}, "not a tensorcodec message"),
        ({"magic": b"\x89PNG"}, "not a tensorcodec message"),
        ({"version": 0}, "format version 0 is not supported"),
        ({"version": 2}, "format version 2"),
        ({"version": 255}, "format version 255"),
        ({"flags": 1}, "flags 0x1"),
        ({"flags": 0x80}, "flags 0x80"),
        ({"reserved": 1}, "reserved 0x1"),
        ({"reserved": 0x8000}, "reserved 0x8000"),
        ({"crc": 0}, "checksum mismatch in header"),
        ({"header_len": 10_000}, "truncated: header claims 10000 bytes"),
        ({"header_len": 3}, "checksum mismatch in header"),
    ],
    ids=repr,
)
def test_bad_preambles(kwargs: dict[str, Any], match: str) -> None:
    decode_error(build({"tensors": [], "tree": tree(None)}, **kwargs), match)


@pytest.mark.parametrize("data", [b"", b"T", b"TCDC", b"TCDC\x01\x00\x00\x00" + bytes(7)])
def test_shorter_than_the_preamble(data: bytes) -> None:
    decode_error(data, "shorter than the 16-byte preamble")


def test_every_truncation_is_refused(wire_impl: str) -> None:
    message = tc.encode(SMALL, checksum="xxh3_64")
    for n in range(len(message)):
        decode_error(message[:n])
        decode_error([message[: n // 2], message[n // 2 : n]])


def test_trailing_bytes() -> None:
    message = tc.encode(SMALL)
    decode_error(message + b"\x00", "1 trailing bytes after the last segment")
    decode_error(message + bytes(64), "64 trailing bytes")
    decode_error([message, b"\x00"], "trailing")
    empty = tc.encode({"a": 1})
    decode_error(empty + b"\x00", "trailing")


@pytest.mark.parametrize("n_tensors", [2, 12, 300])
def test_nonzero_padding_is_refused(n_tensors: int, wire_impl: str) -> None:
    """The C check and the Python one, for few and many gaps."""
    obj = [np.arange(3, dtype=np.int8) for _ in range(n_tensors)]
    message = tc.encode(obj)
    hlen = int.from_bytes(message[8:12], "little")
    first = -(-(16 + hlen) // 64) * 64
    gaps = [16 + hlen + (first - 16 - hlen) // 2] if first > 16 + hlen else []
    gaps += [first + 64 * i + 3 for i in range(n_tensors - 1)] + [first + 64 * (n_tensors - 2) + 63]
    for pos in gaps:
        bad = bytearray(message)
        bad[pos] = 0x01
        decode_error(bytes(bad), f"padding byte at offset {pos} is not zero")
        decode_error([bytes(bad[:pos]), bytes(bad[pos:])], f"padding byte at offset {pos} is not zero")


# -- hostile headers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (pack([]), "must be a msgpack map"),
        (pack(None), "must be a msgpack map"),
        (pack("tensors"), "must be a msgpack map"),
        (b"", "malformed msgpack"),
        (b"\x82\xa7tensors\x90", "malformed msgpack"),
        (pack({"tensors": [], "tree": tree(None)}) + b"\x00", "malformed msgpack"),
        (raw_map(("tensors", []), ("tree", tree(None)), ("tensors", [])), "duplicate key"),
        (raw_map(("tensors", []), ("tree", tree(None)), ("tree", tree(None))), "duplicate key"),
        (pack({"tensors": [], "tree": tree(None), "extra": 1}), r"unknown keys \['extra'\]"),
        (pack({"tensors": [], "tree": tree(None), b"bin": 1}), "unknown keys"),
        (b"\x83\xa7tensors\x90\xa4tree\xc4\x01\xc0\x01\x02", "malformed msgpack"),
        (pack({"tree": tree(None)}), "'tensors' must be an array"),
        (pack({"tensors": {}, "tree": tree(None)}), "'tensors' must be an array"),
        (pack({"tensors": []}), "'tree' must be binary msgpack"),
        (pack({"tensors": [], "tree": "str"}), "'tree' must be binary msgpack"),
        (pack({"tensors": [], "tree": [1]}), "'tree' must be binary msgpack"),
        (pack({"tensors": [], "tree": msgpack.ExtType(1, b"")}), "'tree' must be binary msgpack"),
        (pack({"tensors": [], "tree": b""}), "tree: malformed msgpack"),
        (pack({"tensors": [], "tree": tree(None) + b"\x00"}), "tree: malformed msgpack"),
    ],
    ids=lambda x: x.hex()[:40] if isinstance(x, bytes) else x,
)
def test_hostile_headers(header: bytes, match: str) -> None:
    decode_error(build(header), match)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (["object", [1]], "dtype 'object' is not one tensorcodec knows"),
        (["float128", [1]], "dtype 'float128'"),
        (["complex256", [1]], "dtype 'complex256'"),
        (["<f4", [1]], "dtype '<f4'"),
        (["", [1]], "dtype ''"),
        ([b"float32", [1]], "dtype b'float32'"),
        ([7, [1]], "dtype 7"),
        ([None, [1]], "dtype None"),
        (["float32", [-1]], "dimension -1 is not a non-negative integer"),
        (["float32", [1.0]], "dimension 1.0"),
        (["float32", [True]], "dimension True"),
        (["float32", ["1"]], "dimension '1'"),
        (["float32", [None]], "dimension None"),
        (["float32", [[1]]], r"dimension \[1\]"),
        (["float32", [2**63]], "overflows a 64-bit size"),
        (["float32", [2**64 - 1]], "overflows"),
        (["int8", [2**32, 2**32]], "overflows"),
        (["float64", [2**61, 0]], "overflows"),
        (["float32", 4], "shape must be an array"),
        (["float32", {}], "shape must be an array"),
        (["float32", None], "shape must be an array"),
        (["float32"], "entry must be an array of 2 or 4 items"),
        (["float32", [1], 1], "2 or 4 items"),
        (["float32", [1], [], [], []], "2 or 4 items"),
        ([], "2 or 4 items"),
        ("float32", "2 or 4 items"),
        ({"dtype": "float32"}, "2 or 4 items"),
        (["float32", [2**40]], "truncated: tensor 0 needs bytes"),
        (["float32", [5]], "truncated: tensor 0 needs bytes"),
    ],
    ids=repr,
)
def test_hostile_table_entries(entry: Any, match: str, wire_impl: str) -> None:
    decode_error(raw_message([entry], ref(0), [b"\x00\x00\x00\x00"]), match)


def test_a_segment_past_the_end(wire_impl: str) -> None:
    message = tc.encode({"a": np.arange(10.0)})
    decode_error(message[:-1], "truncated: tensor 0 needs bytes")
    header = header_of(message)
    header["tensors"][0][1] = [11]
    decode_error(with_header(message, header), "truncated")


def test_zero_size_shapes_with_huge_sides_are_cheap() -> None:
    back = tc.decode(raw_message([["float32", [0, 2**40, 2**20]]], ref(0)))
    assert back.shape == (0, 2**40, 2**20) and back.size == 0
    back = tc.decode(raw_message([["int8", [0, 2**40]]], ref(0, 2)))
    assert back.shape == (0, 2**40)


@pytest.mark.parametrize(
    ("entries", "tree_obj", "segments", "match"),
    [
        ([["int8", [1]]], {"a": 1}, [b"\x01"], "tensor 0 is in the table but the tree never references it"),
        ([["int8", [1]], ["int8", [1]]], ref(1), [b"\x01", b"\x02"], "tensor 0 is in the table"),
        ([["int8", [1]]], [ref(0), ref(1)], [b"\x01"], "reference to tensor 1, but the table has 1"),
        ([], ref(0), [], "reference to tensor 0, but the table has 0"),
        ([["int8", [1]]], [ref(0), msgpack.ExtType(8, b"")], [b"\x01"], "unknown ext type code 8"),
        ([["int8", [1]]], [ref(0), msgpack.ExtType(100, b"\x00")], [b"\x01"], "unknown ext type code 100"),
        ([["int8", [1]]], [ref(0), msgpack.ExtType(4, b"\xc1")], [b"\x01"], "tree: malformed msgpack"),
    ],
    ids=["unreferenced", "first_unreferenced", "out_of_range", "empty_table", "ext8", "ext100", "bad_tuple"],
)
def test_hostile_trees(entries: list[Any], tree_obj: Any, segments: list[bytes], match: str) -> None:
    decode_error(raw_message(entries, tree_obj, segments), match)


def test_duplicate_dict_keys_in_the_tree() -> None:
    message = build({"tensors": [], "tree": raw_map(("a", 1), ("b", 2), ("a", 3))})
    decode_error(message, "tree: duplicate dict key 'a'")


def test_non_str_dict_keys_in_the_tree() -> None:
    decode_error(build({"tensors": [], "tree": b"\x81\x01\x02"}), "tree: malformed msgpack")
    decode_error(build({"tensors": [], "tree": b"\x81\xc4\x01a\x02"}), "is not a str")


def test_scalar_reference_to_a_non_scalar_shape_is_refused() -> None:
    with pytest.raises(tc.DecodeError, match="only a 0-d entry"):
        tc.decode(raw_message([["int8", [2]]], ref(0, 3), [b"\x01\x02"]))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (["float32", [1], [], [["q", "payload", "uint8", [1]]]], "stages must be a non-empty array"),
        (["float32", [1], "cast", [["q", "payload", "uint8", [1]]]], "stages must be a non-empty array"),
        (["float32", [1], [["cast"]], [["q", "payload", "uint8", [1]]]], "each stage must be"),
        (["float32", [1], [[1, {}, {}]], [["q", "payload", "uint8", [1]]]], "each stage must be"),
        (["float32", [1], [["cast", [], {}]], [["q", "payload", "uint8", [1]]]], "each stage must be"),
        (["float32", [1], [["cast", {}, {}]], "q"], "segments must be an array"),
        (["float32", [1], [["cast", {}, {}]], [["q", "weights", "uint8", [1]]]], "each segment must be"),
        (["float32", [1], [["cast", {}, {}]], [["q", "payload", "uint8"]]], "each segment must be"),
        (["float32", [1], [["cast", {}, {}]], [[1, "payload", "uint8", [1]]]], "each segment must be"),
        (["float32", [1], [["cast", {}, {}]], [["q", "payload", "object", [1]]]], "dtype 'object'"),
        (["float32", [1], [["cast", {}, {}]], [["q", "payload", "uint8", [-1]]]], "dimension -1"),
        (
            ["float32", [1], [["cast", {}, {}]], [["q", "payload", "uint8", [1]], ["q", "meta", "uint8", [1]]]],
            "duplicate segment name 'q'",
        ),
    ],
    ids=repr,
)
def test_hostile_encoded_entries(entry: Any, match: str) -> None:
    decode_error(raw_message([entry], ref(0), [b"\x00", b"\x00"]), match)


def test_unknown_codec_is_refused_by_name() -> None:
    entry = ["float32", [2], [["no-such-codec", {}, {}]], [["q", "payload", "uint8", [2]]]]
    with pytest.raises(tc.UnknownCodecError, match="no-such-codec"):
        tc.decode(raw_message([entry], ref(0), [b"\x01\x02"]))


# -- mutation fuzzing -------------------------------------------------------------------------------------------


def _decode_or_refuse(data: Any, **kwargs: Any) -> None:
    """decode may return anything or raise DecodeError; nothing else, and never slowly."""
    start = time.perf_counter()
    try:
        tc.decode(data, **kwargs)
        event("decoded")
    except tc.DecodeError as e:
        event(f"{type(e).__name__}: {str(e).split(':')[0][:40]}")
    assert time.perf_counter() - start < 10


def _messages() -> st.SearchStrategy[bytes]:
    small = {"max_dims": 3, "max_side": 4, "max_size": 12}
    leaves = st.one_of(strategies.arrays(**small), strategies.torch_tensors(**small), strategies.numpy_scalars())
    trees = strategies.trees(max_leaves=6, tensors=leaves)
    return st.builds(lambda t, c: tc.encode(t, checksum=c), trees, st.sampled_from([None, "xxh3_64", "crc32c"]))


@st.composite
def _byte_mutation(draw: st.DrawFn, message: bytes) -> bytes:
    data = bytearray(message)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(["truncate", "flip", "flip_late", "splice", "duplicate", "delete", "set"]))
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        if op == "truncate":
            del data[a:]
        elif op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "flip_late" and n:
            i = n - 1 - draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "splice":
            data[a:b] = draw(st.binary(max_size=24))
        elif op == "duplicate":
            data[b:b] = data[a:b]
        elif op == "delete":
            del data[a:b]
        elif op == "set" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@pytest.mark.slow
@slow(2)
@given(_messages().flatmap(_byte_mutation), st.sampled_from([None, "numpy", "torch"]), st.booleans(), st.booleans())
def test_mutated_bytes_decode_or_raise_decode_error(data: bytes, framework: Any, copy: bool, verify: bool) -> None:
    _decode_or_refuse(data, framework=framework, copy=copy, verify=verify)


def _fixed_crc(message: bytes, header: bytes) -> bytes:
    """``message`` with its header replaced by raw bytes and the preamble made consistent; segments kept."""
    hlen = int.from_bytes(message[8:12], "little")
    return (
        message[:8]
        + len(header).to_bytes(4, "little")
        + zlib.crc32(header).to_bytes(4, "little")
        + header
        + message[16 + hlen :]
    )


@pytest.mark.slow
@slow(2)
@given(_messages(), st.data())
def test_mutated_headers_with_valid_crc_decode_or_raise_decode_error(message: bytes, data: st.DataObject) -> None:
    """Byte-level edits of the header itself, with the CRC fixed so that the parser behind it is reached."""
    hlen = int.from_bytes(message[8:12], "little")
    header = data.draw(_byte_mutation(message[16 : 16 + hlen]))
    _decode_or_refuse(_fixed_crc(message, header), framework=data.draw(st.sampled_from([None, "numpy", "torch"])))


_HOSTILE = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**62, 2**63, 2**64 - 1, 64, 65]),
    st.sampled_from(["float32", "bfloat16", "object", "float128", "", "data", "payload", "meta", "xxh3_64", "crc32c"]),
    st.sampled_from(["cast", "fp8", "minmax", "blockwise8", "quant4", "no-such-codec"]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.lists(st.integers(0, 3), max_size=4),
    st.builds(msgpack.ExtType, st.integers(0, 8), st.binary(max_size=5)),
    st.just({}),
    st.just([]),
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    obj[head] = _replace(obj[head], tuple(rest), value)
    return obj


_UNREADABLE = object()


@st.composite
def _structural_mutation(draw: st.DrawFn, message: bytes) -> bytes:
    """Replaces a node of the header (or of the tree inside it) with a hostile value, keeping the CRC valid."""
    header = msgpack.unpackb(message[16 : 16 + int.from_bytes(message[8:12], "little")], raw=False)
    for _ in range(draw(st.integers(1, 3))):
        try:
            tree_obj = msgpack.unpackb(header["tree"], raw=False, strict_map_key=False)
        except Exception:
            tree_obj = _UNREADABLE
        if tree_obj is not _UNREADABLE and draw(st.booleans()):
            path = draw(st.sampled_from(_paths(tree_obj)))
            header["tree"] = pack(_replace(tree_obj, path, draw(_HOSTILE)))
        else:
            path = draw(st.sampled_from(_paths(header)))
            header = _replace(header, path, draw(_HOSTILE))
    return _fixed_crc(message, pack(header))


@pytest.mark.slow
@slow(2)
@given(_messages().flatmap(_structural_mutation), st.sampled_from([None, "numpy", "torch"]), st.booleans())
def test_structurally_mutated_headers_decode_or_raise_decode_error(data: bytes, framework: Any, copy: bool) -> None:
    _decode_or_refuse(data, framework=framework, copy=copy)


@given(_messages(), st.data())
def test_frames_of_mutated_messages_behave_like_the_message(message: bytes, data: st.DataObject) -> None:
    mutated = data.draw(_byte_mutation(message))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(mutated)), max_size=4)))
    parts = [mutated[a:b] for a, b in zip([0, *cuts], [*cuts, len(mutated)], strict=True)]
    outcomes = []
    for source in (mutated, parts):
        try:
            tc.decode(source, framework="numpy")
            outcomes.append("ok")
        except tc.DecodeError as e:
            outcomes.append(type(e).__name__)
    assert outcomes[0] == outcomes[1]


# -- the C loops (tensorcodec._fastwire) against the Python ones --------------------------------------------------

needs_fastwire = pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")


def _parse_both_ways(message: bytes) -> list[Any]:
    """parse_message's result (or DecodeError text) with the C loops and with the Python ones."""
    return both_wire_paths(lambda: wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, True), (tc.DecodeError,))


@needs_fastwire
@given(st.one_of(_messages(), _messages().flatmap(_byte_mutation), _messages().flatmap(_structural_mutation)))
def test_c_layout_and_padding_check_agree_with_python(message: bytes) -> None:
    fast, python = _parse_both_ways(message)
    assert fast == python


_DIMS = st.one_of(
    st.integers(-3, 2**64 - 1),
    st.sampled_from([0, 1, 63, 64, 65, 2**31, 2**61, 2**62, 2**63 - 1, 2**63]),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
)


@needs_fastwire
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["float32", "int8", "bfloat16", "complex128", "bool", "nope", 7]),
                st.lists(_DIMS, max_size=4),
            ).map(list),
            st.just(["float32"]),
            st.just("float32"),
        ),
        max_size=6,
    ),
    st.integers(0, 2000),
)
def test_c_layout_agrees_on_hostile_raw_entries(entries: list[Any], body: int) -> None:
    message = build({"tensors": entries, "tree": pack([])}, [bytes(body)])
    fast, python = _parse_both_ways(message)
    assert fast == python


@needs_fastwire
@given(st.binary(max_size=200), st.data())
def test_first_nonzero_reads_frames_as_one_buffer(data: bytes, draw: st.DataObject) -> None:
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    points = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    gaps = [x for a, b in zip(points[::2], points[1::2], strict=False) for x in (a, b - a)]
    expected = next((a + i for a, n in zip(gaps[::2], gaps[1::2], strict=True) for i in range(n) if data[a + i]), -1)
    assert FASTWIRE is not None
    assert FASTWIRE.first_nonzero(data, gaps) == expected
    assert FASTWIRE.first_nonzero(parts, gaps) == expected


@needs_fastwire
def test_c_loops_refuse_bad_arguments_without_crashing() -> None:
    fw = FASTWIRE
    assert fw is not None
    with pytest.raises(TypeError):
        fw.layout("not a list", {}, wire.Entry, 0, 0, 64)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fw.layout([["float32", [1]]], {"float32": "bad"}, wire.Entry, 0, 100, 64)  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        fw.layout([], {}, wire.Entry, 5, 4, 64)
    with pytest.raises(TypeError):
        fw.layout([], {}, dict, 0, 0, 64)
    with pytest.raises(ValueError):
        fw.first_nonzero(bytes(10), [8, 4])
    with pytest.raises(ValueError):
        fw.first_nonzero(bytes(10), [1])
    assert fw.first_nonzero(bytes(10), [0, 10]) == -1
    assert fw.first_nonzero(b"\0\0\1", [0, 2, 2, 1]) == 2
    with pytest.raises(ValueError, match="outside"):
        fw.first_nonzero([bytes(4), bytes(4)], [6, 4])
    with pytest.raises(ValueError, match="in order"):
        fw.first_nonzero([bytes(4), bytes(4)], [4, 2, 0, 1])
    with pytest.raises(ValueError, match="too small"):
        fw.join_into(np.zeros(3, np.uint8), [b"ab", b"cd"])
    with pytest.raises((TypeError, BufferError)):
        fw.join_into(b"read-only", [b"a"])
    with pytest.raises((TypeError, BufferError, ValueError)):
        fw.join_into(np.zeros(8, np.uint8), [np.arange(8, dtype=np.uint8)[::2]])


def _tensor_bytes(data: bytes) -> Any:
    """``data`` as the C walk exports a tensor's bytes (a TensorBytes; an empty array when empty)."""
    t = torch.tensor(list(data), dtype=torch.uint8)
    if FASTWIRE is None:
        return t.numpy()
    done = FASTWIRE.plain_walk({"t": t}, 64, walk_tables())
    assert done is not None
    return done[1][0].data


_FRAMES = st.lists(
    st.one_of(
        st.binary(max_size=70),
        st.binary(max_size=70).map(memoryview),
        st.binary(max_size=70).map(bytearray),
        st.binary(max_size=70).map(_tensor_bytes),
        strategies.arrays(max_dims=3, max_side=5, max_size=40).filter(
            lambda a: a.flags.c_contiguous and a.dtype.kind != "V"
        ),
    ),
    max_size=8,
)


@given(frames=_FRAMES, slack=st.integers(0, 16))
def test_copy_frames_is_a_join(frames: list[Any], slack: int, wire_impl: str) -> None:
    expected = b"".join(frames)
    dst = np.full(len(expected) + slack, 0xAB, dtype=np.uint8)
    wire.copy_frames(frames, dst)
    assert dst[: len(expected)].tobytes() == expected
    assert (dst[len(expected) :] == 0xAB).all()


@needs_fastwire
@given(frames=_FRAMES)
def test_join_bytes_is_a_join_that_empties_its_list(frames: list[Any]) -> None:
    assert FASTWIRE is not None
    expected = b"".join(frames)
    for wrong in (len(expected) + 1, len(expected) - 1):
        if wrong >= 0:
            with pytest.raises(ValueError):
                FASTWIRE.join_bytes(list(frames), wrong)
    given_list = list(frames)
    assert FASTWIRE.join_bytes(given_list, len(expected)) == expected
    assert given_list == [None] * len(frames)


@needs_fastwire
@pytest.mark.parametrize("size", [(2 << 20) - 1, 2 << 20, (2 << 20) + 1, (4 << 20) - 57, (5 << 20) + 3, 9_000_000])
def test_join_bytes_of_huge_page_sizes(size: int) -> None:
    assert FASTWIRE is not None
    rng = np.random.default_rng(size)
    cuts = sorted(rng.integers(0, size, 600).tolist())
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    frames: list[Any] = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    frames[1::3] = [_tensor_bytes(f) if len(f) < 64 else memoryview(f) for f in frames[1::3]]
    out = FASTWIRE.join_bytes(frames, size)
    assert type(out) is bytes and len(out) == size and out == data and hash(out) == hash(data)


@needs_fastwire
def test_join_into_batches_and_says_what_the_frames_need() -> None:
    assert FASTWIRE is not None
    frames = [bytes([i % 251]) * (i % 7) for i in range(2000)] + [bytes(300_000)] * 3
    expected = b"".join(frames)
    dst = np.zeros(len(expected), np.uint8)
    assert FASTWIRE.join_into(dst, frames) == len(expected) and dst.tobytes() == expected
    with pytest.raises(ValueError, match=f"too small: the frames need {len(expected)}"):
        FASTWIRE.join_into(np.zeros(len(expected) - 1, np.uint8), frames)
