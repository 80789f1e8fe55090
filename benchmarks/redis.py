"""RedisBroker figures against the Redis issue's targets (printed, never asserted).

Runs against the Redis at --url (default $REDIS_URL or redis://127.0.0.1:6379/0) under a
fresh key prefix that is deleted afterwards:

- enqueue one by one (each add_task awaited), and in bulk (add_tasks of 1,000);
- processing of --tasks prefilled no-op tasks by this process with --concurrency slots;
- enqueue -> start latency with idle workers, one task at a time;
- lateness of delayed tasks due at known times.

    python benchmarks/redis.py [--tasks 20000] [--concurrency 100]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the redis package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from task_queue import Task, TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, url: str, tasks: int, concurrency: int) -> None:
        self.url = url
        self.tasks = tasks
        self.concurrency = concurrency
        self.rows: list[tuple[str, float, str, Callable[[float], bool]]] = []
        self.rtt = 1.0

    def record(self, name: str, value: float, target: str, ok: Callable[[float], bool]) -> None:
        self.rows.append((name, value, target, ok))
        print(f"  {name}: {value:,.3f}", flush=True)

    async def fresh(self, executors: dict[str, Any] | None = None) -> TaskQueueService:
        broker = RedisBroker.from_url(self.url, prefix=f"tqbench-{uuid.uuid4().hex[:8]}")
        return TaskQueueService(broker, executors or {}, check_names=executors is not None)

    async def done(self, service: TaskQueueService) -> None:
        broker = service.broker
        assert isinstance(broker, RedisBroker)
        await service.shutdown(grace=5)
        await broker.delete_all()
        await broker.close()

    def round_trip(self) -> None:
        """The floor of any one-at-a-time figure: a bare PING over a blocking socket."""
        parts = urlsplit(self.url)
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            samples = []
            for _ in range(2000):
                started = time.perf_counter()
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                s.recv(64)
                samples.append((time.perf_counter() - started) * 1000)
        self.rtt = percentile(samples, 0.5)
        self.record("round trip, bare PING p50 (ms): the floor", self.rtt, "-", lambda v: True)

    async def enqueue(self) -> None:
        service = await self.fresh()
        count = min(self.tasks, 5000)
        await service.add_task("noop")
        started = time.perf_counter()
        for _ in range(count):
            await service.add_task("noop")
        rate = count / (time.perf_counter() - started)
        self.record("enqueue one by one (tasks/s)", rate, ">= 12,000", lambda v: v >= 12_000)
        per_call = 1000 / rate
        self.record(
            "  one add_task, in bare round trips", per_call / self.rtt, "-", lambda v: True
        )
        specs = [{"name": "noop"}] * self.tasks
        started = time.perf_counter()
        await service.add_tasks(specs)
        rate = self.tasks / (time.perf_counter() - started)
        label = f"enqueue bulk, one add_tasks of {self.tasks:,} (tasks/s)"
        self.record(label, rate, ">= 100,000", lambda v: v >= 100_000)
        await self.done(service)

    async def process(self) -> None:
        finished = asyncio.Event()
        count = 0

        async def noop(task: Task) -> None:
            nonlocal count
            count += 1
            if count == self.tasks:
                finished.set()

        service = await self.fresh({"noop": noop})
        for _ in range(0, self.tasks, 1000):
            await service.add_tasks([{"name": "noop"}] * 1000)
        started = time.perf_counter()
        service.start_workers(self.concurrency)
        await asyncio.wait_for(finished.wait(), 300)
        elapsed = time.perf_counter() - started
        await service.shutdown(grace=5)
        counts = await service.broker.count_tasks()
        assert counts[TaskStatus.COMPLETED] == self.tasks, counts
        rate = self.tasks / elapsed
        label = f"process, 1 process x {self.concurrency} slots (tasks/s)"
        self.record(label, rate, ">= 20,000", lambda v: v >= 20_000)
        await self.done(service)

    async def latency(self) -> None:
        started_at: dict[str, float] = {}
        events: dict[str, asyncio.Event] = {}

        async def stamp(task: Task) -> None:
            started_at[task.id] = time.perf_counter()
            events[task.id].set()

        service = await self.fresh({"stamp": stamp})
        service.start_workers(self.concurrency)
        for _ in range(20):  # warm up the connections and scripts
            warm = str(uuid.uuid4())
            events[warm] = asyncio.Event()
            await service.add_task("stamp", task_id=warm)
            await events[warm].wait()
        samples = []
        for _ in range(500):
            task_id = uuid.uuid4().hex
            events[task_id] = asyncio.Event()
            sent = time.perf_counter()
            await service.add_task("stamp", task_id=task_id)
            await asyncio.wait_for(events[task_id].wait(), 10)
            samples.append((started_at[task_id] - sent) * 1000)
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        self.record("enqueue -> start p50 (ms)", p50, "<= 0.3", lambda v: v <= 0.3)
        self.record("  p50, in bare round trips", p50 / self.rtt, "-", lambda v: True)
        self.record("enqueue -> start p99 (ms)", p99, "<= 1.0", lambda v: v <= 1.0)
        await self.done(service)

    async def delayed(self) -> None:
        lateness: list[float] = []
        finished = asyncio.Event()
        total = 1000

        async def late(task: Task) -> None:
            lateness.append((time.time() - task.scheduled_at.timestamp()) * 1000)
            if len(lateness) == total:
                finished.set()

        service = await self.fresh({"late": late})
        service.start_workers(self.concurrency)
        base = time.time() + 1.0
        specs = [
            {"name": "late", "scheduled_at": datetime.fromtimestamp(base + i * 0.002, UTC)}
            for i in range(total)
        ]
        await service.add_tasks(specs)
        await asyncio.wait_for(finished.wait(), 60)
        p50, p99 = percentile(lateness, 0.5), percentile(lateness, 0.99)
        self.record("delayed task lateness p50 (ms)", p50, "-", lambda v: True)
        self.record("delayed task lateness p99 (ms)", p99, "<= 10", lambda v: v <= 10)
        await self.done(service)

    def table(self) -> None:
        print()
        print(f"{'metric':<48} {'measured':>12}  {'target':<10} result")
        for name, value, target, ok in self.rows:
            print(f"{name:<48} {value:>12,.3f}  {target:<10} {'met' if ok(value) else 'MISSED'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    print(f"task_queue RedisBroker benchmark: Python {platform.python_version()}, ", end="")
    print(f"{os.cpu_count()} CPUs, Redis at {args.url}")
    bench = Bench(args.url, args.tasks, args.concurrency)
    bench.round_trip()
    await bench.enqueue()
    await bench.process()
    await bench.latency()
    await bench.delayed()
    bench.table()


if __name__ == "__main__":
    asyncio.run(main())
