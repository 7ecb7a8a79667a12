"""8 threads x 1,000 round trips of varied trees give what one thread gives, bit for bit (issue 10).

Each round trip encodes a tree (every dtype family, every codec family, checksums, shared tensors)
and decodes it by one of the entry points; its result is the message's bytes plus every decoded
leaf's dtype, shape and bytes, hashed. The threads start together and interleave their trees.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import ml_dtypes
import numpy as np

import tensorcodec as tc

THREADS = 8
ROUND_TRIPS = 1000
_PRECISIONS = [None, "bf16", "fp16", "fp8_e4m3", "blockwise8", "nf4", "fp4", "minmax8", "minmax2", ["fp16", "nf4"]]
_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.uint16, np.int64, np.complex64, np.bool_]


def _trees() -> list[tuple[Any, dict[str, Any]]]:
    rng = np.random.default_rng(11)
    out = []
    for k in range(40):
        dtype = _DTYPES[k % len(_DTYPES)]
        raw = rng.integers(0, 256, size=8 * 24, dtype=np.uint8)
        leaf = (raw & 1).astype(np.bool_)[:24] if dtype is np.bool_ else raw.view(dtype)[:24]
        weights = rng.standard_normal((4, 64 + k)).astype(np.float32)
        tree = {"w": weights, "x": leaf.reshape(4, 6), "shared": [weights, weights[0]], "meta": (k, "s", 2**70)}
        precision = _PRECISIONS[k % len(_PRECISIONS)]
        policy = None if precision is None else tc.Policy({"w": precision, "shared.*": precision}, min_elements=1)
        out.append((tree, {"policy": policy, "checksum": (None, "xxh3_64", "crc32c")[k % 3]}))
    return out


def _digest(message: bytes, decoded: Any) -> str:
    h = hashlib.sha256(message)

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for key in sorted(obj):
                h.update(key.encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, np.ndarray):
            h.update(f"{obj.dtype}{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).view(np.uint8).tobytes())
        else:
            h.update(repr(obj).encode())

    walk(decoded)
    return h.hexdigest()


def _round_trip(trees: list[tuple[Any, dict[str, Any]]], i: int) -> str:
    """Round trip number ``i``, which depends on ``i`` modulo 3 x len(trees)."""
    i %= 3 * len(trees)
    tree, kw = trees[i % len(trees)]
    way = i % 3
    if way == 0:
        message = tc.encode(tree, **kw)
        return _digest(message, tc.decode(message))
    if way == 1:
        message = tc.encode(tree, **kw)
        return _digest(message, tc.decode(message, copy=False))
    frames = list(tc.encode_stream(tree, max_frame_bytes=512, stream_id=i, **kw))
    return _digest(b"".join(frames), tc.decode_stream(frames))


def test_threads_give_what_one_thread_gives() -> None:
    trees = _trees()
    expected = [_round_trip(trees, i) for i in range(len(trees) * 3)]
    results: list[list[str]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            start.wait()
            results[t] = [_round_trip(trees, t * 7 + i) for i in range(ROUND_TRIPS)]
        except BaseException as e:  # the main thread reports it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for t in range(THREADS):
        want = [expected[(t * 7 + i) % len(expected)] for i in range(ROUND_TRIPS)]
        assert results[t] == want, f"thread {t}"
