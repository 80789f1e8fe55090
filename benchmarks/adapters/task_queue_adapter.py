"""task_queue under the harness: RedisBroker (variant None) or InMemoryBroker ("memory").

Also the scaling workload: Redis throughput with 1, 2 and 4 worker processes
(`tq_scale_worker.py`), which only task_queue runs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The repository root, so a checkout runs without installing (the bench venv has it -e).
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from common import Library, WorkloadError, probe

import task_queue
from task_queue import InMemoryBroker, Task, TaskQueueService, TaskStatus
from task_queue.broker.base import AbstractBroker


async def noop(task: Task) -> None:
    probe.ran()


async def nap(task: Task) -> None:
    await probe.nap()


async def stamp(task: Task) -> None:
    probe.stamp(task.payload["a"])


async def late(task: Task) -> None:
    probe.late(task.payload["a"])


EXECUTORS = {"noop": noop, "nap": nap, "stamp": stamp, "late": late}


class TaskQueueLibrary(Library):
    name = "task_queue"

    def __init__(self, url: str | None, variant: str | None) -> None:
        super().__init__(url, variant)
        self.backend = "memory" if variant == "memory" else "redis"
        self.service: TaskQueueService | None = None
        self.broker: AbstractBroker | None = None
        self.fast = False
        self.extra_workloads = {"scaling": self.scaling}

    @property
    def label(self) -> str:
        return "task_queue" if self.backend == "redis" else "task_queue (memory)"

    def version(self) -> str:
        return task_queue.__version__

    def settings(self) -> dict[str, Any]:
        if self.backend == "memory":
            return {"broker": "InMemoryBroker()", "prefetch": "slots // 4 (default)"}
        return {
            "broker": "RedisBroker.from_url(url, prefix=...) defaults",
            "lease": "30 s, renewed every 10 s; acks batched",
            "prefetch": "slots // 4 (default)",
            "pipelining hiredis connection": "yes" if self.fast else "no (redis-py only)",
            "delays": "sorted set, idle workers block on BZPOPMIN until the next due time",
        }

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        if self.backend == "memory":
            self.broker = InMemoryBroker()
        else:
            from task_queue.broker.redis import RedisBroker

            assert self.url is not None
            # One fixed prefix: the harness flushes the database between workloads, and the
            # RSS workload drains in one process what another one filled.
            self.prefix = "bench"
            self.broker = RedisBroker.from_url(self.url, prefix=self.prefix)
            self.fast = getattr(self.broker, "_fast", None) is not None
        self.service = TaskQueueService(
            self.broker, EXECUTORS, concurrency=concurrency, shutdown_grace=5
        )

    async def close(self) -> None:
        if self.service is not None:
            await self.service.shutdown(grace=1)
        if self.broker is not None:
            await self.broker.close()
        self.service = self.broker = None

    async def enqueue(self, kind: str, arg: float) -> None:
        assert self.service is not None
        await self.service.add_task(kind, {"a": arg})

    async def enqueue_bulk(self, kind: str, args: list[float]) -> None:
        assert self.service is not None
        await self.service.add_tasks([{"name": kind, "payload": {"a": a}} for a in args])

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        assert self.service is not None
        await self.service.add_task(
            kind, {"a": arg}, scheduled_at=datetime.fromtimestamp(due, UTC)
        )

    async def enqueue_bulk_at(self, kind: str, items: list[tuple[float, float]]) -> None:
        assert self.service is not None
        await self.service.add_tasks(
            [
                {
                    "name": kind,
                    "payload": {"a": arg},
                    "scheduled_at": datetime.fromtimestamp(due, UTC),
                }
                for arg, due in items
            ]
        )

    async def start_worker(self) -> None:
        assert self.service is not None
        self.service.start_workers(self.concurrency)

    async def stop_worker(self) -> None:
        if self.service is not None:
            await self.service.shutdown(grace=1)

    async def check_stored(self, count: int) -> None:
        assert self.broker is not None
        counts = await self.broker.count_tasks()
        if counts[TaskStatus.PENDING] != count:
            raise WorkloadError(f"{counts[TaskStatus.PENDING]:,} tasks stored of {count:,}")

    # ------------------------------------------------------------------ scaling

    async def scaling(
        self, n: int, processes: int, concurrency: int = 100, timeout: float = 300
    ) -> dict[str, Any]:
        """Tasks/s of `processes` worker processes draining `n` prefilled no-op tasks."""
        await self.open(concurrency)
        assert self.broker is not None
        assert self.url is not None
        workers: list[asyncio.subprocess.Process] = []
        try:
            await self.fill("noop", list(range(n)))
            script = Path(__file__).with_name("tq_scale_worker.py")
            loop = asyncio.get_running_loop()
            kind = "uvloop" if "uvloop" in type(loop).__module__ else "asyncio"
            for _ in range(processes):
                workers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(script),
                        self.url,
                        self.prefix,
                        str(concurrency),
                        kind,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for worker in workers:
                assert worker.stdout is not None
                line = await worker.stdout.readline()
                if line.strip() != b"ready":
                    raise WorkloadError(f"a worker process did not start: {line!r}")
            started = time.perf_counter()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
            give_up = started + timeout
            while True:
                counts = await self.broker.count_tasks()
                if counts[TaskStatus.COMPLETED] >= n:
                    break
                if time.perf_counter() > give_up:
                    raise WorkloadError(f"{counts[TaskStatus.COMPLETED]:,} of {n:,} completed")
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
            runs = 0
            for worker in workers:
                assert worker.stdin is not None
                assert worker.stdout is not None
                worker.stdin.write(b"stop\n")
                runs += int(await worker.stdout.readline())
            if runs != n:
                raise WorkloadError(f"{runs:,} runs for {n:,} tasks")
            return {"value": n / elapsed, "n": n, "processes": processes}
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                await worker.wait()
            await self.close()


LIBRARY = TaskQueueLibrary
