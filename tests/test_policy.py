"""Per-tensor precision policies: which tensor gets which codec, and which stay lossless."""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorcodec as tc
from tensorcodec.accounting import inspect, predict, report
from tensorcodec.codecs import FP8, Cast, MinMax
from tensorcodec.dtypes import by_name
from tensorcodec.policy import DEFAULT_MIN_ELEMENTS, Policy


def row(name: str) -> Any:
    r = by_name(name)
    assert r is not None
    return r


def chosen(message: bytes) -> dict[str, str]:
    """Dotted name -> codec label ("raw" for lossless) of every tensor in a message."""
    return {r.name: r.codec for r in inspect(message).rows}


def test_first_matching_rule_wins() -> None:
    policy = Policy({"*.weight": "fp16", "layer1.*": "bf16", "*": "fp8_e4m3"}, min_elements=0)
    f32 = row("float32")
    assert policy.choose("layer1.weight", f32, 100) == [Cast("float16")]  # the first rule, though the second matches
    assert policy.choose("layer1.bias", f32, 100) == [Cast("bfloat16")]
    assert policy.choose("layer2.bias", f32, 100) == [FP8("e4m3")]
    reordered = Policy({"layer1.*": "bf16", "*.weight": "fp16"}, min_elements=0)
    assert reordered.choose("layer1.weight", f32, 100) == [Cast("bfloat16")]
    assert reordered.choose("other", f32, 100) is None  # no rule matches: lossless


def test_rules_through_encode() -> None:
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    tree = {"layer1": {"weight": x, "bias": x[:32].copy()}, "layer2": {"bias": x[:16].copy()}, "step": 4}
    message = tc.encode(tree, policy=Policy({"*.weight": "fp16", "layer1.*": "bf16", "*": None}, min_elements=0))
    assert chosen(message) == {
        "layer1.weight": "cast(to=float16)",
        "layer1.bias": "cast(to=bfloat16)",
        "layer2.bias": "raw",
    }
    back = tc.decode(message)
    assert back["step"] == 4 and back["layer2"]["bias"].tobytes() == tree["layer2"]["bias"].tobytes()


def test_none_keeps_lossless() -> None:
    rng = np.random.default_rng(1)
    tree = {"norm.weight": rng.standard_normal(5000).astype(np.float32), "w": rng.standard_normal(5000)}
    message = tc.encode(tree, policy={"*norm*": None, "*": "bf16"})
    assert chosen(message) == {"norm.weight": "raw", "w": "cast(to=bfloat16)"}
    assert tc.decode(message)["norm.weight"].tobytes() == tree["norm.weight"].tobytes()
    assert Policy({"*": None}).choose("x", row("float32"), 10**6) is None


@pytest.mark.parametrize(
    "dtype", ["int8", "int16", "int32", "int64", "uint8", "uint32", "bool", "complex64", "complex128", "float8_e4m3fn"]
)
@pytest.mark.parametrize("precision", [p for p in tc.PRECISIONS if p != "lossless"])
def test_non_float_sources_are_never_quantized(dtype: str, precision: str) -> None:
    r = row(dtype)
    assert Policy({"*": precision}, min_elements=0).choose("x", r, 10**6) is None


def test_lossless_takes_whole_byte_types_but_not_bool_or_complex() -> None:
    policy = Policy({"*": "lossless"}, min_elements=0)
    assert all(policy.choose("x", row(d), 10**6) for d in ["int8", "uint32", "float8_e4m3fn", "bfloat16"])
    assert all(policy.choose("x", row(d), 10**6) is None for d in ["bool", "complex64"])


def test_ints_bool_complex_travel_bit_exact() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    tree = {
        "ids": rng.integers(-(2**40), 2**40, n),
        "mask": rng.integers(0, 2, n).astype(bool),
        "z": (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64),
        "t": torch.randint(0, 255, (n,), dtype=torch.uint8),
        "f8": rng.standard_normal(n).astype(ml_dtypes.float8_e5m2),
    }
    for precision in tc.PRECISIONS:
        message = tc.encode(tree, precision=precision)
        if precision != "lossless":  # which codes the whole-byte types, exactly (the loop below checks)
            assert set(chosen(message).values()) == {"raw"}, precision
        back = tc.decode(message)
        for k, v in tree.items():
            got = back[k].numpy() if isinstance(back[k], torch.Tensor) else back[k]
            want = v.numpy() if isinstance(v, torch.Tensor) else v
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (precision, k)


def test_min_elements() -> None:
    f32 = row("float32")
    default = Policy({"*": "fp16"})
    assert default.min_elements == DEFAULT_MIN_ELEMENTS == 4096
    assert default.choose("b", f32, 4095) is None
    assert default.choose("w", f32, 4096) == [Cast("float16")]
    assert Policy({"*": "fp16"}, min_elements=0).choose("b", f32, 1) == [Cast("float16")]
    assert Policy({"*": "fp16"}, min_elements=10).choose("b", f32, 9) is None
    with pytest.raises(ValueError, match="min_elements"):
        Policy({"*": "fp16"}, min_elements=-1)
    tree = {"small": np.ones(4095, np.float32), "big": np.ones(4096, np.float32)}
    assert chosen(tc.encode(tree, precision="fp16")) == {"small": "raw", "big": "cast(to=float16)"}


@pytest.mark.parametrize(
    ("precision", "dtype", "count", "used"),
    [
        ("fp16", "bfloat16", 10**6, False),  # 16 bits are not fewer than 16
        ("bf16", "bfloat16", 10**6, False),
        ("fp16", "float16", 10**6, False),
        ("bf16", "float16", 10**6, False),
        ("fp16", "float64", 1, True),
        ("bf16", "float32", 1, True),
        ("fp8_e4m3", "float32", 2, True),  # 8 + 32/2 = 24 < 32
        ("fp8_e4m3", "float32", 1, False),  # 8 + 32 = 40
        ("fp8_e5m2", "float16", 4, False),  # 8 + 8 = 16
        ("fp8_e5m2", "float16", 5, True),
        ("minmax8", "float16", 8, False),  # 8 + 64/8 = 16
        ("minmax8", "bfloat16", 9, True),
        ("blockwise8", "float32", 1, False),  # 8 + 32 = 40
        ("nf4", "float32", 1, False),
        ("nf4", "bfloat16", 64, True),
    ],
)
def test_skips_when_not_smaller(precision: str, dtype: str, count: int, used: bool) -> None:
    r = row(dtype)
    codec = tc.codecs.precision_codec(precision)
    assert (codec.bits_per_element(r, count) < 8 * r.itemsize) == used
    assert (Policy({"*": precision}, min_elements=0).choose("x", r, count) is not None) == used


def test_skipped_tensor_is_sent_as_is() -> None:
    x = torch.randn(5000, dtype=torch.bfloat16)
    message = tc.encode({"w": x}, precision="fp16")
    assert chosen(message) == {"w": "raw"}
    out = tc.decode(message)["w"]
    assert out.dtype == torch.bfloat16 and torch.equal(out.view(torch.int16), x.view(torch.int16))
    assert chosen(tc.encode({"w": x}, precision="fp8_e4m3")) == {"w": "fp8(format=e4m3, block=0)"}


def test_precision_and_policy_are_exclusive() -> None:
    x = {"w": np.ones(5000, np.float32)}
    for call in (
        lambda: tc.encode(x, precision="fp16", policy={"*": "bf16"}),
        lambda: tc.encode_frames(x, precision="fp16", policy=Policy({"*": "bf16"})),
        lambda: report(x, precision="fp16", policy={"*": "bf16"}),
        lambda: predict(x, precision="fp16", policy={"*": "bf16"}),
    ):
        with pytest.raises(ValueError, match="either precision= or policy="):
            call()
    assert Policy.of() is None
    assert Policy.of("fp16").choose("any.name", row("float32"), 5000) == [Cast("float16")]
    given = Policy({"*": "fp16"})
    assert Policy.of(policy=given) is given


def test_names_are_dotted_paths() -> None:
    rng = np.random.default_rng(3)

    def t(n: int = 8) -> np.ndarray[Any, Any]:
        return rng.standard_normal(n).astype(np.float32)

    tree = {
        "model": {"layers": [{"w": t(), "b": t()}, {"w": t(), "b": t()}], "head": (t(), [t()])},
        "top": t(),
        "torch": {"p": torch.randn(8)},
    }
    seen: list[str] = []

    class Spy(Policy):
        def choose(self, name: str, dtype: Any, count: int) -> Any:
            seen.append(name)
            return super().choose(name, dtype, count)

    message = tc.encode(tree, policy=Spy({"model.layers.1.*": "bf16", "model.head.1.0": "fp16"}, min_elements=0))
    assert seen == [
        "model.layers.0.w",
        "model.layers.0.b",
        "model.layers.1.w",
        "model.layers.1.b",
        "model.head.0",
        "model.head.1.0",
        "top",
        "torch.p",
    ]
    assert chosen(message) == {
        "model.layers.0.w": "raw",
        "model.layers.0.b": "raw",
        "model.layers.1.w": "cast(to=bfloat16)",
        "model.layers.1.b": "cast(to=bfloat16)",
        "model.head.0": "raw",
        "model.head.1.0": "cast(to=float16)",
        "top": "raw",
        "torch.p": "raw",
    }
    # A tensor at the root has the empty name, which "*" matches.
    assert chosen(tc.encode(t(), policy=Policy({"*": "fp16"}, min_elements=0))) == {"#0": "cast(to=float16)"}


def test_patterns_are_shell_style_and_case_sensitive() -> None:
    policy = Policy({"layer?.w": "fp16", "[ab].*": "bf16", "*.W": "fp8_e4m3"}, min_elements=0)
    f32 = row("float32")
    assert policy.choose("layer7.w", f32, 100) == [Cast("float16")]
    assert policy.choose("layer77.w", f32, 100) is None
    assert policy.choose("a.x.y", f32, 100) == [Cast("bfloat16")]
    assert policy.choose("c.x", f32, 100) is None
    assert policy.choose("x.w", f32, 100) is None  # "*.W" does not match "x.w"
    assert policy.choose("x.W", f32, 100) == [FP8("e4m3")]


def test_tied_tensor_gets_the_codec_of_its_first_name() -> None:
    w = np.random.default_rng(4).standard_normal(64).astype(np.float32)
    message = tc.encode({"a": w, "b": w}, policy=Policy({"b": "fp16", "*": None}, min_elements=0))
    assert chosen(message) == {"a = b": "raw"}
    message = tc.encode({"a": w, "b": w}, policy=Policy({"a": "fp16", "*": None}, min_elements=0))
    assert chosen(message) == {"a = b": "cast(to=float16)"}
    back = tc.decode(message)
    assert back["a"] is back["b"]


def test_codecs_chains_and_bad_rules() -> None:
    f32 = row("float32")
    mm = MinMax(3, block=8)
    policy = Policy({"a": mm, "b": ["bf16", "fp8_e4m3"], "c": ["bf16", FP8("e5m2", block=32)]}, min_elements=0)
    assert policy.choose("a", f32, 100) == [mm]
    assert policy.choose("b", f32, 100) == [Cast("bfloat16"), FP8("e4m3")]
    assert policy.choose("c", f32, 100) == [Cast("bfloat16"), FP8("e5m2", block=32)]
    assert policy.choose("b", row("int32"), 100) is None
    assert policy.describe()["rules"][0] == ["a", [["minmax", mm.get_config()]]]
    assert "min_elements=0" in repr(policy)
    with pytest.raises(ValueError, match="unknown precision 'fp3'"):
        Policy({"*": "fp3"})
    with pytest.raises(ValueError, match="empty precision chain"):
        Policy({"*": []})
    with pytest.raises(TypeError, match="pattern"):
        Policy({3: "fp16"})  # type: ignore[dict-item]


def test_stochastic_minmax_gets_a_stream_per_name() -> None:
    policy = Policy({"*": MinMax(4, stochastic=True, seed=9)}, min_elements=0)
    f32 = row("float32")
    (a,) = policy.choose("layer.a", f32, 100) or []
    (b,) = policy.choose("layer.b", f32, 100) or []
    assert a == b == MinMax(4, stochastic=True, seed=9)  # same id and config: mutually decodable
    assert a.predicted_params() == {"stream": zlib.crc32(b"layer.a")}
    assert b.predicted_params() == {"stream": zlib.crc32(b"layer.b")}


def test_names_are_built_only_when_read() -> None:
    """A catch-all first rule never reads names, so encode skips them, yet an error still names its tensor."""
    from _codec_helpers import SignScale

    assert not Policy({"*": "nf4"}).needs_names
    assert Policy({"*.weight": "nf4"}).needs_names
    assert Policy({"*": MinMax(bits=4, stochastic=True)}).needs_names
    bad = np.ones(64, np.float32)
    bad[3] = np.nan
    tree = {"layer": [np.ones(64, np.float32), bad]}
    with pytest.raises(ValueError, match=r"layer\.1"):
        tc.encode(tree, policy=Policy({"*": SignScale()}, min_elements=0))


def test_a_policy_that_matches_no_tensor_says_how_names_look() -> None:
    tree = {"w": np.ones(8192, np.float32), "layer": {"b": np.ones(8192, np.float32)}}
    with pytest.warns(UserWarning, match=r"match no tensor.*'w', 'layer\.b'.*'\*\.bias'") as caught:
        message = tc.encode(tree, policy={"bias": "nf4"})
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert tc.decode(message)["layer"]["b"].tobytes() == tree["layer"]["b"].tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.encode(tree, policy={"*.b": "nf4"})
        tc.encode({"w": np.ones(10, np.float32)}, policy={"w": "nf4"})  # matched, only too small


def test_a_stage_that_hands_no_array_on_must_end_its_chain() -> None:
    """[topk, bf16] could never apply the cast: refused when the policy is built, not sent lossless."""
    with pytest.raises(ValueError, match=r"TopK\(fraction=0\.01\) hands no array.*put it last.*Cast.*TopK"):
        Policy({"*": [tc.TopK(0.01), "bf16"]})
    with pytest.raises(ValueError, match="hands no array"):
        Policy({"*": ["nf4", "bf16"]})
    assert Policy({"*": ["bf16", tc.TopK(0.01)]}, min_elements=0).choose("w", by_name("float32"), 100)
