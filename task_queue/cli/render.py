"""Text for people and JSON for scripts: tables, times, ages and nested task records."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["age", "clock", "dump_json", "nested", "table", "timestamp"]

_TIME_KEYS = frozenset({"at", "time", "timestamp", "created", "heartbeat"})


def dump_json(value: Any, *, compact: bool = False) -> str:
    """Encode `value` as JSON for scripts (one line when `compact`)."""
    if compact:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def age(seconds: float) -> str:
    """A duration as people read it: 45s, 3m05s, 2h03m, 4d06h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def clock(moment: datetime | float | None) -> str:
    """A time as `YYYY-MM-DD HH:MM:SS UTC` (`-` for none)."""
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def timestamp(value: float, now: float | None = None) -> str:
    """A POSIX time as a UTC clock time followed by how long ago (or ahead) it is."""
    now = time.time() if now is None else now
    delta = now - value
    relative = f"{age(delta)} ago" if delta >= 0 else f"in {age(-delta)}"
    moment = datetime.fromtimestamp(value, UTC)
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC ({relative})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Align `rows` under `headers`; numbers are right-aligned, text left-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        parts = [
            text.rjust(w) if right else text.ljust(w)
            for text, w, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("\n", " ")


def _is_time_key(key: str) -> bool:
    return key.endswith("_at") or key in _TIME_KEYS


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and _is_time_key(key):
        return timestamp(float(value))
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def nested(record: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Lines showing every field of `record`, nested values indented below their key.

    Made for `codec.task_to_dict` output, and generic: fields it does not know (context,
    logs, ...) are shown the same way. Times are POSIX seconds under keys ending in
    `_at` (or named at/time/timestamp) and are shown as UTC times with their age.
    """
    pad = " " * indent
    width = max((len(str(k)) for k in record), default=0)
    lines: list[str] = []
    for key, value in record.items():
        name = str(key)
        lines += _field(pad, name, name.ljust(width), value, indent)
    return lines


def _field(pad: str, key: str, label: str, value: Any, indent: int) -> list[str]:
    if isinstance(value, Mapping) and value:
        return [f"{pad}{key}:", *nested(value, indent + 2)]
    if isinstance(value, list) and value:
        lines = [f"{pad}{key}:"]
        for item in value:
            lines += _item(" " * (indent + 2), key, item, indent + 2)
        return lines
    if isinstance(value, str) and "\n" in value:
        body = [f"{pad}  {line}" for line in value.rstrip("\n").splitlines()]
        return [f"{pad}{key}: |", *body]
    if isinstance(value, Mapping | list):
        return [f"{pad}{label}  {'{}' if isinstance(value, Mapping) else '[]'}"]
    return [f"{pad}{label}  {_scalar(key, value)}"]


def _item(pad: str, key: str, item: Any, indent: int) -> list[str]:
    if isinstance(item, Mapping) and item:
        inner = nested(item, indent + 2)
        return [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
    if isinstance(item, str) and "\n" in item:
        body = [f"{pad}  {line}" for line in item.rstrip("\n").splitlines()]
        return [f"{pad}- |", *body]
    return [f"{pad}- {_scalar(key, item)}"]
