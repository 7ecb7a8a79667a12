"""Messaging stacks that carry tensorcodec messages and streams.

Each transport lives in its own submodule and imports its library only when
that submodule is imported, so tensorcodec itself never depends on them:

* ``tensorcodec.transports.grpc`` — a model as a client-streaming RPC of
  stream frames (needs ``grpcio``);
* ``tensorcodec.transports.zmq`` — a message as one multipart ZeroMQ message
  sent without copying the tensors, or a stream as one ZeroMQ message per
  frame (needs ``pyzmq``).
"""

from __future__ import annotations

__all__: list[str] = []
