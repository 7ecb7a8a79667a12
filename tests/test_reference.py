"""Deltas against a reference model: ``encode``/``decode``/streams with ``reference=`` (issue 12)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec.accounting import inspect
from tensorcodec.testing import raw_bytes, wire_dtype
from tensorcodec.testing.strategies import arrays


def _same_bits(a: Any, b: Any) -> bool:
    return raw_bytes(a) == raw_bytes(b) and tuple(a.shape) == tuple(b.shape) and wire_dtype(a) == wire_dtype(b)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lossless_deltas_give_back_every_bit_of_every_dtype(data: st.DataObject) -> None:
    update = data.draw(arrays(max_size=40))
    reference = data.draw(arrays(update.dtype, shape=update.shape))
    message = tc.encode({"t": update}, reference={"t": reference})
    [stages] = [r.codec for r in inspect(message).rows]
    assert stages.startswith("delta(mode=xor)")
    back = tc.decode(message, reference={"t": reference})["t"]
    assert _same_bits(back, update)


@pytest.mark.parametrize("precision", ["nf4", "blockwise8", "bf16", "fp8_e4m3", "minmax8"])
def test_a_quantized_delta_is_within_the_codec_bound_of_the_difference(precision: str) -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(8192).astype(np.float32)
    update = reference + rng.standard_normal(8192).astype(np.float32) * 1e-3
    back = tc.decode(
        tc.encode({"w": update}, reference={"w": reference}, precision=precision), reference={"w": reference}
    )
    plain = tc.decode(tc.encode({"w": update}, precision=precision))
    delta_error = float(np.max(np.abs(back["w"] - update)))
    plain_error = float(np.max(np.abs(plain["w"] - update)))
    codec = tc.PRECISIONS[precision]()
    encoded = codec.encode((update - reference).astype(np.float32))
    bound = codec.error_bound((update - reference).astype(np.float32), encoded)
    assert np.all(np.abs(back["w"] - update) <= bound + np.abs(update) * 2**-23 * 2)  # + the final rounding
    assert delta_error < plain_error / 50  # the point: the error scales with the change, not the weights


def test_bf16_and_torch_come_back_as_they_went() -> None:
    reference = {"h": torch.randn(64, 128).to(torch.bfloat16), "n": torch.arange(6)}
    update = {"h": (reference["h"].float() + 0.01).to(torch.bfloat16), "n": reference["n"] + 1}
    for precision in (None, "nf4"):
        back = tc.decode(tc.encode(update, reference=reference, precision=precision), reference=reference)
        assert back["h"].dtype == torch.bfloat16 and isinstance(back["n"], torch.Tensor)
        assert torch.equal(back["n"], update["n"])
        if precision is None:
            assert torch.equal(back["h"].view(torch.int16), update["h"].view(torch.int16))
        else:
            assert float((back["h"].float() - update["h"].float()).abs().max()) < 0.01


def test_what_the_reference_lacks_or_changed_travels_whole() -> None:
    reference = {"a": np.ones(5, np.float32), "b": np.ones(3, np.float32)}
    update = {"a": np.full(5, 2, np.float32), "b": np.ones(4, np.float32), "c": np.zeros(2)}
    message = tc.encode(update, reference=reference)
    codecs = {r.name: r.codec for r in inspect(message).rows}
    assert codecs == {"a": "delta(mode=xor)", "b": "raw", "c": "raw"}
    back = tc.decode(message, reference=reference)
    assert all(np.array_equal(back[k], update[k]) for k in update)
    assert np.array_equal(tc.decode(tc.encode({"b": update["b"]}, reference=reference))["b"], update["b"])


def test_a_missing_or_different_reference_is_refused_naming_the_tensor() -> None:
    reference = {"w": np.arange(8, dtype=np.float32)}
    message = tc.encode({"w": np.arange(8, dtype=np.float32) + 1}, reference=reference)
    with pytest.raises(tc.DecodeError, match=r"'w' was sent as a difference from a reference model: decode\("):
        tc.decode(message)
    with pytest.raises(tc.DecodeError, match=r"'w': the reference differs .*\(xxh3_64 0x[0-9a-f]{16}, the sender's"):
        tc.decode(message, reference={"w": np.arange(8, dtype=np.float32) * 2})
    with pytest.raises(tc.DecodeError, match="has no tensor 'w'"):
        tc.decode(message, reference={"v": reference["w"]})
    with pytest.raises(tc.DecodeError, match=r"against a float32 \[8\] tensor; the reference's is float32 \[2, 4\]"):
        tc.decode(message, reference={"w": reference["w"].reshape(2, 4)})


def test_streams_and_files_carry_deltas_one_tensor_at_a_time() -> None:
    rng = np.random.default_rng(2)
    reference = {f"layer{i}": rng.standard_normal(5000).astype(np.float32) for i in range(4)}
    update = {k: v + np.float32(0.001) for k, v in reference.items()}
    for precision in (None, "nf4"):
        whole = tc.decode(tc.encode(update, reference=reference, precision=precision), reference=reference)
        frames = list(tc.encode_stream(update, reference=reference, precision=precision, max_frame_bytes=4096))
        streamed = tc.decode_stream(frames, reference=reference)
        file = io.BytesIO()
        tc.dump(update, file, reference=reference, precision=precision)
        file.seek(0)
        loaded = tc.load(file, reference=reference)
        for k in update:
            assert _same_bits(streamed[k], whole[k]) and _same_bits(loaded[k], whole[k])
        with pytest.raises(tc.DecodeError, match="sent as a difference"):
            tc.decode_stream(frames)


def test_neither_the_update_nor_the_reference_is_touched() -> None:
    reference = {"w": np.linspace(0, 1, 4096, dtype=np.float32)}
    update = {"w": reference["w"] + 1}
    before = (reference["w"].copy(), update["w"].copy())
    message = tc.encode(update, reference=reference, precision="nf4")
    tc.decode(message, reference=reference)
    assert np.array_equal(before[0], reference["w"]) and np.array_equal(before[1], update["w"])


def test_hostile_delta_stages_raise_decode_errors() -> None:
    reference = {"w": np.arange(8, dtype=np.float32)}
    good = tc.encode({"w": np.arange(8, dtype=np.float32) + 1}, reference=reference)
    from _helpers import header_of, with_header

    header = header_of(good)
    bad_cases = []
    for mutate in (
        lambda e: e[2][0].__setitem__(1, {"mode": "add"}),
        lambda e: e[2][0].__setitem__(1, {"mode": "xor", "extra": 1}),
        lambda e: e[2][0][2].__setitem__("name", 5),
        lambda e: e[2][0][2].__setitem__("digest", "x"),
        lambda e: e[2][0].__setitem__(1, {"mode": "sub"}),  # sub with nothing after it
        lambda e: e[2].append(["cast", {"to": "bfloat16"}, {}]),  # xor followed by a stage
    ):
        h = {**header, "tensors": [list(map(lambda x: x, header["tensors"][0]))]}
        entry = h["tensors"][0]
        entry[2] = [[s[0], dict(s[1]), dict(s[2])] for s in entry[2]]
        mutate(entry)
        bad_cases.append(with_header(good, h))
    for message in bad_cases:
        with pytest.raises(tc.DecodeError):
            tc.decode(message, reference=reference)
        with pytest.raises(tc.DecodeError):
            tc.decode(message)
