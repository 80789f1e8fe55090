"""Conformance: task dependencies and task notes (context, logs), on every broker kind."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from task_queue import AbstractBroker, Task, TaskNotFoundError, TaskStateError, TaskStatus
from task_queue.broker import TaskNote


def make(name: str = "job", delay: float = 0.0, **kw: object) -> Task:
    now = datetime.now(UTC)
    return Task(name=name, scheduled_at=now + timedelta(seconds=delay), **kw)  # type: ignore[arg-type]


async def lease_all(broker: AbstractBroker) -> dict[str, Task]:
    return {t.id: t for t in await broker.dequeue_many(100)}


async def status(broker: AbstractBroker, task_id: str) -> TaskStatus:
    task = await broker.get_task(task_id)
    assert task is not None
    return task.status


async def complete(broker: AbstractBroker, leased: dict[str, Task], task_id: str) -> None:
    assert await broker.mark_complete(task_id, None, token=leased[task_id].token)


# ------------------------------------------------------------------ dependencies


async def test_child_waits_until_its_parent_completed(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    assert child.status is TaskStatus.PENDING and child.depends_on == [parent.id]
    leased = await lease_all(broker)
    assert list(leased) == [parent.id]
    assert await broker.dequeue_many(10) == []
    await complete(broker, leased, parent.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_child_waits_for_every_parent(broker: AbstractBroker) -> None:
    a, b = await broker.enqueue(make()), await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[a.id, b.id, a.id]))
    leased = await lease_all(broker)
    assert set(leased) == {a.id, b.id}
    await complete(broker, leased, a.id)
    assert await broker.dequeue_many(10) == []
    await complete(broker, leased, b.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_failed_parent_cancels_its_children_recursively(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    grandchild = await broker.enqueue(make(depends_on=[child.id]))
    sibling = await broker.enqueue(make())
    leased = await lease_all(broker)
    assert set(leased) == {parent.id, sibling.id}
    assert await broker.mark_failed(parent.id, "boom", token=leased[parent.id].token)
    got = await broker.get_task(child.id)
    assert got is not None and got.status is TaskStatus.CANCELLED
    assert got.error is not None and f"parent task {parent.id} failed" in got.error.message
    got = await broker.get_task(grandchild.id)
    assert got is not None and got.status is TaskStatus.CANCELLED
    assert got.error is not None and f"parent task {child.id} was cancelled" in got.error.message
    assert await status(broker, sibling.id) is TaskStatus.PROCESSING
    waited = await broker.wait_for(grandchild.id, timeout=5)
    assert waited.status is TaskStatus.CANCELLED


async def test_cancelling_a_pending_parent_cancels_its_children(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make(delay=60))
    child = await broker.enqueue(make(depends_on=[parent.id]))
    assert await broker.cancel(parent.id)
    got = await broker.get_task(child.id)
    assert got is not None and got.status is TaskStatus.CANCELLED
    assert got.error is not None and parent.id in got.error.message


async def test_a_retried_parent_keeps_its_children_waiting(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    leased = await lease_all(broker)
    assert await broker.mark_failed(parent.id, "flaky", token=leased[parent.id].token, retry_in=0)
    assert await status(broker, child.id) is TaskStatus.PENDING
    leased = await lease_all(broker)
    assert list(leased) == [parent.id]
    await complete(broker, leased, parent.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_parent_final_before_the_child_is_added(broker: AbstractBroker) -> None:
    done, doomed = await broker.enqueue(make()), await broker.enqueue(make())
    leased = await lease_all(broker)
    await complete(broker, leased, done.id)
    assert await broker.mark_failed(doomed.id, "boom", token=leased[doomed.id].token)
    runs = await broker.enqueue(make(depends_on=[done.id]))
    assert runs.status is TaskStatus.PENDING
    assert list(await lease_all(broker)) == [runs.id]
    never = await broker.enqueue(make(depends_on=[done.id, doomed.id]))
    got = await broker.get_task(never.id)
    assert got is not None and got.status is TaskStatus.CANCELLED
    assert got.error is not None and f"parent task {doomed.id} failed" in got.error.message


async def test_missing_parent_is_refused_and_nothing_is_stored(broker: AbstractBroker) -> None:
    good = make()
    bad = make(depends_on=["no-such-task"])
    with pytest.raises(TaskNotFoundError, match="no-such-task") as info:
        await broker.enqueue_many([good, bad])
    assert info.value.task_id == "no-such-task"
    assert bad.id in str(info.value)
    assert await broker.get_task(good.id) is None
    assert await broker.get_task(bad.id) is None
    with pytest.raises(TaskNotFoundError):
        await broker.enqueue(make(depends_on=["no-such-task"]))


async def test_a_child_may_depend_on_an_earlier_task_of_the_same_call(
    broker: AbstractBroker,
) -> None:
    parent = make()
    child = make(depends_on=[parent.id])
    stored = await broker.enqueue_many([parent, child])
    assert [t.status for t in stored] == [TaskStatus.PENDING, TaskStatus.PENDING]
    leased = await lease_all(broker)
    assert list(leased) == [parent.id]
    await complete(broker, leased, parent.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_a_released_child_keeps_its_place_in_fifo_order(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    later = await broker.enqueue(make(delay=60))
    [leased] = await broker.dequeue_many(1)
    assert leased.id == parent.id
    plain = await broker.enqueue(make())
    await complete(broker, {parent.id: leased}, parent.id)
    assert [t.id for t in await broker.dequeue_many(10)] == [child.id, plain.id]
    assert await status(broker, later.id) is TaskStatus.PENDING


async def test_a_delayed_child_still_waits_for_its_due_time(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(delay=0.2, depends_on=[parent.id]))
    leased = await lease_all(broker)
    await complete(broker, leased, parent.id)
    assert await broker.dequeue_many(10) == []
    got = await broker.dequeue(timeout=5)
    assert got is not None and got.id == child.id
    # Redis keeps due times in whole milliseconds of its own clock
    assert datetime.now(UTC) >= child.scheduled_at - timedelta(milliseconds=2)


async def test_a_cancelled_waiting_child_stays_cancelled(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    assert await broker.cancel(child.id)
    leased = await lease_all(broker)
    await complete(broker, leased, parent.id)
    assert await broker.dequeue_many(10) == []
    assert await status(broker, child.id) is TaskStatus.CANCELLED


async def test_waiting_tasks_count_as_pending_and_purge_with_them(
    broker: AbstractBroker,
) -> None:
    parent = await broker.enqueue(make(delay=60))
    child = await broker.enqueue(make(depends_on=[parent.id]))
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PENDING] == 2
    listed = {t.id for t in await broker.list_tasks(TaskStatus.PENDING)}
    assert listed == {parent.id, child.id}
    assert await broker.purge(TaskStatus.PENDING) == 2
    assert await broker.get_task(child.id) is None
    assert (await broker.count_tasks())[TaskStatus.PENDING] == 0


async def test_requeue_waits_for_parents_again(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    leased = await lease_all(broker)
    assert await broker.mark_failed(parent.id, "boom", token=leased[parent.id].token)
    assert await status(broker, child.id) is TaskStatus.CANCELLED
    with pytest.raises(TaskStateError, match=f"{parent.id}.*failed.*requeue that task first"):
        await broker.requeue(child.id)
    await broker.requeue(parent.id)
    again = await broker.requeue(child.id)
    assert again.status is TaskStatus.PENDING
    leased = await lease_all(broker)
    assert list(leased) == [parent.id]  # the child waits for the parent's new run
    await complete(broker, leased, parent.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_a_cancelled_child_requeued_while_its_parent_runs_waits(
    broker: AbstractBroker,
) -> None:
    parent = await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[parent.id]))
    leased = await lease_all(broker)
    assert await broker.cancel(child.id)
    await broker.requeue(child.id)
    assert await broker.dequeue_many(10) == []
    await complete(broker, leased, parent.id)
    assert list(await lease_all(broker)) == [child.id]


async def test_a_child_that_left_waiting_is_forgotten_by_its_parents(
    broker: AbstractBroker,
) -> None:
    parent, other = await broker.enqueue(make()), await broker.enqueue(make(delay=60))
    child = await broker.enqueue(make(depends_on=[parent.id], delay=60))
    leased = await lease_all(broker)
    assert await broker.cancel(child.id)
    assert await broker.purge(TaskStatus.CANCELLED) == 1
    reborn = await broker.enqueue(make(depends_on=[other.id], id=child.id))
    assert reborn.status is TaskStatus.PENDING
    await complete(broker, leased, parent.id)  # the old parent must not release it
    assert await broker.dequeue_many(10) == []
    assert await status(broker, child.id) is TaskStatus.PENDING


async def test_a_multi_parent_child_cancelled_by_one_parent_ignores_the_other(
    broker: AbstractBroker,
) -> None:
    a, b = await broker.enqueue(make()), await broker.enqueue(make())
    child = await broker.enqueue(make(depends_on=[a.id, b.id]))
    leased = await lease_all(broker)
    assert await broker.mark_failed(a.id, "boom", token=leased[a.id].token)
    assert await status(broker, child.id) is TaskStatus.CANCELLED
    assert await broker.purge(TaskStatus.CANCELLED) == 1
    reborn = await broker.enqueue(make(id=child.id, delay=60))
    await complete(broker, leased, b.id)
    assert await status(broker, reborn.id) is TaskStatus.PENDING
    assert await broker.dequeue_many(10) == []


async def test_administrative_failure_of_a_waiting_task(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make(delay=60))
    child = await broker.enqueue(make(depends_on=[parent.id]))
    grandchild = await broker.enqueue(make(depends_on=[child.id]))
    assert await broker.mark_failed(child.id, "keep waiting", retry_in=0)
    assert await status(broker, child.id) is TaskStatus.PENDING
    assert await broker.mark_failed(child.id, "given up")
    got = await broker.get_task(child.id)
    assert got is not None and got.status is TaskStatus.FAILED
    assert got.error is not None and got.error.message == "given up"
    assert await status(broker, grandchild.id) is TaskStatus.CANCELLED


async def upkeep_until_settled(broker: AbstractBroker, expected: int) -> dict[TaskStatus, int]:
    """Run dequeue calls (the upkeep every worker runs) until `expected` tasks are
    cancelled: Redis cancels a large tree in bounded batches, one per script run."""
    for _ in range(expected // 1_000 + 3):
        counts = await broker.count_tasks()
        if counts[TaskStatus.CANCELLED] >= expected:
            break
        await broker.dequeue_many(1)
    return await broker.count_tasks()


async def test_a_deep_chain_is_cancelled_to_its_end(
    broker: AbstractBroker, broker_kind: str
) -> None:
    # Deeper than a recursive walk fits on Redis's Lua stack; fakeredis's Lua is slow.
    depth = 2_000 if broker_kind == "redis-fake" else 12_000
    chain = [make()]
    for _ in range(depth - 1):
        chain.append(make(depends_on=[chain[-1].id]))
    await broker.enqueue_many(chain)
    assert (await broker.count_tasks())[TaskStatus.PENDING] == depth
    assert await broker.cancel(chain[0].id)
    counts = await upkeep_until_settled(broker, depth)
    assert counts[TaskStatus.CANCELLED] == depth and counts[TaskStatus.PENDING] == 0
    last = await broker.get_task(chain[-1].id)
    assert last is not None and last.error is not None
    assert last.error.message == f"parent task {chain[-2].id} was cancelled"
    assert await broker.dequeue_many(10) == []


async def finish_parent_of(
    broker: AbstractBroker, n: int, outcome: str
) -> tuple[Task, list[Task]]:
    """A parent with `n` waiting children, leased and then completed or failed."""
    parent = await broker.enqueue(make())
    children = [make(depends_on=[parent.id]) for _ in range(n)]
    await broker.enqueue_many(children)
    leased = await broker.dequeue()
    assert leased is not None and leased.id == parent.id
    if outcome == "completed":
        assert await broker.mark_complete(parent.id, None, token=leased.token)
    else:
        assert await broker.mark_failed(parent.id, "boom", token=leased.token)
    return parent, children


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_a_wide_fan_out_moves_on_every_child(broker: AbstractBroker, outcome: str) -> None:
    parent, children = await finish_parent_of(broker, 2_500, outcome)
    if hasattr(broker, "base_key"):  # Redis: one script run moves on a bounded batch
        client: Any = broker.client
        base = broker.base_key
        moved = await client.zcard(f"{base}:ready") + await client.zcard(f"{base}:cancelled")
        assert moved <= 1_000
    ran: set[str] = set()
    for _ in range(10):  # workers' dequeue calls go on with the rest
        batch = await broker.dequeue_many(1_000)
        ran.update(task.id for task in batch)
        counts = await broker.count_tasks()
        if outcome == "completed" and len(ran) == len(children):
            break
        if outcome == "failed" and counts[TaskStatus.CANCELLED] == len(children):
            break
    if outcome == "completed":
        assert ran == {child.id for child in children}
    else:
        assert ran == set()
        counts = await broker.count_tasks()
        assert counts[TaskStatus.CANCELLED] == len(children)
        last = await broker.get_task(children[-1].id)
        assert last is not None and last.error is not None
        assert last.error.message == f"parent task {parent.id} failed"
    if hasattr(broker, "base_key"):
        assert not await client.exists(f"{base}:releasing")


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_purging_a_parent_whose_children_are_still_moving_on_loses_none(
    broker: AbstractBroker, outcome: str
) -> None:
    _parent, children = await finish_parent_of(broker, 1_500, outcome)
    assert await broker.purge(TaskStatus(outcome)) == 1
    counts = await broker.count_tasks()
    if outcome == "completed":
        ran: set[str] = set()
        for _ in range(5):
            ran.update(task.id for task in await broker.dequeue_many(1_000))
        assert ran == {child.id for child in children}
    else:
        assert counts[TaskStatus.CANCELLED] == len(children) and counts[TaskStatus.PENDING] == 0


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_a_requeued_parent_holds_its_new_children_back(
    broker: AbstractBroker, outcome: str
) -> None:
    parent, children = await finish_parent_of(broker, 1_500, outcome)
    again = await broker.requeue(parent.id)
    assert again.status is TaskStatus.PENDING
    late = await broker.enqueue(make(depends_on=[parent.id]))  # waits for the new run
    counts = await broker.count_tasks()
    if outcome == "completed":  # the children of the first run all moved on
        assert counts[TaskStatus.PENDING] == len(children) + 2
    else:  # ... or were all cancelled
        assert counts[TaskStatus.CANCELLED] == len(children)
    seen: set[str] = set()
    for _ in range(5):
        seen.update(task.id for task in await broker.dequeue_many(1_000))
    assert parent.id in seen and late.id not in seen
    assert await status(broker, late.id) is TaskStatus.PENDING


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_an_id_used_again_after_its_retention_starts_a_clean_tree(
    broker_factory: Any, outcome: str
) -> None:
    broker = await broker_factory(result_ttl=0.2, dead_letter_ttl=0.2)
    parent = await broker.enqueue(make(id="report"))
    children = await broker.enqueue_many([make(depends_on=[parent.id]) for _ in range(1_500)])
    leased = await broker.dequeue()
    assert leased is not None and leased.id == "report"
    if outcome == "completed":
        assert await broker.mark_complete("report", None, token=leased.token)
    else:
        assert await broker.mark_failed("report", "boom", token=leased.token)
    await asyncio.sleep(0.4)  # the retention is what is under test: let it pass
    for child in children:  # no dequeue call in between: on Redis some still wait
        with contextlib.suppress(TaskNotFoundError):  # cancelled with the parent, expired
            await broker.cancel(child.id)
    assert await broker.get_task("report") is None
    again = await broker.enqueue(make(id="report"))
    late = await broker.enqueue(make(depends_on=["report"]))
    leased_now = await broker.dequeue_many(10)
    assert [task.id for task in leased_now] == [again.id]  # the new child waits for it
    assert await status(broker, late.id) is TaskStatus.PENDING


async def test_purge_takes_the_children_a_cancel_left_still_moving_on(
    broker: AbstractBroker,
) -> None:
    parent = await broker.enqueue(make(delay=60))
    await broker.enqueue_many([make(depends_on=[parent.id]) for _ in range(1_500)])
    assert await broker.cancel(parent.id)
    assert await broker.purge(TaskStatus.CANCELLED) == 1_501
    counts = await broker.count_tasks()
    assert counts[TaskStatus.CANCELLED] == 0 and counts[TaskStatus.PENDING] == 0


async def test_a_forward_reference_in_a_large_call_stores_nothing(
    broker: AbstractBroker,
) -> None:
    tasks = [make() for _ in range(1_200)]
    tasks[10].depends_on = [tasks[1_150].id]
    with pytest.raises(TaskNotFoundError, match=r"comes after it|does not exist"):
        await broker.enqueue_many(tasks)
    assert sum((await broker.count_tasks()).values()) == 0
    tasks[10].depends_on = ["ghost"]
    with pytest.raises(TaskNotFoundError, match="ghost"):
        await broker.enqueue_many(tasks)
    assert sum((await broker.count_tasks()).values()) == 0


async def test_existing_child_is_returned_unchanged(broker: AbstractBroker) -> None:
    parent = await broker.enqueue(make())
    child = make(depends_on=[parent.id])
    await broker.enqueue(child)
    again = await broker.enqueue(child)
    assert again.id == child.id and again.status is TaskStatus.PENDING


# ------------------------------------------------------------------ notes


async def test_context_and_logs_are_stored_for_any_reader(broker: AbstractBroker) -> None:
    task = await broker.enqueue(make(context={"tenant": 7}))
    [leased] = await broker.dequeue_many(1)
    assert leased.context == {"tenant": 7}
    records = [{"level": "INFO", "message": f"line {i}\nwith a newline"} for i in range(3)]
    note = TaskNote(leased.token, {"tenant": 7, "step": {"name": "load"}}, records)
    assert await broker.annotate({task.id: note}) == {task.id: True}
    got = await broker.get_task(task.id)
    assert got is not None
    assert got.context == {"tenant": 7, "step": {"name": "load"}}
    assert got.logs == records


async def test_logs_keep_only_the_newest_records(broker: AbstractBroker) -> None:
    task = await broker.enqueue(make())
    [leased] = await broker.dequeue_many(1)
    for start in (0, 4):
        lines = [{"message": f"m{i}"} for i in range(start, start + 4)]
        note = TaskNote(leased.token, None, lines)
        assert (await broker.annotate({task.id: note}, max_logs=5))[task.id]
    got = await broker.get_task(task.id)
    assert got is not None
    assert [r["message"] for r in got.logs] == ["m3", "m4", "m5", "m6", "m7"]
    assert got.context == {}
    assert (await broker.annotate({task.id: TaskNote(leased.token, None, lines)}, max_logs=0))[
        task.id
    ]
    got = await broker.get_task(task.id)
    assert got is not None and got.logs == []


async def test_notes_of_a_stale_holder_are_refused(broker: AbstractBroker) -> None:
    task = await broker.enqueue(make())
    [leased] = await broker.dequeue_many(1)
    assert await broker.release(task.id, token=leased.token)
    note = TaskNote(leased.token, {"x": 1}, [{"message": "late"}])
    assert await broker.annotate({task.id: note, "missing": note}) == {
        task.id: False,
        "missing": False,
    }
    got = await broker.get_task(task.id)
    assert got is not None and got.context == {} and got.logs == []


async def test_context_survives_into_the_next_attempt(broker: AbstractBroker) -> None:
    task = await broker.enqueue(make())
    [leased] = await broker.dequeue_many(1)
    await broker.annotate({task.id: TaskNote(leased.token, {"step": "half"})})
    assert await broker.mark_failed(task.id, "oops", token=leased.token, retry_in=0)
    [again] = await broker.dequeue_many(1)
    assert again.attempts == 2 and again.context == {"step": "half"}
