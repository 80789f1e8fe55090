"""Print the figures of the last chaos run as a Markdown table.

    python -m tests.chaos.report [results.json]

The chaos tests add their figures to the JSON file named by `TQ_CHAOS_RESULTS` (`make
chaos` uses .chaos/results.json); this prints them in the layout of
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ORDER = ["no faults", "worker kills", "Redis restart + SIGKILL", "event-loop stall"]
COLUMNS = [
    "run",
    "tasks",
    "worker kills",
    "Redis faults",
    "lost",
    "duplicates (unexplained)",
    "recovered leases",
    "recovery p50 / p99 (s)",
    "throughput (tasks/s)",
    "wall time (s)",
]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(figures: dict[str, Any]) -> list[str]:
    """One table row from the figures of one run."""
    return [
        figures["scenario"],
        f"{figures['tasks']:,}",
        str(figures["kills"]),
        str(figures["redis_faults"]),
        str(figures["lost"]),
        f"{figures['duplicates']} ({figures['unexplained_duplicates']})",
        str(figures["recovered_leases"]),
        f"{_seconds(figures['recovery_p50'])} / {_seconds(figures['recovery_p99'])}",
        f"{figures['throughput']:,.0f}",
        f"{figures['seconds']:.1f}",
    ]


def render(results: dict[str, dict[str, Any]]) -> str:
    """The table, then each run's notes."""

    def rank(figures: dict[str, Any]) -> int:
        name = figures["scenario"]
        return ORDER.index(name) if name in ORDER else len(ORDER)

    runs = sorted(results.values(), key=rank)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(f)) + " |" for f in runs]
    lines.append("")
    for figures in runs:
        if figures["notes"]:
            lines.append(f"- {figures['scenario']}: " + "; ".join(figures["notes"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of the results file; 1 when there is none."""
    args = list(sys.argv[1:] if argv is None else argv)
    default = os.environ.get("TQ_CHAOS_RESULTS", ".chaos/results.json")
    path = Path(args[0] if args else default)
    if not path.exists():
        print(f"no chaos results at {path}: run `make chaos` first", file=sys.stderr)
        return 1
    results = json.loads(path.read_text())
    if not results:
        print(f"{path} holds no results", file=sys.stderr)
        return 1
    sizes = sorted({f["size"] for f in results.values()})
    when = max(f["recorded_at"] for f in results.values())
    print(
        f"Chaos figures from {path} (TQ_CHAOS_TASKS={', '.join(map(str, sizes))}), "
        f"{datetime.fromtimestamp(when, UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
