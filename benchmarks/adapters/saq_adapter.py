"""SAQ under the harness, with its defaults.

Workers block on BLMOVE (no polling for ready jobs). Scheduled jobs are moved to the
queue by an upkeep loop every `timers["schedule"]` seconds (1 s by default); it cannot go
lower, since the same number is the lock's SETEX seconds. There is no bulk enqueue.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from common import Library, probe
from saq import Queue, Worker


async def noop(ctx: dict[str, Any], *, a: float) -> None:
    probe.ran()


async def nap(ctx: dict[str, Any], *, a: float) -> None:
    await probe.nap()


async def stamp(ctx: dict[str, Any], *, a: float) -> None:
    probe.stamp(a)


async def late(ctx: dict[str, Any], *, a: float) -> None:
    probe.late(a)


class SaqLibrary(Library):
    name = "saq"
    delay_resolution = 1.0

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.queue: Any = None
        self.worker: Worker | None = None
        self.worker_task: asyncio.Task[None] | None = None

    def version(self) -> str:
        return version("saq")

    def settings(self) -> dict[str, Any]:
        return {
            "queue": "Queue.from_url(url) (RedisQueue, max_concurrent_ops 20)",
            "worker": "Worker(queue, functions, concurrency=<concurrency>), other options at "
            "their defaults",
            "enqueue": "Queue.enqueue (no bulk API)",
            "delays": "scheduled=<epoch s>; moved to the queue by a 1 s upkeep loop",
        }

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        assert self.url is not None
        self.queue = Queue.from_url(self.url, name="bench")
        await self.queue.connect()

    async def close(self) -> None:
        await self.stop_worker()
        if self.queue is not None:
            await self.queue.disconnect()
            self.queue = None

    async def enqueue(self, kind: str, arg: float) -> None:
        await self.queue.enqueue(kind, a=arg)

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        await self.queue.enqueue(kind, a=arg, scheduled=due)

    async def start_worker(self) -> None:
        self.worker = Worker(self.queue, [noop, nap, stamp, late], concurrency=self.concurrency)
        self.worker_task = asyncio.create_task(self.worker.start())

    async def stop_worker(self) -> None:
        if self.worker is not None:
            worker, task = self.worker, self.worker_task
            self.worker = self.worker_task = None
            await worker.stop()
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


LIBRARY = SaqLibrary
