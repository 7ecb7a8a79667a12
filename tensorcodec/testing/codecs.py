"""``check_codec``: the checks every codec must pass, built-in or registered by a user.

It runs the codec on fixed cases (every source dtype; 0-d, empty, odd and multi-block sizes;
zeros of both signs, constants, subnormals, NaN/Inf) and on hypothesis-drawn arrays from
``tensorcodec.testing.strategies``, directly and through whole messages, and raises
``AssertionError`` naming the codec, the dtype, the shape and the element at fault. Needs
hypothesis.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .. import accounting, codecs, dtypes
from ..codecs import Codec, Encoded, Quantized
from ..core import decode, encode
from ..dtypes import DType
from ..errors import DecodeError
from ..policy import Policy
from . import raw_bytes, wire_dtype
from .strategies import arrays, special_values

__all__ = ["check_codec", "check_round_trip", "check_config", "check_hostile_segments"]

LARGE = 2 * 4096 + 3
"""A size beyond two blocks of the largest block size the built-in codecs take."""
EXTREME = 2.0**64
"""Magnitudes from which a lossy codec may refuse a tensor with ValueError (ranges or statistics that overflow fp32)."""


def check_codec(codec: Codec, *, max_examples: int = 50, max_size: int = 300) -> None:
    """Asserts that ``codec`` keeps the codec contract (``docs/codecs.md``); raises AssertionError naming what failed.

    - its config round-trips through JSON and the registry, and repr, ``==`` and ``hash`` agree;
    - on fixed cases and ``max_examples`` drawn arrays (up to ``max_size`` elements) of every dtype
      in ``codec.sources``, ``check_round_trip`` holds;
    - truncated or altered segments raise ``DecodeError`` (``check_hostile_segments``).

    The defaults take a few seconds for a built-in codec on a small machine.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in casts is part of what is tested
        _check_codec(codec, max_examples, max_size)


def _check_codec(codec: Codec, max_examples: int, max_size: int) -> None:
    check_config(codec)
    rng = np.random.default_rng(0)
    for name in sorted(codec.sources):
        row = _row(name)
        for x in _fixed_cases(row, rng):
            check_round_trip(codec, x, must_encode=_ordinary(x))
        for x in _specials(row):
            check_round_trip(codec, x)
        check_prediction(codec, row, rng)
        check_hostile_segments(codec, row)

    sources = sorted(codec.sources)

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(st.sampled_from(sources).flatmap(lambda name: _drawn(name, max_size)))
    def drawn(x: np.ndarray[Any, Any]) -> None:
        check_round_trip(codec, x)

    drawn()


# ---------------------------------------------------------------------------- inputs


def _row(name: str) -> DType:
    row = dtypes.by_name(name)
    if row is None:
        raise AssertionError(f"codec source {name!r} is not a tensorcodec dtype")
    return row


def _fixed_cases(row: DType, rng: np.random.Generator) -> list[np.ndarray[Any, Any]]:
    """Normal values of every awkward shape, constants and zeros, in the dtype ``row``."""
    cases: list[np.ndarray[Any, Any]] = []
    for shape in [(), (0,), (1,), (3, 0, 2), (37,), (2, 3, 1, 5), (LARGE,)]:
        values = np.asarray(rng.standard_normal(shape))
        cases.append(_cast(values, row))
    if row.is_floating:
        cases.append(_cast(np.full(12, -2.5), row))
        cases.append(_cast(np.where(np.arange(9) % 2, -0.0, 0.0), row))
        cases.append(_cast(np.full(70, 7.0), row))
        cases.append(_cast(rng.standard_normal(77) * 1e-3 + 100.0, row))
    return cases


def _specials(row: DType) -> list[np.ndarray[Any, Any]]:
    """The dtype's edge values (NaN, ±Inf, -0.0, subnormals, extremes): all together, and each repeated."""
    specials = special_values(row)
    out = [specials.copy()]
    out += [np.repeat(specials[i : i + 1], 5) for i in range(specials.size)]
    return out


def _drawn(name: str, max_size: int) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """Arrays of raw bit patterns (odd layouts and byte orders) or of scaled normal values."""
    row = _row(name)
    raw = arrays(row, max_size=max_size, max_side=max(7, max_size))
    smooth = st.builds(
        lambda seed, n, scale: _cast(np.random.default_rng(seed).standard_normal(n) * 10.0**scale, row),
        st.integers(0, 2**32 - 1),
        st.integers(0, max_size),
        st.integers(-30, 30),
    )
    return st.one_of(raw, smooth)


def _cast(values: np.ndarray[Any, Any], row: DType) -> np.ndarray[Any, Any]:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(row.numpy)


def _ordinary(x: np.ndarray[Any, Any]) -> bool:
    """Whether a codec must encode ``x``: its values are finite, even in fp32, and moderate."""
    with np.errstate(over="ignore", invalid="ignore"):
        wide = np.asarray(x).astype(np.float64).reshape(-1)
        return bool(np.all(np.isfinite(wide.astype(np.float32))) and np.all(np.abs(wide) < EXTREME))


def _source(x: Any) -> np.ndarray[Any, Any]:
    """A flat, contiguous, native-order, writable copy of ``x``'s values in its own dtype."""
    return np.frombuffer(bytearray(raw_bytes(x)), dtype=wire_dtype(x).numpy).copy()


def _what(codec: Codec, x: Any) -> str:
    return f"{codec!r} on {wire_dtype(x).name}{list(np.shape(x))}"


# ---------------------------------------------------------------------------- round trips


def check_round_trip(codec: Codec, x: Any, *, must_encode: bool = False) -> None:
    """One array through ``encode``/``decode`` and through a message: within ``error_bound``, input untouched.

    A codec may refuse ``x`` with ValueError or TypeError unless ``must_encode`` is true or ``x``
    holds only finite moderate values; then the message encoder must refuse it too.
    """
    what = _what(codec, x)
    row = wire_dtype(x)
    before = raw_bytes(x)
    flat = _source(x)
    n = flat.size
    try:
        enc = codec.encode(flat)
    except (ValueError, TypeError) as e:
        if must_encode or _ordinary(flat):
            raise AssertionError(f"{what}: encode refused finite, moderate values: {type(e).__name__}: {e}") from e
        if raw_bytes(flat) != before:
            raise AssertionError(f"{what}: encode wrote to its input") from None
        return
    if raw_bytes(flat) != before:
        raise AssertionError(f"{what}: encode wrote to its input")
    _check_encoded(what, enc)
    segments = {name: arr for name, (_, arr) in enc.segments.items()}
    dec = codec.decode(segments, enc.params, row, n)
    if not isinstance(dec, np.ndarray) or dec.dtype != row.numpy or dec.shape != (n,):
        got = f"{getattr(dec, 'dtype', type(dec))} {getattr(dec, 'shape', '')}"
        raise AssertionError(f"{what}: decode returned {got}, expected ({n},) {row.name}")
    assert_within_bound(what, flat, dec, codec.error_bound(flat, enc))
    _check_layout(what, codec, row, n, enc)
    _check_message(what, codec, x, flat, before)


def _check_encoded(what: str, enc: Encoded) -> None:
    if not isinstance(enc, Encoded):
        raise AssertionError(f"{what}: encode returned {type(enc).__name__}, not Encoded")
    for name, (role, arr) in enc.segments.items():
        if role not in ("payload", "meta") or not isinstance(arr, np.ndarray):
            raise AssertionError(f"{what}: segment {name!r} is ({role!r}, {type(arr).__name__})")
        if dtypes.from_numpy(arr.dtype) is None:
            raise AssertionError(f"{what}: segment {name!r} has dtype {arr.dtype}, not one of tensorcodec.DTYPES")
    packed = msgpack.packb(enc.params)
    if msgpack.packb(msgpack.unpackb(packed, raw=False)) != packed:
        raise AssertionError(f"{what}: params {enc.params!r} do not survive msgpack")


def assert_within_bound(
    what: str, x: np.ndarray[Any, Any], decoded: np.ndarray[Any, Any], bound: np.ndarray[Any, Any] | None
) -> None:
    """``decoded`` against ``x`` as ``Codec.error_bound`` states it: bit for bit when None, else per element."""
    if bound is None:
        a, b = raw_bytes(x), raw_bytes(decoded)
        if a != b:
            width = x.dtype.itemsize
            i = next(k for k in range(0, len(a), width) if a[k : k + width] != b[k : k + width]) // width
            raise AssertionError(f"{what}: lossless, but element {i} decoded as {decoded[i]!r}, not {x[i]!r}")
        return
    bound = np.asarray(bound, dtype=np.float64)
    if bound.shape != (x.size,):
        raise AssertionError(f"{what}: error_bound has shape {bound.shape}, expected ({x.size},)")
    x64 = x.astype(np.float64)
    got = decoded.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(x64 - got)
    exact = (np.isnan(x64) & np.isnan(got)) | (np.isinf(x64) & (x64 == got))
    err[exact] = 0.0
    bad = ~np.isnan(bound) & ~(err <= bound)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(
            f"{what}: element {i}: x={x[i]!r} decoded={decoded[i]!r} |err|={err[i]!r} > bound {bound[i]!r}"
        )


def _check_layout(what: str, codec: Codec, row: DType, n: int, enc: Encoded) -> None:
    """The size accounting's view of the segments (``segment_layout``, ``bits_per_element``) matches encode."""
    layout = codec.segment_layout(row, n)
    sent = {}
    for name, (role, arr) in enc.segments.items():
        seg_row = dtypes.from_numpy(arr.dtype)
        sent[name] = (role, seg_row.name if seg_row else str(arr.dtype), list(arr.shape))
    if layout is not None:
        stated = {name: (r, d, [int(s) for s in shape]) for name, (r, d, shape) in layout.items()}
        for name, got in sent.items():
            if stated.get(name) != got:
                raise AssertionError(f"{what}: segment_layout says {name!r} is {stated.get(name)}, encode gave {got}")
        # A layout may name segments some data does not need (minmax sends no codes for a constant tensor).
        if set(stated) != set(sent):
            return
    if n == 0:
        return
    seg_bits = 8 * sum(arr.nbytes for _, arr in enc.segments.values())
    param_bits = 8 * len(msgpack.packb(enc.params))
    stated_bits = codec.bits_per_element(row, n) * n
    slack = 8 + 1e-6 * stated_bits
    # Without a fixed layout (the index coding of topk depends on the data) the figure is an upper bound.
    tight = layout is None or stated_bits <= seg_bits + param_bits + 2 * slack
    if not (seg_bits <= stated_bits + slack and tight):
        raise AssertionError(
            f"{what}: bits_per_element gives {stated_bits:g} bits, the segments hold {seg_bits}"
            f" (+ {param_bits} bits of params)"
        )


def _check_message(what: str, codec: Codec, x: Any, flat: np.ndarray[Any, Any], before: bytes) -> None:
    """``x`` through ``tc.encode``/``tc.decode``: the same values as the codec's own decode, the input untouched."""
    row = wire_dtype(x)
    policy = Policy({"*": codec}, min_elements=0)
    message = encode({"t": x}, policy=policy)
    if raw_bytes(x) != before:
        raise AssertionError(f"{what}: tc.encode modified the caller's tensor")
    out = decode(message)["t"]
    if wire_dtype(out) is not row or tuple(np.shape(out)) != tuple(np.shape(x)):
        raise AssertionError(f"{what}: the message decoded as {wire_dtype(out).name}{list(np.shape(out))}")
    chain = policy.choose("t", row, flat.size)
    if chain is None:  # sent losslessly: not smaller than the source
        expected = before
    else:
        (used,) = chain  # with_stream(name) may give a twin keyed by the tensor's name
        enc = used.encode(flat)
        expected = raw_bytes(used.decode({k: a for k, (_, a) in enc.segments.items()}, enc.params, row, flat.size))
    if raw_bytes(out) != expected:
        raise AssertionError(f"{what}: tc.decode of the message differs from the codec's own encode/decode")


def check_prediction(codec: Codec, row: DType, rng: np.random.Generator) -> None:
    """``tensorcodec.accounting.predict`` of one tensor equals what ``report`` measures of its encoding."""
    x = _cast(rng.standard_normal((33, 41)), row)
    if codec.segment_layout(row, x.size) is None:
        return
    policy = Policy({"*": codec}, min_elements=0)
    _, measured = accounting.report({"t": x}, policy=policy)
    predicted = accounting.predict({"t": x}, policy=policy)
    if predicted != measured:
        raise AssertionError(f"{codec!r} on {row.name}[33, 41]: predict gives {predicted}, report {measured}")


# ---------------------------------------------------------------------------- config


def check_config(codec: Codec) -> None:
    """The config survives JSON and rebuilds an equal codec through the registry; repr, == and hash agree."""
    try:
        cls = codecs.get_codec(codec.codec_id)
    except DecodeError as e:
        raise AssertionError(f"{codec!r}: codec id {codec.codec_id!r} is not registered ({e})") from None
    if cls is not type(codec):
        raise AssertionError(f"{codec!r}: codec id {codec.codec_id!r} is registered to {cls.__qualname__}")
    config = codec.get_config()
    try:
        text = json.dumps(config)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{codec!r}: get_config() is not JSON-able: {e}") from None
    try:
        twin = cls.from_config(json.loads(text))
    except Exception as e:
        raise AssertionError(f"{codec!r}: from_config({config!r}) raised {type(e).__name__}: {e}") from None
    if twin != codec or hash(twin) != hash(codec) or repr(twin) != repr(codec):
        raise AssertionError(
            f"{codec!r}: from_config(json of get_config()) gives {twin!r}"
            f" (equal: {twin == codec}, same hash: {hash(twin) == hash(codec)})"
        )
    if json.dumps(twin.get_config()) != text:
        raise AssertionError(f"{codec!r}: the rebuilt codec's config is {twin.get_config()!r}, not {config!r}")


# ---------------------------------------------------------------------------- hostile segments


def check_hostile_segments(codec: Codec, row: DType, count: int = 300) -> None:
    """Each segment dropped, one element short, or of another dtype: ``decode`` and ``tc.decode`` raise DecodeError."""
    x = _cast(np.random.default_rng(1).standard_normal(count), row)
    enc = codec.encode(x)
    stage = (codec.codec_id, codec.get_config(), enc.params)
    for name, (role, arr) in enc.segments.items():
        others = {k: v for k, v in enc.segments.items() if k != name}
        flat = arr.reshape(-1)
        cases = {"dropped": others}
        if flat.size:
            cases["one element short"] = {**others, name: (role, flat[:-1])}
            cases["one element long"] = {**others, name: (role, np.concatenate([flat, flat[:1]]))}
        other = _other_dtype(flat)
        if other is not None:
            cases[f"of dtype {other}"] = {**others, name: (role, flat.view(other))}
        for how, segments in cases.items():
            what = f"{codec!r} on {row.name}[{count}], segment {name!r} {how}"
            _expect_decode_error(what, codec, segments, stage, row, count)


def _other_dtype(arr: np.ndarray[Any, Any]) -> np.dtype[Any] | None:
    """A dtype of the same width as ``arr``'s but another name, to view it as."""
    swaps = {1: ("uint8", "int8"), 2: ("float16", "int16"), 4: ("float32", "int32"), 8: ("float64", "int64")}
    pair = swaps.get(arr.dtype.itemsize)
    if pair is None:
        return None
    seg_row = dtypes.from_numpy(arr.dtype)
    name = pair[1] if seg_row is not None and seg_row.name == pair[0] else pair[0]
    return np.dtype(name)


def _expect_decode_error(
    what: str, codec: Codec, segments: dict[str, tuple[str, np.ndarray[Any, Any]]], stage: Any, row: DType, count: int
) -> None:
    arrays_ = {k: a for k, (_, a) in segments.items()}
    try:
        codec.decode(arrays_, stage[2], row, count)
    except DecodeError:
        pass
    except Exception as e:
        raise AssertionError(f"{what}: decode raised {type(e).__name__}: {e}, not DecodeError") from None
    else:
        raise AssertionError(f"{what}: decode accepted it")
    message = encode({"t": Quantized(row.name, (count,), [stage], segments)})
    try:
        decode(message)
    except DecodeError:
        return
    except Exception as e:
        raise AssertionError(f"{what}: tc.decode raised {type(e).__name__}: {e}, not DecodeError") from None
    raise AssertionError(f"{what}: tc.decode accepted it")
