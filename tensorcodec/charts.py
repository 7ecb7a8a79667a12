"""Pictures of size reports, for people who would rather look than read (needs matplotlib: ``tensorcodec[plot]``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .accounting import MIB, Report

__all__ = ["size_chart"]

_PARTS = (("payload", "#3b6ea8"), ("meta", "#e39b3a"), ("framing", "#8c8c8c"))


def size_chart(results: Sequence[tuple[str, Report]], path: str | Path, title: str = "") -> None:
    """Writes a bar per precision, stacked payload / meta / framing in MiB, labelled with its % of fp32.

    The format follows the file name (``.png``, ``.svg``, ``.pdf``). matplotlib is imported here, so
    the rest of the library never needs it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install 'tensorcodec[plot]'") from e
    names = [name for name, _ in results]
    parts = {
        "payload": [rep.payload_bytes / MIB for _, rep in results],
        "meta": [rep.meta_bytes / MIB for _, rep in results],
        "framing": [rep.framing_bytes / MIB for _, rep in results],
    }
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5), layout="constrained")
    bottom = [0.0] * len(names)
    for part, color in _PARTS:
        axes.bar(names, parts[part], bottom=bottom, color=color, label=part)
        bottom = [b + v for b, v in zip(bottom, parts[part], strict=True)]
    for i, (_, rep) in enumerate(results):
        axes.annotate(
            f"{rep.percent_of_fp32():.1f} %", (i, bottom[i]), ha="center", va="bottom", fontsize=8,
            xytext=(0, 2), textcoords="offset points",
        )  # fmt: skip
    axes.set_ylabel("message size (MiB)")
    axes.set_title(title or "message size by precision (label: % of fp32)", fontsize=10)
    axes.margins(y=0.12)
    axes.legend(frameon=False)
    axes.tick_params(axis="x", labelrotation=30)
    figure.savefig(path, dpi=120)
    plt.close(figure)
