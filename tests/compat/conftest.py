"""Fixtures of the compat tests: every test runs on each broker kind of tests/conftest.py.

`worker_factory(**options)` builds an AsyncTaskWorker on a fresh broker of the current
kind and stops it after the test; `default_brokers` makes `AsyncTaskWorker()` without a
`broker=` (as in the seed examples) use a broker of the current kind. The task registry
is restored after every test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from task_queue import AbstractBroker, InMemoryBroker
from task_queue.compat import AsyncTaskWorker, registry, set_default_broker
from tests.conftest import REDIS_URL, BrokerFactory, forget, require_real_redis, unique_prefix

WorkerFactory = Callable[..., Awaitable[AsyncTaskWorker]]
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Each test sees the registry as it was before it, and leaves it so."""
    saved = dict(registry._functions)
    yield
    registry._functions.clear()
    registry._functions.update(saved)


@pytest.fixture
async def worker_factory(broker_factory: BrokerFactory) -> AsyncIterator[WorkerFactory]:
    """Build started-or-not AsyncTaskWorkers on brokers of the current kind."""
    workers: list[AsyncTaskWorker] = []

    async def factory(**options: Any) -> AsyncTaskWorker:
        broker_options = options.pop("broker_options", {})
        if "broker" not in options:
            options["broker"] = await broker_factory(**broker_options)
        worker = AsyncTaskWorker(**options)
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        await worker.stop(timeout=0)


@pytest.fixture
async def worker(worker_factory: WorkerFactory) -> AsyncTaskWorker:
    """A started worker with 4 slots on a broker of the current kind."""
    started = await worker_factory(max_workers=4)
    await started.start()
    return started


SharedBrokers = Callable[[int], Awaitable[list[AbstractBroker]]]


@pytest.fixture
def shared_brokers(broker_kind: str, broker_factory: BrokerFactory) -> SharedBrokers:
    """`await shared_brokers(n)`: n brokers of the current kind on one store, as n
    processes would each have (the in-memory kind can only share one instance)."""

    async def make(count: int) -> list[AbstractBroker]:
        if broker_kind == "memory":
            return [await broker_factory()] * count
        options: dict[str, Any] = {"prefix": unique_prefix()}
        if broker_kind == "redis-fake":
            import fakeredis

            options["fake_server"] = fakeredis.FakeServer()
        return [await broker_factory(**options) for _ in range(count)]

    return make


class DefaultBrokers:
    """Brokers made for workers built without `broker=`; cleaned up after the test."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.prefix = unique_prefix()
        self.server: Any = None
        self.made: list[AbstractBroker] = []

    def make(self) -> AbstractBroker:
        broker = self._new()
        self.made.append(broker)
        return broker

    def _new(self) -> AbstractBroker:
        if self.kind == "memory":
            return InMemoryBroker()
        from task_queue.broker.redis import RedisBroker

        if self.kind == "redis-fake":
            import fakeredis

            if self.server is None:
                self.server = fakeredis.FakeServer()
            client = fakeredis.FakeAsyncRedis(server=self.server)
            return RedisBroker(client, owns_client=True, prefix=self.prefix)
        return RedisBroker.from_url(REDIS_URL, prefix=self.prefix)

    async def cleanup(self) -> None:
        """Close the brokers made in this loop and delete the test's keys."""
        for broker in self.made:
            with contextlib.suppress(Exception):
                await broker.close()
        if self.kind == "redis-real":
            fresh = self._new()
            await forget(fresh)
            await fresh.close()
        elif self.kind != "memory":
            fresh = self._new()
            await fresh.delete_all()  # type: ignore[attr-defined]
            await fresh.close()


@pytest.fixture
async def default_brokers(broker_kind: str) -> AsyncIterator[DefaultBrokers]:
    """`AsyncTaskWorker()` without a broker gets one of the current kind."""
    if broker_kind == "redis-real":
        await require_real_redis()
    brokers = DefaultBrokers(broker_kind)
    set_default_broker(brokers.make)
    try:
        yield brokers
    finally:
        set_default_broker(None)
        await brokers.cleanup()


async def wait_until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    """Re-check `check()` (sync or async) until it is true; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
