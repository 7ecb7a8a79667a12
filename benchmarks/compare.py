"""Two benchmark reports of the same machine, row by row: how a change moved each speed (run by hand).

    .venv/bin/python benchmarks/compare.py OLD.md NEW.md [OLD2.md NEW2.md ...] [--columns "enc GB/s,dec GB/s"]

Each report is one written by ``benchmarks/run.py --out FILE`` (run the old and the new tree one
after another, in alternation, so that the machine's load falls on both). Rows are matched by the
section heading and the row's first cell; each printed ratio is new / old of the column (higher is
faster for GB/s), the median over the pairs given. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

Table = dict[tuple[str, str, str], float]
"""(section, row, column) -> value."""


def read_report(path: Path) -> Table:
    """Every numeric cell of every table in a run.py report, keyed by section, row and column."""
    values: Table = {}
    section = ""
    header: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), []
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not header:
                header = cells
            elif not set(cells[0]) <= set("-: "):
                for column, cell in zip(header[1:], cells[1:], strict=False):
                    for i, part in enumerate(cell.split(" / ")):
                        number = re.match(r"^[\d,]*\.?\d+", part.strip())
                        if number:
                            name = column.split(" / ")[i] if " / " in column else column
                            values[section, cells[0], name] = float(number.group().replace(",", ""))
        else:
            header = [] if not line.strip() else header
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="old and new reports, in pairs")
    parser.add_argument("--columns", default="enc GB/s,dec GB/s", help="comma list of columns to compare")
    parser.add_argument("--rows", default="tc", help="comma list of row-name prefixes to keep ('' for all)")
    args = parser.parse_args()
    if len(args.reports) % 2:
        parser.error("give the reports in (old, new) pairs")
    pairs = [(read_report(a), read_report(b)) for a, b in zip(args.reports[::2], args.reports[1::2], strict=True)]
    columns = args.columns.split(",")
    prefixes = [p for p in args.rows.split(",") if p]
    print("| workload | row | " + " | ".join(f"{c} new/old" for c in columns) + " |")
    print("| --- | --- |" + " ---: |" * len(columns))
    old0 = pairs[0][0]
    rows = dict.fromkeys((s, r) for s, r, c in old0 if c in columns)  # in report order
    for section, row in rows:
        if prefixes and not any(row.startswith(p) for p in prefixes):
            continue
        cells = []
        for column in columns:
            key = (section, row, column)
            ratios = [new[key] / old[key] for old, new in pairs if key in old and key in new and old[key]]
            cells.append(f"{statistics.median(ratios):.3f}" if ratios else "")
        print(f"| {section.split(' — ')[0]} | {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
