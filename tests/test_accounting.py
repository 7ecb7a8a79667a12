"""Size accounting exact to the byte (report, inspect, predict), the NVFlare view and the quality columns."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

import tensorcodec as tc
from tensorcodec import wire
from tensorcodec.accounting import MB, MIB, Report, inspect, nvflare_view, predict, report
from tensorcodec.codecs import PRECISIONS, precision_codec
from tensorcodec.dtypes import by_name, torch_dtype
from tensorcodec.testing import wire_dtype

KERNEL_CODECS = {"blockwise8": ("quantize_blockwise8",), "quant4": ("quantize_4bit", "quantize_absmax")}
CHECKSUMS = [None, "xxh3_64", "crc32c"]


def skip_without_kernels(precision: str | None) -> None:
    if precision is None:
        return
    codec = precision_codec(precision)
    if codec.codec_id in KERNEL_CODECS:
        kernels = pytest.importorskip("tensorcodec.kernels", reason="tensorcodec.kernels is not there yet")
        missing = [f for f in KERNEL_CODECS[codec.codec_id] if not hasattr(kernels, f)]
        if missing:
            pytest.skip(f"tensorcodec.kernels lacks {missing}")


def precisions() -> list[Any]:
    return [pytest.param(None, id="none"), *(pytest.param(p, id=p) for p in PRECISIONS)]


def model(seed: int = 0) -> dict[str, Any]:
    """A small model of every kind of leaf: quantizable floats, small ones, ints, bool, empty, scalars, tied."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((80, 70)).astype(np.float32)
    return {
        "embed": w,
        "layers": [
            {"w": rng.standard_normal((64, 72)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)},
            {"w": torch.randn(70, 66, dtype=torch.bfloat16), "b": torch.randn(70)},
        ],
        "half": rng.standard_normal(4500).astype(np.float16),
        "wide": rng.standard_normal(4200),
        "ids": np.arange(5000),
        "mask": np.ones(4096, dtype=bool),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float32(1.5),
        "lm_head": w,  # tied: the same array under a second name
        "round": 7,
    }


def layout(message: bytes) -> tuple[int, int, int, int]:
    """(header length, payload bytes, meta bytes, padding bytes) of a message, read from the wire alone."""
    hlen = struct.unpack_from("<I", message, 8)[0]
    parsed = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=True)
    payload = meta = 0
    for entry in parsed.entries:
        for seg in entry.all_segments():
            payload += seg.nbytes if seg.role == "payload" else 0
            meta += seg.nbytes if seg.role == "meta" else 0
    padding = len(message) - wire.PREAMBLE_SIZE - hlen - payload - meta
    return hlen, payload, meta, padding


@pytest.mark.parametrize("checksum", CHECKSUMS)
@pytest.mark.parametrize("precision", precisions())
def test_sizes_add_up_exactly(precision: str | None, checksum: str | None) -> None:
    skip_without_kernels(precision)
    obj = model()
    message, rep = report(obj, precision=precision, checksum=checksum)
    assert message == tc.encode(obj, precision=precision, checksum=checksum)
    assert rep.message_bytes == len(message)
    assert rep.payload_bytes + rep.meta_bytes + rep.framing_bytes == len(message)
    hlen, payload, meta, padding = layout(message)
    assert (rep.payload_bytes, rep.meta_bytes) == (payload, meta)
    assert rep.framing_bytes == wire.PREAMBLE_SIZE + hlen + padding
    assert rep.framing_bytes == rep.message_framing_bytes + sum(r.framing_bytes for r in rep.rows)
    assert all(r.wire_bytes == r.payload_bytes + r.meta_bytes + r.framing_bytes for r in rep.rows)
    assert inspect(message) == rep
    assert inspect(tc.encode_frames(obj, precision=precision, checksum=checksum)) == rep
    totals = rep.totals()
    assert totals["message_bytes"] == len(message) and totals["tensors"] == len(rep.rows) == 11
    assert rep.to_dict()["totals"] == totals
    if precision is None:
        assert rep.meta_bytes == 0 and all(r.codec == "raw" for r in rep.rows)


def test_per_tensor_framing() -> None:
    """A tensor's framing is its table entry, its checksums and the padding before its segments."""
    obj = {"a": np.ones(10, np.float32), "b": np.arange(5000, dtype=np.float32), "c": np.zeros(0)}
    message, rep = report(obj, precision="fp8_e4m3", checksum="xxh3_64")
    hlen = struct.unpack_from("<I", message, 8)[0]
    header = msgpack.unpackb(message[16 : 16 + hlen], raw=False)
    parsed = wire.parse_message(wire.Rope(message), wire.DEFAULT_LIMITS, verify=True)
    pos = 16 + hlen
    for i, (r, entry) in enumerate(zip(rep.rows, parsed.entries, strict=True)):
        padding = 0
        sums = 0
        for j, seg in enumerate(entry.all_segments()):
            sums += len(msgpack.packb(header["checksums"][entry.first_segment + j]))
            if seg.nbytes:
                padding += -pos % 64
                pos += -pos % 64 + seg.nbytes
        assert r.framing_bytes == len(msgpack.packb(header["tensors"][i])) + sums + padding, r.name
    assert [r.name for r in rep.rows] == ["a", "b", "c"]
    assert [r.codec for r in rep.rows] == ["raw", "fp8(format=e4m3, block=0)", "raw"]
    assert rep.rows[1].payload_bytes == 5000 and rep.rows[1].meta_bytes == 4


def test_original_and_fp32_columns() -> None:
    w = torch.randn(100, 50, dtype=torch.bfloat16)
    obj = {"w": w, "tied": w, "ids": np.arange(10, dtype=np.int32), "d": np.ones(3)}
    _, rep = report(obj, precision="fp8_e4m3")
    rows = {r.name: r for r in rep.rows}
    assert set(rows) == {"tied = w", "ids", "d"}
    tied = rows["tied = w"]
    assert tied.original_bytes == 2 * 5000 * 2 and tied.fp32_bytes == 2 * 5000 * 4  # once per name
    assert rows["ids"].original_bytes == rows["ids"].fp32_bytes == 40  # not floating: counted as it is
    assert rows["d"].original_bytes == 24 and rows["d"].fp32_bytes == 12
    assert rep.original_bytes == 20000 + 40 + 24 and rep.fp32_bytes == 40000 + 40 + 12
    assert rep.percent_of_fp32() == pytest.approx(100 * rep.message_bytes / rep.fp32_bytes)
    assert rep.percent_of_original() == pytest.approx(100 * rep.message_bytes / rep.original_bytes)
    assert MIB == 2**20 and MB == 10**6


def random_spec(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((96, 64)).astype(np.float32)
    return {
        "embed": w,
        "w1": rng.standard_normal((130, 65)).astype(np.float32),
        "w2": torch.randn(33, 129, dtype=torch.bfloat16),
        "h": rng.standard_normal(4100).astype(np.float16),
        "d": rng.standard_normal(5000),
        "bias": rng.standard_normal(100).astype(np.float32),
        "ids": np.arange(300),
        "empty": np.zeros(0, np.float32),
        "head": w,
    }


@pytest.mark.parametrize("checksum", CHECKSUMS)
@pytest.mark.parametrize("precision", precisions())
def test_predict_equals_report(precision: str | None, checksum: str | None) -> None:
    skip_without_kernels(precision)
    if precision is not None and precision.startswith(("lossless", "topk", "randk")):
        pytest.skip("data-dependent sizes (entropy coding, sparse index coding): predict refuses them (tested below)")
    for min_elements in (0, 4096):
        spec = random_spec(1)
        policy = None if precision is None else tc.Policy({"*": precision}, min_elements=min_elements)
        _, rep = report(spec, policy=policy, checksum=checksum)
        assert predict(spec, policy=policy, checksum=checksum) == rep
        # Shapes alone: (dtype, shape) pairs, with the tie given by shared=.
        pairs = {k: (wire_dtype(v).name, tuple(v.shape)) for k, v in spec.items()}
        assert predict(pairs, policy=policy, checksum=checksum, shared={"head": "embed"}) == rep
        # Meta tensors cost no memory; torch tensors over the same storage count as tied, as in encode.
        meta = {k: torch.empty(v[1], dtype=_torch_dtype(v[0]), device="meta") for k, v in pairs.items()}
        assert predict(meta, policy=policy, checksum=checksum, shared={"head": "embed"}) == rep


def _torch_dtype(name: str) -> Any:
    row = by_name(name)
    assert row is not None
    t = torch_dtype(row)
    assert t is not None
    return t


def test_predict_ties() -> None:
    emb = torch.randn(300, 20)
    state = {"emb": emb, "head": emb.detach(), "other": emb.clone()}  # head shares emb's storage
    _, rep = report(state, precision="fp16")
    assert [r.name for r in rep.rows] == ["emb = head", "other"]
    assert predict(state, precision="fp16") == rep
    pairs = {"a": ("float32", (64,)), "b": ("float32", (64,))}  # equal literals are one tuple object
    assert len(predict(pairs).rows) == 2
    assert [r.name for r in predict(pairs, shared={"b": "a"}).rows] == ["a = b"]


def test_predict_stochastic_minmax_is_exact() -> None:
    spec = random_spec(2)
    policy = tc.Policy({"*": tc.MinMax(3, block=100, stochastic=True, seed=5)}, min_elements=0)
    _, rep = report(spec, policy=policy)
    assert predict(spec, policy=policy) == rep


def test_predict_refuses_data_dependent_sizes() -> None:
    from tensorcodec.codecs import Codec

    class Sparse(tc.Cast):
        def segment_layout(self, dtype: Any, count: int) -> None:
            return None

    codec: Codec = Sparse("float16")
    with pytest.raises(ValueError, match="data-dependent"):
        predict({"w": ("float32", (5000,))}, policy=tc.Policy({"*": codec}))


# ---------------------------------------------------------------------------- the seed table


def llama_3_2_1b() -> dict[str, tuple[str, tuple[int, ...]]]:
    """Llama-3.2-1B's state-dict shapes in fp32, lm_head listed apart from the embedding it is tied to."""
    hidden, inter, layers, heads, kv_heads, head_dim, vocab = 2048, 8192, 16, 32, 8, 64, 128256
    f = "float32"
    spec: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": (f, (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        spec[p + "self_attn.q_proj.weight"] = (f, (heads * head_dim, hidden))
        spec[p + "self_attn.k_proj.weight"] = (f, (kv_heads * head_dim, hidden))
        spec[p + "self_attn.v_proj.weight"] = (f, (kv_heads * head_dim, hidden))
        spec[p + "self_attn.o_proj.weight"] = (f, (hidden, heads * head_dim))
        spec[p + "mlp.gate_proj.weight"] = (f, (inter, hidden))
        spec[p + "mlp.up_proj.weight"] = (f, (inter, hidden))
        spec[p + "mlp.down_proj.weight"] = (f, (hidden, inter))
        spec[p + "input_layernorm.weight"] = (f, (hidden,))
        spec[p + "post_attention_layernorm.weight"] = (f, (hidden,))
    spec["model.norm.weight"] = (f, (hidden,))
    spec["lm_head.weight"] = (f, (vocab, hidden))
    return spec


def test_llama_shapes() -> None:
    spec = llama_3_2_1b()
    assert len(spec) == 147
    assert sum(math.prod(shape) for _, shape in spec.values()) == 1_498_482_688


@pytest.mark.parametrize(
    ("precision", "model_mib", "meta_mib"),
    [
        ("fp32", 5716.26, 0.0),
        ("fp16", 2858.13, 0.0),
        ("bf16", 2858.13, 0.0),
        ("blockwise8", 1429.06, 1.54),
        ("nf4", 714.53, 89.33),
        ("fp4", 714.53, 89.33),
    ],
)
def test_nvflare_view_seed_table(precision: str, model_mib: float, meta_mib: float) -> None:
    model_bytes, meta_bytes = nvflare_view(llama_3_2_1b(), precision)
    assert (round(model_bytes / MIB, 2), round(meta_bytes / MIB, 2)) == (model_mib, meta_mib)


def test_nvflare_view_rules() -> None:
    spec = {"w": ("float32", (5000,)), "h": ("bfloat16", (100,)), "i": ("int64", (7,)), "d": ("float64", (10,))}
    assert nvflare_view(spec, "fp32") == (20000 + 200 + 56 + 80, 0)
    assert nvflare_view(spec, "bf16") == (10000 + 200 + 56 + 80, 0)  # bf16 stays, int64 and float64 as they are
    assert nvflare_view(spec, "blockwise8") == (5000 + 100 + 56 + 80, 2 * 4 + 1024 + 4 + 1024)
    assert nvflare_view(spec, "nf4") == (2500 + 50 + 56 + 80, 4 * 79 + 64 + 4 * 2 + 64)
    with pytest.raises(ValueError, match="NVFlare view"):
        nvflare_view(spec, "minmax8")


def test_predict_nf4_of_llama() -> None:
    spec = llama_3_2_1b()
    fp32 = 4 * sum(math.prod(shape) for _, shape in spec.values())
    rep = predict(spec, precision="nf4", shared={"lm_head.weight": "model.embed_tokens.weight"})
    assert len(rep.rows) == 146 and "lm_head.weight = model.embed_tokens.weight" in [r.name for r in rep.rows]
    assert rep.fp32_bytes == fp32  # the tied tensor counts once per name
    assert rep.message_bytes <= 0.129 * fp32
    assert rep.payload_bytes + rep.meta_bytes + rep.framing_bytes == rep.message_bytes
    norms = [r for r in rep.rows if "norm" in r.name]
    assert len(norms) == 33 and all(r.codec == "raw" for r in norms)  # 2048 < min_elements
    untied = predict(spec, precision="nf4")
    assert untied.message_bytes > rep.message_bytes + 128256 * 2048 // 2


# ---------------------------------------------------------------------------- quality


def _worst_error(precision: str, x: np.ndarray[Any, Any]) -> float:
    """The largest |x - x̂| the codec's documented bound allows for this (float32, standard-normal) tensor."""
    absmax = float(np.abs(x).max())
    span = float(x.max() - x.min())
    bounds = {
        "fp16": 2.0**-11 * absmax,
        "bf16": 2.0**-8 * absmax,
        "fp8_e4m3": (2.0**-4 + 2.0**-9 / 448) * absmax,
        "fp8_e5m2": (2.0**-3 + 2.0**-16 / 57344) * absmax,
        "blockwise8": 0.0070468 * absmax,
        "nf4": 0.1519 * absmax * 1.05,  # + the error of the double-quantized absmax
        "fp4": 0.16667 * absmax * 1.05,
        "nf2": 0.5 * absmax * 1.05,
        "nf3": 0.23249 * absmax * 1.05,
        "nf5": 0.11280 * absmax * 1.05,
        "nf6": 0.08964 * absmax * 1.05,
    }
    # MX: the scale is at most absmax / 2^emax, and x / scale < 2^(emax + 1): half an ulp there plus saturation.
    for name, (m, emax, top) in {
        "mxfp8_e4m3": (3, 8, 448.0),
        "mxfp8_e5m2": (2, 15, 57344.0),
        "mxfp6_e2m3": (3, 2, 7.5),
        "mxfp6_e3m2": (2, 4, 28.0),
        "mxfp4": (1, 2, 6.0),
    }.items():
        bounds[name] = (2.0 ** (emax - m) + max(2.0 ** (emax + 1) - top, 0.0)) / 2.0**emax * absmax
    bounds["mxint8"] = (1 / 128 + 1 / 64) * absmax
    for name in ("topk10%", "topk1%", "topk0.1%", "randk10%", "randk1%"):
        bounds[name] = absmax  # a dropped element decodes as 0
    bounds["sign"] = bounds["sign1"] = 2 * absmax  # | |x| - s | with s <= absmax
    bounds["nvfp4"] = absmax / 6 * 1.0625 * (6.375 / 4 + 0.375)  # d <= amax / 6 (1 + 2^-4), y <= 6.375
    if precision.startswith("minmax"):
        return span / (2 ** int(precision[6:]) - 1) / 2 * 1.0001
    return bounds[precision] * 1.0001


@pytest.mark.parametrize("precision", ["lossless", "topk1%", "randk10%"])
def test_predict_refuses_data_dependent_precisions(precision: str) -> None:
    with pytest.raises(ValueError, match="data-dependent"):
        predict(random_spec(1), policy=tc.Policy({"*": precision}, min_elements=0))


@pytest.mark.parametrize("precision", precisions())
def test_quality_columns(precision: str | None) -> None:
    skip_without_kernels(precision)
    rng = np.random.default_rng(6)
    obj = {
        "w": rng.standard_normal(6000).astype(np.float32),
        "small": rng.standard_normal(100).astype(np.float32),  # under min_elements: lossless
        "ids": np.arange(5000),
        "nan": np.array([1.0, np.nan, np.inf, 2.0], np.float32),
    }
    message, rep = report(obj, precision=precision, quality=True)
    decoded = tc.decode(message)
    rows = {r.name: r for r in rep.rows}
    for name in ("small", "nan"):
        r = rows[name]
        assert (r.rel_mse, r.sqnr_db, r.max_abs_err) == (0.0, math.inf, 0.0)
    w = rows["w"]
    x, xh = obj["w"].astype(np.float64), decoded["w"].astype(np.float64)
    if precision in (None, "lossless"):
        assert (w.rel_mse, w.sqnr_db, w.max_abs_err) == (0.0, math.inf, 0.0)
        assert rep.quality == {"rel_mse": 0.0, "sqnr_db": math.inf, "max_abs_err": 0.0}
        return
    err2, sig2 = float(np.sum((x - xh) ** 2)), float(np.sum(x**2))
    assert w.rel_mse == pytest.approx(err2 / sig2, rel=1e-9)
    assert w.sqnr_db == pytest.approx(10 * math.log10(sig2 / err2), rel=1e-9)
    assert w.max_abs_err == pytest.approx(float(np.abs(x - xh).max()), rel=1e-12)
    worst = _worst_error(precision, obj["w"])
    assert 0 < w.rel_mse <= worst**2 * x.size / sig2
    assert 0 < w.max_abs_err <= worst
    # Totals: over the finite elements of every floating tensor, the lossless ones included.
    small = obj["small"].astype(np.float64)
    signal = sig2 + float(small @ small) + 1.0 + 4.0
    assert rep.quality["rel_mse"] == pytest.approx(err2 / signal, rel=1e-9)
    assert rep.quality["sqnr_db"] == pytest.approx(10 * math.log10(signal / err2), rel=1e-9)
    assert rep.quality["max_abs_err"] == w.max_abs_err
    assert rep.totals()["rel_mse"] == rep.quality["rel_mse"]


def test_quality_of_ints_and_empty() -> None:
    _, rep = report({"ids": np.arange(5000), "e": np.zeros(0, np.float32)}, precision="fp16", quality=True)
    assert isinstance(rep, Report)
    assert rep.quality == {"rel_mse": None, "sqnr_db": None, "max_abs_err": 0.0}
