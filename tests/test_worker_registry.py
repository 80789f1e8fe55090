"""The service in the worker registry: registered while its workers run; its idle time."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import pytest

from task_queue import InMemoryBroker, Task, TaskQueueService
from task_queue.monitoring import WorkerInfo
from tests.conftest import BrokerFactory


async def registry_until(
    service: TaskQueueService, check: Callable[[list[WorkerInfo]], bool], what: str
) -> list[WorkerInfo]:
    """Read the registry until `check` holds (heartbeats refresh it); fail after 10 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        workers = await service.broker.list_workers()
        if check(workers):
            return workers
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}; registry holds {workers}")
        await asyncio.sleep(0.02)


async def test_service_registers_refreshes_and_unregisters(
    broker_factory: BrokerFactory,
) -> None:
    broker = await broker_factory(lease_seconds=0.6)  # a heartbeat every 0.2 s
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(task: Task) -> None:
        started.set()
        await release.wait()

    service = TaskQueueService(broker, {"hold": hold}, concurrency=3)
    assert await broker.list_workers() == []  # producers do not register
    service.start_workers()
    try:
        [entry] = await registry_until(service, lambda ws: len(ws) == 1, "registration")
        assert entry.worker_id == service.worker_id
        assert (entry.host, entry.pid) == (socket.gethostname(), os.getpid())
        assert (entry.concurrency, entry.active, entry.queue) == (3, 0, broker.queue)
        await service.add_task("hold")
        await asyncio.wait_for(started.wait(), 10)
        await registry_until(service, lambda ws: ws[0].active == 1, "the active count")
        release.set()
    finally:
        release.set()
        await service.shutdown()
    assert await broker.list_workers() == []


async def test_idle_seconds_counts_from_the_last_task_held() -> None:
    gate = asyncio.Event()
    running = asyncio.Event()

    async def job(task: Task) -> None:
        running.set()
        await gate.wait()

    service = TaskQueueService(InMemoryBroker(), {"job": job}, concurrency=1)
    async with service:
        task = await service.add_task("job")
        await asyncio.wait_for(running.wait(), 10)
        assert service.idle_seconds == 0.0 and service.active_count == 1
        released = time.monotonic()
        gate.set()
        await service.wait_for(task.id, 10)
        await asyncio.sleep(0)  # let the slot forget the finished task
        assert 0.0 < service.idle_seconds <= time.monotonic() - released
