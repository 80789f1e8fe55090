"""Races on every broker kind: many takers of one task, acks at the lease deadline,
cancel against dequeue. Whatever the interleaving, a task has one holder at a time, one
outcome, and sits in exactly one state at the end."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from task_queue import AbstractBroker, Task, TaskStatus
from task_queue.broker.redis import RedisBroker
from tests.chaos.harness import census
from tests.conftest import BrokerFactory

pytestmark = pytest.mark.chaos

TAKERS = 50


async def peers(
    broker_factory: BrokerFactory, broker_kind: str, count: int, **options: Any
) -> list[AbstractBroker]:
    """`count` brokers on one queue, as `count` processes would have: their own
    connections on Redis; on the in-memory broker, one broker shared by all."""
    first = await broker_factory(**options)
    if broker_kind == "memory":
        return [first] * count
    assert isinstance(first, RedisBroker)
    options["prefix"] = first.prefix
    if broker_kind == "redis-fake":
        options["fake_server"] = first.client.connection_pool.connection_kwargs["server"]
    return [first] + [await broker_factory(**options) for _ in range(count - 1)]


async def assert_one_state_each(broker: AbstractBroker, tasks: list[Task]) -> None:
    """Every task is in exactly one state (on Redis: in exactly one state set)."""
    counts = await broker.count_tasks()
    assert sum(counts.values()) == len(tasks)
    if isinstance(broker, RedisBroker):
        state = await census(broker.client, broker.base_key)
        assert state.problems == []
        assert set(state.where) == {t.id for t in tasks}


async def test_fifty_takers_never_share_a_task(
    broker_factory: BrokerFactory, broker_kind: str
) -> None:
    brokers = await peers(broker_factory, broker_kind, TAKERS)
    tasks = []
    for _ in range(10):  # one ready task, fifty simultaneous takers
        task = Task("job")
        tasks.append(task)
        await brokers[0].enqueue(task)
        got = await asyncio.gather(*(b.dequeue(timeout=0, worker_id="w") for b in brokers))
        assert [t.id for t in got if t is not None] == [task.id]
    # Fifty takers drain a queue of 300, acking what they take, several at a time.
    queued = [Task("job", priority=i % 3) for i in range(300)]
    tasks += queued
    await brokers[0].enqueue_many(queued)
    taken: list[str] = []

    async def take(broker: AbstractBroker, rng: random.Random) -> None:
        while leased := await broker.dequeue_many(rng.randint(1, 4), timeout=0):
            for task in leased:
                taken.append(task.id)
                assert await broker.mark_complete(task.id, task.id, token=task.token)

    await asyncio.gather(*(take(b, random.Random(n)) for n, b in enumerate(brokers)))
    assert sorted(taken) == sorted(t.id for t in queued)  # each exactly once
    assert (await brokers[0].count_tasks())[TaskStatus.COMPLETED] == 300
    for task in tasks[:10]:  # the first ten are still leased: ack them to end clean
        held = await brokers[0].get_task(task.id)
        assert held is not None and held.status is TaskStatus.PROCESSING
        assert await brokers[0].mark_complete(task.id, token=held.token)
    await assert_one_state_each(brokers[0], tasks)


async def test_an_ack_racing_recovery_at_the_deadline_has_one_winner(
    broker_factory: BrokerFactory, broker_kind: str
) -> None:
    lease = 0.1
    holder, rival = await peers(broker_factory, broker_kind, 2, lease_seconds=lease)
    tasks = []
    rounds = 12
    for n in range(rounds):
        task = Task("job")
        tasks.append(task)
        await holder.enqueue(task)
        mine = await holder.dequeue(worker_id="holder")
        assert mine is not None
        # Spread the acks from just before to just after the deadline.
        await asyncio.sleep(lease + (n / (rounds - 1) - 0.5) * 0.04)
        if n % 2:
            report = holder.mark_complete(task.id, "holder", token=mine.token)
        else:
            report = holder.renew({task.id: mine.token})
        outcome, theirs = await asyncio.gather(report, rival.dequeue(timeout=0))
        won = outcome if isinstance(outcome, bool) else task.id in outcome.renewed
        if won:
            assert theirs is None  # the holder's lease was not recovered behind its back
            if n % 2:
                final = await holder.get_task(task.id)
                assert final is not None and final.status is TaskStatus.COMPLETED
                assert final.result == "holder" and final.attempts == 1
            else:
                assert await holder.mark_complete(task.id, "holder", token=mine.token)
        else:
            # Recovered and leased to the rival, with a new token: the holder is fenced.
            assert theirs is not None and theirs.id == task.id
            assert theirs.attempts == 2 and theirs.token > mine.token
            assert not await holder.mark_complete(task.id, "late", token=mine.token)
            assert await rival.mark_complete(task.id, "rival", token=theirs.token)
            final = await holder.get_task(task.id)
            assert final is not None and final.result == "rival"
    await assert_one_state_each(holder, tasks)


async def test_cancel_racing_dequeue_always_ends_cancelled(
    broker_factory: BrokerFactory, broker_kind: str
) -> None:
    canceller, taker = await peers(broker_factory, broker_kind, 2)
    tasks = []
    for n in range(20):
        task = Task("job")
        tasks.append(task)
        await canceller.enqueue(task)
        cancel = canceller.cancel(task.id, "race")
        take = taker.dequeue(timeout=0, worker_id="taker")
        if n % 2:
            taken, cancelled = await asyncio.gather(take, cancel)
        else:
            cancelled, taken = await asyncio.gather(cancel, take)
        assert cancelled is True  # the task was not final yet
        if taken is not None:
            # Taken first: the holder hears of the cancel at its next renewal.
            assert taken.id == task.id
            renewal = await taker.renew({task.id: taken.token})
            assert task.id in renewal.cancel_requested
            assert await taker.mark_cancelled(task.id, token=taken.token)
        final = await canceller.get_task(task.id)
        assert final is not None and final.status is TaskStatus.CANCELLED
        assert await taker.dequeue(timeout=0) is None  # nothing left to take
    await assert_one_state_each(canceller, tasks)
