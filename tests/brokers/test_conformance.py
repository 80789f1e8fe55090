"""The broker conformance suite: every broker kind in tests/conftest.py must pass all of it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from task_queue import (
    AbstractBroker,
    PayloadError,
    Task,
    TaskError,
    TaskNotFoundError,
    TaskStateError,
    TaskStatus,
)
from tests.conftest import BrokerFactory


def make(name: str = "job", priority: int = 0, delay: float = 0.0, **kw: object) -> Task:
    now = datetime.now(UTC)
    return Task(name=name, priority=priority, scheduled_at=now + timedelta(seconds=delay), **kw)  # type: ignore[arg-type]


async def ids(broker: AbstractBroker, n: int) -> list[str]:
    return [t.id for t in await broker.dequeue_many(n)]


# ------------------------------------------------------------------ ordering


async def test_lowest_priority_number_first(broker: AbstractBroker) -> None:
    five, one, three = make(priority=5), make(priority=1), make(priority=3)
    for t in (five, one, three):
        await broker.enqueue(t)
    assert await ids(broker, 10) == [one.id, three.id, five.id]


async def test_fifo_within_a_priority(broker: AbstractBroker) -> None:
    tasks = [make(priority=2, payload={"n": i}) for i in range(20)]
    for t in tasks:
        await broker.enqueue(t)
    got = [(await broker.dequeue()) for _ in range(20)]
    assert [t.payload["n"] for t in got if t] == list(range(20))


async def test_negative_priorities_run_before_zero(broker: AbstractBroker) -> None:
    zero, minus = make(priority=0), make(priority=-3)
    await broker.enqueue(zero)
    await broker.enqueue(minus)
    assert await ids(broker, 2) == [minus.id, zero.id]


async def test_delayed_task_never_blocks_a_due_one(broker: AbstractBroker) -> None:
    delayed = make(priority=0, delay=30)
    due = make(priority=9)
    await broker.enqueue(delayed)
    await broker.enqueue(due)
    assert await ids(broker, 10) == [due.id]
    stored = await broker.get_task(delayed.id)
    assert stored is not None and stored.status is TaskStatus.PENDING


async def test_delayed_task_starts_once_due(broker: AbstractBroker) -> None:
    task = make(delay=0.15)
    await broker.enqueue(task)
    assert await broker.dequeue_many(1, timeout=0) == []
    got = await broker.dequeue(timeout=5)
    assert got is not None and got.id == task.id
    assert datetime.now(UTC) >= task.scheduled_at


async def test_due_delayed_tasks_are_ordered_by_priority(broker: AbstractBroker) -> None:
    low = make(priority=5, delay=0.1)
    high = make(priority=1, delay=0.12)
    await broker.enqueue(low)
    await broker.enqueue(high)
    first = await broker.dequeue(timeout=5)
    assert first is not None
    if first.id == low.id:  # only `low` was due at that instant: `high` must come next
        second = await broker.dequeue(timeout=5)
        assert second is not None and second.id == high.id
    else:
        assert first.id == high.id


async def test_idle_dequeue_wakes_on_enqueue(broker: AbstractBroker) -> None:
    waiting = asyncio.create_task(broker.dequeue(timeout=10))
    await asyncio.sleep(0)  # let the dequeue start waiting
    task = make()
    started = time.perf_counter()
    await broker.enqueue(task)
    got = await asyncio.wait_for(waiting, 5)
    assert got is not None and got.id == task.id
    assert time.perf_counter() - started < 1.0


async def test_dequeue_gives_up_after_timeout(broker: AbstractBroker) -> None:
    started = time.perf_counter()
    assert await broker.dequeue_many(5, timeout=0.1) == []
    assert 0.08 <= time.perf_counter() - started < 2.0


async def test_cancelled_dequeue_leases_nothing(broker: AbstractBroker) -> None:
    waiting = asyncio.create_task(broker.dequeue(timeout=10))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    task = make()
    await broker.enqueue(task)
    got = await broker.dequeue(timeout=1)
    assert got is not None and got.id == task.id


async def test_dequeue_many_returns_at_most_n_best_first(broker: AbstractBroker) -> None:
    tasks = [make(priority=p) for p in (3, 1, 2, 0, 4)]
    await broker.enqueue_many(tasks)
    got = await broker.dequeue_many(3)
    assert [t.priority for t in got] == [0, 1, 2]
    assert all(t.status is TaskStatus.PROCESSING for t in got)
    with pytest.raises(ValueError):
        await broker.dequeue_many(0)


async def test_one_task_goes_to_exactly_one_of_many_dequeuers(broker: AbstractBroker) -> None:
    waiters = [asyncio.create_task(broker.dequeue(timeout=0.5)) for _ in range(20)]
    await asyncio.sleep(0)
    task = make()
    await broker.enqueue(task)
    results = await asyncio.gather(*waiters)
    assert [r.id for r in results if r is not None] == [task.id]


# ------------------------------------------------------------------ enqueue


async def test_enqueue_returns_pending_copy(broker: AbstractBroker) -> None:
    task = make(payload={"a": [1, 2]}, metadata={"who": "me"})
    stored = await broker.enqueue(task)
    assert stored.id == task.id and stored.status is TaskStatus.PENDING
    assert stored.payload == {"a": [1, 2]} and stored.metadata == {"who": "me"}
    assert stored.attempts == 0


async def test_a_used_task_object_is_stored_as_a_new_pending_task(
    broker: AbstractBroker,
) -> None:
    task = make(payload={"rows": [1, 2]}, status=TaskStatus.COMPLETED, attempts=2, result=7)
    task.progress, task.token, task.logs = 0.5, 4, [{"message": "old"}]
    stored = await broker.enqueue(task)
    assert (stored.status, stored.attempts, stored.result) == (TaskStatus.PENDING, 0, None)
    assert (stored.progress, stored.token, stored.logs) == (0.0, 0, [])
    task.payload["rows"].append(3)  # the caller's list, changed after the call
    assert stored.payload == {"rows": [1, 2]}
    again = await broker.get_task(task.id)
    assert again is not None and again.status is TaskStatus.PENDING and again.attempts == 0


async def test_an_id_given_twice_in_one_call_is_stored_once(broker: AbstractBroker) -> None:
    first, second, other = make(payload={"v": 1}), make(payload={"v": 2}), make()
    second.id = first.id
    stored = await broker.enqueue_many([first, other, second])  # all ids new to the store
    assert [t.payload for t in stored] == [{"v": 1}, {}, {"v": 1}]
    existing = await broker.enqueue(make(payload={"v": "old"}))
    again = make(payload={"v": "new"})
    again.id = existing.id
    stored = await broker.enqueue_many([make(), again, again])
    assert [t.payload for t in stored[1:]] == [{"v": "old"}, {"v": "old"}]
    assert (await broker.count_tasks())[TaskStatus.PENDING] == 4
    leased = await broker.dequeue_many(10)
    assert {t.id for t in leased} == {first.id, other.id, existing.id, stored[0].id}


async def test_enqueue_is_idempotent_on_id(broker: AbstractBroker) -> None:
    first = make(payload={"v": 1})
    await broker.enqueue(first)
    again = make(payload={"v": 2})
    again.id = first.id
    stored = await broker.enqueue(again)
    assert stored.payload == {"v": 1}
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PENDING] == 1
    assert len(await broker.dequeue_many(10)) == 1


async def test_payload_that_is_not_json_is_refused_naming_the_field(
    broker: AbstractBroker,
) -> None:
    task = make(payload={"ok": 1, "when": datetime.now(UTC)})
    with pytest.raises(TypeError, match=r"payload\['when'\]"):
        await broker.enqueue(task)
    assert await broker.get_task(task.id) is None
    bad_float = make(payload={"x": [1.0, float("nan")]})
    with pytest.raises(PayloadError, match=r"payload\['x'\]\[1\]"):
        await broker.enqueue(bad_float)


async def test_enqueue_many_stores_nothing_when_one_is_bad(broker: AbstractBroker) -> None:
    good, bad = make(), make(payload={"s": {1, 2}})
    with pytest.raises(TypeError):
        await broker.enqueue_many([good, bad])
    assert await broker.get_task(good.id) is None
    assert sum((await broker.count_tasks()).values()) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"payload": {"when": datetime.now(UTC)}},
        {"payload": {"nested": [1, float("inf")]}},
        {"metadata": {"x": {1, 2}}},
        {"context": {"x": object()}},
        {"priority": 10**9},
        {"payload": {"digits": 10**5000}},
    ],
    ids=["payload", "nested-payload", "metadata", "context", "priority", "huge-int"],
)
async def test_a_bad_task_late_in_a_large_call_stores_nothing(
    broker: AbstractBroker, bad: dict[str, object]
) -> None:
    # Large enough for several script runs on Redis: the last batch is the bad one.
    tasks = [make(payload={"n": i}) for i in range(2600)]
    tasks[-1] = make(**bad)
    with pytest.raises((TypeError, ValueError)):
        await broker.enqueue_many(tasks)
    assert sum((await broker.count_tasks()).values()) == 0
    assert await broker.get_task(tasks[0].id) is None


async def test_payload_reads_back_as_json(broker: AbstractBroker) -> None:
    task = make(payload={"t": (1, 2), "n": None, "u": "é", 7: 1.5}, metadata={"m": (3,)})
    expected = {"t": [1, 2], "n": None, "u": "é", "7": 1.5}
    stored = await broker.enqueue(task)
    assert stored.payload == expected and stored.metadata == {"m": [3]}
    got = await broker.dequeue()
    assert got is not None and got.payload == expected


async def test_odd_task_ids_are_kept_verbatim(broker: AbstractBroker) -> None:
    task = make()
    task.id = "weird id:{with}/chars*?é\n"
    await broker.enqueue(task)
    got = await broker.dequeue()
    assert got is not None and got.id == task.id
    assert await broker.mark_complete(task.id, 1, token=got.token)
    done = await broker.get_task(task.id)
    assert done is not None and done.status is TaskStatus.COMPLETED


async def test_snapshots_do_not_share_state(broker: AbstractBroker) -> None:
    task = make(payload={"k": 1})
    stored = await broker.enqueue(task)
    stored.payload["k"] = 99
    stored.status = TaskStatus.FAILED
    again = await broker.get_task(task.id)
    assert again is not None
    assert again.payload == {"k": 1} and again.status is TaskStatus.PENDING


# ------------------------------------------------------------------ leases and acks


async def test_dequeue_grants_a_lease(broker: AbstractBroker) -> None:
    task = make()
    await broker.enqueue(task)
    got = await broker.dequeue(worker_id="w1")
    assert got is not None
    assert got.status is TaskStatus.PROCESSING and got.attempts == 1 and got.token > 0
    assert got.started_at is not None
    stored = await broker.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING
    assert stored.worker_id == "w1"


async def test_complete_records_result_and_is_idempotent(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert await broker.mark_complete(got.id, {"answer": 42}, token=got.token)
    assert await broker.mark_complete(got.id, {"answer": 42}, token=got.token)
    done = await broker.get_task(got.id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED and done.result == {"answer": 42}
    assert done.finished_at is not None and done.progress == 1.0


async def test_stale_token_is_refused(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert not await broker.mark_complete(got.id, "x", token=got.token + 1)
    assert not await broker.mark_failed(got.id, "boom", token=got.token - 1)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING


async def test_result_that_is_not_json_leaves_task_unchanged(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    with pytest.raises(TypeError, match="result"):
        await broker.mark_complete(got.id, object(), token=got.token)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING


async def test_expired_lease_is_recovered_and_old_holder_fenced(
    broker_factory: BrokerFactory,
) -> None:
    broker = await broker_factory(lease_seconds=0.2)
    task = make()
    await broker.enqueue(task)
    first = await broker.dequeue(worker_id="dead")
    assert first is not None
    second = await broker.dequeue(timeout=5, worker_id="alive")
    assert second is not None and second.id == task.id
    assert second.attempts == 2 and second.token > first.token
    assert not await broker.mark_complete(task.id, "late", token=first.token)
    assert await broker.mark_complete(task.id, "ok", token=second.token)
    done = await broker.get_task(task.id)
    assert done is not None and done.result == "ok" and done.attempts == 2


async def test_renew_keeps_a_lease_alive(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory(lease_seconds=0.3)
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    for _ in range(4):  # 0.6 s in all: twice the lease
        assert await broker.dequeue_many(1, timeout=0.15) == []
        outcome = await broker.renew({got.id: got.token})
        assert outcome.renewed == {got.id} and not outcome.lost
    assert await broker.mark_complete(got.id, token=got.token)


async def test_renew_reports_lost_leases(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    outcome = await broker.renew({got.id: got.token + 5, "no-such-task": 1})
    assert outcome.lost == {got.id, "no-such-task"} and not outcome.renewed


async def test_lease_expiry_past_max_attempts_fails_the_task(
    broker_factory: BrokerFactory,
) -> None:
    broker = await broker_factory(lease_seconds=0.1)
    task = make(max_retries=0)
    await broker.enqueue(task)
    assert await broker.dequeue() is not None
    final: Task | None = None
    deadline = time.monotonic() + 5
    while final is None or not final.is_final:
        # Recovery runs inside dequeue; wait in dequeue until the lease deadline passes.
        assert await broker.dequeue_many(1, timeout=0.2) == []
        final = await broker.get_task(task.id)
        assert time.monotonic() < deadline
    assert final.status is TaskStatus.FAILED and final.error is not None
    assert final.error.type == "LeaseExpired"


async def test_release_hands_back_without_spending_an_attempt(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert await broker.release(got.id, token=got.token)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.status is TaskStatus.PENDING and stored.attempts == 0
    again = await broker.dequeue()
    assert again is not None and again.id == got.id and again.attempts == 1
    assert not await broker.release(got.id, token=got.token)


# ------------------------------------------------------------------ failure and retry


async def test_failure_with_retry_makes_task_pending_again(broker: AbstractBroker) -> None:
    await broker.enqueue(make(max_retries=2))
    got = await broker.dequeue()
    assert got is not None
    assert await broker.mark_failed(got.id, ValueError("bad"), token=got.token, retry_in=0)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.status is TaskStatus.PENDING
    assert stored.error is not None and stored.error.type == "ValueError"
    again = await broker.dequeue()
    assert again is not None and again.attempts == 2


async def test_retry_waits_for_its_delay(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_failed(got.id, "x", token=got.token, retry_in=0.15)
    assert await broker.dequeue_many(1, timeout=0) == []
    again = await broker.dequeue(timeout=5)
    assert again is not None and again.id == got.id


async def test_no_retry_past_max_attempts(broker: AbstractBroker) -> None:
    await broker.enqueue(make(max_retries=1))
    for _ in range(2):
        got = await broker.dequeue()
        assert got is not None
        await broker.mark_failed(got.id, TaskError("E", "m", "tb"), token=got.token, retry_in=0)
    failed = await broker.get_task(got.id)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error == TaskError("E", "m", "tb") and failed.attempts == 2
    assert await broker.dequeue_many(1) == []


async def test_failure_without_retry_is_final(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert await broker.mark_failed(got.id, "plain message", token=got.token)
    assert await broker.mark_failed(got.id, "plain message", token=got.token)
    failed = await broker.get_task(got.id)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.message == "plain message"


# ------------------------------------------------------------------ cancel


async def test_cancel_pending_is_immediate(broker: AbstractBroker) -> None:
    task, delayed = make(), make(delay=30)
    await broker.enqueue(task)
    await broker.enqueue(delayed)
    assert await broker.cancel(task.id, reason="not needed")
    assert await broker.cancel(delayed.id)
    assert await broker.dequeue_many(10) == []
    stored = await broker.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.CANCELLED
    assert stored.error is not None and "not needed" in stored.error.message
    assert not await broker.cancel(task.id)


async def test_cancel_unknown_task_raises(broker: AbstractBroker) -> None:
    with pytest.raises(TaskNotFoundError):
        await broker.cancel("missing")


async def test_cancel_running_flags_the_holder(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert await broker.cancel(got.id)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING
    assert stored.cancel_requested
    outcome = await broker.renew({got.id: got.token})
    assert outcome.cancel_requested == {got.id}
    assert await broker.mark_cancelled(got.id, token=got.token)
    final = await broker.get_task(got.id)
    assert final is not None and final.status is TaskStatus.CANCELLED


async def test_cancelled_task_whose_lease_expires_ends_cancelled(
    broker_factory: BrokerFactory,
) -> None:
    broker = await broker_factory(lease_seconds=0.1)
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    await broker.cancel(got.id)
    final: Task | None = None
    deadline = time.monotonic() + 5
    while final is None or not final.is_final:
        assert await broker.dequeue_many(1, timeout=0.2) == []
        final = await broker.get_task(got.id)
        assert time.monotonic() < deadline
    assert final.status is TaskStatus.CANCELLED


async def test_release_of_a_cancel_requested_task_cancels_it(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    await broker.cancel(got.id)
    assert await broker.release(got.id, token=got.token)
    final = await broker.get_task(got.id)
    assert final is not None and final.status is TaskStatus.CANCELLED


# ------------------------------------------------------------------ waiting and reading


async def test_wait_for_returns_when_final(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    waiter = asyncio.create_task(broker.wait_for((await broker.list_tasks())[0].id, 5))
    got = await broker.dequeue()
    assert got is not None
    await asyncio.sleep(0)
    assert not waiter.done()
    await broker.mark_complete(got.id, "r", token=got.token)
    done = await asyncio.wait_for(waiter, 5)
    assert done.status is TaskStatus.COMPLETED and done.result == "r"


async def test_wait_for_times_out_and_knows_missing_ids(broker: AbstractBroker) -> None:
    task = make()
    await broker.enqueue(task)
    with pytest.raises(TimeoutError):
        await broker.wait_for(task.id, timeout=0.05)
    with pytest.raises(TaskNotFoundError):
        await broker.wait_for("missing", timeout=0.05)


async def test_progress_is_visible(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    assert await broker.set_progress(got.id, 0.25, token=got.token)
    stored = await broker.get_task(got.id)
    assert stored is not None and stored.progress == 0.25
    assert not await broker.set_progress(got.id, 0.5, token=got.token + 1)
    with pytest.raises(ValueError):
        await broker.set_progress(got.id, 1.5, token=got.token)


async def test_list_and_count_by_status(broker: AbstractBroker) -> None:
    tasks = [make(payload={"n": i}) for i in range(5)]
    await broker.enqueue_many(tasks)
    got = await broker.dequeue_many(2)
    await broker.mark_complete(got[0].id, token=got[0].token)
    counts = await broker.count_tasks()
    assert counts == {
        TaskStatus.PENDING: 3,
        TaskStatus.PROCESSING: 1,
        TaskStatus.COMPLETED: 1,
        TaskStatus.FAILED: 0,
        TaskStatus.CANCELLED: 0,
    }
    pending = await broker.list_tasks(TaskStatus.PENDING)
    assert [t.payload["n"] for t in pending] == [2, 3, 4]
    assert len(await broker.list_tasks(limit=2)) == 2
    assert len(await broker.list_tasks()) == 5


async def test_purge_pending(broker: AbstractBroker) -> None:
    await broker.enqueue_many([make(), make(delay=60), make()])
    got = await broker.dequeue()
    assert got is not None
    assert await broker.purge() == 2
    assert await broker.dequeue_many(5) == []
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PENDING] == 0 and counts[TaskStatus.PROCESSING] == 1
    with pytest.raises(TaskStateError):
        await broker.purge(TaskStatus.PROCESSING)


async def test_requeue_runs_a_failed_task_again(broker: AbstractBroker) -> None:
    await broker.enqueue(make(max_retries=0))
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_failed(got.id, "x", token=got.token, retry_in=0)
    requeued = await broker.requeue(got.id)
    assert requeued.status is TaskStatus.PENDING and requeued.attempts == 0
    assert requeued.error is None
    again = await broker.dequeue()
    assert again is not None and again.id == got.id and again.token > got.token
    with pytest.raises(TaskStateError):
        await broker.requeue(got.id)


async def test_finished_tasks_expire_after_their_ttl(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory(result_ttl=0.1, dead_letter_ttl=60)
    await broker.enqueue_many([make(), make()])
    ok, bad = await broker.dequeue_many(2)
    await broker.mark_complete(ok.id, token=ok.token)
    await broker.mark_failed(bad.id, "x", token=bad.token)
    await asyncio.sleep(0.3)  # the TTL is what is under test: let it pass
    assert await broker.get_task(ok.id) is None
    kept = await broker.get_task(bad.id)
    assert kept is not None and kept.status is TaskStatus.FAILED


# ------------------------------------------------------------------ Katana names


async def test_katana_update_task_status(broker: AbstractBroker) -> None:
    a, b = make(), make()
    await broker.enqueue_many([a, b])
    assert await broker.update_task_status(a.id, TaskStatus.CANCELLED)
    with pytest.raises(TaskStateError):
        await broker.update_task_status(b.id, TaskStatus.PROCESSING)
    got = await broker.dequeue()
    assert got is not None and got.id == b.id
    assert await broker.update_task_status(b.id, TaskStatus.PROCESSING)
    assert await broker.update_task_status(b.id, TaskStatus.COMPLETED)
    assert await broker.update_task_status(a.id, TaskStatus.PENDING)
    requeued = await broker.get_task(a.id)
    assert requeued is not None and requeued.status is TaskStatus.PENDING


async def test_katana_mark_complete_and_failed_without_token(broker: AbstractBroker) -> None:
    a, b = make(), make()
    await broker.enqueue_many([a, b])
    got = await broker.dequeue()
    assert got is not None
    assert await broker.mark_complete(got.id, "done")
    assert await broker.mark_failed(b.id, ValueError("nope"))
    done, failed = await broker.get_task(a.id), await broker.get_task(b.id)
    assert done is not None and done.status is TaskStatus.COMPLETED
    assert failed is not None and failed.status is TaskStatus.FAILED
    with pytest.raises(TaskNotFoundError):
        await broker.mark_complete("missing")


async def test_a_task_handed_back_keeps_its_place(broker: AbstractBroker) -> None:
    first, second = make(priority=1), make(priority=1)
    await broker.enqueue_many([first, second])
    got = await broker.dequeue()
    assert got is not None and got.id == first.id
    await broker.release(got.id, token=got.token)
    again = await broker.dequeue()
    assert again is not None and again.id == first.id


async def test_a_retried_task_keeps_its_place(broker: AbstractBroker) -> None:
    first, second = make(priority=1), make(priority=1)
    await broker.enqueue_many([first, second])
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_failed(got.id, "x", token=got.token, retry_in=0)
    again = await broker.dequeue()
    assert again is not None and again.id == first.id


async def test_closed_broker_refuses_to_lease(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    await broker.enqueue(make())
    await broker.close()
    with pytest.raises(Exception, match="closed"):
        await broker.dequeue()


async def test_cancelled_dequeue_hands_back_what_it_leased(broker: AbstractBroker) -> None:
    tasks = [make() for _ in range(20)]
    await broker.enqueue_many(tasks)
    for _ in range(5):
        call = asyncio.create_task(broker.dequeue_many(20, timeout=1))
        await asyncio.sleep(0)
        call.cancel()
        try:
            got = await call
        except asyncio.CancelledError:
            continue
        for task in got:  # it finished before the cancel landed: put them back
            await broker.release(task.id, token=task.token)
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PENDING] == 20 and counts[TaskStatus.PROCESSING] == 0
    stored = await broker.list_tasks(TaskStatus.PENDING)
    assert all(t.attempts == 0 for t in stored)


async def test_large_bulk_enqueue_keeps_fifo_order(broker: AbstractBroker) -> None:
    tasks = [make(payload={"n": i}) for i in range(2500)]
    stored = await broker.enqueue_many(tasks)
    assert [t.id for t in stored] == [t.id for t in tasks]
    got: list[Task] = []
    while len(got) < 2500:
        batch = await broker.dequeue_many(2500)  # a broker may hand out fewer per call
        assert batch
        got += batch
    assert [t.payload["n"] for t in got] == list(range(2500))


async def test_tokens_are_never_reused_even_after_a_purge(broker: AbstractBroker) -> None:
    first = make()
    first.id = "reused-id"
    await broker.enqueue(first)
    old = await broker.dequeue()
    assert old is not None
    await broker.mark_complete(old.id, "old", token=old.token)
    await broker.purge(TaskStatus.COMPLETED)
    again = make()
    again.id = "reused-id"
    await broker.enqueue(again)
    new = await broker.dequeue()
    assert new is not None and new.token > old.token
    assert not await broker.mark_complete(new.id, "stale", token=old.token)
    stored = await broker.get_task(new.id)
    assert stored is not None and stored.status is TaskStatus.PROCESSING


async def test_cancelling_or_handing_back_fences_the_old_holder(broker: AbstractBroker) -> None:
    await broker.enqueue(make())
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_failed(got.id, "x", token=got.token, retry_in=0)
    await broker.cancel(got.id)  # pending now: cancelled at once
    assert not await broker.mark_cancelled(got.id, token=got.token)
    await broker.enqueue(other := make())
    held = await broker.dequeue()
    assert held is not None and held.id == other.id
    await broker.cancel(held.id)
    await broker.release(held.id, token=held.token)
    assert not await broker.mark_cancelled(held.id, token=held.token)


async def test_an_id_is_free_again_once_its_task_expired(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory(result_ttl=0.1)
    first = make(payload={"v": 1})
    first.id = "again"
    await broker.enqueue(first)
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_complete(got.id, token=got.token)
    await asyncio.sleep(0.3)  # the retention is what is under test: let it pass
    with pytest.raises(TaskNotFoundError):
        await broker.requeue("again")
    second = make(payload={"v": 2})
    second.id = "again"
    stored = await broker.enqueue(second)
    assert stored.status is TaskStatus.PENDING and stored.payload == {"v": 2}


async def test_thousands_of_leases_at_once(broker: AbstractBroker) -> None:
    await broker.enqueue_many([make() for _ in range(4500)])
    held: dict[str, int] = {}
    while len(held) < 4500:
        got = await broker.dequeue_many(4500)
        assert got, "tasks left unleased"
        held.update({t.id: t.token for t in got})
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PROCESSING] == 4500 and counts[TaskStatus.PENDING] == 0
    outcome = await broker.renew(held)
    assert len(outcome.renewed) == 4500 and not outcome.lost


async def test_administrative_retry_of_a_pending_task_queues_it_once(
    broker: AbstractBroker,
) -> None:
    task = make(delay=0.2)
    await broker.enqueue(task)
    assert await broker.mark_failed(task.id, "operator says retry", retry_in=0)
    first = await broker.dequeue()
    assert first is not None and first.id == task.id
    assert await broker.dequeue_many(5, timeout=0.4) == []  # not handed out a second time


async def test_priorities_beyond_the_limit_are_refused_by_every_broker(
    broker: AbstractBroker,
) -> None:
    for priority in (1_000_001, -1_000_001):
        with pytest.raises(ValueError, match="within"):
            await broker.enqueue(make(priority=priority))
    edge = await broker.enqueue(make(priority=-1_000_000))
    assert edge.priority == -1_000_000
    assert sum((await broker.count_tasks()).values()) == 1
