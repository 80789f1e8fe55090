"""streaQ under the harness, with its defaults (pickle serializer, prefetch = concurrency).

One `Worker` object enqueues (as a producer process would) and another runs the tasks,
both on the same queue. Workers read a Redis stream with a blocking XREADGROUP; delayed
tasks are moved to the stream by a loop that runs every 0.5 s (fixed). Bulk enqueue is
`Worker.enqueue_many` (one pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from common import FUNCTIONS, Library
from streaq import Worker


class StreaqLibrary(Library):
    name = "streaq"
    delay_resolution = 0.5

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.stack: contextlib.AsyncExitStack | None = None
        self.producer: Worker[Any] | None = None
        self.tasks: dict[str, Any] = {}
        self.consumer: Worker[Any] | None = None
        self.worker_task: asyncio.Task[None] | None = None

    def version(self) -> str:
        return version("streaq")

    def settings(self) -> dict[str, Any]:
        return {
            "worker": "Worker(redis_url, concurrency=<concurrency>, handle_signals=False), "
            "other options at their defaults (pickle, prefetch = concurrency)",
            "enqueue": "await task.enqueue(...); bulk: Worker.enqueue_many",
            "delays": "task.enqueue(...).start(schedule=<datetime>); moved to the stream "
            "by a fixed 0.5 s loop",
        }

    def _worker(self, concurrency: int) -> tuple[Worker[Any], dict[str, Any]]:
        assert self.url is not None
        worker: Worker[Any] = Worker(
            redis_url=self.url,
            concurrency=concurrency,
            queue_name="bench",
            handle_signals=False,
        )
        return worker, {name: worker.task()(fn) for name, fn in FUNCTIONS.items()}

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        self.producer, self.tasks = self._worker(concurrency)
        self.stack = contextlib.AsyncExitStack()
        await self.stack.enter_async_context(self.producer)

    async def close(self) -> None:
        await self.stop_worker()
        if self.stack is not None:
            await self.stack.aclose()
        self.stack = self.producer = None

    async def enqueue(self, kind: str, arg: float) -> None:
        await self.tasks[kind].enqueue(arg)

    async def enqueue_bulk(self, kind: str, args: list[float]) -> None:
        assert self.producer is not None
        task = self.tasks[kind]
        await self.producer.enqueue_many([task.enqueue(a) for a in args])

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        when = datetime.fromtimestamp(due, UTC)
        await self.tasks[kind].enqueue(arg).start(schedule=when)

    async def start_worker(self) -> None:
        self.consumer, _ = self._worker(self.concurrency)
        self.worker_task = asyncio.create_task(self.consumer.run_async())

    async def stop_worker(self) -> None:
        task = self.worker_task
        self.worker_task = self.consumer = None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=3)


LIBRARY = StreaqLibrary
