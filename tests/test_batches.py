"""Many small encoded tensors at once, each path against the one-by-one path, bit for bit.

``Codec.encode_batch`` / ``Codec.decode_batch`` of the codecs, the batched decode in ``tc.decode``
(grouping, fallback, errors naming the tensor, fresh arrays, the codec cache) and the wire's fast
path for encoded table entries.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from _helpers import join_message, pack, ref, split_message
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import codecs, core, wire
from tensorcodec.codecs import FP8, Blockwise8, Cast, Codec, DecodeItem, MinMax, Quant4
from tensorcodec.dtypes import DType, from_numpy
from tensorcodec.errors import DecodeError, UnknownCodecError
from tensorcodec.testing import assert_tree_equal

SOURCES = ("float32", "float16", "bfloat16", "float64")
KERNEL_CODECS = [
    Blockwise8(64),
    Blockwise8(4096),
    Quant4("nf4", 64),
    Quant4("fp4"),
    Quant4("fp4", 32, double_quant=False),
    Quant4("nf4", 128, double_quant=False),
]
OTHER_CODECS = [Cast("float16"), Cast("bfloat16"), FP8("e4m3"), FP8("e5m2", block=7), MinMax(8), MinMax(3, block=5)]
ODD_SIZES = [0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 255, 256, 257, 4095, 4097]


def values(n: int, name: str, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """``n`` normal values with an exact zero here and there, at a random scale, as dtype ``name``."""
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)
    x[rng.random(n) < 0.05] = 0.0
    return x.astype(tc.dtypes.BY_NAME[name].numpy)


@st.composite
def sources(draw: st.DrawFn, *, one_dtype: bool = False) -> list[np.ndarray[Any, Any]]:
    """Flat arrays of odd sizes (empty ones too), of one dtype or mixed."""
    sizes = draw(st.lists(st.sampled_from(ODD_SIZES) | st.integers(0, 600), min_size=1, max_size=12))
    if one_dtype:
        names = [draw(st.sampled_from(SOURCES))] * len(sizes)
    else:
        names = draw(st.lists(st.sampled_from(SOURCES), min_size=len(sizes), max_size=len(sizes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [values(n, name, rng) for n, name in zip(sizes, names, strict=True)]


def segments_of(encoded: tc.Encoded) -> dict[str, np.ndarray[Any, Any]]:
    return {name: arr for name, (_, arr) in encoded.segments.items()}


def owner(x: Any) -> Any:
    """What holds a numpy array's or torch tensor's memory: the end of its chain of bases, or its storage."""
    if isinstance(x, torch.Tensor):
        return x.untyped_storage().data_ptr()
    while isinstance(x.base, np.ndarray):
        x = x.base
    return id(x) if x.base is None else id(x.base)


def assert_own_memory(arrays: Sequence[Any]) -> None:
    """Writable, and no two share memory: keeping one keeps no other alive."""
    for a in arrays:
        assert a.flags.writeable if isinstance(a, np.ndarray) else True
    owners = [owner(a) for a in arrays if (a.size if isinstance(a, np.ndarray) else a.numel())]
    assert len(set(owners)) == len(owners), "two decoded tensors share memory"


# ---------------------------------------------------------------------------- codecs


@pytest.mark.usefixtures("kernel_impl")  # with the C accelerator and with numpy
@settings(max_examples=25)
@given(codec=st.sampled_from(KERNEL_CODECS + OTHER_CODECS), xs=sources())
def test_encode_batch_equals_encode(codec: Codec, xs: list[np.ndarray[Any, Any]]) -> None:
    batch = codec.encode_batch(xs)
    assert len(batch) == len(xs)
    for got, x in zip(batch, xs, strict=True):
        want = codec.encode(x)
        assert got.params == want.params
        assert list(got.segments) == list(want.segments)
        for name, (role, arr) in want.segments.items():
            got_role, got_arr = got.segments[name]
            assert got_role == role and got_arr.dtype == arr.dtype and got_arr.shape == arr.shape, name
            assert got_arr.tobytes() == arr.tobytes(), name


@pytest.mark.usefixtures("kernel_impl")
@settings(max_examples=25)
@given(codec=st.sampled_from(KERNEL_CODECS + OTHER_CODECS), xs=sources(one_dtype=True))
def test_decode_batch_equals_decode(codec: Codec, xs: list[np.ndarray[Any, Any]]) -> None:
    row = from_numpy(xs[0].dtype)
    assert row is not None
    items: list[DecodeItem] = []
    for x in xs:
        encoded = codec.encode(x)
        items.append((segments_of(encoded), encoded.params, x.size))
    got = codec.decode_batch(items, row)
    assert len(got) == len(items)
    for out, (segments, params, count) in zip(got, items, strict=True):
        want = codec.decode(segments, params, row, count)
        assert out.dtype == want.dtype and out.shape == want.shape and out.tobytes() == want.tobytes()
    assert_own_memory(got)
    for out, (segments, _, _) in zip(got, items, strict=True):
        assert not any(np.shares_memory(out, seg) for seg in segments.values())


def _hostile(codec: Codec) -> Iterator[tuple[str, Any]]:
    """(what, mutate(items)) pairs that break one tensor of a batch."""

    def drop(name: str) -> Any:
        def go(segments: dict[str, Any], params: dict[str, Any]) -> None:
            del segments[name]

        return go

    def retype(name: str, dtype: Any) -> Any:
        def go(segments: dict[str, Any], params: dict[str, Any]) -> None:
            segments[name] = segments[name].view(dtype)

        return go

    def shorten(name: str) -> Any:
        def go(segments: dict[str, Any], params: dict[str, Any]) -> None:
            segments[name] = segments[name][:-1]

        return go

    def param(value: Any) -> Any:
        def go(segments: dict[str, Any], params: dict[str, Any]) -> None:
            params["offset"] = value

        return go

    yield "missing codes", drop("codes")
    yield "short codes", shorten("codes")
    yield "codes as int8", retype("codes", np.int8)
    if isinstance(codec, Quant4) and codec.double_quant:
        yield "absmax_scale as int32", retype("absmax_scale", np.int32)
        yield "short absmax_codes", shorten("absmax_codes")
        yield "offset as int", param(1)
        yield "offset missing", param(None)
    else:
        yield "absmax as int32", retype("absmax", np.int32)
        yield "missing absmax", drop("absmax")


@pytest.mark.parametrize("codec", KERNEL_CODECS, ids=repr)
def test_decode_batch_checks_every_item_as_decode_does(codec: Codec) -> None:
    rng = np.random.default_rng(1)
    xs = [values(n, "float32", rng) for n in (300, 65, 1000, 7)]
    row = tc.dtypes.BY_NAME["float32"]
    for what, mutate in _hostile(codec):
        items = []
        for x in xs:
            encoded = codec.encode(x)
            items.append((segments_of(encoded), dict(encoded.params), x.size))
        mutate(items[2][0], items[2][1])
        with pytest.raises(DecodeError) as one:
            codec.decode(items[2][0], items[2][1], row, items[2][2])
        with pytest.raises(DecodeError) as batch:
            codec.decode_batch(items, row)
        assert str(batch.value) == str(one.value), what


# ---------------------------------------------------------------------------- decode of a message

POLICY = tc.Policy(
    {
        "q4.*": "nf4",
        "f4.*": Quant4("fp4", 32, double_quant=False),
        "b8.*": "blockwise8",
        "s8.*": Blockwise8(64),
        "fp8.*": FP8("e5m2", block=16),
        "mm.*": "minmax4",
        "*": None,
    },
    min_elements=0,
)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    """Tensors of many sizes (empty, 0-d, odd, one past the batch limit), dtypes and frameworks, by policy group."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tree: dict[str, Any] = {}
    for group in ("q4", "f4", "b8", "s8", "fp8", "mm", "raw"):
        for i in range(draw(st.integers(0, 6))):
            shape = draw(st.sampled_from([(), (0,), (1,), (7,), (65,), (3, 5), (16, 17), (300,), (2, 0, 3)]))
            name = draw(st.sampled_from(SOURCES))
            x = values(math.prod(shape), name, rng).reshape(shape)
            tree[f"{group}.{i}"] = torch.from_numpy(x.copy()) if draw(st.booleans()) and name != "bfloat16" else x
    if draw(st.booleans()):
        tree["q4.big"] = values(core._BATCH_MAX_ELEMENTS + 3, "float32", rng)  # decoded on its own
    return tree


@settings(max_examples=30)
@given(tree=trees(), chunk=st.sampled_from([None, 1000, 4097]))
def test_batched_decode_equals_one_by_one(tree: dict[str, Any], chunk: int | None) -> None:
    message = tc.encode(tree, policy=POLICY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "_BATCH_MAX_ELEMENTS", -1)  # no batches, on either side
        assert tc.encode(tree, policy=POLICY) == message, "batched encode changed the bytes"
        want = tc.decode(message)
    data: Any = message if chunk is None else [message[i : i + chunk] for i in range(0, len(message), chunk)]
    got = tc.decode(data)
    assert_tree_equal(want, got)
    assert_own_memory([v for v in got.values() if not isinstance(v, np.generic)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "_DECODE_BATCH", 3)  # groups decoded in several calls
        assert_tree_equal(want, tc.decode(data))


def _small(n: int = 10, precision: Any = "nf4") -> tuple[dict[str, Any], list[bytes]]:
    rng = np.random.default_rng(2)
    tree = {f"w{i}": values(100 + 37 * i, "float32", rng) for i in range(n)}
    return split_message(tc.encode(tree, policy=tc.Policy({"*": precision}, min_elements=0)))


def _segment(entry: list[Any], name: str) -> list[Any]:
    seg: list[Any] = next(s for s in entry[3] if s[0] == name)
    return seg


@pytest.mark.parametrize(
    ("precision", "mutate", "pattern"),
    [
        ("nf4", lambda e: _segment(e, "absmax_scale").__setitem__(2, "int32"), "'absmax_scale' is meta int32"),
        ("nf4", lambda e: e[2][0][2].__setitem__("offset", 1), "parameter 'offset'"),
        ("nf4", lambda e: e[2][0][1].__setitem__("blocksize", 3), "bad config"),
        ("nf4", lambda e: e[2][0].__setitem__(0, "no.such.codec"), "unknown codec 'no.such.codec'"),
        ("blockwise8", lambda e: _segment(e, "absmax").__setitem__(2, "int32"), "segment 'absmax' is meta int32"),
        ("fp8_e4m3", lambda e: _segment(e, "scale").__setitem__(2, "int32"), "segment 'scale' is meta int32"),
        ("nf4", lambda e: e.__setitem__(0, "int32"), "cannot produce dtype int32"),
    ],
)
def test_a_bad_tensor_in_a_batch_is_named(precision: str, mutate: Any, pattern: str) -> None:
    header, segments = _small(precision=precision)
    for index in (6, 2):  # the first bad one in tree order is reported
        mutate(header["tensors"][index])
    message = join_message(header, segments)
    with pytest.raises(DecodeError, match=f"^tensor 2: .*{pattern}"):
        tc.decode(message)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(DecodeError, match=f"^tensor 2: .*{pattern}"):
        mp.setattr(core, "_DECODE_BATCH", 4)  # the good slices decode in a batch, the bad ones one by one
        tc.decode(message)


def test_unknown_codec_error_keeps_its_type() -> None:
    header, segments = _small()
    header["tensors"][4][2][0][0] = "no.such.codec"
    with pytest.raises(UnknownCodecError, match=r"^tensor 4: unknown codec") as info:
        tc.decode(join_message(header, segments))
    assert info.value.codec_id == "no.such.codec"


def test_a_tensor_referenced_twice_gets_arrays_of_its_own() -> None:
    header, segments = _small(3)
    header["tree"] = pack({"n": ref(0, 1), "t": ref(0, 2), "again": ref(0, 1), "b": ref(1), "c": ref(2)})
    got = tc.decode(join_message(header, segments))
    assert isinstance(got["t"], torch.Tensor) and got["again"] is got["n"]
    assert got["t"].numpy().tobytes() == got["n"].tobytes()
    assert_own_memory([got["n"], got["t"], got["b"], got["c"]])


def test_codecs_are_built_once_per_config(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    tree = {f"w{i}": values(10 + i, "float16", rng) for i in range(30)}
    tree |= {f"big{i}": values(core._BATCH_MAX_ELEMENTS + 1, "float32", rng) for i in range(3)}
    message = tc.encode(tree, policy=tc.Policy({"*": "nf4"}, min_elements=0))
    calls: list[dict[str, Any]] = []
    build = Quant4.from_config.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Codec], config: dict[str, Any]) -> Codec:
        calls.append(config)
        return build(cls, config)  # type: ignore[no-any-return]

    monkeypatch.setattr(Quant4, "from_config", classmethod(counting))
    back = tc.decode(message)
    assert len(calls) == 1
    assert back.keys() == tree.keys()
    tc.decode(message)
    assert len(calls) == 2  # once per decode call


# ---------------------------------------------------------------------------- codecs of users


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the registry, restored afterwards."""
    monkeypatch.setattr(codecs.base, "REGISTRY", dict(codecs.base.REGISTRY))


class _Echo(Codec):
    """A lossless codec with no decode_batch of its own: the values as they are."""

    codec_id = "test.echo"
    decoded = 0

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 1.0

    def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
        return tc.Encoded({"data": ("payload", x.copy())})

    def decode(self, segments: Any, params: Any, dtype: DType, count: int) -> np.ndarray[Any, Any]:
        type(self).decoded += 1
        return np.array(self.segment(segments, "data", dtype.name, count))


class _WrongSizes(Blockwise8):
    codec_id = "test.wrong_sizes"

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        return [np.zeros(1, dtype.numpy) for _ in items]


class _Raises(Blockwise8):
    codec_id = "test.raises"

    def decode_batch(self, items: Sequence[DecodeItem], dtype: DType) -> list[np.ndarray[Any, Any]]:
        raise RuntimeError("broken batch")


@pytest.mark.usefixtures("registry")
def test_a_codec_without_decode_batch_needs_nothing() -> None:
    tc.register_codec(_Echo)
    rng = np.random.default_rng(4)
    tree = {f"w{i}": values(i, "float32", rng) for i in range(12)}
    _Echo.decoded = 0
    back = tc.decode(tc.encode(tree, policy=tc.Policy({"*": _Echo()}, min_elements=0)))
    assert_tree_equal(tree, back)
    assert _Echo.decoded == len(tree)


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("cls", [_WrongSizes, _Raises])
def test_a_failing_decode_batch_falls_back_to_one_by_one(cls: type[Blockwise8]) -> None:
    tc.register_codec(cls)
    rng = np.random.default_rng(5)
    tree = {f"w{i}": values(50 + i, "bfloat16", rng) for i in range(12)}
    back = tc.decode(tc.encode(tree, policy=tc.Policy({"*": cls(64)}, min_elements=0)))
    want = tc.decode(tc.encode(tree, policy=tc.Policy({"*": Blockwise8(64)}, min_elements=0)))
    assert_tree_equal(want, back)


# ---------------------------------------------------------------------------- the wire's entry check


def _reference_entry(raw: Any, index: int, first_segment: int, limits: wire.Limits) -> wire.Entry:
    """The table-entry rules of docs/format.md spelled out plainly, to hold wire.read_entry's quicker checks against."""
    what = f"tensor {index}"

    def dtype(name: Any, what: str) -> Any:
        row = tc.dtypes.BY_NAME.get(name) if type(name) is str else None
        if row is None:
            raise DecodeError(f"{what}: dtype {name!r} is not one tensorcodec knows")
        return row

    def shape(value: Any, row: Any, what: str) -> tuple[tuple[int, ...], int]:
        if type(value) is not list:
            raise DecodeError(f"{what}: shape must be an array of integers, got {type(value).__name__}")
        if len(value) > limits.max_ndim:
            raise DecodeError(f"{what}: {len(value)} dimensions exceed max_ndim={limits.max_ndim}")
        nbytes = span = row.itemsize
        for d in value:
            if type(d) is not int or d < 0:
                raise DecodeError(f"{what}: dimension {d!r} is not a non-negative integer")
            nbytes *= d
            span *= max(d, 1)
        if span > 2**63 - 1:
            raise DecodeError(f"{what}: shape {value} overflows a 64-bit size")
        return tuple(value), nbytes

    if type(raw) is not list or len(raw) not in (2, 4):
        raise DecodeError(f"{what}: entry must be an array of 2 or 4 items")
    row = dtype(raw[0], what)
    dims, nbytes = shape(raw[1], row, what)
    if len(raw) == 2:
        return wire.Entry(row, dims, nbytes, (), (), first_segment)
    stages_raw, segments_raw = raw[2], raw[3]
    if type(stages_raw) is not list or not stages_raw:
        raise DecodeError(f"{what}: stages must be a non-empty array")
    stages = []
    for st_ in stages_raw:
        if type(st_) is not list or len(st_) != 3 or type(st_[0]) is not str or type(st_[1]) is not dict:
            raise DecodeError(f"{what}: each stage must be [codec id, config map, params map]")
        if type(st_[2]) is not dict:
            raise DecodeError(f"{what}: each stage must be [codec id, config map, params map]")
        stages.append((st_[0], st_[1], st_[2]))
    if type(segments_raw) is not list or len(segments_raw) > limits.max_segments_per_tensor:
        raise DecodeError(f"{what}: segments must be an array of at most {limits.max_segments_per_tensor}")
    segments = []
    names: set[str] = set()
    for sg in segments_raw:
        if type(sg) is not list or len(sg) != 4 or type(sg[0]) is not str or sg[1] not in wire.ROLES:
            raise DecodeError(f"{what}: each segment must be [name, 'payload'|'meta', dtype, shape]")
        if sg[0] in names:
            raise DecodeError(f"{what}: duplicate segment name {sg[0]!r}")
        names.add(sg[0])
        seg_what = f"{what} segment {sg[0]!r}"
        seg_row = dtype(sg[2], seg_what)
        seg_dims, seg_nbytes = shape(sg[3], seg_row, seg_what)
        segments.append(wire.Segment(sg[0], sg[1], seg_row, seg_dims, seg_nbytes))
    return wire.Entry(row, dims, nbytes, tuple(stages), tuple(segments), first_segment)


_JUNK = [None, -1, 0, 3, 2**70, 1.5, True, "", "x", "payload", "meta", "uint8", "float32", "bogus"]
_JUNK += [[], {}, [1], {"a": 1}]


def _outcome(raw: Any, limits: wire.Limits, check: Any = wire.read_entry) -> Any:
    try:
        return check(raw, 3, 5, limits)
    except DecodeError as e:
        return (type(e), str(e))


def _positions(node: Any, out: list[tuple[list[Any], int]]) -> list[tuple[list[Any], int]]:
    """Every (list, index) in a raw entry, depth first."""
    for k, item in enumerate(node):
        out.append((node, k))
        if isinstance(item, list):
            _positions(item, out)
    return out


def _mutated(raw: Any, data: st.DataObject) -> Any:
    """``raw`` with one node replaced by junk, or one list item dropped, added or repeated."""
    holder = [raw]  # so that the entry itself can be replaced too
    parent, key = data.draw(st.sampled_from(_positions(holder, [])))
    node = parent[key]
    op = data.draw(st.sampled_from(["replace", "drop", "add", "repeat"] if isinstance(node, list) else ["replace"]))
    if op == "replace":
        parent[key] = data.draw(st.sampled_from(_JUNK))
    elif op == "drop" and node:
        node.pop(data.draw(st.integers(0, len(node) - 1)))
    elif op == "repeat" and node:  # e.g. a second segment named 'codes'
        item = node[data.draw(st.integers(0, len(node) - 1))]
        node.append(list(item) if isinstance(item, list) else item)
    else:
        node.append(data.draw(st.sampled_from(_JUNK)))
    return holder[0]


@settings(max_examples=300)
@given(
    precision=st.sampled_from(["nf4", "blockwise8", "minmax8", "fp8_e5m2", Quant4("fp4", double_quant=False)]),
    shape=st.sampled_from([[0], [5], [300], [7, 9], [2, 0, 3]]),
    limits=st.sampled_from(
        [wire.DEFAULT_LIMITS, wire.Limits(max_ndim=1), wire.Limits(max_ndim=0), wire.Limits(max_segments_per_tensor=2)]
    ),
    data=st.data(),
)
def test_entry_check_decides_as_the_rules(
    precision: Any, shape: list[int], limits: wire.Limits, data: st.DataObject
) -> None:
    x = np.linspace(-1, 1, math.prod(shape), dtype=np.float32).reshape(shape)
    header, _ = split_message(tc.encode({"x": x}, policy=tc.Policy({"*": precision}, min_elements=0)))
    raw = header["tensors"][0]
    if data.draw(st.booleans()):
        raw = _mutated(raw, data)
    fast = _outcome(raw, limits)
    slow = _outcome(copy.deepcopy(raw), limits, _reference_entry)
    assert fast == slow


def test_entry_check_takes_the_common_entries() -> None:
    x = np.ones((3, 100), np.float32)
    for precision in ("nf4", "blockwise8", "minmax8", "fp8_e4m3", ["bf16", "fp8_e4m3"]):
        header, _ = split_message(tc.encode({"x": x}, policy=tc.Policy({"*": precision}, min_elements=0)))
        raw = header["tensors"][0]
        assert wire.read_entry(raw, 0, 0, wire.DEFAULT_LIMITS) == _reference_entry(raw, 0, 0, wire.DEFAULT_LIMITS), (
            precision
        )
