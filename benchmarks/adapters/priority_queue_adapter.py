"""A plain asyncio.PriorityQueue drained by consumer coroutines: the in-memory floor.

Not a task queue (no ids, states, retries or results): it shows what the event loop
itself costs per item, so the in-memory figures can be read against it.
"""

from __future__ import annotations

import asyncio
import itertools
import platform
from typing import Any

from common import Library, probe

FUNCTIONS: dict[str, Any] = {
    "noop": lambda a: probe.ran(),
    "stamp": probe.stamp,
    "late": probe.late,
}


class PriorityQueueLibrary(Library):
    name = "asyncio.PriorityQueue"
    backend = "memory"

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.queue: asyncio.PriorityQueue[tuple[int, int, str, float]] | None = None
        self.seq = itertools.count()
        self.consumers: list[asyncio.Task[None]] = []

    def version(self) -> str:
        return f"Python {platform.python_version()}"

    def settings(self) -> dict[str, Any]:
        return {"worker": "<concurrency> coroutines: await queue.get(), run the function"}

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        self.queue = asyncio.PriorityQueue()

    async def close(self) -> None:
        await self.stop_worker()
        self.queue = None

    async def enqueue(self, kind: str, arg: float) -> None:
        assert self.queue is not None
        await self.queue.put((0, next(self.seq), kind, arg))

    async def enqueue_bulk(self, kind: str, args: list[float]) -> None:
        assert self.queue is not None
        put, seq = self.queue.put_nowait, self.seq
        for arg in args:
            put((0, next(seq), kind, arg))

    async def _consume(self) -> None:
        assert self.queue is not None
        get = self.queue.get
        while True:
            _, _, kind, arg = await get()
            if kind == "nap":
                await probe.nap()
            else:
                FUNCTIONS[kind](arg)

    async def start_worker(self) -> None:
        self.consumers = [asyncio.create_task(self._consume()) for _ in range(self.concurrency)]

    async def stop_worker(self) -> None:
        for consumer in self.consumers:
            consumer.cancel()
        await asyncio.gather(*self.consumers, return_exceptions=True)
        self.consumers = []


LIBRARY = PriorityQueueLibrary
