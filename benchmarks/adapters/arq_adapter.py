"""arq under the harness. Variant None: its defaults (workers poll every 0.5 s);
"poll-10ms": `poll_delay=0.01`, the fair comparison for latency and delays.

arq has no bulk enqueue; its worker polls a sorted set (`poll_delay`), which also decides
when delayed jobs start. Functions take `ctx` first; job results are kept for an hour
(its default `keep_result`).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from arq import Worker, create_pool
from arq.connections import ArqRedis, RedisSettings
from common import Library, probe


async def noop(ctx: dict[str, Any], a: float) -> None:
    probe.ran()


async def nap(ctx: dict[str, Any], a: float) -> None:
    await probe.nap()


async def stamp(ctx: dict[str, Any], a: float) -> None:
    probe.stamp(a)


async def late(ctx: dict[str, Any], a: float) -> None:
    probe.late(a)


class ArqLibrary(Library):
    name = "arq"

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.poll_interval = 0.01 if variant == "poll-10ms" else 0.5
        self.pool: ArqRedis | None = None
        self.worker: Worker | None = None
        self.worker_task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return "arq" if self.variant is None else f"arq ({self.variant})"

    def version(self) -> str:
        return version("arq")

    def settings(self) -> dict[str, Any]:
        return {
            "worker": f"Worker(max_jobs=<concurrency>, poll_delay={self.poll_interval}), "
            "other options at their defaults (keep_result 3600 s, max_tries 5)",
            "enqueue": "ArqRedis.enqueue_job (no bulk API)",
            "delays": f"_defer_until; started by the worker's poll every {self.poll_interval} s",
        }

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        assert self.url is not None
        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def close(self) -> None:
        await self.stop_worker()
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue(self, kind: str, arg: float) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job(kind, arg)

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        assert self.pool is not None
        await self.pool.enqueue_job(kind, arg, _defer_until=datetime.fromtimestamp(due, UTC))

    async def start_worker(self) -> None:
        assert self.url is not None
        self.worker = Worker(
            functions=[noop, nap, stamp, late],
            redis_settings=RedisSettings.from_dsn(self.url),
            max_jobs=self.concurrency,
            poll_delay=self.poll_interval,
            handle_signals=False,
        )
        self.worker_task = asyncio.create_task(self.worker.async_run())

    async def stop_worker(self) -> None:
        if self.worker is not None:
            worker, task = self.worker, self.worker_task
            self.worker = self.worker_task = None
            # close() gathers the job tasks it has just cancelled: their CancelledError
            # escapes, though nothing cancelled us.
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


LIBRARY = ArqLibrary
