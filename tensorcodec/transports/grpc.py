"""gRPC transport: a model sent as a client-streaming RPC whose requests are stream frames.

gRPC refuses messages over 4 MiB by default (2 GiB at most), so a model cannot
travel as one message, while the frames of ``encode_stream`` fit the default
as they are. No ``.proto`` is compiled: the method is registered through
grpc's generic handlers without serializers, so each frame goes on the wire as
the bytes it is; the server decodes frames as they arrive (one frame of memory
beyond the tensors) and replies with a tensorcodec message of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

try:
    import grpc
except ImportError as e:  # pragma: no cover - exercised only without grpcio
    raise ImportError("tensorcodec.transports.grpc needs grpcio: pip install grpcio") from e

from ..core import decode, encode
from ..errors import DecodeError
from ..stream import decode_stream, encode_stream

__all__ = ["SERVICE", "METHOD", "FULL_METHOD", "rpc_handler", "add_to_server", "serve", "send"]

SERVICE = "tensorcodec.Transfer"
METHOD = "Send"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
"""The client-streaming method: requests are stream frames, the reply is one tensorcodec message."""


def rpc_handler(on_tree: Callable[[Any], Any], **decode_kw: Any) -> Any:
    """A ``grpc.GenericRpcHandler`` serving ``FULL_METHOD``.

    Each call's frames are decoded with ``decode_stream(**decode_kw)`` (pass
    ``on_tensor`` there to use tensors as they arrive); ``on_tree(tree)``'s
    return value, encoded with ``encode``, is the reply. A malformed stream
    ends the call with INVALID_ARGUMENT and the DecodeError's text.
    """

    def transfer(requests: Iterator[bytes], context: Any) -> bytes:
        try:
            tree = decode_stream(requests, **decode_kw)
        except DecodeError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"tensorcodec stream: {e}")
            raise  # abort() raises; this keeps the error should it ever return
        return encode(on_tree(tree))

    method = grpc.stream_unary_rpc_method_handler(transfer)  # no (de)serializers: frames stay bytes
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})


def add_to_server(server: Any, on_tree: Callable[[Any], Any], **decode_kw: Any) -> None:
    """Registers ``FULL_METHOD`` on an existing ``grpc.Server`` (before it starts)."""
    server.add_generic_rpc_handlers((rpc_handler(on_tree, **decode_kw),))


def serve(
    on_tree: Callable[[Any], Any],
    address: str = "127.0.0.1:0",
    *,
    max_workers: int = 4,
    options: Sequence[tuple[str, Any]] = (),
    **decode_kw: Any,
) -> tuple[Any, int]:
    """Starts a gRPC server for ``FULL_METHOD`` on ``address`` (port 0: any free port).

    Returns the started ``grpc.Server`` (stop it with ``server.stop(grace)``)
    and the bound port. Frames larger than gRPC's 4 MiB default need
    ``options=[("grpc.max_receive_message_length", n)]``.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=list(options))
    add_to_server(server, on_tree, **decode_kw)
    port = int(server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"gRPC could not bind {address}")
    server.start()
    return server, port


def send(
    channel: Any,
    obj: Any,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str]] | None = None,
    **encode_kw: Any,
) -> Any:
    """Streams ``obj`` to a server of ``FULL_METHOD`` over ``channel``; returns its decoded reply.

    ``encode_kw`` goes to ``encode_stream`` (precision, checksum,
    max_frame_bytes, ...); frames are produced as gRPC's flow control takes
    them, so the sender holds about one frame beyond the model. Raises
    ``grpc.RpcError`` when the call fails (INVALID_ARGUMENT for a stream the
    server rejected).
    """
    call = channel.stream_unary(FULL_METHOD, request_serializer=None, response_deserializer=None)
    reply = call(encode_stream(obj, **encode_kw), timeout=timeout, metadata=metadata)
    return decode(reply)
