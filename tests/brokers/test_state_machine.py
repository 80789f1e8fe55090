"""Stateful property test: a broker against a small reference model of the contract.

Hypothesis drives random sequences of enqueue (also of tasks that depend on others),
dequeue, reports (with live, ended, stale
and forged fencing tokens), release, cancel, renew, requeue, purge and reads, and after
every step compares what the broker stores with what the model says the contract in
`task_queue/broker/base.py` implies.

The model has no clock: brokers are built with a lease far longer than any run, and every
task is due at once (no delays; retries use `retry_in=0`), so nothing expires and no step
sleeps. The rules are sync, so each machine owns an event loop and runs every broker call
on it; the broker itself is built on that loop by the same helper `tests/conftest.py`
uses, so every kind in `BROKER_KINDS` runs this test.

Where the contract leaves room, the model reads it as follows:

* FIFO within a priority follows first-enqueue order: a task handed back, retried or
  requeued keeps its place.
* A requested cancel wins over `mark_failed` (retry or not), as it does over `release`;
  `mark_complete` on such a task still completes it.
* A token is stale once its lease has ended, except for repeating the very report that
  ended it while the task is still where that report left it (True, nothing changes);
  `release` moves the token on, so no later report of that holder is accepted.
* Tokens grow with every lease of an id, also across a purge and a new enqueue of it.
* A task with parents waits (PENDING, never leased) until all of them completed; when
  one ends FAILED or CANCELLED the waiting task becomes CANCELLED, and so on down. A
  requeued task waits again for the parents that still exist and have not completed,
  and is refused while one of them is FAILED or CANCELLED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from task_queue import Task, TaskNotFoundError, TaskStateError, TaskStatus
from tests.conftest import make_broker

T = TypeVar("T")

PENDING = TaskStatus.PENDING
PROCESSING = TaskStatus.PROCESSING
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
FINAL = frozenset({COMPLETED, FAILED, CANCELLED})

# A small pool so that duplicate enqueues, re-enqueues after purge and lookups of
# unknown ids all happen often.
IDS = [f"task-{i}" for i in range(6)]
ids = st.sampled_from(IDS)
priorities = st.integers(min_value=0, max_value=2)
max_retries = st.integers(min_value=0, max_value=2)

# A token no broker hands out (they start at 0 and grow): always refused.
FORGED_TOKEN = -1

# Far longer than any run: no lease expires, so lease recovery is not modelled here.
LEASE_SECONDS = 3600.0

# Runs per broker kind, sized so that a passing test takes about 15 s in all; a failing
# run takes longer while Hypothesis shrinks it (slowest on the Redis kinds).
MAX_EXAMPLES = {"memory": 150, "redis-fake": 20, "redis-real": 25}
MACHINE_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=50,
    deadline=None,
    phases=[phase for phase in Phase if phase is not Phase.explain],  # explain is slow
    report_multiple_bugs=False,  # shrink one failure only: much faster
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class ModelTask:
    """What the contract says the broker stores about one task."""

    priority: int
    max_retries: int
    seq: int  # first-enqueue order: FIFO within a priority, kept when ready again
    status: TaskStatus = PENDING
    attempts: int = 0
    lease_token: int | None = None  # of the latest lease; None while never leased
    # The token whose reports the broker still honours: the live lease's, or that of the
    # lease ended by a report (a repeat may be accepted); None once release moved it on.
    token: int | None = None
    cancel_requested: bool = False
    result: Any = None
    # The report that ended the latest lease ("complete", "fail", "retry", "cancelled");
    # None while leased, never leased, released, or requeued since.
    ended_by: str | None = None
    parents: list[str] = field(default_factory=list)
    waiting_on: set[str] = field(default_factory=set)  # parents not completed yet
    children: list[str] = field(default_factory=list)  # tasks that waited on it


# The status each report leaves a task in; a repeat of that report with the same token is
# accepted only while the task is still there (and has not been requeued since).
ENDED_IN = {"complete": COMPLETED, "fail": FAILED, "retry": PENDING, "cancelled": CANCELLED}


class BrokerMachine(RuleBasedStateMachine):
    """One fresh broker per run, compared step by step with `self.model`."""

    kind: str = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.cleanups: list[Callable[[], Awaitable[Any]]] = []
        self.broker = self.run(make_broker(self.kind, self.cleanups, lease_seconds=LEASE_SECONDS))
        self.model: dict[str, ModelTask] = {}
        self.seq = 0
        # Every token handed out per id, kept when the task is purged: a holder may still
        # present one later, and it must be refused whatever happened to the id since.
        self.issued: dict[str, list[int]] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            for cleanup in reversed(self.cleanups):
                self.run(cleanup())
        finally:
            self.loop.close()

    # ----------------------------------------------------------------- model helpers

    def ready_order(self) -> list[str]:
        """Ids of the ready tasks, best first: lowest priority, then first enqueued."""
        ready = [
            (m.priority, m.seq, i)
            for i, m in self.model.items()
            if m.status is PENDING and not m.waiting_on
        ]
        return [i for _, _, i in sorted(ready)]

    def became_final(self, task_id: str) -> None:
        """Apply what a task becoming final does to the tasks waiting on it."""
        ended = [task_id]
        while ended:
            parent_id = ended.pop()
            parent = self.model[parent_id]
            children, parent.children = parent.children, []
            for child_id in children:
                child = self.model.get(child_id)
                if child is None or child.status is not PENDING or not child.waiting_on:
                    continue
                if parent.status is COMPLETED:
                    child.waiting_on.discard(parent_id)
                else:
                    child.waiting_on = set()
                    child.status = CANCELLED
                    ended.append(child_id)

    def leases(self) -> list[tuple[str, int]]:
        """Every (id, token) ever handed out, live, finished or stale."""
        return [(i, t) for i, tokens in sorted(self.issued.items()) for t in tokens]

    def draw_id(self, data: st.DataObject, wanted: Callable[[ModelTask], bool]) -> str:
        """Half the time an id the rule can act on when there is one, else any id."""
        fit = [i for i, m in sorted(self.model.items()) if wanted(m)]
        if fit and data.draw(st.booleans(), label="fit"):
            return data.draw(st.sampled_from(fit), label="id")
        return data.draw(ids, label="id")

    def draw_lease(self, data: st.DataObject) -> tuple[str, int]:
        """(id, token) for a report: a live lease, the latest lease of a task no longer
        leased, any token ever handed out, or a token no broker hands out."""
        choices: dict[str, list[tuple[str, int]]] = {"live": [], "ended": []}
        for task_id, m in sorted(self.model.items()):
            if m.lease_token is not None:
                kind = "live" if m.status is PROCESSING else "ended"
                choices[kind].append((task_id, m.lease_token))
        choices["issued"] = self.leases()
        choices["forged"] = [(task_id, FORGED_TOKEN) for task_id in IDS]
        kind = data.draw(st.sampled_from([k for k, v in choices.items() if v]), label="kind")
        return data.draw(st.sampled_from(choices[kind]), label="lease")

    # ----------------------------------------------------------------- producing

    def _model_enqueue(self, task_id: str, priority: int, retries: int) -> None:
        if task_id not in self.model:
            self.seq += 1
            self.model[task_id] = ModelTask(priority, retries, self.seq)

    def _check_returned(self, task: Task) -> None:
        m = self.model[task.id]
        assert task.status is m.status, (task.id, task.status, m.status)
        assert task.attempts == m.attempts, (task.id, task.attempts, m.attempts)
        assert task.priority == m.priority, (task.id, task.priority, m.priority)
        assert task.max_retries == m.max_retries

    @rule(task_id=ids, priority=priorities, retries=max_retries)
    def enqueue(self, task_id: str, priority: int, retries: int) -> None:
        task = Task("job", {"id": task_id}, priority=priority, id=task_id, max_retries=retries)
        stored = self.run(self.broker.enqueue(task))
        self._model_enqueue(task_id, priority, retries)
        assert stored.id == task_id
        self._check_returned(stored)

    @rule(batch=st.lists(st.tuples(ids, priorities, max_retries), min_size=1, max_size=4))
    def enqueue_many(self, batch: list[tuple[str, int, int]]) -> None:
        tasks = [Task("job", {}, priority=p, id=i, max_retries=r) for i, p, r in batch]
        stored = self.run(self.broker.enqueue_many(tasks))
        assert [t.id for t in stored] == [i for i, _, _ in batch]
        for task_id, priority, retries in batch:
            self._model_enqueue(task_id, priority, retries)
        for task in stored:
            self._check_returned(task)

    @rule(data=st.data(), task_id=ids, priority=priorities, retries=max_retries)
    def enqueue_child(
        self, data: st.DataObject, task_id: str, priority: int, retries: int
    ) -> None:
        known = sorted(self.model)
        parents = data.draw(
            st.lists(st.sampled_from(known) if known else ids, min_size=1, max_size=3)
            if data.draw(st.booleans(), label="known parents")
            else st.lists(ids, min_size=1, max_size=3),
            label="parents",
        )
        task = Task("job", {}, priority=priority, id=task_id, max_retries=retries)
        task.depends_on = parents
        exists = task_id in self.model
        missing = [p for p in parents if p not in self.model]
        if not exists and missing:
            with pytest.raises(TaskNotFoundError):
                self.run(self.broker.enqueue(task))
            return
        stored = self.run(self.broker.enqueue(task))
        if not exists:
            self._model_enqueue(task_id, priority, retries)
            m = self.model[task_id]
            m.parents = list(parents)
            states = [self.model[p].status for p in parents]
            if FAILED in states or CANCELLED in states:
                m.status = CANCELLED
            else:
                m.waiting_on = {p for p in parents if self.model[p].status is not COMPLETED}
                for parent in m.waiting_on:
                    self.model[parent].children.append(task_id)
        self._check_returned(stored)

    # ----------------------------------------------------------------- consuming

    @rule(k=st.integers(min_value=1, max_value=4))
    def dequeue_many(self, k: int) -> None:
        expected = self.ready_order()[:k]
        leased = self.run(self.broker.dequeue_many(k, timeout=0, worker_id="worker"))
        got = [t.id for t in leased]
        assert len(set(got)) == len(got), f"an id leased twice in one call: {got}"
        assert got == expected, f"dequeue_many({k}) leased {got}, model expects {expected}"
        for task in leased:
            m = self.model[task.id]
            m.status = PROCESSING
            m.attempts += 1
            m.ended_by = None
            assert task.status is PROCESSING
            assert task.attempts == m.attempts, (task.id, task.attempts, m.attempts)
            assert not task.cancel_requested
            earlier = self.issued.setdefault(task.id, [])
            assert all(task.token > t for t in earlier), (
                f"{task.id}: new lease token {task.token}, tokens handed out before {earlier}"
            )
            earlier.append(task.token)
            m.lease_token = m.token = task.token

    def _report(
        self,
        task_id: str,
        token: int,
        call: Callable[[], Coroutine[Any, Any, bool]],
        settle: Callable[[ModelTask], None],
        repeats: tuple[str, ...],
    ) -> None:
        """Make a holder's report; `settle` applies it to the model when the lease is live.

        A stale token is refused. With the token of a lease that has ended, the call is
        accepted only as a repeat of the report (one of `repeats`) that ended it, while
        the task is still where that report left it; it changes nothing either way (the
        invariants check that).
        """
        m = self.model.get(task_id)
        ok = self.run(call())
        if m is None or token != m.token:
            current = None if m is None else m.token
            assert ok is False, f"{task_id}: stale token {token} (current {current}) accepted"
        elif m.status is PROCESSING:
            assert ok is True, f"{task_id}: live lease {token} refused"
            settle(m)
        else:
            expected = m.ended_by in repeats and m.status is ENDED_IN[m.ended_by]
            assert ok is expected, (
                f"{task_id}: report with ended lease {token} (task {m.status.value}, lease "
                f"ended by {m.ended_by}) returned {ok}, expected {expected}"
            )

    @rule(data=st.data())
    def mark_complete(self, data: st.DataObject) -> None:
        task_id, token = self.draw_lease(data)
        result = {"by": token}

        def settle(m: ModelTask) -> None:
            m.status = COMPLETED  # even when a cancel was requested: the work is done
            m.result = result
            m.ended_by = "complete"
            self.became_final(task_id)

        call = partial(self.broker.mark_complete, task_id, result, token=token)
        self._report(task_id, token, call, settle, ("complete",))

    @rule(data=st.data(), retry=st.booleans())
    def mark_failed(self, data: st.DataObject, retry: bool) -> None:
        task_id, token = self.draw_lease(data)

        def settle(m: ModelTask) -> None:
            if m.cancel_requested:
                # Not spelled out for mark_failed; as for release and lease recovery, a
                # requested cancel wins over both a retry and a failure.
                m.status = CANCELLED
                m.ended_by = "cancelled"
            elif retry and m.attempts < m.max_retries + 1:
                m.status = PENDING
                m.ended_by = "retry"
            else:
                m.status = FAILED
                m.ended_by = "fail"
            if m.status in FINAL:
                self.became_final(task_id)

        retry_in = 0.0 if retry else None
        call = partial(self.broker.mark_failed, task_id, "boom", token=token, retry_in=retry_in)
        self._report(task_id, token, call, settle, ("fail", "retry"))

    @rule(data=st.data())
    def mark_cancelled(self, data: st.DataObject) -> None:
        task_id, token = self.draw_lease(data)

        def settle(m: ModelTask) -> None:
            m.status = CANCELLED
            m.ended_by = "cancelled"
            self.became_final(task_id)

        call = partial(self.broker.mark_cancelled, task_id, token=token)
        self._report(task_id, token, call, settle, ("cancelled",))

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        task_id, token = self.draw_lease(data)

        def settle(m: ModelTask) -> None:
            m.attempts -= 1  # the attempt is not counted
            m.status = CANCELLED if m.cancel_requested else PENDING
            m.token = None  # moved on: every later report of this holder is refused
            if m.status is CANCELLED:
                self.became_final(task_id)

        call = partial(self.broker.release, task_id, token=token)
        self._report(task_id, token, call, settle, ())

    @rule(data=st.data(), n=st.integers(min_value=0, max_value=4))
    def renew(self, data: st.DataObject, n: int) -> None:
        by_id = dict(self.draw_lease(data) for _ in range(n))
        live = {
            i
            for i, t in by_id.items()
            if i in self.model and self.model[i].status is PROCESSING and self.model[i].token == t
        }
        outcome = self.run(self.broker.renew(by_id))
        assert outcome.renewed == live, (by_id, outcome)
        assert outcome.lost == set(by_id) - live, (by_id, outcome)
        assert outcome.cancel_requested == {i for i in live if self.model[i].cancel_requested}

    # ----------------------------------------------------------------- control

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = self.draw_id(data, lambda m: m.status not in FINAL)
        m = self.model.get(task_id)
        if m is None:
            with pytest.raises(TaskNotFoundError):
                self.run(self.broker.cancel(task_id))
            return
        ok = self.run(self.broker.cancel(task_id))
        if m.status in FINAL:
            assert ok is False, f"{task_id}: cancel of a {m.status.value} task returned True"
        else:
            assert ok is True
            if m.status is PENDING:
                m.status = CANCELLED
                m.waiting_on = set()
                self.became_final(task_id)
            else:
                m.cancel_requested = True

    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        task_id = self.draw_id(data, lambda m: m.status in FINAL)
        m = self.model.get(task_id)
        if m is None:
            with pytest.raises(TaskNotFoundError):
                self.run(self.broker.requeue(task_id))
            return
        parents = [self.model[p] for p in m.parents if p in self.model]
        if m.status not in FINAL or any(p.status in (FAILED, CANCELLED) for p in parents):
            with pytest.raises(TaskStateError):
                self.run(self.broker.requeue(task_id))
            return
        task = self.run(self.broker.requeue(task_id))
        m.status = PENDING
        m.waiting_on = {p for p in m.parents if p in self.model}
        m.waiting_on -= {p for p in m.waiting_on if self.model[p].status is COMPLETED}
        for parent in m.waiting_on:
            self.model[parent].children.append(task_id)
        m.attempts = 0
        m.cancel_requested = False
        m.result = None
        m.ended_by = None
        self._check_returned(task)

    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        present = sorted({m.status for m in self.model.values()} - {PROCESSING})
        if present and data.draw(st.booleans(), label="present"):
            status = data.draw(st.sampled_from(present), label="status")
        else:
            status = data.draw(st.sampled_from(TaskStatus), label="status")
        if status is PROCESSING:
            with pytest.raises(TaskStateError):
                self.run(self.broker.purge(status))
            return
        doomed = [i for i, m in self.model.items() if m.status is status]
        assert self.run(self.broker.purge(status)) == len(doomed)
        for task_id in doomed:
            del self.model[task_id]  # its tokens stay in self.issued: all stale now

    # ----------------------------------------------------------------- reading

    @rule(task_id=ids)
    def get_task(self, task_id: str) -> None:
        task = self.run(self.broker.get_task(task_id))
        if task_id not in self.model:
            assert task is None, f"{task_id}: the model has no such task, broker has {task}"
        else:
            assert task is not None, f"{task_id}: missing from the broker"
            self.check_task(task)

    def check_task(self, task: Task) -> None:
        m = self.model[task.id]
        where = f"{task.id}: broker {task.status.value}/{task.attempts}/{task.token}"
        assert task.status is m.status, f"{where}, model status {m.status.value}"
        assert task.attempts == m.attempts, f"{where}, model attempts {m.attempts}"
        assert task.priority == m.priority, where
        assert task.max_retries == m.max_retries, where
        if m.status is PROCESSING:
            assert task.token == m.token, f"{where}, model token {m.token}"
            assert task.cancel_requested == m.cancel_requested, where
        elif m.lease_token is not None:
            assert task.token >= m.lease_token, f"{where}, latest lease {m.lease_token}"
        if m.status is PENDING:
            assert not task.cancel_requested, where
        elif m.status is COMPLETED:
            assert task.result == m.result, where

    # ----------------------------------------------------------------- invariants

    @invariant()
    def counts_match(self) -> None:
        counts = self.run(self.broker.count_tasks())
        expected = {s: 0 for s in TaskStatus}
        for m in self.model.values():
            expected[m.status] += 1
        assert counts == expected, f"count_tasks {counts}, model {expected}"

    @invariant()
    def tasks_match(self) -> None:
        # One list_tasks call reads every stored task (the pool is far below the limit).
        tasks = self.run(self.broker.list_tasks(limit=100))
        found = [t.id for t in tasks]
        assert sorted(found) == sorted(self.model), f"broker has {found}, model {list(self.model)}"
        for task in tasks:
            self.check_task(task)


def _probe(kind: str) -> None:
    """Build and drop one broker first, so a kind that skips does so outside Hypothesis."""
    loop = asyncio.new_event_loop()
    cleanups: list[Callable[[], Awaitable[Any]]] = []
    try:
        loop.run_until_complete(make_broker(kind, cleanups))
    finally:
        for cleanup in reversed(cleanups):
            loop.run_until_complete(cleanup())
        loop.close()


def test_broker_state_machine(broker_kind: str) -> None:
    _probe(broker_kind)
    machine = type("Machine", (BrokerMachine,), {"kind": broker_kind})
    examples = MAX_EXAMPLES.get(broker_kind, MACHINE_SETTINGS.max_examples)
    run_state_machine_as_test(machine, settings=settings(MACHINE_SETTINGS, max_examples=examples))
