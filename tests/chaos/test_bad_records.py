"""Records in Redis that someone corrupted, met by running workers.

Broken JSON, a task hash that is missing or is not a hash, fields the scripts read that
are gone or not numbers: each such record is failed with a reason or dropped with an
error in the log, once; the workers keep running and every other task completes.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest

from task_queue import RetryPolicy, Task, TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker
from task_queue.models import utcnow
from tests.chaos.harness import census, wait_until
from tests.conftest import BrokerFactory

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.parametrize("broker_kind", ["redis-fake", "redis-real"]),
]


async def echo(task: Task) -> Any:
    return task.payload.get("n")


async def test_corrupted_records_fail_alone_and_the_queue_keeps_working(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    broker = await broker_factory(lease_seconds=0.3, max_idle_wait=0.5)
    assert isinstance(broker, RedisBroker)
    redis = broker.client
    tag = broker.base_key

    def key(task_id: str) -> str:
        return f"{tag}:task:{task_id}"

    # Leases of a worker that died, whose records then lost what recovery reads.
    orphans = [Task("job", id=f"orphan-{n}") for n in range(3)]
    await broker.enqueue_many(orphans)
    assert len(await broker.dequeue_many(3, worker_id="dead")) == 3
    await redis.hdel(key("orphan-0"), "max_attempts")
    await redis.hset(key("orphan-1"), "attempts", "many")
    await redis.hset(key("orphan-2"), "score", "first!")
    good = [Task("job", payload={"n": n}) for n in range(20)]
    bad_data = {
        "broken-json": "{not json",
        "not-an-object": "[1, 2]",
        "payload-a-list": json.dumps({"id": "payload-a-list", "name": "job", "payload": [1]}),
        "no-name": json.dumps({"id": "no-name", "created_at": 0}),
        "not-utf8": b"\xff\xfe{}",
    }
    bad = [Task("job", id=task_id) for task_id in bad_data]
    bad_error = Task("job", id="broken-error")
    await broker.enqueue_many([*good[:10], *bad, bad_error])
    for task_id, data in bad_data.items():
        await redis.hset(key(task_id), "data", data)
    await redis.hset(key(bad_error.id), "error", "{oops")
    # Queue entries whose task hash is missing or holds another type.
    ghosts = ["ghost-ready", "ghost-delayed", "ghost-inflight", "string-key", "list-key"]
    await redis.zadd(f"{tag}:ready", {"ghost-ready": 0, "string-key": 1})
    await redis.zadd(f"{tag}:delayed", {"ghost-delayed": 0})
    await redis.zadd(f"{tag}:inflight", {"ghost-inflight": 0, "list-key": 0})
    await redis.set(key("string-key"), "not a hash")
    await redis.rpush(key("list-key"), "not a hash")
    # A delayed task whose score (its place in the ready queue) is garbage.
    late = Task("job", id="late", scheduled_at=utcnow() + timedelta(seconds=0.2))
    await broker.enqueue(late)
    await redis.hset(key("late"), "score", "")

    service = TaskQueueService(
        broker, {"job": echo}, retry_policy=RetryPolicy(base_delay=0.01, max_delay=0.02)
    )
    try:
        service.start_workers(4)
        await broker.enqueue_many(good[10:])
        for task in good:
            assert await service.get_result(task.id, timeout=20) == task.payload["n"]
        broken = [*bad_data, bad_error.id, *(t.id for t in orphans), "late"]

        async def all_failed() -> bool:
            statuses = [await redis.hget(key(i), "status") for i in broken]
            return statuses == [b"failed"] * len(broken)

        await wait_until(all_failed, 20, "every corrupted record to be failed")
        for task_id in broken:
            error = await redis.hget(key(task_id), "error")
            assert error is not None and b"DecodeError" in error, task_id
            assert task_id in caplog.text
        assert await redis.zscore(f"{tag}:failed", "broken-json") is not None
        # A few more rounds of upkeep: nothing is met, failed or logged again.
        before = caplog.text
        renewals = 0

        async def heartbeats() -> bool:
            nonlocal renewals
            await broker.renew({})
            renewals += 1
            return renewals >= 5

        await wait_until(heartbeats, 10, "five rounds of upkeep", every=0.1)
        later = await service.add_task("job", {"n": "after"})
        assert await service.get_result(later.id, timeout=20) == "after"
        assert caplog.text.count("undecodable") == before.count("undecodable")
        for ghost in ghosts:
            assert caplog.text.count(f"task {ghost}: listed in queue") == 1, ghost
        assert service.running
    finally:
        await service.shutdown()
    await redis.delete(key("string-key"), key("list-key"))
    state = await census(redis, tag)
    assert state.problems == []
    assert state.ids_in("completed") == {t.id for t in good} | {later.id}
    assert state.ids_in("failed") == set(broken)
    assert (await broker.count_tasks())[TaskStatus.PENDING] == 0
