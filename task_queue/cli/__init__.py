"""The `task-queue` command: run worker processes, and inspect and control queues.

`task-queue worker MODULE:SERVICE` runs a service's worker slots until SIGTERM or SIGINT
(or `--idle-timeout`); `status`, `stats`, `list`, `show`, `retry`, `cancel`, `purge` and
`workers` read and change the queues behind `--url` (Redis) or `--app` (a service).
"""

from __future__ import annotations

from .main import build_parser, main
from .worker import load_service, run_worker

__all__ = ["build_parser", "load_service", "main", "run_worker"]
