"""Hostile messages (issue 10), one regression per category, through every entry point.

Each message is built by hand (header re-packed, its CRC recomputed) and must be refused with
DecodeError by decode (bytes and frames, copy=True and False), inspect, the stream decoder, load
and the CLI; nothing else may escape.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import tensorcodec as tc
from tensorcodec import DecodeError
from tensorcodec.accounting import inspect
from tensorcodec.wire.stream import Framer, pack_record
from tests._helpers import join_message, pack, ref, split_message

_LIMITS = tc.Limits()
_DEEP = 500
"""Far past every depth limit (msgpack's packer nests at most 511)."""


def _deep(leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(_DEEP):
        value = [value]
    return value


def _message(obj: Any, **kw: Any) -> tuple[dict[str, Any], list[bytes]]:
    return split_message(tc.encode(obj, checksum=None, **kw))


def _refused_by_decode(message: bytes, match: str, limits: tc.Limits = _LIMITS) -> None:
    cut = len(message) // 2
    for source in (message, [message[:cut], message[cut:]]):
        for copy in (True, False):
            with pytest.raises(DecodeError, match=match):
                tc.decode(source, copy=copy, limits=limits)


def _refused(message: bytes, match: str, limits: tc.Limits = _LIMITS, header_only: bool = True) -> None:
    """Refused by decode; by inspect too where the fault is in the header."""
    _refused_by_decode(message, match, limits)
    if header_only:
        with pytest.raises(DecodeError, match=match):
            inspect(message, limits=limits)


def _stream(records: list[tuple[dict[str, Any], list[bytes]]], tree: Any, count: int) -> list[bytes]:
    framer = Framer(7, 1 << 16)
    frames: list[bytes] = []
    for fields, segments in records:
        frames += framer.add(pack_record(fields))
        for seg in segments:
            frames += framer.add(seg)
    frames += framer.add(pack_record({"tree": pack(tree), "count": count}))
    frames.append(framer.flush(last=True))
    return frames


def _stream_refused(frames: list[bytes], match: str, limits: tc.Limits = _LIMITS) -> None:
    for copy in (True, False):
        decoder = tc.StreamDecoder(copy=copy, limits=limits)
        with pytest.raises(DecodeError, match=match):
            for f in frames:
                decoder.feed(f)
            decoder.result()
    with pytest.raises(DecodeError, match=match):
        tc.load(io.BytesIO(b"".join(frames)), limits=limits)


# -- 1: deep nesting anywhere in a header or a stream record ----------------------------------------------------


@pytest.mark.parametrize("where", ["shape", "dtype", "config", "params", "segment-shape"])
def test_deep_nesting_in_header_fields_is_a_decode_error(where: str) -> None:
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    entry = header["tensors"][0]
    if where == "shape":
        entry[1] = _deep()
    elif where == "dtype":
        entry[0] = _deep("float32")
    elif where == "config":
        entry[2][0][1]["format"] = _deep()
    elif where == "params":
        entry[2][0][2]["x"] = _deep()
    else:
        entry[3][0][3] = _deep()
    _refused(join_message(header, segments), "nest deeper than 16")


def test_a_flat_but_nested_config_value_is_refused() -> None:
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][2][0][1]["format"] = [[1]]
    _refused(join_message(header, segments), "scalar or a flat array")


@pytest.mark.parametrize("key", ["entry", "index", "name", "checksum"])
def test_deep_nesting_in_a_stream_record_is_a_decode_error(key: str) -> None:
    fields = {"index": 0, "entry": ["uint8", [4]], key: _deep()}
    _stream_refused(_stream([(fields, [b"abcd"])], ref(0), 1), "nest deeper than 16")


# -- 2: wrong types in stream records ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"index": 0, "name": "x"}, "neither a tensor record"),
        ({"index": 0, "entry": ["uint8", [4]], "checksum": [1], "checksums": [0]}, "unknown checksum"),
        ({"index": 0, "entry": ["uint8", [4]], "checksum": {"a": 1}, "checksums": [0]}, "unknown checksum"),
        ({"index": "0", "entry": ["uint8", [4]]}, "index"),
        ({"index": 0, "entry": "uint8"}, "entry must be an array"),
        ({"index": 0, "entry": ["uint8", [4]], "name": 5}, "name must be a str"),
    ],
)
def test_malformed_tensor_records_are_decode_errors(fields: dict[str, Any], match: str) -> None:
    _stream_refused(_stream([(fields, [b"abcd"])], ref(0), 1), match)


@pytest.mark.parametrize("end", [{"tree": 1, "count": 0}, {"tree": b"\xc0", "count": "0"}, {"tree": b"\xc0"}])
def test_malformed_end_records_are_decode_errors(end: dict[str, Any]) -> None:
    framer = Framer(3, 1 << 16)
    frames = [*framer.add(pack_record(end)), framer.flush(last=True)]
    _stream_refused(frames, "end record")


# -- 3: the allocation gate ----------------------------------------------------------------------------------------


def test_the_cap_is_inclusive_and_a_shared_tensor_counts_once() -> None:
    x = np.arange(1000, dtype=np.float32)
    message = tc.encode({"a": x, "b": x}, checksum=None)  # one entry, referenced twice
    assert tc.decode(message, limits=tc.Limits(max_decoded_bytes=x.nbytes))["b"].tobytes() == x.tobytes()
    _refused(message, "over the cap of 3999", tc.Limits(max_decoded_bytes=x.nbytes - 1))


def test_a_coded_tensor_s_output_is_bounded_by_its_segments() -> None:
    """A small message claiming a huge coded tensor (segments of the right count missing) never allocates it."""
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][1] = [1 << 28]  # 1 GiB of float32 from 300 codes
    _refused(join_message(header, segments), "over the cap|expected payload|truncated")


def test_stream_buffers_are_counted_before_they_are_allocated() -> None:
    entry = [
        "float32",
        [1 << 28],
        [["fp8", {"format": "e4m3", "block": 0}, {}]],
        [["codes", "payload", "float8_e4m3fn", [1 << 28]], ["scale", "meta", "float32", [1]]],
    ]
    frames = _stream([({"index": 0, "entry": entry}, [b"x" * 64])], ref(0), 1)
    decoder = tc.StreamDecoder(limits=tc.Limits(max_decoded_bytes=1 << 20))
    with pytest.raises(DecodeError, match="max_decoded_bytes"):
        for f in frames:
            decoder.feed(f)


_PROBE = textwrap.dedent(
    """
    import io, sys, tracemalloc
    import tensorcodec as tc
    from tensorcodec.wire.stream import Framer, pack_record
    import msgpack
    n = 1 << 28
    entry = ["uint8", [n]]
    framer = Framer(1, 1 << 16)
    frames = [*framer.add(pack_record({"index": 0, "entry": entry})), *framer.add(b"x" * 4096), framer.flush(last=True)]
    tracemalloc.start()
    for run in (lambda: [tc.StreamDecoder().feed(f) for f in frames], lambda: tc.load(io.BytesIO(b"".join(frames)))):
        try:
            run()
        except tc.DecodeError:
            pass
    print(tracemalloc.get_traced_memory()[1])
    """
)


def test_a_stream_claiming_a_huge_tensor_allocates_only_what_arrived() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 8 << 20  # the claim is 256 MiB; 4 KiB of it arrived


# -- 5: strictness ------------------------------------------------------------------------------------------------


def test_a_segment_the_codec_does_not_use_is_refused() -> None:
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][3].append(["extra", "meta", "uint8", [0]])
    _refused(join_message(header, segments), "uses no segment 'extra'", header_only=False)


def test_a_segment_role_or_shape_other_than_the_codec_s_is_refused() -> None:
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][3][1][1] = "payload"
    _refused(join_message(header, segments), "expected meta float32", header_only=False)
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][3][0][3] = [4, 1024]
    _refused(join_message(header, segments), r"\[4, 1024\], expected payload float8_e4m3fn \[4096\]", header_only=False)


def test_a_scalar_reference_to_a_tensor_that_is_not_0d_is_refused() -> None:
    header, segments = _message({"w": np.arange(4, dtype=np.float32)})
    header["tree"] = pack({"w": msgpack.ExtType(3, b"\x00")})
    message = join_message(header, segments)
    _refused(message, "only a 0-d entry")
    with pytest.raises(DecodeError, match="only a 0-d entry"):
        tc.decode(message, framework="torch")


def test_a_big_int_that_fits_64_bits_is_refused() -> None:
    header, segments = _message({"w": 1})
    header["tree"] = pack({"w": msgpack.ExtType(5, b"\x01")})
    _refused(join_message(header, segments), "ext 5")


@pytest.mark.parametrize(
    ("dtype", "byte"), [("bool", 2), ("int4", 0x1F), ("uint2", 4), ("float4_e2m1fn", 0x10), ("float6_e3m2fn", 0x40)]
)
def test_stray_bits_in_a_one_byte_type_are_refused(dtype: str, byte: int) -> None:
    """docs/format.md section 4: a bool byte is 0 or 1, the bits above a narrow type's width are 0."""
    values = np.zeros(8, dtype=tc.dtypes.BY_NAME[dtype].numpy)
    header, segments = _message({"w": values})
    segments[0] = bytes([0] * 7 + [byte])
    _refused(join_message(header, segments), f"a {dtype} byte is {byte:#04x}", header_only=False)
    _stream_refused(_stream([({"index": 0, "entry": [dtype, [8]]}, [segments[0]])], ref(0), 1), "byte is")


@pytest.mark.parametrize(
    ("dtype", "raw", "canonical"), [("bool", [0, 1, 2, 255], [0, 1, 1, 1]), ("int4", [0x1F, 0xF8, 7], [0x0F, 0x08, 7])]
)
def test_arrays_with_stray_bits_encode_to_their_values(dtype: str, raw: list[int], canonical: list[int]) -> None:
    """An array made by reinterpreting bytes keeps its values; only the bits the format forbids go."""
    row = tc.dtypes.BY_NAME[dtype]
    x = np.array(raw, dtype=np.uint8).view(row.numpy)
    before = x.view(np.uint8).copy()
    for message in (tc.encode({"x": x}), b"".join(tc.encode_stream({"x": x}))):
        out = tc.decode(message)["x"] if message[:4] == b"TCDC" else _load(message)["x"]
        assert out.view(np.uint8).tolist() == canonical
        assert out.tolist() == x.tolist()
    assert x.view(np.uint8).tolist() == before.tolist()  # the caller's array is untouched


def _load(data: bytes) -> Any:
    return tc.load(io.BytesIO(data))


def test_the_cli_refuses_a_hostile_message(tmp_path: Path) -> None:
    header, segments = _message({"w": np.arange(4096, dtype=np.float32)}, precision="fp8_e4m3")
    header["tensors"][0][1] = _deep()
    path = tmp_path / "m.tc"
    path.write_bytes(join_message(header, segments))
    for command in ("inspect", "decode"):
        args = [sys.executable, "-m", "tensorcodec", command, str(path)] + (
            [str(tmp_path / "o")] if command == "decode" else []
        )
        out = subprocess.run(args, capture_output=True, text=True)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr and "nest deeper" in out.stderr + out.stdout
