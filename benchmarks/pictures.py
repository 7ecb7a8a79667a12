#!/usr/bin/env python3
"""The pictures of docs/benchmarks.md, drawn from the tables that it publishes (run by hand).

    python benchmarks/pictures.py            # writes docs/img/speed.png

The speed picture reads the workload tables that ``benchmarks/run.py`` wrote into
docs/benchmarks.md, so it always shows the published run: encode and decode throughput of
tensorcodec and its peers, per workload, on a log scale. Other pictures live next to the
benchmarks that measure them (``rate_distortion.py``, ``fedavg.py``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
CODECS = ("tc", "tc frames", "safetensors", "torch.save", "pickle5", "msgpack-numpy")
"""The rows shown: tensorcodec's default and scatter-gather paths, and every peer on its usual path."""
WORKLOADS = ("minilm-fp32", "minilm-bf16", "llm-bf16", "small-fp32")


def workload_tables(text: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{workload: {codec: (encode GB/s, decode GB/s)}} from the '### name — ...' tables of the benchmarks page."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"### (\S+) — ", line)
        if heading:
            current = heading.group(1) if heading.group(1) in WORKLOADS else None
            continue
        if current and line.startswith("| ") and not line.startswith(("| codec", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            try:
                out.setdefault(current, {})[cells[0]] = (
                    float(cells[1].replace(",", "")),
                    float(cells[2].replace(",", "")),
                )
            except ValueError:  # "-" where a peer failed the workload
                continue
    return out


def speed_chart(tables: dict[str, dict[str, tuple[float, float]]], path: Path, date: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if w in tables]
    colors = {"tc": "#3b6ea8", "tc frames": "#7aa6d6", "safetensors": "#e39b3a", "torch.save": "#c0504d"}
    colors |= {"pickle5": "#8c8c8c", "msgpack-numpy": "#9bbb59"}
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True, layout="constrained")
    height = 0.8 / len(CODECS)
    for side, axes in enumerate(panels):
        for k, codec in enumerate(CODECS):
            ys = [i + (k - len(CODECS) / 2 + 0.5) * height for i in range(len(workloads))]
            xs = [tables[w].get(codec, (float("nan"),) * 2)[side] for w in workloads]
            axes.barh(ys, xs, height=height, color=colors[codec], label=codec)
        axes.set_xscale("log")
        axes.set_xlabel(f"{'encode' if side == 0 else 'decode'} GB/s of raw tensor bytes (log)")
        axes.grid(axis="x", which="both", alpha=0.25)
    panels[0].set_yticks(range(len(workloads)), workloads)
    panels[0].invert_yaxis()
    panels[1].legend(frameon=False, fontsize=8, loc="lower right")
    figure.suptitle(
        f"tensorcodec and its peers, one run of benchmarks/run.py ({date}, 2 cores); higher is faster", fontsize=10
    )
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "speed.png")
    args = parser.parse_args(argv)
    text = DOCS.read_text(encoding="utf-8")
    date = re.search(r"\*\*Date\*\*: (\S+)", text)
    tables = workload_tables(text)
    speed_chart(tables, args.out, date.group(1) if date else "")
    print(f"wrote {args.out} ({', '.join(tables)})")


if __name__ == "__main__":
    main()
