"""Federated-learning engines that carry their models as tensorcodec messages.

Each engine lives in its own submodule and imports its library only when that
submodule is imported, so tensorcodec itself never depends on them:

* ``tensorcodec.integrations.nvflare`` — a pair of NVFlare filters that turn a
  DXO's weights (or weight diffs) into one message and back (needs ``nvflare``);
* ``tensorcodec.integrations.flower`` — a Flower client mod and a strategy
  wrapper that send ArrayRecords as messages (needs ``flwr``).

Both speak through ``pack`` / ``unpack`` (``tensorcodec.integrations.common``),
which know neither engine.
"""

from __future__ import annotations

__all__: list[str] = []
