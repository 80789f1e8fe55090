"""Listing tasks on every broker kind: newest first, and Redis final sets past retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from task_queue import AbstractBroker, Task, TaskStatus
from task_queue.broker.redis import RedisBroker
from tests.conftest import BrokerFactory

REDIS_KINDS = pytest.mark.parametrize("broker_kind", ["redis-fake", "redis-real"])


async def test_list_tasks_newest_first(broker: AbstractBroker) -> None:
    now = datetime.now(UTC)
    tasks = [Task("job", created_at=now + timedelta(seconds=n)) for n in range(4)]
    for task in tasks:
        await broker.enqueue(task)
    newest = await broker.list_tasks(TaskStatus.PENDING, limit=2, newest_first=True)
    assert [t.id for t in newest] == [tasks[3].id, tasks[2].id]
    oldest = await broker.list_tasks(TaskStatus.PENDING, limit=2)
    assert [t.id for t in oldest] == [tasks[0].id, tasks[1].id]


async def test_list_failed_tasks_newest_first(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    now = datetime.now(UTC)
    tasks = [Task("job", created_at=now + timedelta(seconds=n)) for n in range(3)]
    await broker.enqueue_many(tasks)
    for leased in await broker.dequeue_many(3):
        await broker.mark_failed(leased.id, "boom", token=leased.token)
    listed = await broker.list_tasks(TaskStatus.FAILED, limit=10, newest_first=True)
    assert [t.id for t in listed] == [t.id for t in reversed(tasks)]
    assert all(t.status is TaskStatus.FAILED for t in listed)


@REDIS_KINDS
async def test_list_skips_final_tasks_past_retention_not_yet_deleted(
    broker: RedisBroker,
) -> None:
    await broker.enqueue(Task("job"))
    leased = await broker.dequeue()
    assert leased is not None
    await broker.mark_complete(leased.id, token=leased.token)
    # A backlog of tasks past their retention that no script has deleted yet: the oldest
    # entries of the set. They must not take the places of the live ones.
    for n in range(3):
        stale = f"stale-{n}"
        await broker.client.hset(
            f"{broker.base_key}:task:{stale}",
            mapping={
                "id": stale,
                "data": json.dumps({"id": stale, "name": "job", "created_at": 0}),
                "status": "completed",
                "finished": n,
            },
        )
        await broker.client.zadd(f"{broker.base_key}:completed", {stale: n})
    for newest_first in (False, True):
        listed = await broker.list_tasks(TaskStatus.COMPLETED, limit=1, newest_first=newest_first)
        assert [t.id for t in listed] == [leased.id]
    assert [t.id for t in await broker.list_tasks(limit=1)] == [leased.id]
