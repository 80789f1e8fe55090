"""How each broker keeps the worker registry and the stats bounded in storage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from task_queue import InMemoryBroker, Task, TaskStatus
from task_queue.broker import memory
from task_queue.broker.redis import RedisBroker
from task_queue.monitoring import STATS_RETENTION_MINUTES, WorkerInfo

REDIS_KINDS = pytest.mark.parametrize("broker_kind", ["redis-fake", "redis-real"])


def worker(worker_id: str) -> WorkerInfo:
    started = datetime(2024, 5, 1, tzinfo=UTC)
    return WorkerInfo(worker_id, "host", 1, "default", 4, 0, started)


@REDIS_KINDS
async def test_entries_of_dead_workers_are_deleted_not_only_hidden(broker: RedisBroker) -> None:
    workers, info = broker._workers_keys
    for n in range(5):
        await broker.register_worker(worker(f"dead-{n}"), ttl=0.1)
    await broker.register_worker(worker("alive"), ttl=60)
    assert await broker.client.hlen(info) == 6
    await asyncio.sleep(0.2)  # the time-to-live is what is under test: let it pass
    await broker.register_worker(worker("alive"), ttl=60)  # any registry call trims
    assert await broker.client.hlen(info) == 1
    assert await broker.client.zcard(workers) == 1
    # Both keys expire by themselves once no worker refreshes any more.
    for key in (workers, info):
        assert 0 < await broker.client.pttl(key) <= 60_000


@REDIS_KINDS
async def test_per_minute_counters_expire_after_the_retention(broker: RedisBroker) -> None:
    await broker.enqueue(Task("job"))
    leased = await broker.dequeue()
    assert leased is not None
    await broker.mark_complete(leased.id, token=leased.token)
    keys = [key async for key in broker.client.scan_iter(match=f"{broker.base_key}:stats:*")]
    assert len(keys) in (1, 2)  # two if the minute turned between the calls
    for key in keys:
        ttl = await broker.client.pttl(key)
        assert 0 < ttl <= (STATS_RETENTION_MINUTES + 1) * 60_000
        assert set(await broker.client.hkeys(key)) <= {b"completed"}


@REDIS_KINDS
async def test_delete_all_removes_registry_and_stats_keys(broker: RedisBroker) -> None:
    await broker.register_worker(worker("w"), ttl=60)
    await broker.enqueue(Task("job"))
    leased = await broker.dequeue()
    assert leased is not None
    await broker.mark_failed(leased.id, "boom", token=leased.token)
    await broker.delete_all()
    left = [key async for key in broker.client.scan_iter(match=f"{broker.base_key}*")]
    # Only the dequeue's request list may be left: it expires with the lease.
    assert [key for key in left if b":seq:req:" not in key] == []


async def test_memory_stats_forget_minutes_past_the_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_700_000_000.0]
    monkeypatch.setattr(memory.time, "time", lambda: clock[0])
    broker = InMemoryBroker()
    await broker.enqueue(Task("job"))
    await broker.cancel((await broker.list_tasks())[0].id)
    assert (await broker.get_stats(1)).cancelled == 1
    clock[0] += (STATS_RETENTION_MINUTES + 1) * 60.0
    await broker.enqueue(Task("job"))
    await broker.cancel((await broker.list_tasks(TaskStatus.PENDING))[0].id)
    stats = await broker.get_stats(STATS_RETENTION_MINUTES)
    assert stats.cancelled == 1
    assert len(broker._stats) == 1  # the old minute's row is gone, not merely unread
