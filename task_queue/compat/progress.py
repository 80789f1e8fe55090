"""The `progress_callback` a task function receives."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Callable

from ..models import Task
from ..service import report_progress

__all__ = ["ProgressReporter"]

logger = logging.getLogger(__name__)


class ProgressReporter:
    """`progress_callback(fraction)`: record progress from 0.0 to 1.0, without awaiting.

    Values outside 0.0 .. 1.0 are clamped into it (as async-task-worker does); a NaN is
    ignored. The callback may be called from the task's event loop or from any other
    thread (`asyncio.to_thread`, an executor): it never raises for a number, so it
    never fails the task. The value is visible at once to this process through
    `on_local`, and is written to the broker in the background for every other reader.
    Writes never pile up: while one is in flight, later values replace each other and
    only the latest follows it.

    Build it inside the running task (its event loop and context are captured then).
    """

    __slots__ = (
        "_closed",
        "_context",
        "_latest",
        "_loop",
        "_on_local",
        "_task",
        "_thread",
        "_writer",
        "_written",
    )

    def __init__(self, task: Task, on_local: Callable[[float], None]) -> None:
        self._task = task
        self._on_local = on_local
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # The executor's context holds the running task that report_progress needs;
        # a callback arriving from a thread may not carry it.
        self._context = contextvars.copy_context()
        self._latest: float | None = None
        self._written: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def __call__(self, progress: float) -> None:
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise TypeError(f"progress must be a number from 0.0 to 1.0, got {progress!r}")
        if math.isnan(progress):
            task = self._task
            logger.warning(
                "task %s [%s]: progress NaN ignored",
                task.id,
                task.name,
                extra={"task_id": task.id, "task_name": task.name},
            )
            return
        value = min(1.0, max(0.0, float(progress)))
        if threading.get_ident() == self._thread:
            self._record(value)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._record, value)

    def _record(self, value: float) -> None:
        if self._closed:
            return  # a late call from a thread, after the task ended
        self._on_local(value)
        self._latest = value
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write(), context=self._context)

    async def _write(self) -> None:
        while self._latest is not None and self._latest != self._written:
            value = self._written = self._latest
            try:
                await report_progress(value)
            except Exception as exc:
                task = self._task
                logger.warning(
                    "task %s [%s]: progress %.3f not stored (%r)",
                    task.id,
                    task.name,
                    value,
                    exc,
                    extra={"task_id": task.id, "task_name": task.name},
                )
                return

    async def flush(self) -> None:
        """Wait until the latest value is written (or its write failed); later calls
        are ignored."""
        self._closed = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def cancel(self) -> None:
        """Stop writing: the task was interrupted; later calls are ignored."""
        self._closed = True
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
