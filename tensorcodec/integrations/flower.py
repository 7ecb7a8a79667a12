"""Flower: a client mod and a strategy wrapper that send ArrayRecords as tensorcodec messages.

One line at each end::

    app = ClientApp(mods=[tensorcodec_mod(precision="bf16")])     # the client's replies
    strategy = TensorcodecStrategy(FedAvg(), precision="bf16")     # the server's instructions

An encoded ArrayRecord keeps its key in the message's RecordDict and holds one
Array, ``{"tensorcodec": Array(dtype="uint8", stype="tensorcodec", ...)}``,
whose data is the message; the other end turns it back into the ArrayRecord
the app expects (same names, order, dtypes and shapes). Records without that
mark pass through, so either end may be switched on first. The server encodes
each distinct ArrayRecord once per round: every client gets the same bytes and
the global model is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy
except ImportError as e:  # pragma: no cover - exercised only without flwr
    raise ImportError("tensorcodec.integrations.flower needs Flower: pip install flwr") from e

from ..policy import Precision
from .common import Packing, unpack

__all__ = ["tensorcodec_mod", "TensorcodecStrategy", "encode_record", "decode_record", "is_encoded", "STYPE"]

STYPE = "tensorcodec"
"""The ``stype`` of the one Array of an encoded ArrayRecord (also its key)."""

ClientAppCallable = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, ClientAppCallable], Message]


def is_encoded(record: ArrayRecord) -> bool:
    """Whether ``record`` is an ArrayRecord that ``encode_record`` made."""
    return len(record) == 1 and STYPE in record and record[STYPE].stype == STYPE


def encode_record(record: ArrayRecord, packing: Packing) -> ArrayRecord:
    """The ArrayRecord as one message, in a new ArrayRecord; ``record`` is only read."""
    if is_encoded(record):
        return record
    packed = packing.pack({name: array.numpy() for name, array in record.items()})
    message = packed.message
    return ArrayRecord(array_dict={STYPE: Array(dtype="uint8", shape=(len(message),), stype=STYPE, data=message)})


def decode_record(record: ArrayRecord) -> ArrayRecord:
    """The ArrayRecord that ``encode_record`` encoded (an unmarked one is returned as it is)."""
    if not is_encoded(record):
        return record
    tensors = unpack(record[STYPE].data)
    if not isinstance(tensors, dict):
        raise ValueError(f"a tensorcodec ArrayRecord must hold a dict of arrays, not {type(tensors).__name__}")
    return ArrayRecord(array_dict={name: Array(value) for name, value in tensors.items()})


def _content_bytes(content: RecordDict) -> int:
    return sum(len(r[STYPE].data) for r in content.array_records.values() if is_encoded(r))


def _mapped(content: RecordDict, change: Callable[[ArrayRecord], ArrayRecord]) -> RecordDict:
    """A new RecordDict with each ArrayRecord changed and every other record shared."""
    return RecordDict({k: change(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()})


def tensorcodec_mod(precision: Precision = None, policy: Any = None, checksum: str | None = None) -> Mod:
    """A ClientApp mod: decodes the ArrayRecords that arrive, encodes those of the reply.

    ``precision`` / ``policy`` / ``checksum`` are ``tensorcodec.encode``'s
    (they apply to what the client sends; what it receives says how it was made).
    """
    packing = Packing(precision, policy, checksum)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.has_content():
            msg.content = _mapped(msg.content, decode_record)
        reply = call_next(msg, context)
        if reply.has_content():
            reply.content = _mapped(reply.content, lambda r: encode_record(r, packing))
        return reply

    return mod


class TensorcodecStrategy(Strategy):  # type: ignore[misc, unused-ignore]
    """Wraps a Flower strategy: its outgoing ArrayRecords are encoded, the replies decoded before it sees them.

    ``sent_bytes`` and ``received_bytes`` list the message bytes of each
    instruction sent and each reply received, in order, for accounting.
    """

    def __init__(
        self, strategy: Strategy, precision: Precision = None, policy: Any = None, checksum: str | None = None
    ) -> None:
        self.strategy = strategy
        self.packing = Packing(precision, policy, checksum)
        self.sent_bytes: list[int] = []
        self.received_bytes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("strategy")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def _outgoing(self, messages: Iterable[Message]) -> list[Message]:
        done: dict[int, tuple[ArrayRecord, ArrayRecord]] = {}  # id -> (record, encoded): one encode per record

        def change(record: ArrayRecord) -> ArrayRecord:
            hit = done.get(id(record))
            if hit is None:
                hit = done[id(record)] = (record, encode_record(record, self.packing))
            return hit[1]

        out = list(messages)
        for message in out:
            if message.has_content():
                message.content = _mapped(message.content, change)
                self.sent_bytes.append(_content_bytes(message.content))
        return out

    def _incoming(self, replies: Iterable[Message]) -> list[Message]:
        out = list(replies)
        for reply in out:
            if reply.has_content():
                self.received_bytes.append(_content_bytes(reply.content))
                reply.content = _mapped(reply.content, decode_record)
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._outgoing(self.strategy.configure_train(server_round, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result: tuple[ArrayRecord | None, MetricRecord | None] = self.strategy.aggregate_train(
            server_round, self._incoming(replies)
        )
        return result

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._outgoing(self.strategy.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        result: MetricRecord | None = self.strategy.aggregate_evaluate(server_round, self._incoming(replies))
        return result

    def summary(self) -> None:
        self.strategy.summary()
