"""The tree layer: how containers and scalars become msgpack, and how hostile trees are refused."""

from __future__ import annotations

import gc
import struct
import subprocess
import sys
import weakref
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from _helpers import FASTTREE, FASTWIRE, both_wire_paths, native, pack, ref
from hypothesis import given
from hypothesis import strategies as st

from tensorcodec import DecodeError, encode, wire
from tensorcodec.testing import strategies
from tensorcodec.wire.tree import (
    EXT_BIGINT,
    EXT_BYTEARRAY,
    EXT_TUPLE,
    NO_ROUTES,
    flatten,
    format_path,
    unflatten,
    walk_tables,
)


def tree_of(obj: Any) -> Any:
    """The msgpack tree that encode writes, with ext values left as ExtType."""
    return msgpack.unpackb(flatten(obj, 64)[0], raw=False)


def refs(kind: int, index: int) -> tuple[int, int]:
    return kind, index


def unflat(data: bytes, n_tensors: int = 0, max_depth: int = 64) -> Any:
    return unflatten(data, lambda index, kind: ("tensor", index, kind), n_tensors, max_depth)


# -- the msgpack representation ---------------------------------------------------------------------------------


def test_plain_msgpack_types_travel_as_themselves() -> None:
    obj = {"s": "é", "b": b"\x00", "i": -5, "u": 2**64 - 1, "f": 0.1, "t": True, "n": None, "l": [1, [2]]}
    assert flatten(obj, 64)[0] == pack(obj)


def test_tuple_bytearray_and_big_int_are_ext_types() -> None:
    assert tree_of((1, 2)) == msgpack.ExtType(EXT_TUPLE, pack([1, 2]))
    assert tree_of(()) == msgpack.ExtType(EXT_TUPLE, pack([]))
    assert tree_of(bytearray(b"ab")) == msgpack.ExtType(EXT_BYTEARRAY, b"ab")
    assert tree_of(2**64) == msgpack.ExtType(EXT_BIGINT, (2**64).to_bytes(9, "little", signed=True))
    assert tree_of(-(2**63) - 1) == msgpack.ExtType(EXT_BIGINT, (-(2**63) - 1).to_bytes(9, "little", signed=True))
    assert tree_of(((1,),)) == msgpack.ExtType(EXT_TUPLE, pack([msgpack.ExtType(EXT_TUPLE, pack([1]))]))


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 0, -1, 2**63])
def test_ints_inside_64_bits_are_plain(value: int) -> None:
    assert tree_of(value) == value


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**64 * 255, -(2**200), 2**1000])
def test_ints_outside_64_bits_are_minimal_twos_complement(value: int) -> None:
    ext = tree_of(value)
    assert ext.code == EXT_BIGINT
    assert int.from_bytes(ext.data, "little", signed=True) == value
    assert len(ext.data) == (value.bit_length() + 8) // 8


def test_tensor_references_and_table_order() -> None:
    a, b = np.arange(3), torch.arange(2)
    data, leaves, _ = flatten({"a": a, "b": b, "s": np.float32(1), "again": a}, 64)
    assert msgpack.unpackb(data, raw=False) == {
        "a": msgpack.ExtType(1, b"\x00"),
        "b": msgpack.ExtType(2, b"\x01"),
        "s": msgpack.ExtType(3, b"\x02"),
        "again": msgpack.ExtType(1, b"\x00"),
    }
    assert [leaf.dtype.name for leaf in leaves] == ["int64", "int64", "float32"]


def test_references_grow_to_two_and_four_bytes() -> None:
    from tensorcodec.wire.tree import _ref

    assert _ref(1, 255).data == b"\xff"
    assert _ref(1, 256).data == b"\x00\x01"
    assert _ref(2, 65535).data == b"\xff\xff"
    assert _ref(3, 65536).data == (65536).to_bytes(4, "little")


def test_many_tensors_round_trip_through_wide_references() -> None:
    from tensorcodec import decode

    tree = [np.array([i], dtype=np.int32) for i in range(300)]
    back = decode(encode(tree))
    assert [int(x[0]) for x in back] == list(range(300))


def test_format_path() -> None:
    assert format_path([]) == "root"
    assert format_path(["a", 2, "b'c"]) == "root['a'][2][\"b'c\"]"


def test_leaf_names_follow_the_path() -> None:
    _, _, names = flatten({"layer": [{"w": np.zeros(1)}, np.zeros(1)], "b": torch.zeros(1)}, 64, names=True)
    assert names == ["layer.0.w", "layer.1", "b"]


# -- unflatten: the decoding side -------------------------------------------------------------------------------


def test_unflatten_builds_tuples_inside_out() -> None:
    data = flatten(((1, [2, (3,)]), {"t": ((),)}), 64)[0]
    assert unflat(data) == ((1, [2, (3,)]), {"t": ((),)})
    assert type(unflat(data)[0][1][1]) is tuple


def test_unflatten_resolves_references_with_their_kind(wire_impl: str) -> None:
    data = pack([msgpack.ExtType(1, b"\x00"), msgpack.ExtType(2, b"\x01\x00"), msgpack.ExtType(3, b"\x02\x00\x00\x00")])
    assert unflat(data, 3) == [("tensor", 0, 1), ("tensor", 1, 2), ("tensor", 2, 3)]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (msgpack.ExtType(7, b""), "unknown ext type code 7"),
        (msgpack.ExtType(0, b"\x00"), "unknown ext type code 0"),
        (msgpack.ExtType(127, b"x"), "unknown ext type code 127"),
        (msgpack.ExtType(1, b""), "tensor reference of 0 bytes"),
        (msgpack.ExtType(1, b"\x00\x00\x00"), "tensor reference of 3 bytes"),
        (msgpack.ExtType(2, b"\x00" * 8), "tensor reference of 8 bytes"),
        (msgpack.ExtType(1, b"\x05"), "reference to tensor 5, but the table has 1"),
        (msgpack.ExtType(3, b"\xff\xff\xff\xff"), "reference to tensor 4294967295"),
        (msgpack.ExtType(EXT_BIGINT, b""), "empty big-int"),
        (msgpack.ExtType(EXT_TUPLE, pack({"a": 1})), "tuple payload is not a msgpack array"),
        (msgpack.ExtType(EXT_TUPLE, pack(1)), "tuple payload is not a msgpack array"),
        (msgpack.ExtType(EXT_TUPLE, pack([1]) + b"\x01"), "malformed msgpack"),
        (msgpack.ExtType(EXT_TUPLE, b"\x92\x01"), "malformed msgpack"),
        (msgpack.ExtType(EXT_TUPLE, pack(msgpack.ExtType(EXT_TUPLE, pack([])))), "not a msgpack array"),
        ([msgpack.ExtType(EXT_TUPLE, pack([msgpack.ExtType(9, b"")]))], "unknown ext type code 9"),
    ],
    ids=repr,
)
def test_unflatten_rejects_bad_ext_values(tree: Any, message: str, wire_impl: str) -> None:
    with pytest.raises(DecodeError, match=message):
        unflat(pack([tree, msgpack.ExtType(1, b"\x00")]), 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate dict key 'a'"),
        (b"\x91\x82\xa1k\x01\xa1k\x01", "duplicate dict key 'k'"),
        (b"\x81\x01\x02", "malformed msgpack"),
        (b"\x81\xc4\x01k\x02", "dict key b'k' is not a str"),
        (b"\x81\xc0\x01", "malformed msgpack"),
        (b"\xa2\xff\xfe", "malformed msgpack"),
        (b"\x92\x01", "malformed msgpack"),
        (b"\x01\x02", "malformed msgpack"),
        (b"", "malformed msgpack"),
        (b"\xc1", "malformed msgpack"),
        (b"\xd6\xff\x00\x00\x00\x05", "timestamp"),
        (b"\x91\xd6\xff\x00\x00\x00\x05", "timestamp"),
        (b"\xc7\x03\xff\x00\x00\x00", "malformed msgpack"),
        (b"\xd4\xfe\x00", "unknown ext type code -2"),
    ],
    ids=lambda x: x.hex() if isinstance(x, bytes) else x,
)
def test_unflatten_rejects_malformed_trees(data: bytes, message: str, wire_impl: str) -> None:
    with pytest.raises(DecodeError, match=message):
        unflat(data)


def test_unflatten_requires_every_entry_referenced(wire_impl: str) -> None:
    with pytest.raises(DecodeError, match="tensor 1 is in the table but the tree never references it"):
        unflat(pack([msgpack.ExtType(1, b"\x00"), msgpack.ExtType(1, b"\x02")]), 3)
    assert unflat(pack([msgpack.ExtType(1, b"\x00")] * 3), 1) == [("tensor", 0, 1)] * 3


def _nested(depth: int, container: str) -> bytes:
    inner: Any = 0
    for _ in range(depth):
        if container == "list":
            inner = [inner]
        elif container == "dict":
            inner = {"k": inner}
        else:
            inner = msgpack.ExtType(EXT_TUPLE, pack([inner]))
    return pack(inner)


@pytest.mark.parametrize("container", ["list", "dict", "tuple"])
def test_depth_limit_is_exact(container: str, wire_impl: str) -> None:
    assert unflat(_nested(64, container)) is not None
    with pytest.raises(DecodeError, match="nesting deeper than max_depth=64"):
        unflat(_nested(65, container))
    with pytest.raises(DecodeError, match="max_depth=3"):
        unflat(_nested(4, container), max_depth=3)
    assert unflat(_nested(4, container), max_depth=4) is not None


_SMALL_STACK_SCRIPT = """
import sys, threading
from tensorcodec import DecodeError
from tensorcodec.wire.tree import unflatten
depth, data = int(sys.argv[1]), sys.stdin.buffer.read()
out = []
def run():
    try:
        value = unflatten(data, lambda i, k: None, 0, 64)
        for _ in range(depth):
            assert type(value) is tuple
            value = value[0]
        out.append("decoded")
    except DecodeError as e:
        out.append("DecodeError: " + str(e))
threading.stack_size(256 * 1024)
t = threading.Thread(target=run)
t.start()
t.join()
print(out[0])
"""


@pytest.mark.parametrize(("depth", "expected"), [(60, "decoded"), (400, "DecodeError: tree: nesting deeper")])
def test_nested_tuples_on_a_small_stack(depth: int, expected: str) -> None:
    """Each tuple is its own msgpack payload; unpacking them recursively once crashed the process.

    On a thread with a 256 KiB stack, recursing into msgpack's C unpacker
    (tens of KiB a level) overflowed after about 20 levels, so a 2 KB message
    of nested tuples was a segfault. This runs in a child process that must
    exit cleanly.
    """
    data = _nested(depth, "tuple")
    assert len(data) < 4000
    proc = subprocess.run(
        [sys.executable, "-c", _SMALL_STACK_SCRIPT, str(depth)], input=data, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().startswith(expected)


def test_tuple_payload_chains_are_refused_without_recursion() -> None:
    inner: Any = msgpack.ExtType(EXT_TUPLE, pack([]))
    for _ in range(3000):
        inner = msgpack.ExtType(EXT_TUPLE, pack(inner))
    with pytest.raises(DecodeError, match="tuple payload is not a msgpack array"):
        unflat(pack(inner))


def test_floats_of_either_width_are_accepted() -> None:
    assert unflat(b"\xca\x3f\xc0\x00\x00") == 1.5
    assert unflat(b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00") == 1.5


def test_big_int_payloads_decode_as_signed() -> None:
    assert unflat(pack(msgpack.ExtType(EXT_BIGINT, b"\x00" * 9 + b"\x01"))) == 2**72
    assert unflat(pack(msgpack.ExtType(EXT_BIGINT, (-(2**63) - 1).to_bytes(9, "little", signed=True)))) == -(2**63) - 1


@pytest.mark.parametrize("payload", [b"\xff", b"\x00" * 8 + b"\x01\x00", (2**64 - 1).to_bytes(9, "little")])
def test_big_ints_that_a_msgpack_int_holds_or_not_shortest_are_refused(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="ext 5"):
        unflat(pack(msgpack.ExtType(EXT_BIGINT, payload)))


# -- the C walk (tensorcodec._fastwire.plain_walk) against the Python one -----------------------------------------


def _flatten_both_ways(obj: Any, max_depth: int = 64) -> list[Any]:
    """flatten's tree bytes and leaves (data as bytes), or the error it raised, with and without the C walk."""

    def run() -> Any:
        tree_bytes, leaves, _ = flatten(obj, max_depth)
        return tree_bytes, [(lf.kind, lf.dtype, lf.shape, bytes(memoryview(lf.data)), lf.encoded) for lf in leaves]

    return both_wire_paths(run, (TypeError, ValueError))


def _odd_tensors() -> st.SearchStrategy[Any]:
    """Leaves that the C walk must hand back to Python (views, strided, tied, conj/neg bits, big ints, subclasses),
    and the odd ones it reads itself (grad, Parameter, 0-d, empty, offset slices)."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = torch.arange(6.0).reshape(2, 3)
    c = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    return st.sampled_from(
        [
            base,
            base.T,
            base[:, 1],
            base.astype(">f4"),
            np.ma.masked_array([1, 2]),
            t,
            t.T,
            t[1:],
            t[:, 1:],
            t.requires_grad_(False).clone().requires_grad_(True),
            torch.nn.Parameter(torch.arange(3.0)),
            torch.nn.Parameter(torch.arange(3), requires_grad=False),
            c,
            c.conj(),
            torch._neg_view(torch.arange(3.0)),
            torch.tensor(2.5),
            torch.tensor(True),
            torch.ones(2, dtype=torch.bfloat16),
            torch.zeros(0),
            torch.zeros(2, 0, dtype=torch.int16),
            torch.arange(10.0).reshape(5, 2)[::2],
            2**64,
            -(2**63) - 1,
            2**64 - 1,
            True,
            b"\x00",
            bytearray(b"x"),
        ]
    )


@pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")
@given(
    st.one_of(
        strategies.trees(),
        st.recursive(
            _odd_tensors(),
            lambda c: st.one_of(
                st.lists(c, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), c, max_size=3)
            ),
            max_leaves=8,
        ),
    ),
    st.integers(0, 5),
)
def test_c_walk_agrees_with_python(obj: Any, max_depth: int) -> None:
    fast, python = _flatten_both_ways(obj, max_depth)
    assert fast == python


@pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")
def test_c_walk_shares_nothing_it_should_not() -> None:
    a = np.arange(3.0)
    t = torch.ones(4)
    obj = {"a": a, "again": a, "t": t, "tied": t, "k": {1: 2}}
    assert _flatten_both_ways({"a": a, "again": a})[0] == _flatten_both_ways({"a": a, "again": a})[1]
    assert _flatten_both_ways({"t": t, "tied": t[:]})[0] == _flatten_both_ways({"t": t, "tied": t[:]})[1]
    fast, python = _flatten_both_ways(obj)
    assert fast == python and "not a str" in fast


def _c_leaf(t: torch.Tensor) -> Any:
    """The data of the leaf that the C walk makes of ``t``, or None where it hands the tree back to tree.py."""
    assert FASTWIRE is not None
    done = FASTWIRE.plain_walk({"t": t}, 64, walk_tables())
    return None if done is None else done[1][0].data


@pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")
@pytest.mark.parametrize(
    "t",
    [
        torch.arange(12.0).reshape(3, 4),
        torch.arange(12.0).reshape(3, 4)[1:],
        torch.tensor(-1.5, dtype=torch.float64),
        torch.arange(5, dtype=torch.int16),
        torch.nn.Parameter(torch.ones(2, 2)),
        torch.tensor([1 + 1j], dtype=torch.complex128),
    ],
    ids=repr,
)
def test_c_walk_exports_a_tensors_bytes_read_only(t: torch.Tensor) -> None:
    data = _c_leaf(t)
    assert type(data).__name__ == "TensorBytes"
    expected = t.detach().numpy().tobytes()
    view = memoryview(data)
    assert (view.format, view.ndim, view.shape, view.readonly) == ("B", 1, (len(expected),), True)
    assert data.nbytes == len(expected) and bytes(data) == expected and view.tobytes() == expected
    assert np.frombuffer(data, np.uint8).ctypes.data == t.data_ptr()  # the tensor's own memory, no copy
    with pytest.raises(TypeError):
        view[0] = 1
    for name, fn in wire.CHECKSUMS.items():
        assert fn(data) == fn(expected), name
    with pytest.raises(TypeError):
        type(data)()


@pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")
def test_c_walk_leaf_keeps_its_tensor_alive() -> None:
    t = torch.arange(1000.0)
    data = _c_leaf(t)
    alive = weakref.ref(t)
    del t
    gc.collect()
    assert alive() is not None
    assert np.frombuffer(data, np.float32)[999] == 999.0
    del data
    gc.collect()
    assert alive() is None


@pytest.mark.skipif(FASTWIRE is None, reason="tensorcodec._fastwire is not built")
def test_c_walk_reads_grad_tensors_and_leaves_bits_and_layouts_to_python() -> None:
    assert type(_c_leaf(torch.arange(4.0, requires_grad=True))).__name__ == "TensorBytes"
    assert type(_c_leaf(torch.nn.Parameter(torch.ones(3)))).__name__ == "TensorBytes"
    c = torch.tensor([1 + 2j], dtype=torch.complex64)
    for odd in (c.conj(), torch._neg_view(torch.ones(2)), torch.ones(4)[::2], torch.ones(2, 2).T):
        fast, python = _flatten_both_ways({"x": odd})
        assert fast == python
        assert _c_leaf(odd) is None
    for empty in (torch.zeros(0), torch.zeros(3, 0)):
        assert _c_leaf(empty).nbytes == 0
    assert _c_leaf(torch.empty(2, device="meta")) is None
    assert _c_leaf(torch.eye(2).to_sparse()) is None


# -- the C tree decoder (tensorcodec._fasttree) --------------------------------------------------------------------

_needs_fasttree = pytest.mark.skipif(FASTTREE is None, reason="tensorcodec._fasttree is not built")


def _strict(value: Any) -> Any:
    """A value with its types spelled out, so that 1, 1.0 and True, or a list and a tuple, compare unequal."""
    if isinstance(value, dict):
        return ("dict", [(_strict(k), _strict(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_strict(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def _python_unflat(data: bytes, n_tensors: int, max_depth: int) -> Any:
    with native(False):
        try:
            return unflat(data, n_tensors, max_depth)
        except DecodeError as e:
            return f"DecodeError: {e}"


def _c_agrees(data: bytes, n_tensors: int = 3, max_depth: int = 64) -> bool:
    """The C decoder either leaves the tree to tree.py (None) or gives exactly tree.py's answer; True if it decoded."""
    assert FASTTREE is not None
    referenced = bytearray(n_tensors)
    done = FASTTREE.unpack_tree(data, max_depth, referenced, lambda i, k: ("tensor", i, k), NO_ROUTES)
    if done is None:
        return False
    python = _python_unflat(data, n_tensors, max_depth)
    if referenced.find(0) >= 0:  # tree.py then refuses the tree for the unreferenced entry
        assert isinstance(python, str) and "never references" in python
    else:
        assert _strict(done[0]) == _strict(python)
    return True


_msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.builds(msgpack.ExtType, st.integers(0, 8), st.binary(max_size=5)),
        st.builds(msgpack.Timestamp, st.integers(0, 2**33)),
        st.builds(lambda kind, i: msgpack.ExtType(kind, i.to_bytes(4, "little")), st.integers(1, 3), st.integers(0, 3)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3), st.binary(max_size=2)), inner, max_size=4),
    ),
    max_leaves=12,
)


@_needs_fasttree
@given(_msgpack_values, st.integers(0, 4))
def test_c_tree_decoder_agrees_with_python(value: Any, max_depth: int) -> None:
    _c_agrees(msgpack.packb(value, use_bin_type=True), 3, max_depth)


@_needs_fasttree
@given(strategies.trees(), st.data())
def test_c_tree_decoder_agrees_on_mutated_trees(obj: Any, data: st.DataObject) -> None:
    packed = bytearray(flatten(obj, 64)[0])
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        at = data.draw(st.integers(0, max(0, len(packed) - 1)))
        if action == "flip" and packed:
            packed[at] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del packed[at:]
        else:
            packed[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _c_agrees(bytes(packed), 40)


@_needs_fasttree
def test_c_tree_decoder_takes_the_common_subset_and_leaves_the_rest() -> None:
    common = {"a": [1, -1, 2**64 - 1, -(2**63), 0.5, "é", b"\x00", None, True], "r": ref(0), "s": ref(1, 2)}
    assert _c_agrees(pack(common), 2)
    assert _c_agrees(msgpack.packb([1.5, -0.0, float("inf"), 1e-40], use_single_float=True), 0)
    for other in [(1, 2), 2**64, bytearray(b"x"), {"k": {"k": {"k": 1}}}]:  # tuples, big ints, bytearray, depth
        assert not _c_agrees(flatten(other, 64)[0], 0, max_depth=2)
    malformed = [b"\x82\xa1a\x01\xa1a\x02", b"\x81\x01\x02", b"\x92\x01", b"\x01\x02", b"", b"\xc1", b"\xa2\xff\xfe"]
    for data in malformed:  # duplicate and non-str keys, truncation, trailing bytes, reserved byte, bad UTF-8
        assert not _c_agrees(data)


@_needs_fasttree
@pytest.mark.parametrize("head", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"])
def test_c_tree_decoder_allocates_nothing_for_hostile_counts(head: bytes) -> None:
    """A 4-billion-item array, map or string in a few bytes is refused before anything is allocated."""
    assert not _c_agrees(head + b"\x01" * 10)


@_needs_fasttree
def test_c_tree_decoder_leaves_deep_nesting_to_python() -> None:
    deep = b"\x91" * 100_000 + b"\x01"
    assert not _c_agrees(deep, 0, max_depth=10**6)  # past the recursion limit: no crash, tree.py's answer
    with pytest.raises(DecodeError, match="tree: "):
        unflat(deep, 0, max_depth=10**6)


@_needs_fasttree
def test_routes_answer_from_tables_and_call_back_for_the_rest() -> None:
    calls: list[tuple[int, int]] = []

    def resolve(index: int, kind: int) -> Any:
        calls.append((index, kind))
        return ("resolved", index, kind)

    def convert(source: Any) -> Any:
        if source == "bad":
            raise ValueError("cannot")
        return ["converted", source]

    def broken(*args: Any) -> Any:
        raise RuntimeError("no")

    numpy_route = (["ready", None, None, None, None], None, None)
    torch_route = ([None] * 5, ["a", (tuple, "bc"), None, "bad", (broken, 1)], convert)
    data = pack([ref(0), ref(1), ref(0, 2), ref(1, 2), ref(1, 2), ref(2, 2), ref(3, 2), ref(4, 2), ref(2, 3)])
    referenced = bytearray(5)
    assert FASTTREE is not None
    done = FASTTREE.unpack_tree(data, 64, referenced, resolve, (None, numpy_route, torch_route, None))
    assert done is not None
    first, second = ["converted", "a"], ("b", "c")  # convert(source); a call (fn, *args)
    r = ("resolved",)
    assert done[0] == ["ready", (*r, 1, 1), first, second, second, (*r, 2, 2), (*r, 3, 2), (*r, 4, 2), (*r, 2, 3)]
    assert done[0][3] is done[0][4]  # made once, then taken from the cache
    assert torch_route[0] == [first, second, None, None, None]
    assert calls == [(1, 1), (2, 2), (3, 2), (4, 2), (2, 3)] and referenced == bytearray(b"\x01" * 5)


@_needs_fasttree
def test_an_error_from_resolve_propagates() -> None:
    def resolve(index: int, kind: int) -> Any:
        raise DecodeError(f"tensor {index}: broken")

    assert FASTTREE is not None
    with pytest.raises(DecodeError, match="tensor 0: broken"):
        FASTTREE.unpack_tree(pack({"a": [ref(0)]}), 64, bytearray(1), resolve, NO_ROUTES)


@_needs_fasttree
def test_route_sources_are_made_once_when_first_needed() -> None:
    made: list[str] = []

    def numpy_sources() -> list[Any]:
        made.append("numpy")
        return ["a", None]

    def torch_sources() -> list[Any] | None:
        made.append("torch")
        return None

    def resolve(index: int, kind: int) -> Any:
        return ("resolved", index, kind)

    routes = (None, ([None, None], numpy_sources, None), ([None, None], torch_sources, None), None)
    assert FASTTREE is not None
    done = FASTTREE.unpack_tree(pack([ref(0), ref(1), ref(0)]), 64, bytearray(2), resolve, routes)
    assert done == (["a", ("resolved", 1, 1), "a"],) and made == ["numpy"]  # torch's tables were never needed
    done = FASTTREE.unpack_tree(pack([ref(0, 2), ref(1, 2)]), 64, bytearray(2), resolve, routes)
    assert done == ([("resolved", 0, 2), ("resolved", 1, 2)],) and made == ["numpy", "torch"]
    with pytest.raises(ValueError, match="one item per tensor"):
        FASTTREE.unpack_tree(
            pack([ref(0)]), 64, bytearray(1), resolve, (None, ([None], lambda: [1, 2], None), None, None)
        )


@_needs_fasttree
def test_strided_sources_follow_the_plan() -> None:
    from tensorcodec import dtypes
    from tensorcodec.wire import Entry, Segment

    f32, bf16 = dtypes.by_name("float32"), dtypes.by_name("bfloat16")
    seg = Segment("codes", "payload", dtypes.by_name("uint8"), (2,), 2)
    entries = [
        Entry(f32, (2, 3), 24, (), (), 0),
        Entry(bf16, (4, 5, 6), 240, (), (), 1),
        Entry(bf16, (0,), 0, (), (), 2),
        Entry(bf16, (7,), 14, (("nf4", {}, {}),), (seg,), 3),
        Entry(dtypes.by_name("int8"), (3,), 3, (), (), 4),
    ]
    offsets = [64, 128, 384, 384, 448]
    plan = {f32: True, bf16: ("call", 2)}
    views = ["view0", None, None, None, "view4"]
    assert FASTTREE is not None
    got = FASTTREE.strided_sources(views, entries, offsets, plan)
    assert got == ["view0", ("call", (4, 5, 6), (30, 6, 1), 64), None, None, None]
