"""The codec base: registry, configs, precision names, bit packing, caller data, hostile entries, chains."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _codec_helpers import (
    SignScale,
    encoded_message,
    kernels_or_skip,
    needs_kernels,
)
from _helpers import join_message, split_message

import tensorcodec as tc
from tensorcodec import codecs, wire
from tensorcodec.codecs import (
    FP8,
    PRECISIONS,
    Blockwise8,
    Cast,
    Codec,
    MinMax,
    Quant4,
    pack_bits,
    packed_size,
    unpack_bits,
)
from tensorcodec.dtypes import DType
from tensorcodec.errors import DecodeError, UnknownCodecError
from tensorcodec.testing import raw_bytes

# ---------------------------------------------------------------------------- registry


class _Tmp(Codec):
    """A lossless stand-in codec for registry tests: the values as they are."""

    codec_id = "test.tmp"

    def bits_per_element(self, dtype: DType, count: int) -> float:
        return 1.0  # always "smaller", so policies use it

    def encode(self, x: np.ndarray[Any, Any]) -> tc.Encoded:
        return tc.Encoded({"data": ("payload", x.copy())})

    def decode(self, segments: Any, params: Any, dtype: DType, count: int) -> np.ndarray[Any, Any]:
        return np.array(self.segment(segments, "data", dtype.name, count))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Codec]]:
    """A private copy of the registry with entry points not yet loaded; restored afterwards."""
    monkeypatch.setattr(codecs.base, "REGISTRY", dict(codecs.base.REGISTRY))
    monkeypatch.setattr(codecs.base, "_INSTALL_HINTS", dict(codecs.base._INSTALL_HINTS))
    monkeypatch.setattr(codecs.base, "_entry_points_loaded", False)
    return codecs.base.REGISTRY


def test_builtin_codecs_are_registered() -> None:
    found = tc.registered_codecs()
    for cls in (Cast, FP8, MinMax, Blockwise8, Quant4):
        assert found[cls.codec_id] is cls
        assert tc.get_codec(cls.codec_id) is cls


def test_register_duplicate_id_needs_replace(registry: dict[str, type[Codec]]) -> None:
    class Other(_Tmp):
        codec_id = "cast"

    with pytest.raises(ValueError, match=r"'cast' is already registered.*replace=True"):
        tc.register_codec(Other)
    assert tc.get_codec("cast") is Cast
    assert tc.register_codec(Cast) is Cast  # the same class again is fine
    assert tc.register_codec(Other, replace=True) is Other
    assert tc.get_codec("cast") is Other


def test_register_rejects_non_codecs(registry: dict[str, type[Codec]]) -> None:
    class NoId(_Tmp):
        codec_id = ""

    for bad in (NoId, object, "cast", Cast("float16")):
        with pytest.raises(TypeError):
            tc.register_codec(bad)  # type: ignore[arg-type]


def test_get_codec_unknown_names_the_id(registry: dict[str, type[Codec]]) -> None:
    with pytest.raises(UnknownCodecError, match=r"no\.such\.codec") as info:
        tc.get_codec("no.such.codec")
    assert isinstance(info.value, DecodeError)
    assert info.value.codec_id == "no.such.codec"


def test_unregistered_codec_fails_at_decode(registry: dict[str, type[Codec]]) -> None:
    tc.register_codec(_Tmp)
    x = np.arange(10, dtype=np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": _Tmp()}, min_elements=0))
    assert np.array_equal(tc.decode(message)["w"], x)
    del registry["test.tmp"]
    with pytest.raises(UnknownCodecError, match=r"'test\.tmp'"):
        tc.decode(message)


class _EntryPoint:
    """What importlib.metadata.entry_points yields: a name and a load()."""

    def __init__(self, name: str, target: Any, loads: list[str]) -> None:
        self.name, self.target, self.loads = name, target, loads

    def load(self) -> Any:
        self.loads.append(self.name)
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_entry_point_plugins(registry: dict[str, type[Codec]], monkeypatch: pytest.MonkeyPatch) -> None:
    class Plugin(_Tmp):
        codec_id = "plugin.good"

    class Mislabelled(_Tmp):
        codec_id = "plugin.other"

    loads: list[str] = []
    groups: list[str] = []
    points = [
        _EntryPoint("plugin.good", Plugin, loads),
        _EntryPoint("plugin.broken", ImportError("no module named plugin_dep"), loads),
        _EntryPoint("plugin.mislabelled", Mislabelled, loads),
        _EntryPoint("plugin.notacodec", dict, loads),
        _EntryPoint("cast", Plugin, loads),  # a built-in id is never replaced by a plugin
    ]

    def entry_points(*, group: str) -> list[_EntryPoint]:
        groups.append(group)
        return points

    monkeypatch.setattr(codecs.base.metadata, "entry_points", entry_points)
    assert tc.get_codec("plugin.good") is Plugin
    assert groups == ["tensorcodec.codecs"]
    assert "cast" not in loads and tc.get_codec("cast") is Cast
    with pytest.raises(UnknownCodecError, match=r"plugin\.broken.*failed to load.*plugin_dep"):
        tc.get_codec("plugin.broken")
    for name in ("plugin.mislabelled", "plugin.other", "plugin.notacodec"):
        with pytest.raises(UnknownCodecError):
            tc.get_codec(name)
    assert groups == ["tensorcodec.codecs"], "entry points are read once"
    assert "plugin.good" in tc.registered_codecs()

    # A message naming the plugin decodes through it.
    x = np.arange(6, dtype=np.float32)
    message = tc.encode([x], policy=tc.Policy({"*": Plugin()}, min_elements=0))
    assert np.array_equal(tc.decode(message)[0], x)


def test_decode_never_imports_what_a_message_names(
    registry: dict[str, type[Codec]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "imported"
    module = "tc_test_evil_plugin"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(codecs.base.metadata, "entry_points", lambda *, group: [])
    message = tc.encode({"w": np.ones(8, np.float32)}, policy=tc.Policy({"*": "fp16"}, min_elements=0))
    header, segments = split_message(message)
    for codec_id in (module, f"{module}:Codec", f"{module}.Codec", "os.system"):
        header["tensors"][0][2][0][0] = codec_id
        with pytest.raises(UnknownCodecError, match=re.escape(repr(codec_id))):
            tc.decode(join_message(header, segments))
    assert module not in sys.modules and not marker.exists()


# ---------------------------------------------------------------------------- configs


BUILTIN_CODECS: list[Codec] = [
    Cast("float16"),
    Cast("bfloat16"),
    FP8(),
    FP8("e5m2", block=128),
    MinMax(),
    MinMax(3, block=17, stochastic=True, seed=2**64 - 1),
    Blockwise8(),
    Blockwise8(64),
    Quant4(),
    Quant4("fp4", 128, double_quant=False),
    SignScale(),
    SignScale("l2"),
]


@pytest.mark.parametrize("codec", BUILTIN_CODECS + [make() for make in PRECISIONS.values()], ids=repr)
def test_config_round_trips_through_json(codec: Codec) -> None:
    config = codec.get_config()
    text = json.dumps(config)
    twin = type(codec).from_config(json.loads(text))
    assert twin == codec and hash(twin) == hash(codec)
    assert twin.get_config() == config and json.dumps(twin.get_config()) == text
    assert tc.get_codec(codec.codec_id) is type(codec)
    assert repr(twin) == repr(codec)


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (Cast, {"to": "float32"}),
        (Cast, {}),
        (FP8, {"format": "e3m4"}),
        (FP8, {"block": -1}),
        (FP8, {"block": True}),
        (FP8, {"block": 1.5}),
        (MinMax, {"bits": 0}),
        (MinMax, {"bits": 17}),
        (MinMax, {"seed": -1}),
        (MinMax, {"seed": 2**64}),
        (MinMax, {"block": 2**25}),
        (Blockwise8, {"blocksize": 100}),
        (Quant4, {"quant_type": "int4"}),
        (Quant4, {"blocksize": 16}),
        (Cast, {"to": "float16", "extra": 1}),
        (SignScale, {"norm": "l3"}),
    ],
)
def test_bad_configs_are_refused(cls: type[Codec], config: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        cls.from_config(config)


def test_precision_names() -> None:
    assert set(PRECISIONS) >= {"fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "blockwise8", "nf4", "fp4", "minmax8"}
    for name, make in PRECISIONS.items():
        assert codecs.precision_codec(name) == make()
    codec = MinMax(5)
    assert codecs.precision_codec(codec) is codec
    with pytest.raises(ValueError, match="unknown precision 'fp5'"):
        codecs.precision_codec("fp5")


# ---------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    for count in (0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001):
        codes = rng.integers(0, top + 1, count).astype(np.uint32)
        if count:
            codes[0], codes[-1] = top, 0
        packed = pack_bits(codes, bits)
        assert packed.dtype == np.uint8 and packed.ndim == 1
        assert packed.size == packed_size(count, bits) == math.ceil(count * bits / 8)
        back = unpack_bits(packed, bits, count)
        assert back.size == count and np.array_equal(back.astype(np.uint32), codes), (bits, count)
    # little-endian: code 0 sits in the lowest bits of byte 0
    first = pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=np.uint32), bits)
    assert first[0] == 1 and not first[1:].any()


# ---------------------------------------------------------------------------- caller data, 1 -> N


def _precisions() -> list[Any]:
    return [pytest.param(name, id=name) for name in PRECISIONS]


def _skip_unless_usable(precision: str) -> None:
    codec = codecs.precision_codec(precision)
    if needs_kernels(codec):
        kernels_or_skip(codec.codec_id)


def _model() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 70)).astype(np.float32)
    return {
        "numpy": {"w": w, "b": rng.standard_normal(70).astype(np.float16), "steps": np.arange(5)},
        "torch": {"w": torch.from_numpy(w.copy()).T, "h": torch.randn(33, 65, dtype=torch.bfloat16)},
        "tied": [w, w],
        "meta": {"round": 3, "name": "client-1"},
    }


def _all_bytes(tree: Any) -> list[bytes]:
    out: list[bytes] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, (np.ndarray, torch.Tensor)):
            out.append(raw_bytes(node))
    return out


@pytest.mark.parametrize("precision", _precisions())
def test_caller_data_is_never_mutated(precision: str) -> None:
    _skip_unless_usable(precision)
    model = _model()
    model["numpy"]["w"].flags.writeable = False  # a read-only input must not need a copy to be written to
    before = _all_bytes(model)
    tc.encode(model, precision=precision)
    tc.encode_frames(model, policy=tc.Policy({"*": precision}, min_elements=0))
    assert _all_bytes(model) == before


@pytest.mark.parametrize("precision", _precisions())
def test_broadcast_one_to_n(precision: str) -> None:
    """A server encodes one dict for N clients: every encoding and every decoding is the same."""
    _skip_unless_usable(precision)
    model = _model()
    policy = tc.Policy({"*": precision}, min_elements=0)
    messages = [tc.encode(model, policy=policy) for _ in range(4)]
    assert all(m == messages[0] for m in messages)
    message = messages[0]
    snapshot = bytes(message)
    first = tc.decode(message)
    for copy in (True, False, True):
        again = tc.decode(message, copy=copy)
        assert _all_bytes(again) == _all_bytes(first)
        assert type(again["torch"]["h"]) is torch.Tensor and again["torch"]["h"].dtype == torch.bfloat16
    assert message == snapshot
    reference = _all_bytes(first)
    first["numpy"]["w"][...] = 7  # a client writing to its copy affects no other client
    first["torch"]["h"].zero_()
    assert _all_bytes(tc.decode(message)) == reference


# ---------------------------------------------------------------------------- hostile entries


def test_split_join_round_trip() -> None:
    message = tc.encode({"a": np.ones(3), "b": [np.zeros((2, 5), np.float16)]}, checksum="xxh3_64")
    assert join_message(*split_message(message)) == message


def _mutations() -> list[Any]:
    """(codec, mutate(entry, segments) -> segments, message pattern): hostile entries built from real ones."""
    fp8, mm, sign = FP8("e4m3"), MinMax(8), SignScale()
    cast = ["cast", {"to": "bfloat16"}, {}]
    fp8_stage = ["fp8", {"format": "e4m3", "block": 0}, {}]

    def seg(i: int, field: int, value: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[3][i][field] = value
            return segs

        return go

    def resize(i: int, count: int) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            itemsize = len(segs[i]) // math.prod(entry[3][i][3])
            entry[3][i][3] = [count]
            segs = list(segs)
            segs[i] = (segs[i] + bytes(count * itemsize))[: count * itemsize]
            return segs

        return go

    def stage(field: int, value: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[2][0][field] = value
            return segs

        return go

    def drop(name: str) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            i = [s[0] for s in entry[3]].index(name)
            del entry[3][i]
            return segs[:i] + segs[i + 1 :]

        return go

    def stages(extra: list[list[Any]]) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[2] = extra + entry[2]
            return segs

        return go

    def dtype(name: str) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            entry[0] = name
            return segs

        return go

    def both(*steps: Any) -> Any:
        def go(entry: list[Any], segs: list[bytes]) -> list[bytes]:
            for step in steps:
                segs = step(entry, segs)
            return segs

        return go

    return [
        pytest.param(
            fp8, seg(1, 2, "int32"), "segment 'scale' is meta int32 .1., expected meta float32", id="segment-dtype"
        ),
        pytest.param(fp8, seg(0, 2, "int8"), "segment 'codes' is payload int8", id="codes-dtype"),
        pytest.param(
            fp8,
            resize(0, 299),
            "segment 'codes' is payload float8_e4m3fn .299., expected payload float8_e4m3fn .300.",
            id="segment-short",
        ),
        pytest.param(
            fp8, resize(1, 2), "segment 'scale' is meta float32 .2., expected meta float32 .1.", id="segment-long"
        ),
        pytest.param(fp8, drop("scale"), "segment 'scale' is missing", id="missing-segment"),
        pytest.param(fp8, stage(1, {"format": "e9m9", "block": 0}), "bad config", id="config-value"),
        pytest.param(fp8, stage(1, {"format": "e4m3", "bogus": 1}), "bad config", id="config-key"),
        pytest.param(fp8, stage(1, {"format": "e4m3", "block": "7"}), "bad config", id="config-type"),
        pytest.param(mm, stage(1, {"bits": 99}), "bad config", id="minmax-bits"),
        pytest.param(mm, drop("codes"), "'codes' is missing", id="minmax-no-codes"),
        pytest.param(
            mm, resize(0, 7), "segment 'range' is meta float32 .7., expected meta float32 .2.", id="minmax-range-size"
        ),
        pytest.param(
            mm,
            resize(1, 10),
            "segment 'codes' is payload uint8 .10., expected payload uint8 .300.",
            id="minmax-codes-size",
        ),
        pytest.param(
            fp8, both(stage(0, "blockwise8"), stage(1, {"blocksize": 3})), "bad config", id="blockwise8-config"
        ),
        pytest.param(fp8, stage(0, "no.such.codec"), "unknown codec 'no.such.codec'", id="unknown-codec"),
        pytest.param(fp8, dtype("int32"), "cannot produce dtype int32", id="target-dtype"),
        pytest.param(sign, stage(2, {"scale": "1.0"}), "parameter 'scale'", id="param-type"),
        pytest.param(sign, stage(2, {}), "parameter 'scale'", id="param-missing"),
        pytest.param(sign, stage(2, {"scale": math.nan}), "parameter 'scale'", id="param-nan"),
        pytest.param(sign, stage(2, {"scale": -1.0}), "parameter 'scale'", id="param-negative"),
        pytest.param(sign, stage(2, {"scale": True}), "parameter 'scale'", id="param-bool"),
        pytest.param(
            sign,
            resize(0, 37),
            "segment 'signs' is payload uint8 .37., expected payload uint8 .38.",
            id="example-segment-size",
        ),
        pytest.param(fp8, stages([fp8_stage]), "cannot be followed", id="chain-not-array-to-array"),
        pytest.param(fp8, stages([cast] * 4), "stages exceed", id="chain-too-long"),
        pytest.param(fp8, both(stages([cast]), seg(0, 0, "data")), "uses no segment 'data'", id="chain-data-reserved"),
        pytest.param(fp8, both(stages([cast]), dtype("int32")), "cannot take dtype int32", id="chain-dtype"),
    ]


@pytest.mark.parametrize(("codec", "mutate", "pattern"), _mutations())
def test_hostile_entries_raise_decode_error(codec: Codec, mutate: Any, pattern: str) -> None:
    header, segments = encoded_message(codec)
    entry = header["tensors"][0]
    segments = mutate(entry, segments)
    with pytest.raises(DecodeError, match=pattern):
        tc.decode(join_message(header, segments))


def test_a_valid_chain_decodes() -> None:
    """The counterpart of the chain cases above: bf16 then fp8, as a policy writes it."""
    x = np.random.default_rng(4).standard_normal(300).astype(np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": ["bf16", "fp8_e4m3"]}, min_elements=0))
    (entry,) = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=True).entries
    assert [s[0] for s in entry.stages] == ["cast", "fp8"]
    got = tc.decode(message)["w"]
    assert got.dtype == np.float32 and np.abs(got - x).max() <= 2**-4 * np.abs(x).max() * 1.1
