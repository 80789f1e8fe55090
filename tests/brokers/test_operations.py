"""Conformance of the operations API on every broker kind: worker registry and stats."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

from task_queue import AbstractBroker, Task, TaskStatus
from task_queue.monitoring import STATS_RETENTION_MINUTES, WorkerInfo


def worker(worker_id: str = "host-a:101:abcd", active: int = 0, **kw: object) -> WorkerInfo:
    fields: dict[str, object] = {
        "worker_id": worker_id,
        "host": "host-a",
        "pid": 101,
        "queue": "default",
        "concurrency": 8,
        "active": active,
        "started_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(kw)
    return WorkerInfo(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ worker registry


async def test_a_registered_worker_is_listed_with_its_details(broker: AbstractBroker) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    await broker.register_worker(worker(active=3), ttl=30)
    [listed] = await broker.list_workers()
    assert listed.worker_id == "host-a:101:abcd"
    assert (listed.host, listed.pid, listed.queue) == ("host-a", 101, "default")
    assert (listed.concurrency, listed.active, listed.idle) == (8, 3, 5)
    assert listed.started_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert listed.heartbeat_at is not None
    assert before <= listed.heartbeat_at <= datetime.now(UTC) + timedelta(seconds=5)


async def test_a_refresh_updates_the_entry_instead_of_adding_one(broker: AbstractBroker) -> None:
    await broker.register_worker(worker(active=0), ttl=30)
    [first] = await broker.list_workers()
    await asyncio.sleep(0.01)  # the broker's clock must move for the heartbeat to
    await broker.register_worker(worker(active=7), ttl=30)
    [second] = await broker.list_workers()
    assert second.active == 7
    assert first.heartbeat_at is not None and second.heartbeat_at is not None
    assert second.heartbeat_at > first.heartbeat_at


async def test_workers_are_listed_longest_running_first(broker: AbstractBroker) -> None:
    late = worker("b:2:x", started_at=datetime(2024, 5, 2, tzinfo=UTC))
    early = worker("a:1:y", started_at=datetime(2024, 5, 1, tzinfo=UTC))
    await broker.register_worker(late, ttl=30)
    await broker.register_worker(early, ttl=30)
    assert [w.worker_id for w in await broker.list_workers()] == ["a:1:y", "b:2:x"]


async def test_unregister_removes_the_worker(broker: AbstractBroker) -> None:
    await broker.register_worker(worker("one"), ttl=30)
    await broker.register_worker(worker("two"), ttl=30)
    assert await broker.unregister_worker("one") is True
    assert [w.worker_id for w in await broker.list_workers()] == ["two"]
    assert await broker.unregister_worker("one") is False
    assert await broker.unregister_worker("never-registered") is False


async def test_a_worker_that_stops_refreshing_expires(broker: AbstractBroker) -> None:
    await broker.register_worker(worker("dead"), ttl=0.2)
    await broker.register_worker(worker("alive"), ttl=60)
    assert {w.worker_id for w in await broker.list_workers()} == {"dead", "alive"}
    await asyncio.sleep(0.3)  # the time-to-live is what is under test: let it pass
    assert [w.worker_id for w in await broker.list_workers()] == ["alive"]
    # A late refresh brings it back: a stalled process that recovers is listed again.
    await broker.register_worker(worker("dead"), ttl=60)
    assert {w.worker_id for w in await broker.list_workers()} == {"dead", "alive"}


async def test_registry_refuses_a_ttl_that_is_not_positive(broker: AbstractBroker) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await broker.register_worker(worker(), ttl=0)
    assert await broker.list_workers() == []


# ------------------------------------------------------------------ stats


async def _finish_some(broker: AbstractBroker) -> None:
    """Two completed, one failed for good, one retried then completed, two cancelled."""
    tasks = [Task("job", payload={"n": n}) for n in range(5)]
    await broker.enqueue_many(tasks)
    await broker.enqueue(Task("job", scheduled_at=datetime.now(UTC) + timedelta(hours=1)))
    leased = await broker.dequeue_many(5)
    a, b, c, d, e = leased
    await broker.mark_complete(a.id, 1, token=a.token)
    await broker.mark_complete_many([(b.id, b.token, 2)])
    await broker.mark_failed(c.id, "boom", token=c.token)
    await broker.mark_failed(d.id, "flaky", token=d.token, retry_in=0)
    again = await broker.dequeue(timeout=5)
    assert again is not None and again.id == d.id
    await broker.mark_complete(d.id, 4, token=again.token)
    await broker.cancel(e.id)
    await broker.mark_cancelled(e.id, token=e.token)
    delayed = (await broker.list_tasks(TaskStatus.PENDING))[0]
    await broker.cancel(delayed.id)


async def test_stats_count_tasks_as_they_become_final(broker: AbstractBroker) -> None:
    empty = await broker.get_stats(5)
    assert (empty.completed, empty.failed, empty.cancelled) == (0, 0, 0)
    await _finish_some(broker)
    stats = await broker.get_stats(5)
    # A minute may turn during the test: count over the window, not the last minute.
    assert (stats.completed, stats.failed, stats.cancelled) == (3, 1, 2)
    assert stats.minutes[-1].finished + stats.minutes[-2].finished == 4
    assert stats.throughput(5) > 0


async def test_stats_cover_the_minutes_asked_for_oldest_first(broker: AbstractBroker) -> None:
    stats = await broker.get_stats(15)
    assert len(stats.minutes) == 15
    starts = [m.minute for m in stats.minutes]
    assert starts == sorted(starts)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    assert all(m.minute.second == 0 for m in stats.minutes)
    assert starts[-1] <= stats.at < starts[-1] + timedelta(minutes=1)
    assert abs(stats.at.timestamp() - time.time()) < 60
    assert len((await broker.get_stats(STATS_RETENTION_MINUTES)).minutes) == 1440


async def test_stats_refuse_a_window_outside_the_retention(broker: AbstractBroker) -> None:
    with pytest.raises(ValueError, match="minutes"):
        await broker.get_stats(0)
    with pytest.raises(ValueError, match="minutes"):
        await broker.get_stats(STATS_RETENTION_MINUTES + 1)
    with pytest.raises(TypeError):
        await broker.get_stats(1.5)  # type: ignore[arg-type]


async def test_purge_and_requeue_do_not_count_as_finished(broker: AbstractBroker) -> None:
    await broker.enqueue_many([Task("job"), Task("job")])
    first = await broker.dequeue()
    assert first is not None
    await broker.mark_failed(first.id, "boom", token=first.token)
    await broker.requeue(first.id)
    await broker.purge(TaskStatus.PENDING)
    stats = await broker.get_stats(5)
    assert (stats.completed, stats.failed, stats.cancelled) == (0, 1, 0)
