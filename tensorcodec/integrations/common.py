"""What both engines share: a dict of tensors to one message and back, and what it cost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core import decode, encode
from ..policy import Policy, Precision

__all__ = ["Packing", "Packed", "unpack"]


@dataclass(frozen=True)
class Packed:
    """One encoded model: the message and the sizes a log line or a test reads."""

    message: bytes
    raw_bytes: int
    """The tensors' own bytes before encoding (``nbytes`` summed), the figure NVFlare logs as "before"."""

    @property
    def sent_bytes(self) -> int:
        return len(self.message)


class Packing:
    """The encoding settings of one filter or mod: ``precision=`` or ``policy=``, and ``checksum=``.

    Checked once, when the engine builds the component, so that a typo fails at
    job start and not in the middle of round one.
    """

    def __init__(self, precision: Precision = None, policy: Any = None, checksum: str | None = None) -> None:
        self.rules = Policy.of(precision, policy)
        self.checksum = checksum
        self.label = _label(precision, policy)

    def pack(self, tensors: Mapping[str, Any]) -> Packed:
        """Encodes a flat or nested dict of arrays/tensors; the caller's tensors are only read."""
        tree = dict(tensors)
        message = encode(tree, policy=self.rules, checksum=self.checksum)
        return Packed(message, _raw_bytes(tree))


def unpack(message: Any) -> Any:
    """The tree that ``Packing.pack`` encoded: same containers, dtypes and framework (numpy or torch)."""
    return decode(message)


def _label(precision: Precision, policy: Any) -> str:
    if policy is not None:
        return "policy"
    if precision is None:
        return "lossless"
    return precision if isinstance(precision, str) else repr(precision)


def _raw_bytes(tree: Any) -> int:
    if isinstance(tree, Mapping):
        return sum(_raw_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_raw_bytes(v) for v in tree)
    nbytes = getattr(tree, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(tree, "element_size") and hasattr(tree, "numel"):
        return int(tree.element_size() * tree.numel())
    return 0
