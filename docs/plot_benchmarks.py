"""Plots benchmarks/RESULTS.md as docs/benchmarks.png: jaxops' time over the best peer's, per op.

Run from the repository root after ``benchmarks/run.py`` has rewritten
``benchmarks/RESULTS.md``::

    .venv/bin/python docs/plot_benchmarks.py

The committed results are the markdown report (the JSON-lines file that
``run.py`` writes beside it holds raw timings and is not committed), so this
script reads the report's tables, taking each case from the first table that
holds it: the jemalloc section, then the sections appended later.
"""

from __future__ import annotations

import argparse
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATIO = "jaxops/best peer"
SIZE_MARKERS = {"small": "o", "large": "s", "large-2N": "^", "large-2T": "D"}
PASS_STYLE = {"fwd": ("tab:blue", -0.15), "fwd+bwd": ("tab:orange", 0.15)}


def read_tables(text: str) -> list[tuple[str, dict[str, str]]]:
    """Every row of every results table, with the heading or run label it sits under."""
    rows, label, header = [], "", None
    for line in text.splitlines():
        if line.startswith("#"):
            label, header = line.lstrip("#").strip(), None
        elif re.match(r"Run \d", line):
            label, header = line.strip(), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                rows.append((label, dict(zip(header, cells, strict=True))))
        else:
            header = None
    return [(label, row) for label, row in rows if row.get(RATIO)]


def select(rows: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    """One row per (op, size, pass): the first table that holds it, in report order.

    The report opens with the jemalloc tables, so those win over the glibc
    repeats of the same cases; sections added later (such as the ragged-batch
    runs, quiet run first) contribute the cases the main tables lack.
    """
    chosen: dict[tuple[str, str, str], dict[str, str]] = {}
    for _, row in rows:
        chosen.setdefault((row["op"], row["size"], row["pass"]), row)
    return list(chosen.values())


def plot(rows: list[dict[str, str]], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ops = list(dict.fromkeys(row["op"] for row in rows))
    fig, ax = plt.subplots(figsize=(10.5, 0.42 * len(ops) + 1.8), dpi=110)
    for i in range(1, len(ops), 2):
        ax.axhspan(i - 0.5, i + 0.5, color="0.95", zorder=0)
    for row in rows:
        color, dy = PASS_STYLE[row["pass"]]
        ax.scatter(
            float(row[RATIO]),
            ops.index(row["op"]) + dy,
            marker=SIZE_MARKERS.get(row["size"], "x"),
            s=30,
            facecolor=color if row["best peer"].split(":")[0] == "naive" else "white",
            edgecolor=color,
            linewidth=1.2,
            zorder=3,
        )
    ax.axvline(1.0, color="0.3", linewidth=1, zorder=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(ops)), ops, fontsize=8)
    ax.set_ylim(len(ops) - 0.5, -0.5)
    ax.set_xlabel("jaxops time / best peer's time (log scale; left of 1: jaxops is faster)")
    ax.set_title("jaxops against the fastest of plain JAX and PyTorch, per op", fontsize=10)
    ax.grid(axis="x", which="both", color="0.85", linewidth=0.5)
    handles = [
        Line2D([], [], linestyle="", marker="o", color=c, label=p)
        for p, (c, _) in PASS_STYLE.items()
    ]
    handles += [
        Line2D([], [], linestyle="", marker=m, color="0.3", label=s)
        for s, m in SIZE_MARKERS.items()
    ]
    handles += [
        Line2D([], [], linestyle="", marker="o", color="0.3", label="best peer: plain JAX"),
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markerfacecolor="white",
            color="0.3",
            label="best peer: PyTorch",
        ),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.text(
        0.01,
        0.005,
        "Source: benchmarks/RESULTS.md (2-core CPU); each case from the first table that "
        "holds it: the jemalloc tables, then the sections appended later (glibc).",
        fontsize=7,
        color="0.35",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=ROOT / "benchmarks" / "RESULTS.md", type=pathlib.Path)
    parser.add_argument("--out", default=ROOT / "docs" / "benchmarks.png", type=pathlib.Path)
    args = parser.parse_args()
    rows = select(read_tables(args.results.read_text(encoding="utf-8")))
    if not rows:
        raise SystemExit(f"no '{RATIO}' rows found in {args.results}")
    plot(rows, args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
