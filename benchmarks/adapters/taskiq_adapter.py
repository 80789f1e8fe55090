"""taskiq with taskiq-redis under the harness.

The broker is `RedisStreamBroker`, the taskiq-redis broker that acknowledges messages
(at-least-once, as task_queue); no result backend (taskiq's default). The worker is
taskiq's `run_receiver_task` with the options of `taskiq worker` (max_async_tasks =
concurrency, prefetch 0), on uvloop as `taskiq worker` uses when it is installed.
Delayed tasks go through taskiq's scheduler: `schedule_by_time` into a
`ListRedisScheduleSource`, sent by a `TaskiqScheduler` loop that runs once a second (its
fixed granularity) and here reloads schedules every second instead of every minute.
There is no bulk enqueue.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any

from common import Library, probe
from taskiq import TaskiqScheduler
from taskiq.api import run_receiver_task, run_scheduler_task
from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker


class TaskiqLibrary(Library):
    name = "taskiq"
    recommended_loop = "uvloop"
    delay_resolution = 1.0

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.broker: RedisStreamBroker | None = None
        self.tasks: dict[str, Any] = {}
        self.source: ListRedisScheduleSource | None = None
        self.worker_task: asyncio.Task[None] | None = None
        self.scheduler_task: asyncio.Task[None] | None = None

    def version(self) -> str:
        return f"{version('taskiq')} (taskiq-redis {version('taskiq-redis')})"

    def settings(self) -> dict[str, Any]:
        return {
            "broker": "RedisStreamBroker(url) defaults (acks, xread_count 100), no result backend",
            "worker": "run_receiver_task(broker, max_async_tasks=<concurrency>, "
            "max_prefetch=0) as `taskiq worker` runs it",
            "enqueue": "task.kiq (no bulk API)",
            "delays": "kicker().schedule_by_time into ListRedisScheduleSource; "
            "TaskiqScheduler loop every 1 s, schedules reloaded every 1 s",
        }

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        assert self.url is not None
        broker = RedisStreamBroker(self.url, queue_name="bench")

        @broker.task(task_name="noop")
        async def noop(a: float) -> None:
            probe.ran()

        @broker.task(task_name="nap")
        async def nap(a: float) -> None:
            await probe.nap()

        @broker.task(task_name="stamp")
        async def stamp(a: float) -> None:
            probe.stamp(a)

        @broker.task(task_name="late")
        async def late(a: float) -> None:
            probe.late(a)

        self.tasks = {"noop": noop, "nap": nap, "stamp": stamp, "late": late}
        self.broker = broker
        await broker.startup()  # creates the consumer group: before anything is sent

    async def close(self) -> None:
        await self.stop_worker()
        if self.source is not None:
            await self.source.shutdown()
            self.source = None
        if self.broker is not None:
            await self.broker.shutdown()
            self.broker = None

    async def enqueue(self, kind: str, arg: float) -> None:
        await self.tasks[kind].kiq(arg)

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        if self.source is None:
            assert self.url is not None
            assert self.broker is not None
            self.source = ListRedisScheduleSource(self.url, prefix="bench-schedule")
            scheduler = TaskiqScheduler(self.broker, sources=[self.source])
            self.scheduler_task = asyncio.create_task(
                run_scheduler_task(scheduler, interval=timedelta(seconds=1))
            )
        when = datetime.fromtimestamp(due, UTC)
        await self.tasks[kind].kicker().schedule_by_time(self.source, when, arg)

    async def start_worker(self) -> None:
        assert self.broker is not None
        self.worker_task = asyncio.create_task(
            run_receiver_task(self.broker, max_async_tasks=self.concurrency, max_prefetch=0)
        )

    async def stop_worker(self) -> None:
        for name in ("scheduler_task", "worker_task"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None:
                task.cancel()
                # A receiver cancelled while its XREADGROUP is blocked may never finish
                # cancelling: give it a moment, then leave it (the workload is over).
                await asyncio.wait({task}, timeout=3)


LIBRARY = TaskiqLibrary
