"""The `progress_callback` a task function receives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..models import Task
from ..service import report_progress

__all__ = ["ProgressReporter"]

logger = logging.getLogger(__name__)


class ProgressReporter:
    """`progress_callback(fraction)`: record progress from 0.0 to 1.0, without awaiting.

    The value is visible at once to this process through `on_local`, and is written to
    the broker in the background for every other reader. Writes never pile up: while
    one is in flight, later values replace each other and only the latest follows it.
    """

    __slots__ = ("_latest", "_on_local", "_task", "_writer", "_written")

    def __init__(self, task: Task, on_local: Callable[[float], None]) -> None:
        self._task = task
        self._on_local = on_local
        self._latest: float | None = None
        self._written: float | None = None
        self._writer: asyncio.Task[None] | None = None

    def __call__(self, progress: float) -> None:
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise TypeError(f"progress must be a number from 0.0 to 1.0, got {progress!r}")
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be between 0.0 and 1.0, got {progress}")
        value = float(progress)
        self._on_local(value)
        self._latest = value
        if self._writer is None or self._writer.done():
            # The new task copies this context, so report_progress finds the running task.
            self._writer = asyncio.get_running_loop().create_task(self._write())

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
        """Wait until the latest value is written (or its write failed)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def cancel(self) -> None:
        """Stop writing: the task was interrupted."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
