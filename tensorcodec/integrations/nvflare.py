"""NVFlare filters that send a DXO's weights (or weight diffs) as one tensorcodec message.

They go where NVFlare's own quantization filters go, and in the same pairs:

* server: ``task_data_filters`` — ``TensorcodecEncodeFilter``; ``task_result_filters`` — ``TensorcodecDecodeFilter``;
* client: ``task_data_filters`` — ``TensorcodecDecodeFilter``; ``task_result_filters`` — ``TensorcodecEncodeFilter``.

The encoder replaces the DXO's data by ``{"tensorcodec": <bytes>}`` in a *new*
Shareable: the input's arrays and DXO are never touched, so a 1->N broadcast
encodes the same server model for every client (the same bytes, encoding is
deterministic) and leaves it as it was. The decoder gives the trainer or the
aggregator back the dict it would have seen: same keys, dtypes and framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.filter import Filter
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable, make_copy
except ImportError as e:  # pragma: no cover - exercised only without nvflare
    raise ImportError("tensorcodec.integrations.nvflare needs NVFlare: pip install nvflare") from e

from ..policy import Precision
from .common import Packing, unpack

__all__ = ["TensorcodecEncodeFilter", "TensorcodecDecodeFilter", "MESSAGE_KEY", "META_KEY"]

MESSAGE_KEY = "tensorcodec"
"""The one key of an encoded DXO's data; its value is the message."""
META_KEY = "tensorcodec"
"""The DXO meta property that marks an encoded DXO: ``{"precision", "bytes", "raw_bytes"}``."""

_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)


def _dxo_or_none(shareable: Shareable) -> DXO | None:
    """The Shareable's DXO, or None for what is not one (an error reply, a bare Shareable)."""
    try:
        return from_shareable(shareable)
    except ValueError:
        return None


def _rebuilt(shareable: Shareable, dxo: DXO, data: dict[str, Any], meta: dict[str, Any]) -> Shareable:
    """A copy of ``shareable`` (headers deep-copied, content shared) carrying a new DXO."""
    out = make_copy(shareable)
    DXO(data_kind=dxo.data_kind, data=data, meta=meta).update_shareable(out)
    return out


class TensorcodecEncodeFilter(Filter):  # type: ignore[misc]
    """Outgoing: the DXO's data becomes one tensorcodec message.

    ``precision`` (e.g. "bf16", "blockwise8", "nf4") or ``policy`` (name
    patterns to precisions) choose the codecs exactly as ``tensorcodec.encode``
    does; ``checksum`` ("xxh3_64" or "crc32c") lets the receiver verify each
    segment. ``data_kinds`` are the DXO kinds it encodes (others pass).
    """

    def __init__(
        self,
        precision: Precision = None,
        policy: Any = None,
        checksum: str | None = None,
        data_kinds: Sequence[str] = _KINDS,
    ) -> None:
        super().__init__()
        # Kept under their argument names: NVFlare's job API writes a component's config from them.
        self.precision, self.policy, self.checksum = precision, policy, checksum
        self.packing = Packing(precision, policy, checksum)
        self.data_kinds = [str(getattr(k, "value", k)) for k in data_kinds]

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = _dxo_or_none(shareable)
        if dxo is None or dxo.data_kind not in self.data_kinds or dxo.get_meta_prop(META_KEY) is not None:
            return shareable
        packed = self.packing.pack(dxo.data)
        stats = {"precision": self.packing.label, "bytes": packed.sent_bytes, "raw_bytes": packed.raw_bytes}
        self.log_info(
            fl_ctx,
            f"tensorcodec encoded {len(dxo.data)} tensors: {packed.raw_bytes} bytes -> {packed.sent_bytes} bytes "
            f"({self.packing.label})",
        )
        return _rebuilt(shareable, dxo, {MESSAGE_KEY: packed.message}, {**(dxo.meta or {}), META_KEY: stats})


class TensorcodecDecodeFilter(Filter):  # type: ignore[misc]
    """Incoming: an encoded DXO's message becomes the dict of tensors it was, as the sender had it.

    A DXO without the tensorcodec mark passes unchanged, so a job may turn the
    encoder on at one end first. A malformed message raises DecodeError.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = _dxo_or_none(shareable)
        if dxo is None or dxo.get_meta_prop(META_KEY) is None:
            return shareable
        message = dxo.data.get(MESSAGE_KEY) if isinstance(dxo.data, dict) else None
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise ValueError(f"DXO marked {META_KEY!r} carries no message under data[{MESSAGE_KEY!r}]")
        data = unpack(message)
        if not isinstance(data, dict):
            raise ValueError(f"a tensorcodec DXO message must hold a dict, not {type(data).__name__}")
        meta = {k: v for k, v in (dxo.meta or {}).items() if k != META_KEY}
        self.log_info(fl_ctx, f"tensorcodec decoded {len(message)} bytes into {len(data)} tensors")
        return _rebuilt(shareable, dxo, data, meta)
