"""encode / decode: lossless round trips, frameworks, zero-copy, frames, ties and refusals."""

from __future__ import annotations

import enum
import math
import struct
import subprocess
import sys
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from _helpers import both_wire_paths, expected_as, header_of, leaves, slow, to_numpy
from hypothesis import given
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import DecodeError
from tensorcodec.testing import assert_bitwise_equal, assert_tree_equal, raw_bytes, strategies, wire_dtype

CHECKSUMS = st.sampled_from([None, "xxh3_64", "crc32c"])


def roundtrip(obj: Any, **decode_kwargs: Any) -> Any:
    return tc.decode(tc.encode(obj), **decode_kwargs)


def buffer_range(buf: Any) -> tuple[int, int]:
    arr = np.frombuffer(buf, dtype=np.uint8)
    return arr.ctypes.data, arr.ctypes.data + arr.nbytes


def inside(ptr: int, buf: Any) -> bool:
    lo, hi = buffer_range(buf)
    return lo <= ptr < hi


# -- property round trips ---------------------------------------------------------------------------------------


@given(strategies.trees(), CHECKSUMS, st.booleans())
def test_trees_round_trip(tree: Any, checksum: str | None, copy: bool) -> None:
    assert_tree_equal(tree, tc.decode(tc.encode(tree, checksum=checksum), copy=copy))


@pytest.mark.slow
@slow()
@given(strategies.trees(), st.sampled_from(["numpy", "torch"]), st.booleans())
def test_trees_round_trip_into_one_framework(tree: Any, framework: str, copy: bool) -> None:
    message = tc.encode(tree)
    if framework == "torch" and any(tc.dtypes.torch_dtype(wire_dtype(x)) is None for x in leaves(tree)):
        with pytest.raises(tc.DecodeError, match="no torch equivalent"):
            tc.decode(message, framework="torch")
        return
    assert_tree_equal(expected_as(tree, framework), tc.decode(message, framework=framework, copy=copy))  # type: ignore[arg-type]


@given(strategies.arrays(max_dims=64), st.booleans())
def test_arrays_round_trip(arr: np.ndarray[Any, Any], copy: bool) -> None:
    back = roundtrip(arr, copy=copy)
    assert type(back) is np.ndarray
    assert back.dtype == wire_dtype(arr).numpy
    assert back.flags.c_contiguous
    assert_bitwise_equal(arr, back)


@given(strategies.torch_tensors(max_dims=64), st.booleans())
def test_torch_tensors_round_trip(t: torch.Tensor, copy: bool) -> None:
    back = roundtrip(t, copy=copy)
    assert type(back) is torch.Tensor
    assert back.dtype is t.dtype and not back.requires_grad and not back.is_conj() and not back.is_neg()
    assert back.is_contiguous()
    assert_bitwise_equal(t, back)
    assert_bitwise_equal(to_numpy(t), roundtrip(t, framework="numpy", copy=copy))


@given(st.data())
def test_numpy_to_torch_every_torch_dtype(data: st.DataObject) -> None:
    arr = data.draw(strategies.arrays(data.draw(strategies.dtypes(torch=True))))
    back = roundtrip(arr, framework="torch")
    assert back.dtype is tc.dtypes.torch_dtype(wire_dtype(arr))
    assert_bitwise_equal(arr, back, same_framework=False)


@given(strategies.python_scalars())
def test_python_scalars_round_trip(value: Any) -> None:
    assert_tree_equal(value, roundtrip(value))
    assert_tree_equal([value, (value,), {"k": value}], roundtrip([value, (value,), {"k": value}]))


# -- frameworks and types ---------------------------------------------------------------------------------------


def test_bfloat16_numpy_side_is_ml_dtypes() -> None:
    t = torch.tensor([1.5, -0.0, float("inf")], dtype=torch.bfloat16)
    back = roundtrip({"w": t}, framework="numpy")["w"]
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.view(np.uint16).tolist() == t.view(torch.int16).numpy().astype(np.uint16).tolist()
    again = roundtrip(back, framework="torch")
    assert again.dtype is torch.bfloat16 and torch.equal(again.view(torch.int16), t.view(torch.int16))


def test_framework_none_keeps_each_tensor_as_sent() -> None:
    tree = {"n": np.arange(3), "t": torch.arange(3), "s": np.float32(2.5)}
    back = roundtrip(tree)
    assert type(back["n"]) is np.ndarray and type(back["t"]) is torch.Tensor and type(back["s"]) is np.float32


def test_framework_torch_turns_numpy_scalars_into_0d_tensors() -> None:
    back = roundtrip({"s": np.float32(2.5), "i": np.int64(-3)}, framework="torch")
    assert back["s"].shape == () and back["s"].dtype is torch.float32 and back["s"].item() == 2.5
    assert back["i"].dtype is torch.int64 and back["i"].item() == -3


@pytest.mark.parametrize(
    "scalar",
    [
        np.float32(1.5),
        np.float16(-0.0),
        np.float64("nan"),
        np.int8(-1),
        np.uint64(2**64 - 1),
        np.bool_(True),
        np.complex64(1 - 2j),
        ml_dtypes.bfloat16(3.0),
        ml_dtypes.float8_e4m3fn(448),
        ml_dtypes.int4(-8),
    ],
    ids=lambda s: type(s).__name__,
)
def test_numpy_scalars_keep_their_type(scalar: Any) -> None:
    back = roundtrip({"s": scalar})["s"]
    assert type(back) is type(scalar)
    assert_bitwise_equal(scalar, back)


def test_python_scalar_types_are_kept() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str, enum.Enum):
        A = "a"

    tree = [True, 1, 1.0, "1", b"1", bytearray(b"1"), None, 2**64, -(2**63) - 1, -0.0, Color.RED, Name.A]
    back = roundtrip(tree)
    assert [type(x) for x in back] == [bool, int, float, str, bytes, bytearray, type(None), int, int, float, int, str]
    assert back[:10] == tree[:10] and back[10:] == [1, "a"]
    assert math.copysign(1.0, back[9]) == -1.0


@pytest.mark.parametrize("bits", [0x7FF8000000000001, 0xFFF0000000000001, 0x7FF4000000000000, 0x8000000000000000])
def test_python_float_bits_are_kept(bits: int) -> None:
    value = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    back = roundtrip({"f": value})["f"]
    assert struct.pack("<d", back) == struct.pack("<d", value)


def test_big_ints() -> None:
    values = [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**100, -(10**100), 2**1000 + 1]
    assert roundtrip(values) == values


def test_containers_keep_their_types_and_key_order() -> None:
    tree = {"z": (1, [2, (3,)]), "a": [(), []], "m": {"y": bytearray(b"\x00"), "b": b"\x00"}, "": {}}
    back = roundtrip(tree)
    assert back == tree
    assert list(back) == ["z", "a", "m", ""] and list(back["m"]) == ["y", "b"]
    assert type(back["z"]) is tuple and type(back["z"][1]) is list and type(back["z"][1][1]) is tuple
    assert type(back["m"]["y"]) is bytearray and type(back["m"]["b"]) is bytes


@pytest.mark.parametrize("root", [None, 0, "x", b"", [], (), {}, np.zeros(0), np.float32(1)], ids=repr)
def test_any_leaf_or_container_can_be_the_root(root: Any) -> None:
    assert_tree_equal(root, roundtrip(root))


def test_device_argument() -> None:
    back = roundtrip({"n": np.arange(3.0), "t": torch.ones(2)}, device="cpu")
    assert back["t"].device.type == "cpu" and isinstance(back["n"], np.ndarray)
    back = roundtrip({"n": np.arange(3.0)}, framework="torch", device=torch.device("cpu"))
    assert back["n"].device.type == "cpu"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="framework"):
        tc.decode(tc.encode(1), framework="jax")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tc.decode("not bytes")
    with pytest.raises(ValueError, match="checksum"):
        tc.encode(1, checksum="md5")


# -- layouts and special tensors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arr",
    [
        np.float32(3).reshape(()),
        np.zeros((0,), np.float32),
        np.zeros((3, 0, 2), np.int64),
        np.zeros((0,) * 64, np.int8),
        np.arange(10.0)[::2],
        np.arange(10.0)[::-3],
        np.arange(12, dtype=np.int32).reshape(3, 4).T,
        np.broadcast_to(np.arange(3), (4, 3)),
        np.arange(6, dtype=">f4"),
        (np.arange(4) + 1j * np.arange(4)).astype(">c16"),
        np.arange(-3, 3, dtype=">i8").reshape(2, 3)[:, ::2],
        np.arange(5, dtype=">u2"),
        np.ones([1] * 64, np.float16),
        np.arange(2**6, dtype=np.uint8).reshape([2] * 6).transpose(5, 0, 3, 1, 4, 2),
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)[:8]}{'c' if a.flags.c_contiguous else 'nc'}",
)
def test_numpy_layouts(arr: np.ndarray[Any, Any]) -> None:
    for copy in (True, False):
        back = roundtrip({"a": arr}, copy=copy)["a"]
        assert back.dtype == arr.dtype.newbyteorder("=") and back.shape == arr.shape
        assert np.array_equal(back, arr)
        assert_bitwise_equal(arr, back)


def _neg_view() -> torch.Tensor:
    t = torch.complex(torch.zeros(3), torch.tensor([1.0, -0.0, float("nan")])).conj().imag
    assert t.is_neg()
    return t


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.tensor(2.5),
        lambda: torch.zeros(0, 3),
        lambda: torch.zeros([1] * 64, dtype=torch.bfloat16),
        lambda: torch.arange(12.0).reshape(3, 4).t(),
        lambda: torch.arange(10)[::3],
        lambda: torch.arange(6.0).reshape(2, 3)[:, 1:],
        lambda: torch.arange(3.0).expand(4, 3),
        lambda: torch.randn(3, 4, requires_grad=True),
        lambda: torch.nn.Parameter(torch.randn(2, 2)),
        lambda: torch.randn(3, dtype=torch.complex64).conj(),
        lambda: torch.randn(2, 3, dtype=torch.complex128).conj().t(),
        _neg_view,
        lambda: torch.randn(4, 4, dtype=torch.float64).to(torch.float8_e5m2).t(),
    ],
    ids=["0d", "empty", "64dims", "t", "step", "offset", "expand", "grad", "param", "conj", "conj_t", "neg", "fp8_t"],
)
def test_torch_layouts_and_flags(make: Any) -> None:
    t = make()
    flags = (t.is_conj(), t.is_neg(), t.requires_grad, t.stride())
    for copy in (True, False):
        back = roundtrip({"t": t}, copy=copy)["t"]
        assert type(back) is torch.Tensor and back.dtype is t.dtype and back.shape == t.shape
        assert not back.requires_grad and not back.is_conj() and not back.is_neg()
        assert_bitwise_equal(t, back)
    assert (t.is_conj(), t.is_neg(), t.requires_grad, t.stride()) == flags


# -- zero-copy decode -------------------------------------------------------------------------------------------


def test_copy_false_numpy_views_alias_the_message() -> None:
    tree = {"a": np.arange(100, dtype=np.float32), "b": np.ones((3, 5), dtype=ml_dtypes.bfloat16)}
    message = tc.encode(tree)
    back = tc.decode(message, copy=False)
    whole = np.frombuffer(message, dtype=np.uint8)
    for k in tree:
        assert not back[k].flags.writeable
        assert np.shares_memory(back[k], whole)
        with pytest.raises(ValueError):
            back[k][0] = 1
    buf = bytearray(message)
    view = tc.decode(buf, copy=False)
    owned = tc.decode(buf, copy=True)
    pos = buf.index(np.float32(7).tobytes())
    buf[pos : pos + 4] = np.float32(-1).tobytes()
    assert view["a"][7] == -1 and owned["a"][7] == 7


def test_copy_false_torch_views_alias_the_message() -> None:
    t = torch.arange(50, dtype=torch.int64)
    message = bytearray(tc.encode({"t": t, "u": t.to(torch.float16)}))
    back = tc.decode(message, copy=False)
    for v in back.values():
        assert inside(v.data_ptr(), message)
    owned = tc.decode(message, copy=True)
    for v in owned.values():
        assert not inside(v.data_ptr(), message)


def test_copy_true_is_writable_and_independent() -> None:
    message = tc.encode({"a": np.arange(4.0), "t": torch.arange(4.0), "s": np.float64(1)})
    back = tc.decode(message)
    assert back["a"].flags.writeable
    assert not np.shares_memory(back["a"], np.frombuffer(message, np.uint8))
    back["a"][0] = 42
    back["t"][0] = 42
    again = tc.decode(message)
    assert again["a"][0] == 0 and again["t"][0] == 0


def test_copy_false_from_frames_is_read_only_even_across_frames() -> None:
    message = tc.encode({"a": np.arange(64, dtype=np.float64)})
    hdr = len(message) - 512
    parts = [message[: hdr + 100], message[hdr + 100 :]]
    back = tc.decode(parts, copy=False)["a"]
    assert not back.flags.writeable
    assert np.array_equal(back, np.arange(64.0))


# -- encode never mutates its input -----------------------------------------------------------------------------


def _state(x: Any) -> tuple[Any, ...]:
    """Everything about a tensor that encode could change, including the memory around a view."""
    if isinstance(x, torch.Tensor):
        storage = torch.empty(0, dtype=torch.uint8).set_(x.untyped_storage()).clone()
        return (raw_bytes(x), x.stride(), x.storage_offset(), x.is_conj(), x.is_neg(), x.requires_grad, storage)
    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    return (raw_bytes(x), x.strides, x.dtype, x.flags.writeable, x.ctypes.data, root.tobytes())


@given(st.one_of(strategies.arrays(), strategies.torch_tensors()), CHECKSUMS)
def test_encode_never_mutates_its_input(x: Any, checksum: str | None) -> None:
    before = _state(x)
    tc.encode({"x": x, "again": [x]}, checksum=checksum)
    tc.encode_frames({"x": x}, checksum=checksum)
    tc.encode_into({"x": x, "again": [x]}, bytearray(1 << 16), checksum=checksum)
    after = _state(x)
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_encode_leaves_big_endian_and_strided_inputs_alone() -> None:
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    view = base[::2, ::-3]
    snapshot = base.tobytes()
    tc.encode({"v": view, "b": base, "c": base.astype(">c16")})
    assert base.tobytes() == snapshot and base.dtype == np.dtype(">f8") and np.shares_memory(view, base)


# -- frames -----------------------------------------------------------------------------------------------------


@given(strategies.trees(), CHECKSUMS)
def test_frames_join_to_the_message_and_decode(tree: Any, checksum: str | None) -> None:
    frames = tc.encode_frames(tree, checksum=checksum)
    message = tc.encode(tree, checksum=checksum)
    assert b"".join(bytes(memoryview(f).cast("B")) for f in frames) == message
    assert_tree_equal(tree, tc.decode(frames))
    assert_tree_equal(tree, tc.decode(tuple(frames), copy=False))


def test_frames_alias_contiguous_tensors() -> None:
    arr = np.arange(1000, dtype=np.float32)
    bf = np.ones(300, dtype=ml_dtypes.bfloat16)
    t = torch.arange(500, dtype=torch.int64)
    strided = np.arange(100.0)[::2]
    frames = tc.encode_frames({"a": arr, "b": bf, "t": t, "s": strided})
    assert any(np.shares_memory(np.frombuffer(f, np.uint8), arr) for f in frames[1:])
    assert any(np.shares_memory(np.frombuffer(f, np.uint8), bf.view(np.uint8)) for f in frames[1:])
    assert any(buffer_range(f)[0] == t.data_ptr() for f in frames[1:])
    assert not any(np.shares_memory(np.frombuffer(f, np.uint8), strided) for f in frames)
    back = tc.decode(frames, copy=False)
    assert np.shares_memory(back["a"], arr) and back["t"].data_ptr() == t.data_ptr()


def test_frames_are_preamble_header_padding_and_segments() -> None:
    a, b = np.arange(3, dtype=np.int8), np.arange(2.0)
    frames = tc.encode_frames({"a": a, "e": np.zeros(0), "b": b})
    assert len(frames) == 5
    head, pad1, seg_a, pad2, seg_b = (bytes(memoryview(f).cast("B")) for f in frames)
    assert len(head) == 16 + int.from_bytes(head[8:12], "little")
    assert (len(head) + len(pad1)) % 64 == 0 and pad1 == bytes(len(pad1))
    assert seg_a == a.tobytes() and seg_b == b.tobytes()
    assert (len(head) + len(pad1) + len(seg_a) + len(pad2)) % 64 == 0 and pad2 == bytes(len(pad2))


@given(strategies.trees(), st.data())
def test_decode_from_any_rechunking(tree: Any, data: st.DataObject) -> None:
    message = tc.encode(tree, checksum="xxh3_64")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=8)))
    bounds = [0, *cuts, len(message)]
    n = len(bounds) - 1
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=n, max_size=n))
    parts = [kind(message[a:b]) for kind, a, b in zip(kinds, bounds[:-1], bounds[1:], strict=True)]
    framework = data.draw(st.sampled_from([None, "numpy"]))
    assert_tree_equal(
        expected_as(tree, framework), tc.decode(parts, copy=data.draw(st.booleans()), framework=framework)
    )


@pytest.mark.parametrize("cut", [1, 3, 5, 17, 65, 99])
def test_torch_from_frames_cut_off_the_element_grid(cut: int) -> None:
    """A frame boundary that is not a multiple of the itemsize must not shift the data."""
    tree = {"x": torch.arange(32, dtype=torch.float64), "y": torch.arange(7, dtype=torch.int16)}
    message = tc.encode(tree)
    for copy in (True, False):
        back = tc.decode([message[:cut], message[cut:]], copy=copy)
        assert torch.equal(back["x"], tree["x"]) and torch.equal(back["y"], tree["y"])
        back = tc.decode([message[:cut], message[cut:]], framework="torch", copy=copy)
        assert torch.equal(back["x"], tree["x"])


@pytest.mark.parametrize("lead", [1, 3, 8])
@pytest.mark.parametrize("copy", [True, False])
def test_torch_tensors_are_aligned_whatever_the_buffer(lead: int, copy: bool) -> None:
    """torch's vector kernels fault on misaligned elements, so a decoded tensor must never be one.

    A message at an odd address (inside a larger buffer, or in frames cut
    anywhere) once gave complex128 views 8 bytes off, which crashed the
    process on the first copy.
    """
    tree = {
        "c": torch.randn(5, dtype=torch.complex128),
        "d": torch.arange(9, dtype=torch.float64),
        "h": torch.ones(3, dtype=torch.float16),
        "b": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "i": torch.arange(7, dtype=torch.int32),
    }
    message = tc.encode(tree)
    shifted = memoryview(bytearray(lead) + message)[lead:]
    for data in (shifted, [message[:lead], message[lead:]], [bytes(shifted[:70]), shifted[70:]]):
        back = tc.decode(data, copy=copy)
        for k, t in back.items():
            assert t.data_ptr() % t.element_size() == 0, k
            assert torch.equal(t.clone(), tree[k])


# -- encode_into ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_out", [bytearray, lambda n: np.zeros(n, np.uint8), lambda n: memoryview(bytearray(n))])
def test_encode_into(make_out: Any) -> None:
    tree = {"a": np.arange(10.0), "t": torch.ones(3, dtype=torch.bfloat16), "k": "v"}
    message = tc.encode(tree, checksum="xxh3_64")
    out = make_out(len(message) + 100)
    np.frombuffer(out, np.uint8)[:] = 0xEE
    n = tc.encode_into(tree, out, checksum="xxh3_64")
    assert n == len(message)
    assert bytes(memoryview(out)[:n]) == message
    assert bytes(memoryview(out)[n:]) == b"\xee" * 100
    assert_tree_equal(tree, tc.decode(memoryview(out)[:n]))


def test_encode_into_refuses_small_or_read_only_buffers() -> None:
    n = len(tc.encode({"a": np.arange(10.0)}))
    with pytest.raises(ValueError, match=str(n)):
        tc.encode_into({"a": np.arange(10.0)}, bytearray(n - 1))
    with pytest.raises(ValueError, match="writable"):
        tc.encode_into({"a": np.arange(10.0)}, bytes(n))


def test_encode_into_reuses_one_buffer() -> None:
    out = bytearray(4096)
    for i in range(3):
        tree = {"i": i, "a": np.full(i * 10, i, dtype=np.int16)}
        n = tc.encode_into(tree, out)
        assert_tree_equal(tree, tc.decode(bytes(out[:n])))


# -- tied tensors -----------------------------------------------------------------------------------------------


def test_same_numpy_array_is_sent_once_and_decodes_to_one_object() -> None:
    a = np.arange(1000.0)
    message = tc.encode({"w": a, "tied": a, "in": [a, (a,)]})
    assert len(header_of(message)["tensors"]) == 1
    assert len(message) < 8000 + 200
    for copy in (True, False):
        back = tc.decode(message, copy=copy)
        assert back["w"] is back["tied"] is back["in"][0] is back["in"][1][0]


@pytest.mark.parametrize(
    "tie",
    [lambda w: w, lambda w: w.view(w.shape), lambda w: w[:], lambda w: w.detach()],
    ids=["same", "view", "slice", "detach"],
)
def test_torch_views_of_the_same_memory_are_sent_once(tie: Any) -> None:
    w = torch.randn(64, 32)
    message = tc.encode({"embed": w, "lm_head": tie(w)})
    assert len(header_of(message)["tensors"]) == 1
    back = tc.decode(message)
    assert back["embed"] is back["lm_head"] and torch.equal(back["embed"], w)
    back = tc.decode(message, framework="numpy")
    assert back["embed"] is back["lm_head"]


@pytest.mark.parametrize(
    "other",
    [
        lambda w: w.t(),
        lambda w: w[1:],
        lambda w: w.reshape(-1),
        lambda w: w.view(torch.int32),
        lambda w: w.clone(),
    ],
    ids=["t", "offset", "reshape", "dtype", "clone"],
)
def test_different_views_are_sent_separately(other: Any) -> None:
    w = torch.arange(12.0).reshape(3, 4)
    tree = {"a": w, "b": other(w)}
    message = tc.encode(tree)
    assert len(header_of(message)["tensors"]) == 2
    assert_tree_equal(tree, tc.decode(message))


def test_lazy_conj_and_neg_views_are_not_tied_to_their_base() -> None:
    c = torch.randn(4, dtype=torch.complex64)
    tree = {"c": c, "conj": c.conj(), "im": c.imag, "neg_im": c.conj().imag}
    message = tc.encode(tree)
    assert len(header_of(message)["tensors"]) == 4
    assert_tree_equal(tree, tc.decode(message))


def test_equal_but_distinct_arrays_are_sent_twice() -> None:
    message = tc.encode([np.zeros(4), np.zeros(4)])
    assert len(header_of(message)["tensors"]) == 2
    a, b = tc.decode(message)
    assert a is not b


# -- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "path", "what"),
    [
        ({"a": [1, 2, np.array([None, 1], dtype=object)]}, r"root\['a'\]\[2\]", "object"),
        ({"a": {1, 2}}, r"root\['a'\]", "set"),
        ([1, (2, 3j)], r"root\[1\]\[1\]", "complex"),
        ({"a": {"b": {1: "x"}}}, r"root\['a'\]\['b'\]", "dict key 1"),
        ({"s": torch.eye(3).to_sparse()}, r"root\['s'\]", "sparse"),
        (lambda: {"s": [torch.eye(3).to_sparse_csr()]}, r"root\['s'\]\[0\]", "sparse"),
        (lambda: {"q": torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8)}, r"root\['q'\]", "quint8"),
        ({"m": torch.empty(2, device="meta")}, r"root\['m'\]", "meta"),
        ({"l": np.zeros(2, np.longdouble)}, r"root\['l'\]", "float128|longdouble"),
        ({"u": np.array(["x"])}, r"root\['u'\]", "<U1"),
        ({"d": np.array([0], "M8[s]")}, r"root\['d'\]", "datetime"),
        ({"m": np.ma.masked_array([1, 2], [0, 1])}, r"root\['m'\]", "mask"),
        ({"f": print}, r"root\['f'\]", "builtin_function_or_method"),
        ((object(),), r"root\[0\]", "object"),
    ],
    ids=[
        "object_array",
        "set",
        "complex",
        "int_key",
        "sparse",
        "csr",
        "quantized",
        "meta",
        "longdouble",
        "str_array",
        "datetime",
        "masked",
        "function",
        "object",
    ],
)
def test_unsupported_objects_raise_type_error_naming_the_path(tree: Any, path: str, what: str) -> None:
    if "longdouble" in what and np.dtype(np.longdouble) == np.float64:
        pytest.skip("long double is double here")
    if callable(tree):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: sparse CSR is beta, quantized tensors are deprecated
            tree = tree()
    with pytest.raises(TypeError, match=rf"^{path}: .*({what})"):
        tc.encode(tree)


def _nest(n: int, leaf: Any = 1) -> Any:
    for _ in range(n):
        leaf = [leaf]
    return leaf


def test_nesting_limit() -> None:
    assert roundtrip(_nest(64)) == _nest(64)
    with pytest.raises(ValueError, match=r"^root(\[0\]){64}: nesting deeper than max_depth=64"):
        tc.encode(_nest(65))
    message = tc.encode(_nest(65), max_depth=65)
    with pytest.raises(tc.DecodeError, match="max_depth=64"):
        tc.decode(message)
    assert tc.decode(message, limits=tc.Limits(max_depth=65)) == _nest(65)
    with pytest.raises(ValueError, match="max_depth=3"):
        tc.encode({"a": {"b": {"c": {}}}}, max_depth=3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (lambda x: (x.append(x), x)[1])([]),
        lambda: (lambda d: (d.__setitem__("self", d), d)[1])({}),
        lambda: (lambda x: (x.append((x,)), x)[1])([]),
    ],
    ids=["list", "dict", "through_tuple"],
)
def test_reference_cycles_raise_value_error(make: Any) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        tc.encode(make())


def test_failed_encode_writes_nothing_into_the_buffer() -> None:
    out = bytearray(b"\x01" * 256)
    with pytest.raises(TypeError):
        tc.encode_into({"a": np.arange(3), "b": {1, 2}}, out)
    assert out == bytearray(b"\x01" * 256)


def test_concurrent_encodes_agree() -> None:
    """Threads encoding at once share the interned table references; every message must still be right."""
    import threading

    from tensorcodec.wire import tree as tree_module

    for refs in tree_module._REFS.values():
        refs.clear()  # make the threads grow the interned references together
    trees = [
        {f"t{i}": (torch.full((3,), float(i)) if (i + k) % 2 else np.full(3, i, np.int32)) for i in range(700)}
        for k in range(4)
    ]
    errors: list[BaseException] = []

    def work(obj: dict[str, Any]) -> None:
        try:
            for _ in range(5):
                back = tc.decode(tc.encode(obj))
                assert back.keys() == obj.keys()
                for key, value in obj.items():
                    assert type(back[key]) is type(value)
                    assert np.array_equal(np.asarray(back[key]), np.asarray(value)), key
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch fails, as on a machine without it
import numpy as np
import tensorcodec as tc
tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [np.int8(3), (np.zeros(0),)], "s": "x"}
big = {"w": np.linspace(-1, 1, 8192, dtype=np.float32)}
for copy in (True, False):
    for data in (tc.encode(tree), tc.encode(tree, checksum="xxh3_64"), tc.encode_frames(tree)):
        back = tc.decode(data, copy=copy)
        assert np.array_equal(back["w"], tree["w"]) and back["s"] == "x" and back["b"][1][0].size == 0
for precision in ("nf4", "blockwise8", "bf16", "minmax8"):
    back = tc.decode(tc.encode(big, precision=precision))
    assert back["w"].dtype == np.float32 and np.abs(back["w"] - big["w"]).max() < 0.2
streamed = tc.decode_stream(tc.encode_stream(tree, max_frame_bytes=4096))
assert np.array_equal(streamed["w"], tree["w"])
print("ok", "torch" in sys.modules and sys.modules["torch"] is not None)
"""


def test_the_core_works_without_torch() -> None:
    """numpy users need no torch: nothing in encode or decode of numpy trees may import it."""
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "ok False"


_TORCH_LATE = """
import sys
import tensorcodec as tc
message = sys.stdin.buffer.read()
assert "torch" not in sys.modules
back = tc.decode(message, copy=False)
import torch
assert all(type(t) is torch.Tensor for t in back.values()), back
print(back["f"].dtype, back["b"].dtype, back["f"].tolist(), back["b"].float().tolist())
"""


def test_torch_tensors_decode_where_torch_is_not_imported_yet() -> None:
    """A receiver that has not imported torch gets torch tensors all the same: decode imports it when asked."""
    message = tc.encode({"f": torch.arange(3.0), "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)})
    proc = subprocess.run([sys.executable, "-c", _TORCH_LATE], input=message, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == [
        "torch.float32",
        "torch.bfloat16",
        "[0.0,",
        "1.0,",
        "2.0]",
        "[1.5,",
        "-2.0]",
    ]


_TORCH_MISSING = """
import sys
sys.modules["torch"] = None  # any import of torch fails, as on a machine without it
import tensorcodec as tc
messages = [sys.stdin.buffer.read(n) for n in map(int, sys.argv[1:])]
for native in (True, False):
    if native and not tc.native_enabled():
        continue
    tc.set_native(native)
    for message in messages:
        for kw in ({}, {"copy": False}):
            try:
                tc.decode(message, **kw)
            except ModuleNotFoundError as e:
                assert e.name == "torch" and "framework='numpy'" in str(e), e
            else:
                raise AssertionError("decoded torch tensors without torch")
        assert type(tc.decode(message, framework="numpy")["w"]).__name__ == "ndarray"
print("ok")
"""


def test_torch_tensors_where_torch_is_missing_say_what_to_do() -> None:
    """A numpy-only receiver of torch tensors gets one error naming the fix, on every path, never a DecodeError."""
    messages = [
        tc.encode({"w": torch.ones(3)}),
        tc.encode({"w": torch.ones(3, dtype=torch.bfloat16), "s": torch.tensor(2)}),
        tc.encode({"w": torch.ones(4096, dtype=torch.bfloat16)}, precision="nf4"),
    ]
    args = [str(len(m)) for m in messages]
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_MISSING, *args], input=b"".join(messages), capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "ok"


# -- the C tree decoder's tables agree with the Python callbacks -----------------------------------------------


def _describe(value: Any, spans: list[tuple[int, int]]) -> Any:
    """Type, dtype, shape, bytes, writability and whether it lies inside ``spans`` (the message's memory)."""

    def inside(address: int, size: int) -> bool:
        return size > 0 and any(start <= address < end for start, end in spans)

    if isinstance(value, dict):
        return {k: _describe(v, spans) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_describe(v, spans) for v in value])
    if isinstance(value, torch.Tensor):
        flat = value.reshape(-1).view(torch.uint8) if value.numel() else value.new_empty(0).view(torch.uint8)
        return (
            "torch",
            str(value.dtype),
            tuple(value.shape),
            flat.numpy().tobytes(),
            inside(value.data_ptr(), value.numel()),
        )
    if isinstance(value, np.ndarray):
        where = inside(value.ctypes.data, value.size)
        return ("numpy", str(value.dtype), value.shape, value.tobytes(), value.flags.writeable, where)
    if isinstance(value, np.generic):
        return ("scalar", str(value.dtype), value.tobytes())
    return (type(value).__name__, repr(value))


@pytest.mark.parametrize("framework", [None, "numpy", "torch"])
@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("buffer", ["bytes", "shifted", "frames"])
def test_decode_answers_alike_through_c_tables_and_python_callbacks(
    framework: str | None, copy: bool, buffer: str
) -> None:
    w = torch.randn(3, 4)
    tree = {
        "f32": w,
        "tied": w,
        "bf16": torch.randn(2, 5).to(torch.bfloat16),
        "fp8": torch.randn(7).to(torch.float8_e4m3fn),
        "c64": torch.randn(3, dtype=torch.complex64),
        "i64": torch.arange(5),
        "b": torch.tensor([True, False]),
        "0d": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "np": [np.arange(6, dtype=np.int16).reshape(2, 3), np.ones(3, ml_dtypes.bfloat16), np.float32(1.5)],
        "coded": torch.randn(64, 64),
    }
    message = tc.encode(tree, policy={"coded": "nf4"})
    data: Any = message
    if buffer == "shifted":
        data = memoryview(bytearray(3) + message)[3:]
    elif buffer == "frames":
        data = [message[:200], message[200:]]
    parts = data if isinstance(data, list) else [data]
    spans = []
    for part in parts:
        start = int(np.frombuffer(part, np.uint8).ctypes.data)
        spans.append((start, start + len(part)))

    def run() -> Any:
        back = tc.decode(data, copy=copy, framework=framework)  # type: ignore[arg-type]
        assert back["f32"] is back["tied"]
        return _describe(back, spans)

    fast, python = both_wire_paths(run, (DecodeError,))
    assert fast == python
    leaves = [v for v in fast.values() if v[0] != "list"] + fast["np"][1]
    aliased = {leaf[1] for leaf in leaves if leaf[0] != "scalar" and leaf[-1]}
    assert not aliased if copy else buffer == "shifted" or len(aliased) >= 4  # copies never alias; views do
