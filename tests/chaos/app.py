"""The worker app of the chaos runs: `task-queue worker tests.chaos.app:make_service`.

Configured from the environment (`TQ_CHAOS_URL`, `TQ_CHAOS_PREFIX`, `TQ_CHAOS_LEASE`,
`TQ_CHAOS_LEDGER`). Every executor writes its run to the ledger, a directory of
append-only files outside Redis, before it returns: a "start" line when it begins and a
"done" line (the side effect whose duplicates the runs count) just before returning. One
`os.write` per line on a file opened with O_APPEND, so nothing a SIGKILL can take back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from task_queue import RetryPolicy, Task, TaskQueueService
from task_queue.broker.redis import RedisBroker

# Kills are not a task's fault: a task may be caught in many of them, and must not run
# out of attempts (it would end FAILED with LeaseExpired) before the run ends.
MAX_RETRIES = 50


class LedgerWriter:
    """Appends this process's runs to `<ledger>/runs-<pid>.jsonl`."""

    def __init__(self, directory: str | Path) -> None:
        self.pid = os.getpid()
        path = Path(directory) / f"runs-{self.pid}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(self, kind: str, task: Task) -> None:
        """Write one line: [kind, task id, attempt, pid, wall-clock time]."""
        line = json.dumps([kind, task.id, task.attempts, self.pid, time.time()]) + "\n"
        os.write(self._fd, line.encode())


def build_service(
    url: str, prefix: str, lease: float, ledger: str | Path, **service_options: Any
) -> TaskQueueService:
    """A service with the chaos executors on the Redis at `url`, writing to `ledger`."""
    broker = RedisBroker.from_url(url, prefix=prefix, lease_seconds=lease, retry_seconds=120)
    service_options.setdefault(
        "retry_policy", RetryPolicy(max_retries=MAX_RETRIES, base_delay=0.05, max_delay=0.5)
    )
    service_options.setdefault("shutdown_grace", 10)
    service = TaskQueueService(broker, **service_options)
    writer = LedgerWriter(ledger)

    @service.executor
    async def work(task: Task) -> dict[str, int]:
        """Sleep `ms` milliseconds; the ledger's "done" line is the side effect."""
        writer.note("start", task)
        await asyncio.sleep(float(task.payload.get("ms", 0)) / 1000)
        writer.note("done", task)
        return {"pid": writer.pid, "attempt": task.attempts}

    @service.executor
    async def stall(task: Task) -> dict[str, int]:
        """On its first attempt, block the whole event loop for `stall` seconds."""
        writer.note("start", task)
        if task.attempts == 1:
            time.sleep(float(task.payload.get("stall", 0)))  # noqa: ASYNC251 - the point
        writer.note("done", task)
        return {"pid": writer.pid, "attempt": task.attempts}

    return service


def make_service() -> TaskQueueService:
    """The service of one worker process, configured from the environment."""
    # The CLI runs at INFO (its "running" line says the worker is up); a line per task
    # would drown the interesting ones.
    logging.getLogger("task_queue.service").setLevel(logging.WARNING)
    return build_service(
        os.environ["TQ_CHAOS_URL"],
        os.environ["TQ_CHAOS_PREFIX"],
        float(os.environ.get("TQ_CHAOS_LEASE", "4")),
        os.environ["TQ_CHAOS_LEDGER"],
    )
