"""Draw the chart of one harness result: python chart.py RESULTS.json OUT.png

Runs in the chart virtualenv (matplotlib), never in the package's. Bars are medians over
the runs; the whiskers span min to max.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

OURS = "#d62728"
OTHERS = ["#1f77b4", "#6baed6", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22"]

# (title, section, [(metric, legend)], unit, log scale)
PANELS: list[tuple[str, str, list[tuple[str, str]], str, bool]] = [
    (
        "Process prefilled no-op tasks\n1 worker process, concurrency 100",
        "redis",
        [("process_noop.value", "no-op")],
        "tasks/s (higher is better)",
        True,
    ),
    (
        "Process tasks that sleep 10 ms",
        "redis",
        [("nap100.value", "concurrency 100"), ("nap500.value", "concurrency 500")],
        "tasks/s (higher is better)",
        True,
    ),
    (
        "Enqueue no-op tasks",
        "redis",
        [
            ("enqueue_one.value", "one at a time"),
            ("enqueue_gather.value", "32 producers"),
            ("enqueue_bulk.value", "bulk API"),
        ],
        "tasks/s (higher is better)",
        True,
    ),
    (
        "Enqueue -> start, idle worker",
        "redis",
        [("latency.p50", "p50"), ("latency.p99", "p99")],
        "ms (lower is better)",
        True,
    ),
    (
        "Delayed tasks: lateness",
        "redis",
        [("delayed.p50", "p50"), ("delayed.p99", "p99")],
        "ms (lower is better)",
        True,
    ),
    (
        "Memory",
        "redis",
        [("redis_memory.value", "Redis bytes per queued task"), ("rss.value", "worker RSS, MiB")],
        "bytes / MiB (lower is better)",
        True,
    ),
    (
        "In-memory, one process",
        "memory",
        [
            ("process_noop.value", "process no-op"),
            ("enqueue_one.value", "enqueue one at a time"),
        ],
        "tasks/s (higher is better)",
        True,
    ),
    ("task_queue on Redis: worker processes", "scaling", [], "tasks/s (higher is better)", False),
]


def _labels(document: dict[str, Any], section: str) -> list[str]:
    libraries = document["libraries"]
    return [x for x, info in libraries.items() if info["backend"] == section]


def _scaling(ax: Any, summary: dict[str, Any]) -> None:
    """task_queue alone: one bar per number of worker processes."""
    ours = summary.get("task_queue", {})
    rows = [(k, ours.get(f"scale{k}.value")) for k in (1, 2, 4)]
    rows = [(k, cell) for k, cell in rows if cell is not None]
    if not rows:
        ax.set_axis_off()
        return
    for y, (_k, cell) in enumerate(rows):
        ax.barh(y, cell["median"], height=0.7, color=OURS, alpha=1.0 - 0.25 * y)
        low, high = cell["median"] - cell["min"], cell["max"] - cell["median"]
        ax.errorbar(cell["median"], y, xerr=[[low], [high]], fmt="none", ecolor="black")
        ax.text(cell["median"], y, f" {cell['median']:,.0f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{k} process{'es' if k > 1 else ''} x 100" for k, _ in rows])
    ax.invert_yaxis()
    ax.margins(x=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k"))
    ax.grid(axis="x", alpha=0.3)


def draw(document: dict[str, Any], out: Path, source: str) -> None:
    summary = document["summary"]
    fig, axes = plt.subplots(2, 4, figsize=(22, 10))
    for ax, (title, section, metrics, unit, log) in zip(axes.flat, PANELS, strict=True):
        labels = [x for x in _labels(document, section) if x in summary]
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(unit)
        if section == "scaling":
            _scaling(ax, summary)
            continue
        if not labels:
            ax.set_axis_off()
            continue
        height = 0.8 / len(metrics)
        drawn = False
        for m_index, (metric, legend) in enumerate(metrics):
            for l_index, label in enumerate(labels):
                cell = summary[label].get(metric)
                if cell is None:
                    continue
                y = l_index + (m_index - (len(metrics) - 1) / 2) * height
                color = OURS if label.startswith("task_queue") else OTHERS[l_index % len(OTHERS)]
                alpha = 1.0 - 0.3 * m_index
                ax.barh(y, cell["median"], height=height * 0.9, color=color, alpha=alpha)
                ax.errorbar(
                    cell["median"],
                    y,
                    xerr=[[cell["median"] - cell["min"]], [cell["max"] - cell["median"]]],
                    fmt="none",
                    ecolor="black",
                    capsize=2,
                    linewidth=0.8,
                )
                text = (
                    f"{cell['median']:,.0f}" if cell["median"] >= 10 else f"{cell['median']:.2f}"
                )
                if len(metrics) > 1:
                    text = f"{legend}: {text}"
                ax.text(cell["median"], y, f" {text}", va="center", fontsize=7)
                drawn = True
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        if log and drawn:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # no clutter on short ranges
        ax.margins(x=0.35)
        ax.grid(axis="x", alpha=0.3)
    redis = document.get("redis") or {}
    fig.suptitle(
        f"task_queue vs peers, {document['date']}: {document['options']['runs']} runs, "
        f"median with min-max; Python {document['environment']['python']}, "
        f"{document['environment']['cpu_count']} CPUs, Redis {redis.get('version', '-')} "
        f"on loopback (benchmarks/results/{source})",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out, dpi=80)


def main() -> int:
    document = json.loads(Path(sys.argv[1]).read_text())
    draw(document, Path(sys.argv[2]), Path(sys.argv[1]).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
