"""Real messaging stacks on 127.0.0.1: a gRPC client-streaming call and ZeroMQ sockets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import tensorcodec as tc
from tensorcodec.testing import assert_tree_equal

TIMEOUT = 30.0


def model() -> dict[str, Any]:
    """~10 MB: several default-sized frames, tensors split across them, plus small and odd leaves."""
    gen = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(2048, 1024, generator=gen).to(torch.bfloat16),
        "layers": [{"w": torch.randn(512, 1024, generator=gen), "b": torch.zeros(512)} for _ in range(2)],
        "ids": np.arange(1000, dtype=np.int64),
        "step": 7,
        "meta": ("run", 0.5, None),
        "empty": np.zeros((0,), np.float32),
    }


# ---------------------------------------------------------------------------- gRPC


@pytest.fixture
def grpc_server() -> Iterator[tuple[Any, int, list[Any]]]:
    pytest.importorskip("grpc")
    from tensorcodec.transports import grpc as tgrpc

    received: list[Any] = []

    def on_tree(tree: Any) -> Any:
        received.append(tree)
        tensors = [t for t in _leaves(tree) if isinstance(t, (np.ndarray, torch.Tensor))]
        return {"tensors": len(tensors), "bytes": sum(_nbytes(t) for t in tensors), "first": tensors[0][:2]}

    server, port = tgrpc.serve(on_tree)
    try:
        yield server, port, received
    finally:
        server.stop(None)


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


def _nbytes(t: Any) -> int:
    return int(t.nbytes) if isinstance(t, np.ndarray) else t.numel() * t.element_size()


def test_grpc_client_streams_a_model_and_gets_a_reply(grpc_server: tuple[Any, int, list[Any]]) -> None:
    import grpc

    from tensorcodec.transports import grpc as tgrpc

    _, port, received = grpc_server
    sent = model()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = tgrpc.send(channel, sent, timeout=TIMEOUT, checksum="xxh3_64")
        assert_tree_equal(sent, received[-1])
        assert reply["tensors"] == 7
        assert reply["bytes"] == sum(_nbytes(t) for t in _leaves(sent) if isinstance(t, (np.ndarray, torch.Tensor)))
        assert_tree_equal(sent["embed"][:2], reply["first"])

        quantized = tgrpc.send(channel, sent, timeout=TIMEOUT, precision="fp8_e4m3", max_frame_bytes=100_000)
        assert quantized["tensors"] == 7
        expected = tc.decode(tc.encode(sent, precision="fp8_e4m3"))
        assert_tree_equal(expected, received[-1])


def test_grpc_server_rejects_a_damaged_stream(grpc_server: tuple[Any, int, list[Any]]) -> None:
    import grpc

    from tensorcodec.transports import grpc as tgrpc

    _, port, received = grpc_server
    frames = list(tc.encode_stream(model(), max_frame_bytes=1 << 20))
    damaged = [*frames[:2], frames[3], frames[2], *frames[4:]]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_unary(tgrpc.FULL_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(iter(damaged), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sequence number 3, expected 2" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            call(iter(frames[:-1]), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "incomplete" in info.value.details()
    assert received == []


# ---------------------------------------------------------------------------- ZeroMQ


@pytest.fixture
def zmq_pair() -> Iterator[tuple[Any, Any]]:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (a, b):
        s.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        s.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
        s.setsockopt(zmq.LINGER, 0)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        ctx.term()


@pytest.mark.parametrize("copy", [True, False])
def test_zmq_multipart_message_round_trip(zmq_pair: tuple[Any, Any], copy: bool) -> None:
    from tensorcodec.transports import zmq as tzmq

    a, b = zmq_pair
    sent = model()
    tzmq.send(a, sent, checksum="xxh3_64")
    got = tzmq.recv(b, copy=copy)
    assert_tree_equal(sent, got)
    if not copy:
        assert not got["ids"].flags.writeable  # a view of ZeroMQ's buffer
    tzmq.send(b, {"ack": 1, "q": sent["layers"][0]["w"]}, precision="bf16")
    assert_tree_equal(tc.decode(tc.encode({"ack": 1, "q": sent["layers"][0]["w"]}, precision="bf16")), tzmq.recv(a))


def test_zmq_sends_the_buffers_of_plain_torch_trees(zmq_pair: tuple[Any, Any]) -> None:
    """A tree the C walk takes whole: torch tensors travel as the walk's buffers of their memory."""
    from tensorcodec.transports import zmq as tzmq

    a, b = zmq_pair
    gen = torch.Generator().manual_seed(1)
    sent = {"big": torch.randn(256, 1024, generator=gen), "small": torch.arange(10), "grad": torch.ones(3) * 2}
    sent["grad"].requires_grad_(True)
    kinds = {type(f).__name__ for f in tc.encode_frames(sent)}
    assert "TensorBytes" in kinds or not tc.native_enabled()
    tzmq.send(a, sent, checksum="crc32c")
    got = tzmq.recv(b, copy=False)
    assert_tree_equal({k: v.detach() for k, v in sent.items()}, got)


def test_zmq_stream_over_push_pull_with_a_low_high_water_mark() -> None:
    zmq = pytest.importorskip("zmq")
    from tensorcodec.transports import zmq as tzmq

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.SNDHWM, 2)
        s.setsockopt(zmq.RCVHWM, 2)
        s.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    push.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    sent = model()
    counts: list[int] = []
    sender = threading.Thread(target=lambda: counts.append(tzmq.send_stream(push, sent, max_frame_bytes=256 << 10)))
    try:
        sender.start()
        arrived: list[tc.StreamTensor] = []
        got = tzmq.recv_stream(pull, on_tensor=arrived.append)
        sender.join(TIMEOUT)
        assert_tree_equal(sent, got)
        assert counts and counts[0] > 30
        assert [a.name for a in arrived][:2] == ["embed", "layers.0.w"]
        # A second stream on the same socket decodes on its own.
        threading.Thread(target=tzmq.send_stream, args=(push, {"x": np.arange(3)}), daemon=True).start()
        assert_tree_equal({"x": np.arange(3)}, tzmq.recv_stream(pull))
    finally:
        push.close()
        pull.close()
        ctx.term()


def test_zmq_stream_rejects_interleaved_senders() -> None:
    zmq = pytest.importorskip("zmq")
    from tensorcodec.transports import zmq as tzmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    pushes = [ctx.socket(zmq.PUSH) for _ in range(2)]
    try:
        for p in pushes:
            p.setsockopt(zmq.LINGER, 0)
            p.connect(f"tcp://127.0.0.1:{port}")
        streams = [list(tc.encode_stream(model(), max_frame_bytes=1 << 20)) for _ in pushes]
        pushes[0].send(streams[0][0])
        assert pull.poll(int(TIMEOUT * 1000))
        pushes[1].send(streams[1][0])  # a second stream starts while the first is under way
        with pytest.raises(tc.DecodeError):
            tzmq.recv_stream(pull)
    finally:
        for s in (*pushes, pull):
            s.close()
        ctx.term()
