"""``entropy``: bit-exact round trips, the C kernels against their numpy twins, hostile bodies, zstd optional."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcodec as tc
from tensorcodec import _c, dtypes
from tensorcodec.codecs import Cast, Entropy, Quantized, entropy, huffman
from tensorcodec.errors import DecodeError
from tensorcodec.testing import check_codec, raw_bytes, wire_dtype
from tensorcodec.testing.strategies import arrays, special_values

HAS_ZSTD = entropy.zstandard is not None
needs_zstd = pytest.mark.skipif(not HAS_ZSTD, reason="zstandard is not installed")
SOURCES = sorted(entropy.SOURCES)


def weights(n: int, dtype: Any = ml_dtypes.bfloat16, seed: int = 0) -> np.ndarray[Any, Any]:
    """Gaussian weights: an exponent plane that compresses, mantissas that do not."""
    return (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(dtype)


def segments_of(enc: tc.Encoded) -> dict[str, np.ndarray[Any, Any]]:
    return {k: a for k, (_, a) in enc.segments.items()}


def round_trip(codec: Entropy, x: np.ndarray[Any, Any]) -> tc.Encoded:
    row = wire_dtype(x)
    flat = np.frombuffer(bytearray(raw_bytes(x)), dtype=row.numpy)  # as a message hands it over: flat, little-endian
    enc = codec.encode(flat)
    out = codec.decode(segments_of(enc), enc.params, row, flat.size)
    assert out.dtype == flat.dtype and raw_bytes(out) == raw_bytes(flat)
    return enc


@pytest.fixture(params=["native", "numpy"])
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native" and (not _c.native_available() or not tc.native_enabled()):
        pytest.skip("the C kernels are off or not built")
    before = tc.native_enabled()
    tc.set_native(request.param == "native")
    try:
        yield str(request.param)
    finally:
        tc.set_native(before)


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("codec", [Entropy(), Entropy(chunk=1024)], ids=repr)
def test_check_codec(codec: Entropy) -> None:
    check_codec(codec, max_examples=20)


@needs_zstd
def test_check_codec_zstd() -> None:
    check_codec(Entropy("zstd", level=3, chunk=1024), max_examples=10)


@pytest.mark.parametrize(
    "config", [{"coder": "lz4"}, {"level": 0}, {"level": 4}, {"level": True}, {"chunk": 1000}, {"chunk": 1 << 21}]
)
def test_bad_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Entropy(**config)


# ---------------------------------------------------------------------------- round trips


@settings(max_examples=60)
@given(x=st.sampled_from(SOURCES).flatmap(lambda name: arrays(name, max_size=300, max_side=300)))
def test_round_trip_of_any_bit_pattern(x: np.ndarray[Any, Any]) -> None:
    """Raw bit patterns (NaN payloads, ±Inf, -0.0, subnormals) of every source, any shape, 0-d and empty."""
    round_trip(Entropy(chunk=1024), x)


@settings(max_examples=25)
@given(
    name=st.sampled_from(["float32", "bfloat16", "float16", "float64"]),
    n=st.integers(0, 5000),
    scale=st.integers(-40, 40),
    chunk=st.sampled_from([1024, 1500, 1 << 18]),
)
def test_round_trip_of_weights(name: str, n: int, scale: int, chunk: int) -> None:
    with np.errstate(over="ignore"):  # beyond a narrow type's range: Inf, which must round-trip too
        x = (np.random.default_rng(n).standard_normal(n) * 10.0**scale).astype(dtypes.BY_NAME[name].numpy)
    round_trip(Entropy(chunk=chunk), x)


@pytest.mark.parametrize("name", SOURCES)
def test_specials_and_constants(name: str, impl: str) -> None:
    row = dtypes.BY_NAME[name]
    specials = special_values(row)
    for x in [specials, np.tile(specials, 300), np.repeat(specials[:1], 5000), np.zeros(3000, row.numpy)]:
        round_trip(Entropy(chunk=1024), x)


def test_bf16_planes_compress_as_designed(impl: str) -> None:
    """Exponent plane Huffman-coded, mantissa plane raw: about 2.6 of 8 exponent bits, so <= 67 % of raw."""
    x = weights(1 << 17)
    enc = round_trip(Entropy(), x)
    methods = enc.segments["index"][1] & 3
    assert list(methods) == [entropy.HUFFMAN, entropy.RAW]
    assert enc.segments["body"][1].nbytes <= 0.67 * x.nbytes
    constant = round_trip(Entropy(), np.full(5000, 1.5, np.float32))
    assert list(constant.segments["index"][1] & 3) == [entropy.CONST] * 4


def test_sign_sits_beside_the_mantissa() -> None:
    """bf16 rotated left a bit: the top plane is the exponent alone, the sign the low plane's bit 0."""
    x = np.array([-1.0, 1.0, -0.0, 2.0], ml_dtypes.bfloat16)
    planes = entropy.split_planes(x.view(np.uint8), 2, True)
    assert list(planes[:4]) == [127, 127, 0, 128]
    assert list(planes[4:] & 1) == [1, 0, 1, 0]


def test_chained_after_cast_and_by_name() -> None:
    x = weights(20000, np.float32)
    message = tc.encode({"w": x}, policy=tc.Policy({"*": ["bf16", "lossless"]}, min_elements=0))
    cast = Cast("bfloat16").encode(x).segments["data"][1].astype(np.float32)
    assert raw_bytes(tc.decode(message)["w"]) == raw_bytes(cast)
    assert len(message) < 0.7 * cast.size * 2
    lossless = tc.encode({"w": x}, precision="lossless")
    assert raw_bytes(tc.decode(lossless)["w"]) == raw_bytes(x) and len(lossless) < x.nbytes


# ---------------------------------------------------------------------------- C against numpy


@settings(max_examples=15)
@given(
    name=st.sampled_from(SOURCES),
    n=st.integers(0, 6000),
    chunk=st.sampled_from([1024, 4097]),
    seed=st.integers(0, 2**16),
)
def test_c_and_numpy_write_and_read_the_same_bytes(name: str, n: int, chunk: int, seed: int) -> None:
    if not _c.native_available():
        pytest.skip("the C kernels are not built")
    row = dtypes.BY_NAME[name]
    x = (np.random.default_rng(seed).standard_normal(n) * 30).astype(row.numpy)
    before = tc.native_enabled()
    try:
        tc.set_native(True)
        by_c = Entropy(chunk=chunk).encode(x)
        tc.set_native(False)
        by_numpy = Entropy(chunk=chunk).encode(x)
        for name_ in ("index", "body"):
            assert np.array_equal(by_c.segments[name_][1], by_numpy.segments[name_][1]), name_
        assert raw_bytes(round_trip(Entropy(chunk=chunk), x).segments["body"][1]) == raw_bytes(by_c.segments["body"][1])
    finally:
        tc.set_native(before)


def test_code_lengths_stay_within_the_limit() -> None:
    """Fibonacci counts make the deepest Huffman trees; the code stays complete and <= 11 bits."""
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    hist = np.zeros(256, np.int64)
    hist[:40] = fib
    lengths = huffman.code_lengths(hist)
    assert int(lengths.max()) <= huffman.MAX_LEN and np.count_nonzero(lengths) == 40
    table = huffman.decode_table(huffman.pack_lengths(lengths))
    assert np.all(table >> 8 > 0)


# ---------------------------------------------------------------------------- hostile input


def _hostile(enc: tc.Encoded, count: int, **changes: np.ndarray[Any, Any]) -> None:
    """``changes`` replace segments: both the codec and a whole message must raise DecodeError."""
    segs = {**segments_of(enc), **changes}
    row = dtypes.BY_NAME["bfloat16"]
    with pytest.raises(DecodeError):
        Entropy(chunk=1024).decode(segs, {}, row, count)
    stage = ("entropy", Entropy(chunk=1024).get_config(), {})
    roles = {"index": "meta", "body": "payload"}
    message = tc.encode({"t": Quantized("bfloat16", (count,), [stage], {k: (roles[k], a) for k, a in segs.items()})})
    with pytest.raises(DecodeError):
        tc.decode(message)


@pytest.fixture
def coded() -> tuple[tc.Encoded, int]:
    return Entropy(chunk=1024).encode(weights(3000)), 3000


def test_truncated_and_lengthened_bodies(coded: tuple[tc.Encoded, int], impl: str) -> None:
    enc, n = coded
    body = enc.segments["body"][1]
    _hostile(enc, n, body=body[:-1])
    _hostile(enc, n, body=np.concatenate([body, body[:1]]))
    _hostile(enc, n, body=body[:0])


def test_bad_index_entries(coded: tuple[tc.Encoded, int], impl: str) -> None:
    enc, n = coded
    index = enc.segments["index"][1]
    body = enc.segments["body"][1]
    huff = int(np.flatnonzero((index & 3) == entropy.HUFFMAN)[0])
    good = int(index[huff])
    for entry in [good + 4, good - 4, (good & ~3) | entropy.RAW, 1 | (5 << 2), 0xFFFFFFFF]:
        bad = index.copy()
        bad[huff] = entry
        _hostile(enc, n, index=bad)
    _hostile(enc, n, index=index[:-1])
    # Lengths that add up to a huge body are refused before anything is allocated for it.
    huge = index.copy()
    huge[:] = entropy.ZSTD | (((1 << 30) - 1) << 2)
    _hostile(enc, n, index=huge, body=body)


def test_bad_huffman_chunks(coded: tuple[tc.Encoded, int], impl: str) -> None:
    enc, n = coded
    index = enc.segments["index"][1]
    body = enc.segments["body"][1]
    k = int(np.flatnonzero((index & 3) == entropy.HUFFMAN)[0])
    start = int(np.sum(index[:k].astype(np.int64) >> 2))
    incomplete = body.copy()
    incomplete[start : start + huffman.LENGTHS_BYTES] = 0x33  # every symbol 3 bits: over-full
    _hostile(enc, n, body=incomplete)
    lanes = body.copy()
    lanes[start + huffman.LENGTHS_BYTES] ^= 1  # lane 0 one byte off
    _hostile(enc, n, body=lanes)


def test_a_lane_ends_exactly_with_zero_padding(impl: str) -> None:
    """300 one-bit codes: lanes of 32 and 5.5 bytes, so the last byte's top four bits are padding."""
    symbols = (np.arange(300) % 2).astype(np.uint8)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=256))
    body = huffman.encode_chunk(symbols, lengths)
    assert body.size == huffman.header_size(300) + 38
    out = np.empty(300, np.uint8)
    huffman.decode_chunk(body, out, {})
    assert np.array_equal(out, symbols)
    for change in ("padding", "short", "long"):
        bad = body.copy()
        if change == "padding":
            bad[-1] |= 0x80
        lane = bad[huffman.LENGTHS_BYTES + 2 : huffman.LENGTHS_BYTES + 4].view("<u2")
        lane[0] = int(lane[0]) + {"padding": 0, "short": -1, "long": 1}[change]
        if change != "padding":
            bad = np.concatenate([bad, np.zeros(1, np.uint8)]) if change == "long" else bad[:-1]
        with pytest.raises(DecodeError):
            huffman.decode_chunk(bad, out, {})


@settings(max_examples=60)
@given(data=st.data())
def test_bit_flips_give_decode_error_or_a_tensor(data: st.DataObject) -> None:
    """Flipped bits anywhere: either DecodeError or a tensor of the declared size, never another exception."""
    enc = Entropy(chunk=1024).encode(weights(2500, seed=1))
    segs = segments_of(enc)
    name = data.draw(st.sampled_from(["index", "body"]))
    raw = segs[name].view(np.uint8).copy()
    for at in data.draw(st.lists(st.integers(0, raw.size * 8 - 1), min_size=1, max_size=4)):
        raw[at // 8] ^= 1 << (at % 8)
    segs[name] = raw.view(segs[name].dtype)
    try:
        out = Entropy(chunk=1024).decode(segs, {}, dtypes.BY_NAME["bfloat16"], 2500)
    except DecodeError:
        return
    assert out.size == 2500 and out.dtype == ml_dtypes.bfloat16


def test_c_kernels_check_their_sizes() -> None:
    native = _c.kernels() if tc.native_enabled() else None
    if native is None:
        pytest.skip("the C kernels are off or not built")
    with pytest.raises(ValueError):
        native.split_planes(np.zeros(6, np.uint8), 4, True, np.zeros(6, np.uint8))
    with pytest.raises(ValueError):
        native.join_planes([np.zeros(3, np.uint8)] * 2, True, np.zeros(8, np.uint8))
    with pytest.raises(ValueError):
        native.histograms(np.zeros(10, np.uint8), 4, np.zeros(256, np.uint32))
    with pytest.raises(ValueError):
        native.huff_decode(
            np.zeros(4, np.uint8), np.zeros(1, np.uint32), np.zeros(2048, np.uint16), 256, np.zeros(9, np.uint8)
        )


# ---------------------------------------------------------------------------- zstd, present or not


@needs_zstd
def test_zstd_chunks(impl: str) -> None:
    x = weights(5000)
    enc = round_trip(Entropy("zstd", chunk=1024), x)
    index, body = enc.segments["index"][1], enc.segments["body"][1]
    assert entropy.ZSTD in set(index & 3)
    k = int(np.flatnonzero((index & 3) == entropy.ZSTD)[0])
    start = int(np.sum(index[:k].astype(np.int64) >> 2))
    garbage = body.copy()
    garbage[start + 6 : start + 12] ^= 0xFF
    _hostile_zstd(enc, garbage)


def _hostile_zstd(enc: tc.Encoded, body: np.ndarray[Any, Any]) -> None:
    segs = {**segments_of(enc), "body": body}
    with pytest.raises(DecodeError):
        Entropy("zstd", chunk=1024).decode(segs, {}, dtypes.BY_NAME["bfloat16"], 5000)


def test_without_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default coder needs no package; zstd chunks then name what to install."""
    zstd_enc = Entropy("zstd", chunk=1024).encode(weights(5000)) if HAS_ZSTD else None
    monkeypatch.setattr(entropy, "zstandard", None)
    round_trip(Entropy(), weights(5000))
    with pytest.raises(ValueError, match="zstandard"):
        Entropy("zstd").encode(weights(10))
    if zstd_enc is not None:
        with pytest.raises(DecodeError, match="zstandard"):
            Entropy("zstd", chunk=1024).decode(segments_of(zstd_enc), {}, dtypes.BY_NAME["bfloat16"], 5000)
