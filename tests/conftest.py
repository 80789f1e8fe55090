"""Fixtures shared by every test: brokers of each kind, built and cleaned up per test.

`broker_factory(**options)` builds a fresh broker of the kind the test is parametrized
with; `broker` is one with default options. Every kind in `BROKER_KINDS` runs the whole
conformance suite: the in-memory broker, RedisBroker on fakeredis (scripts run by its
Lua engine) and RedisBroker on a real Redis at REDIS_URL (default
redis://127.0.0.1:6379/0), each test under its own key prefix, deleted afterwards.
Without a reachable Redis the real-Redis cases skip, unless TASK_QUEUE_REQUIRE_REDIS=1
(set by .ci/run), which makes them fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from task_queue import AbstractBroker, InMemoryBroker, RetryPolicy, TaskQueueService

BrokerFactory = Callable[..., Awaitable[AbstractBroker]]
Cleanup = Callable[[], Awaitable[Any]]

BROKER_KINDS = ["memory", "redis-fake", "redis-real"]
FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
"""Retries that do not slow tests down."""
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("TASK_QUEUE_REQUIRE_REDIS") == "1"

_redis_reachable: bool | None = None


async def real_redis_available() -> bool:
    """True when the Redis at REDIS_URL answers PING (asked once per test run)."""
    global _redis_reachable
    if _redis_reachable is None:
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            _redis_reachable = bool(await client.ping())
        except Exception:
            _redis_reachable = False
        finally:
            await client.aclose()
    return _redis_reachable


async def require_real_redis() -> None:
    """Skip the test without a real Redis, or fail it when CI requires one."""
    if not await real_redis_available():
        message = f"no Redis reachable at {REDIS_URL}"
        if REQUIRE_REDIS:
            pytest.fail(f"{message}, and TASK_QUEUE_REQUIRE_REDIS=1")
        pytest.skip(message)


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"tqtest-{uuid.uuid4().hex[:12]}"


async def forget(broker: Any) -> None:
    """Delete every key of a real-Redis test broker's prefix.

    `delete_all` walks the queue's sets; what it cannot find without a scan (the
    dequeue calls' request lists, which expire only with their leases) is found by one
    here: the test's prefix is its own, so the scan touches nothing else.
    """
    await broker.delete_all()
    client = broker.client
    leftover = [key async for key in client.scan_iter(match=f"{{{broker.prefix}:*")]
    if leftover:
        await client.delete(*leftover)


async def make_broker(kind: str, cleanups: list[Cleanup], **options: Any) -> AbstractBroker:
    """Build a broker of `kind`; what must be undone afterwards goes to `cleanups`."""
    if kind == "memory":
        memory = InMemoryBroker(**options)
        cleanups.append(memory.close)
        return memory
    from task_queue.broker.redis import RedisBroker

    options.setdefault("prefix", unique_prefix())
    if kind == "redis-fake":
        import fakeredis

        server = options.pop("fake_server", None) or fakeredis.FakeServer()
        client = fakeredis.FakeAsyncRedis(server=server)
        fake = RedisBroker(client, owns_client=True, **options)
        cleanups.append(fake.close)
        return fake
    if kind == "redis-real":
        await require_real_redis()
        real = RedisBroker.from_url(REDIS_URL, **options)

        async def tear_down() -> None:
            await forget(real)
            await real.close()

        cleanups.append(tear_down)
        return real
    raise ValueError(f"unknown broker kind {kind!r}")


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The kind of broker this test runs against."""
    return str(request.param)


@pytest.fixture
async def broker_factory(broker_kind: str) -> AsyncIterator[BrokerFactory]:
    """Build brokers of the current kind; all are closed and cleaned after the test."""
    cleanups: list[Cleanup] = []

    async def factory(**options: Any) -> AbstractBroker:
        return await make_broker(broker_kind, cleanups, **options)

    yield factory
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> AbstractBroker:
    """A fresh broker of the current kind with default options."""
    return await broker_factory()


@pytest.fixture
async def make_service(broker_factory: BrokerFactory) -> AsyncIterator[Callable[..., Any]]:
    """Build services on brokers of the current kind; all are shut down after the test."""
    services: list[TaskQueueService] = []

    async def factory(
        executors: dict[str, Any] | None = None, broker: AbstractBroker | None = None, **kw: Any
    ) -> TaskQueueService:
        kw.setdefault("retry_policy", FAST_RETRY)
        kw.setdefault("shutdown_grace", 5)
        service = TaskQueueService(broker or await broker_factory(), executors or {}, **kw)
        services.append(service)
        return service

    yield factory
    for service in services:
        await service.shutdown(grace=0)
