"""ZeroMQ transport: a message as one multipart ZeroMQ message, or a stream as one message per frame.

``send`` hands ZeroMQ the buffers of ``encode_frames`` with ``copy=False``:
the tensors' own memory goes to the socket, nothing is joined, and ``recv``
decodes the received parts where they lie. A multipart message is atomic,
though: ZeroMQ holds all of it in memory on both ends. ``send_stream`` /
``recv_stream`` send each stream frame as its own message instead, so that
with a low high-water mark (``zmq.SNDHWM`` / ``zmq.RCVHWM``) each end holds a
few frames at a time. A socket must carry one stream at a time: frames of
two interleaved streams are rejected, not mixed.
"""

from __future__ import annotations

from typing import Any

try:
    import zmq
except ImportError as e:  # pragma: no cover - exercised only without pyzmq
    raise ImportError("tensorcodec.transports.zmq needs pyzmq: pip install pyzmq") from e

from ..core import decode, encode_frames
from ..stream import StreamDecoder, encode_stream

__all__ = ["send", "recv", "send_stream", "recv_stream"]


def send(socket: zmq.Socket[Any], obj: Any, *, flags: int = 0, **encode_kw: Any) -> None:
    """Sends ``obj`` as one multipart message whose parts alias the tensors (no copy of tensor bytes).

    ``encode_kw`` goes to ``encode_frames``. ZeroMQ sends in the background:
    leave the tensors unchanged until the peer has the message.
    """
    socket.send_multipart(encode_frames(obj, **encode_kw), flags=flags, copy=False)


def recv(socket: zmq.Socket[Any], *, flags: int = 0, **decode_kw: Any) -> Any:
    """Receives one message sent by ``send`` and decodes it (``decode_kw`` goes to ``decode``).

    With ``copy=False`` the tensors are read-only views of ZeroMQ's buffers.
    """
    parts = socket.recv_multipart(flags=flags, copy=False)
    return decode([memoryview(part.buffer) for part in parts], **decode_kw)


def send_stream(socket: zmq.Socket[Any], obj: Any, *, flags: int = 0, **encode_kw: Any) -> int:
    """Sends ``obj`` as a stream, one ZeroMQ message per frame; returns the number of frames.

    ``encode_kw`` goes to ``encode_stream``. Each frame is produced when the
    previous one was queued, so memory follows the socket's high-water mark.
    """
    count = 0
    for frame in encode_stream(obj, **encode_kw):
        socket.send(frame, flags=flags, copy=False)
        count += 1
    return count


def recv_stream(socket: zmq.Socket[Any], *, flags: int = 0, **decode_kw: Any) -> Any:
    """Receives the frames of one stream and decodes them as they arrive (``decode_kw``: ``decode_stream``'s).

    Stops after the stream's last frame. A socket timeout (``zmq.RCVTIMEO``)
    surfaces as ``zmq.Again``; a malformed stream as DecodeError.
    """
    on_tensor = decode_kw.pop("on_tensor", None)
    decoder = StreamDecoder(**decode_kw)
    while not decoder.done:
        frame = socket.recv(flags=flags, copy=False)
        for item in decoder.feed(memoryview(frame.buffer)):
            if on_tensor is not None:
                on_tensor(item)
    return decoder.result()
