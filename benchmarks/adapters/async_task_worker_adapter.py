"""async-task-worker under the harness: an in-process pool, compared with InMemoryBroker.

`AsyncTaskWorker(max_workers=<concurrency>)` with its other defaults; tasks are added with
`add_task(func, arg)`, which only works once the pool runs, so the pool starts when the
library opens. Adding a task never yields to the event loop, so a prefill done in one
go is complete before any worker runs. It has no bulk API and no delayed tasks.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from async_task_worker import AsyncTaskWorker
from common import FUNCTIONS, Library


class AsyncTaskWorkerLibrary(Library):
    name = "async-task-worker"
    backend = "memory"

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.pool: AsyncTaskWorker | None = None

    def version(self) -> str:
        return version("async-task-worker")

    def settings(self) -> dict[str, Any]:
        return {
            "worker": "AsyncTaskWorker(max_workers=<concurrency>), other options at their "
            "defaults (no cache)",
            "enqueue": "await add_task(func, arg) (no bulk API, no delays)",
        }

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        self.pool = AsyncTaskWorker(max_workers=concurrency)
        await self.pool.start()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.stop(timeout=1)
            self.pool = None

    async def enqueue(self, kind: str, arg: float) -> None:
        assert self.pool is not None
        await self.pool.add_task(FUNCTIONS[kind], arg)

    async def fill(self, kind: str, args: list[float]) -> None:
        for arg in args:  # in one go: no worker runs before the workload starts the clock
            await self.enqueue(kind, arg)

    async def start_worker(self) -> None:
        """The pool runs since `open`; its workers take tasks as soon as we yield."""

    async def stop_worker(self) -> None:
        """Stopped by `close`."""


LIBRARY = AsyncTaskWorkerLibrary
