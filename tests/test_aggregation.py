"""Bounded-memory aggregation (``tensorcodec.aggregation``): weighted means of messages, frames and streams."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch

import tensorcodec as tc


def _clients(n: int = 3, precision: str | None = None) -> tuple[list[dict[str, Any]], list[bytes]]:
    rng = np.random.default_rng(0)
    trees = []
    for i in range(n):
        trees.append(
            {
                "layer": {"w": rng.standard_normal((64, 90)).astype(np.float32), "b": rng.standard_normal(90)},
                "emb": torch.randn(70, 80, dtype=torch.bfloat16),
                "steps": np.int64(10 * i),
                "count": np.arange(5) * i,
                "name": "model",
            }
        )
    return trees, [tc.encode(t, precision=precision) for t in trees]


def _mean_by_hand(messages: list[Any], weights: list[float]) -> dict[str, np.ndarray[Any, Any]]:
    decoded = [tc.decode(m) for m in messages]
    total = sum(weights)

    def mean(get: Any) -> np.ndarray[Any, Any]:
        acc = sum(w * np.asarray(get(d), np.float64) for d, w in zip(decoded, weights, strict=True))
        return acc / total  # type: ignore[no-any-return]

    return {
        "layer.w": mean(lambda d: d["layer"]["w"]),
        "layer.b": mean(lambda d: d["layer"]["b"]),
        "emb": mean(lambda d: d["emb"].float().numpy()),
        "steps": mean(lambda d: d["steps"]),
        "count": mean(lambda d: d["count"]),
    }


@pytest.mark.parametrize("precision", [None, "nf4", "sign", "topk10%"])
def test_the_weighted_mean_in_the_first_sources_dtypes_and_frameworks(precision: str | None) -> None:
    _, messages = _clients(3, precision)
    weights = [1.0, 2.0, 5.0]
    got = tc.aggregate(messages, weights)
    want = _mean_by_hand(messages, weights)
    assert got["layer"]["w"].dtype == np.float32 and got["layer"]["b"].dtype == np.float64
    assert isinstance(got["emb"], torch.Tensor) and got["emb"].dtype == torch.bfloat16
    assert isinstance(got["steps"], np.int64) and got["count"].dtype == np.int64 and got["name"] == "model"
    np.testing.assert_allclose(got["layer"]["w"], want["layer.w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["layer"]["b"], want["layer.b"])  # float64 accumulates in float64
    np.testing.assert_allclose(got["emb"].float().numpy(), want["emb"], rtol=1e-2, atol=1e-2)
    assert got["steps"] == np.rint(want["steps"]) and np.array_equal(got["count"], np.rint(want["count"]))


def test_wide_accumulates_float32_in_float64() -> None:
    _, messages = _clients(3, "nf4")
    got = tc.aggregate(messages, [1, 2, 5], wide=True)["layer"]["w"]
    want = _mean_by_hand(messages, [1, 2, 5])["layer.w"].astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_every_kind_of_source() -> None:
    trees, messages = _clients(4, "blockwise8")
    decoder = tc.StreamDecoder()
    for frame in tc.encode_stream(trees[3], precision="blockwise8", max_frame_bytes=4096):
        decoder.feed(frame)
    sources = [
        memoryview(messages[0]),
        tc.encode_frames(trees[1], precision="blockwise8"),
        tc.encode_stream(trees[2], precision="blockwise8", max_frame_bytes=4096),  # a generator of frames
        decoder,
    ]
    got = tc.aggregate(sources)
    want = tc.aggregate(messages)
    np.testing.assert_array_equal(got["layer"]["w"], want["layer"]["w"])
    assert torch.equal(got["emb"], want["emb"])


def test_tied_tensors_and_empty_ones() -> None:
    w = np.ones((10, 10), np.float32)
    messages = [tc.encode({"a": w * i, "b": w * i, "e": np.zeros((0, 3), np.float32)}) for i in (1, 3)]
    tied = [tc.encode({"a": w * i, "b": None}) for i in (1, 3)]
    got = tc.aggregate(messages)
    assert np.array_equal(got["a"], w * 2) and np.array_equal(got["b"], w * 2) and got["e"].shape == (0, 3)
    assert tc.aggregate(tied)["b"] is None


def test_sources_that_disagree_are_refused_naming_the_tensor() -> None:
    _, messages = _clients(2)
    agg = tc.Aggregator()
    agg.add(messages[0])
    with pytest.raises(ValueError, match=r"tensor 'layer\.w': source 1 has float32 \[90, 64\], the first .*\[64, 90\]"):
        agg.add(tc.encode({**tc.decode(messages[1]), "layer": {"w": np.ones((90, 64), np.float32), "b": np.ones(90)}}))
    with pytest.raises(ValueError, match=r"tensor 'layer\.b': source 1 has float32"):
        agg.add(
            tc.encode(
                {**tc.decode(messages[1]), "layer": {"w": np.ones((64, 90), np.float32), "b": np.ones(90, np.float32)}}
            )
        )
    with pytest.raises(ValueError, match=r"other tensors than the first: missing \['emb'\], extra \['extra'\]"):
        tree = tc.decode(messages[1])
        del tree["emb"]
        agg.add(tc.encode({**tree, "extra": np.ones(3)}))
    agg.add(messages[1])  # the refusals changed nothing
    assert agg.count == 2
    np.testing.assert_array_equal(agg.result()["layer"]["b"], tc.aggregate(messages)["layer"]["b"])


def _half_bad(value: float) -> bytes:
    """A message whose tensor "a" decodes and whose top-k tensor "z" has duplicate indices."""
    codec = tc.TopK(0.01)
    encoded = codec.encode(np.arange(1000, dtype=np.float32))
    segments = dict(encoded.segments)
    role, _ = segments["indices"]
    segments["indices"] = (role, np.array([5, 0] + [5] * 8, np.uint8))
    z = tc.Quantized("float32", (1000,), [("topk", codec.get_config(), {"index": "varint"})], segments)
    return tc.encode({"a": np.full(100, value, np.float32), "z": z})


def test_a_message_that_fails_half_way_is_taken_out_again() -> None:
    """The first tensor decodes, a later one is malformed: DecodeError, and the sums are as before."""
    z = np.zeros(1000, np.float32)
    good = [tc.encode({"a": np.full(100, float(i), np.float32), "z": z}) for i in (1, 2)]
    agg = tc.Aggregator()
    agg.add(good[0], weight=3)
    with pytest.raises(tc.DecodeError, match=r"source 1: tensor 1: .*indices"):
        agg.add(_half_bad(7.0), weight=5)
    agg.add(good[1], weight=1)
    got = agg.result()
    np.testing.assert_array_equal(got["a"], np.full(100, 1.25, np.float32))
    assert agg.count == 2 and agg.total_weight == 4.0

    first = tc.Aggregator()
    with pytest.raises(tc.DecodeError):
        first.add(_half_bad(1.0))  # a failed first source sets no layout
    first.add(tc.encode({"other": np.ones(3)}))
    assert list(first.result()) == ["other"]


@pytest.mark.parametrize("source", [b"garbage!", [b"nothing"], 42])
def test_what_is_not_a_source(source: Any) -> None:
    with pytest.raises((tc.DecodeError, TypeError)):
        tc.Aggregator().add(source)


def test_weights_and_the_end_of_a_round() -> None:
    message = tc.encode({"w": np.ones(4, np.float32)})
    agg = tc.Aggregator()
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            agg.add(message, weight)
    with pytest.raises(ValueError, match="nothing to aggregate"):
        agg.result()
    agg.add(message, 0.0)
    with pytest.raises(ValueError, match="nothing to aggregate"):
        agg.result()
    agg.add(message, 2.0)
    assert np.array_equal(agg.result()["w"], np.ones(4, np.float32))
    with pytest.raises(ValueError, match="start a new one"):
        agg.add(message)
    with pytest.raises(ValueError):
        tc.aggregate([message], weights=[1.0, 2.0])  # zip(strict=True)


def test_deltas_against_the_global_model() -> None:
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal(6000).astype(np.float32)}
    locals_ = [{"w": model["w"] + 0.01 * rng.standard_normal(6000).astype(np.float32)} for _ in range(3)]
    messages = [tc.encode(t, precision="nf4", reference=model) for t in locals_]
    got = tc.aggregate(messages, reference=model)["w"]
    want = np.mean([tc.decode(m, reference=model)["w"] for m in messages], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_memory_stays_at_the_sums_plus_one_tensor() -> None:
    """A second source costs about one decoded tensor, not one decoded model."""
    rng = np.random.default_rng(2)
    tensor_bytes = 1 << 20  # 8 tensors of 1 MiB in float32
    model = {f"t{i}": rng.standard_normal(tensor_bytes // 4).astype(np.float32) for i in range(8)}
    messages = [tc.encode(model, precision="nf4") for _ in range(2)]
    agg = tc.Aggregator()
    agg.add(messages[0], weight=2)
    tracemalloc.start()
    try:
        agg.add(messages[1], weight=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * tensor_bytes  # one decoded tensor, the weighting scratch, small change; the model is 8 MiB


def test_a_stream_decoders_tensors_are_not_modified() -> None:
    decoder = tc.StreamDecoder()
    for frame in tc.encode_stream({"w": np.full(5, 2.0, np.float32)}):
        decoder.feed(frame)
    agg = tc.Aggregator()
    agg.add(decoder, weight=3)
    agg.add(tc.encode({"w": np.full(5, 6.0, np.float32)}), weight=1)
    assert np.array_equal(decoder.result()["w"], np.full(5, 2.0, np.float32))
    assert np.array_equal(agg.result()["w"], np.full(5, 3.0, np.float32))


def test_a_writable_message_buffer_is_not_modified() -> None:
    message = bytearray(tc.encode({"w": np.full(5, 2.0, np.float32)}))
    before = bytes(message)
    agg = tc.Aggregator()
    agg.add(message, weight=3)
    agg.add(memoryview(message), weight=2)
    assert bytes(message) == before
    assert np.array_equal(agg.result()["w"], np.full(5, 2.0, np.float32))
