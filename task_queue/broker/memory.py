"""InMemoryBroker: heapq queues inside one process, the embedded default broker."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ..codec import normalize
from ..errors import TaskNotFoundError, TaskQueueError, TaskStateError
from ..gcpause import collector_paused
from ..models import FINAL_STATES, Task, TaskError, TaskStatus
from ..monitoring import (
    STATS_RETENTION_MINUTES,
    MinuteStats,
    QueueStats,
    WorkerInfo,
    minute_start,
)
from .base import (
    AbstractBroker,
    RenewResult,
    TaskNote,
    as_task_error,
    check_max_tasks,
    check_not_negative,
    check_priority,
    check_progress,
    check_purgeable,
    check_stats_minutes,
    check_worker_ttl,
)

__all__ = ["InMemoryBroker"]

logger = logging.getLogger(__name__)

_PENDING = TaskStatus.PENDING
_PROCESSING = TaskStatus.PROCESSING
_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED
_CANCELLED = TaskStatus.CANCELLED
# Column of each final state in a row of per-minute finish counts.
_STAT_COLUMN = {_COMPLETED: 0, _FAILED: 1, _CANCELLED: 2}


def _snapshot(t: Task) -> Task:
    # A positional constructor call is several times faster than copy.copy or
    # dataclasses.replace on a slotted dataclass; dicts are copied one level deep.
    return Task(
        t.name,
        dict(t.payload) if t.payload else {},
        t.priority,
        t.id,
        t.scheduled_at,
        t.created_at,
        t.status,
        t.attempts,
        t.max_retries,
        t.timeout,
        t.result,
        t.error,
        t.started_at,
        t.finished_at,
        t.progress,
        dict(t.metadata) if t.metadata else {},
        t.token,
        t.worker_id,
        t.cancel_requested,
        list(t.depends_on) if t.depends_on else [],
        normalize(t.context) if t.context else {},  # executors change it in place
        list(t.logs) if t.logs else [],
    )


def _dependency_reason(parent_id: str, status: TaskStatus) -> str:
    ended = "failed" if status is _FAILED else "was cancelled"
    return f"parent task {parent_id} {ended}"


class _ReadyQueue:
    """Due tasks, best first: lowest priority number, then first-enqueue order.

    Tasks nearly always arrive in order within their priority, so each priority keeps a
    FIFO deque (O(1) both ends) and only a task that comes back ahead of later ones (a
    hand-back, retry or recovery keeps its original place) goes to a small per-priority
    heap. A heap of the priorities present picks the next one. Entries may be stale; the
    broker skips those when it pops them.
    """

    __slots__ = ("_fifo", "_late", "_priorities", "_size")

    def __init__(self) -> None:
        self._fifo: dict[int, deque[tuple[int, int, str]]] = {}
        self._late: dict[int, list[tuple[int, int, str]]] = {}
        self._priorities: list[int] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, priority: int, order: int, seq: int, task_id: str) -> None:
        fifo = self._fifo.get(priority)
        if fifo is None:
            fifo = self._fifo[priority] = deque()
            self._late[priority] = []
            heapq.heappush(self._priorities, priority)
        entry = (order, seq, task_id)
        if not fifo or fifo[-1][0] <= order:
            fifo.append(entry)
        else:
            heapq.heappush(self._late[priority], entry)
        self._size += 1

    def pop(self) -> tuple[int, int, str]:
        """Remove and return the best (order, seq, task id); the queue must not be empty."""
        priority = self._priorities[0]
        fifo = self._fifo[priority]
        late = self._late[priority]
        take_late = late and (not fifo or late[0] < fifo[0])
        entry = heapq.heappop(late) if take_late else fifo.popleft()
        self._size -= 1
        if not fifo and not late:
            heapq.heappop(self._priorities)
            del self._fifo[priority]
            del self._late[priority]
        return entry

    def retain(self, live: dict[str, int]) -> None:
        """Drop every entry whose task id is not a key of `live`."""
        entries = []
        for priority in self._priorities:
            entries += [(priority, *e) for e in self._fifo[priority] if e[2] in live]
            entries += [(priority, *e) for e in self._late[priority] if e[2] in live]
        self.__init__()  # type: ignore[misc]
        for priority, order, seq, task_id in sorted(entries):
            self.push(priority, order, seq, task_id)


class _Waiter:
    __slots__ = ("future", "wake_at")

    def __init__(self, future: asyncio.Future[None], wake_at: float) -> None:
        self.future = future
        self.wake_at = wake_at


class InMemoryBroker(AbstractBroker):
    """A broker that lives in this process: fast, and gone when the process ends.

    Due tasks wait in a heap keyed by (priority, sequence), delayed ones in a heap keyed
    by due time. It keeps the full lease contract of `AbstractBroker`, so a task whose
    worker coroutine died is recovered at its lease deadline. Final tasks are kept
    `result_ttl` seconds (failed ones `dead_letter_ttl`) and then forgotten.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = 30.0,
        result_ttl: float = 3600.0,
        dead_letter_ttl: float = 7 * 24 * 3600.0,
        maintenance_batch: int = 1000,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        if result_ttl < 0 or dead_letter_ttl < 0:
            raise ValueError("result_ttl and dead_letter_ttl must be >= 0")
        if maintenance_batch < 1:
            raise ValueError(f"maintenance_batch must be >= 1, got {maintenance_batch}")
        self.lease_seconds = float(lease_seconds)
        self.result_ttl = float(result_ttl)
        self.dead_letter_ttl = float(dead_letter_ttl)
        self._batch = maintenance_batch
        self._tasks: dict[str, Task] = {}
        self._ready = _ReadyQueue()
        self._order: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._queued: dict[str, int] = {}
        self._leases: dict[str, float] = {}
        # Lease deadlines and expiry times only grow (each is now + a fixed length), so
        # plain deques kept in time order replace heaps here.
        self._deadlines: deque[tuple[float, str, int]] = deque()
        self._expires: dict[str, float] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._dead_expiry: deque[tuple[float, str]] = deque()
        self._cancel_reasons: dict[str, str] = {}
        self._waiting: dict[str, int] = {}  # task id -> parents not completed yet
        # parent id -> ids waiting on it (a dict as an ordered set)
        self._children: dict[str, dict[str, None]] = {}
        self._seq = 0
        self._tokens = 0  # fencing tokens come from one counter: never reused, even after purge
        self._stamp_ms = -1
        self._stamp_dt = datetime.fromtimestamp(0, UTC)
        self._waiters: list[_Waiter] = []
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._closed = False
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}  # id -> (info, expires at)
        self._stats: dict[int, list[int]] = {}  # minute -> [completed, failed, cancelled]
        self._stats_from = self._stats_until = 0.0  # the minute _stats_row counts
        self._stats_row = [0, 0, 0]

    def __repr__(self) -> str:
        return f"InMemoryBroker(tasks={len(self._tasks)}, lease_seconds={self.lease_seconds})"

    # ----------------------------------------------------------------- producing

    async def enqueue(self, task: Task) -> Task:
        """See `AbstractBroker.enqueue`."""
        prepared = self._prepare(task)
        now = time.time()
        if prepared.depends_on:
            self._maintain(now)
            self._check_parents([prepared])
        return self._enqueue(prepared, now)

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[Task]:
        """See `AbstractBroker.enqueue_many`."""
        with collector_paused(len(tasks)):
            prepared = [self._prepare(task) for task in tasks]
            now = time.time()
            if any(task.depends_on for task in prepared):
                self._maintain(now)
                self._check_parents(prepared)
            return [self._enqueue(task, now) for task in prepared]

    def _check_parents(self, tasks: Sequence[Task]) -> None:
        """Refuse the call when a new task depends on a task that does not exist."""
        coming: set[str] = set()
        now = time.time()
        for task in tasks:
            if task.id in self._tasks:
                continue  # exists: enqueue returns it unchanged
            for parent in task.depends_on:
                gone = parent not in self._tasks or self._expires.get(parent, math.inf) <= now
                if gone and parent not in coming:
                    raise TaskNotFoundError(
                        parent,
                        f"task {task.id!r} depends on {parent!r}, which does not exist "
                        "(or has expired)",
                    )
            coming.add(task.id)

    def _prepare(self, task: Task) -> Task:
        check_priority(task.priority)
        if task.id in self._tasks:
            return task
        return Task(
            task.name,
            normalize(task.payload, "payload"),
            task.priority,
            task.id,
            task.scheduled_at,
            task.created_at,
            _PENDING,
            0,
            task.max_retries,
            task.timeout,
            metadata=normalize(task.metadata, "metadata"),
            depends_on=list(dict.fromkeys(task.depends_on)),
            context=normalize(task.context, "context") if task.context else {},
        )

    def _enqueue(self, task: Task, now: float) -> Task:
        self._maintain(now)
        existing = self._tasks.get(task.id)
        if existing is not None:
            return _snapshot(existing)
        self._tasks[task.id] = task
        if task.depends_on and self._wait_for_parents(task, now):
            return _snapshot(task)
        self._schedule(task, task.scheduled_at.timestamp(), now)
        return _snapshot(task)

    def _wait_for_parents(self, task: Task, now: float) -> bool:
        """Hold a new task back until its parents complete; True when it is held (or
        was cancelled because a parent failed or was cancelled already)."""
        parents = [self._tasks[parent] for parent in task.depends_on]
        for parent in parents:
            if parent.status is _FAILED or parent.status is _CANCELLED:
                self._fence(task)
                reason = _dependency_reason(parent.id, parent.status)
                self._finish(task, _CANCELLED, now, error=TaskError("Cancelled", reason))
                return True
        open_parents = [p.id for p in parents if p.status is not _COMPLETED]
        if not open_parents:
            return False
        self._seq += 1
        self._order.setdefault(task.id, self._seq)  # its FIFO place is taken at enqueue
        self._hold(task, open_parents)
        return True

    def _hold(self, task: Task, open_parents: list[str]) -> None:
        self._waiting[task.id] = len(open_parents)
        for parent_id in open_parents:
            self._children.setdefault(parent_id, {})[task.id] = None

    def _leave_waiting(self, task: Task) -> None:
        """The task stops waiting: no parent that ends later acts on it (or its id)."""
        if self._waiting.pop(task.id, None) is None:
            return
        for parent_id in task.depends_on:
            children = self._children.get(parent_id)
            if children is not None:
                children.pop(task.id, None)

    def _schedule(self, task: Task, due: float, now: float) -> None:
        # `order` is fixed at the first enqueue, so a task handed back or retried keeps its
        # place among equal priorities; `seq` changes every time and tells a live heap
        # entry from stale ones.
        self._seq += 1
        seq = self._seq
        self._queued[task.id] = seq
        order = self._order.setdefault(task.id, seq)
        if due <= now:
            self._ready.push(task.priority, order, seq, task.id)
            self._signal(now)
        else:
            heapq.heappush(self._delayed, (due, seq, task.id))
            if self._delayed[0][1] == seq:
                self._signal(due)

    # ----------------------------------------------------------------- consuming

    async def dequeue_many(
        self,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        worker_id: str | None = None,
    ) -> list[Task]:
        """See `AbstractBroker.dequeue_many`."""
        check_max_tasks(max_tasks)
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed:
                raise TaskQueueError("the broker is closed")
            now = time.time()
            self._maintain(now)
            if self._ready:
                leased = self._lease(max_tasks, now, worker_id)
                if leased:
                    if self._ready:
                        self._signal(now)
                    return leased
            wait: float | None = None if give_up is None else give_up - loop.time()
            if wait is not None and wait <= 0:
                return []
            event = self._next_event()
            if event is not None:
                until = max(event - now, 0.0)
                wait = until if wait is None else min(wait, until)
            await self._sleep(loop, now, wait)

    async def _sleep(
        self, loop: asyncio.AbstractEventLoop, now: float, wait: float | None
    ) -> None:
        future: asyncio.Future[None] = loop.create_future()
        waiter = _Waiter(future, float("inf") if wait is None else now + wait)
        self._waiters.append(waiter)
        try:
            if wait is None:
                await future
            else:
                try:
                    async with asyncio.timeout(wait):
                        await future
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # We were woken for work but will not take it: pass the wake on.
                self._signal(time.time(), skip=waiter)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _signal(self, at: float, skip: _Waiter | None = None) -> None:
        """Wake one sleeping dequeue that would otherwise sleep past `at`."""
        for waiter in self._waiters:
            if waiter is not skip and waiter.wake_at > at and not waiter.future.done():
                waiter.future.set_result(None)
                return

    def _next_event(self) -> float | None:
        times = []
        if self._delayed:
            times.append(self._delayed[0][0])
        if self._deadlines:
            times.append(self._deadlines[0][0])
        return min(times) if times else None

    def _lease(self, max_tasks: int, now: float, worker_id: str | None) -> list[Task]:
        ready = self._ready
        queued = self._queued
        tasks = self._tasks
        deadline = now + self.lease_seconds
        started = datetime.fromtimestamp(now, UTC)
        deadlines = self._deadlines
        leases = self._leases
        token = self._tokens
        leased: list[Task] = []
        while ready and len(leased) < max_tasks:
            _, seq, task_id = ready.pop()
            if queued.get(task_id) != seq:
                continue
            del queued[task_id]
            task = tasks[task_id]
            token += 1
            task.status = _PROCESSING
            task.attempts += 1
            task.token = token
            task.worker_id = worker_id
            task.started_at = started
            leases[task_id] = deadline
            deadlines.append((deadline, task_id, token))
            leased.append(_snapshot(task))
        self._tokens = token
        if leased:
            self._signal(deadline)
        return leased

    async def renew(self, leases: Mapping[str, int]) -> RenewResult:
        """See `AbstractBroker.renew`."""
        now = time.time()
        self._maintain(now)
        deadline = now + self.lease_seconds
        renewed: set[str] = set()
        lost: set[str] = set()
        cancels: set[str] = set()
        for task_id, token in leases.items():
            task = self._tasks.get(task_id)
            if task is None or task.status is not _PROCESSING or task.token != token:
                lost.add(task_id)
                continue
            self._leases[task_id] = deadline
            self._deadlines.append((deadline, task_id, token))
            renewed.add(task_id)
            if task.cancel_requested:
                cancels.add(task_id)
        return RenewResult(frozenset(renewed), frozenset(lost), frozenset(cancels))

    def _held(self, task_id: str, token: int | None, done: TaskStatus) -> Task | None:
        """Return the task if this caller may report `done` on it, else None.

        Raises `TaskNotFoundError` for an unknown id without a token, and
        `TaskStateError` when an administrative call targets a final task.
        """
        task = self._tasks.get(task_id)
        if task is None:
            if token is None:
                raise TaskNotFoundError(task_id)
            logger.warning(
                "task %s: stale holder (token %s) reported %s on a task that is gone",
                task_id,
                token,
                done.value,
                extra={"task_id": task_id},
            )
            return None
        if token is not None and (task.token != token or task.status is not _PROCESSING):
            if task.token != token or task.status is not done:
                logger.warning(
                    "task %s [%s]: stale holder (token %s, current %s, %s) refused",
                    task_id,
                    task.name,
                    token,
                    task.token,
                    task.status.value,
                    extra={"task_id": task_id, "task_name": task.name},
                )
            return None
        if token is None and task.status in FINAL_STATES:
            if task.status is done:
                return None
            raise TaskStateError(f"task {task_id} is already {task.status.value}")
        return task

    def _repeat(self, task_id: str, token: int | None, done: TaskStatus) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and task.status is done and (token is None or task.token == token)

    async def mark_complete(
        self, task_id: str, result: Any = None, *, token: int | None = None
    ) -> bool:
        """See `AbstractBroker.mark_complete`."""
        task = self._tasks.get(task_id)
        if not (
            task is not None
            and token is not None
            and task.token == token
            and task.status is _PROCESSING
        ):  # anything but the current holder's first report: the general checks
            task = self._held(task_id, token, _COMPLETED)
            if task is None:
                return self._repeat(task_id, token, _COMPLETED)
        value = None if result is None else normalize(result, "result")
        self._finish(task, _COMPLETED, time.time(), value, None)
        return True

    async def mark_failed(
        self,
        task_id: str,
        error: TaskError | BaseException | str,
        *,
        token: int | None = None,
        retry_in: float | None = None,
    ) -> bool:
        """See `AbstractBroker.mark_failed`."""
        check_not_negative("retry_in", retry_in)
        if token is not None and self._retried(task_id, token):
            return True
        task = self._held(task_id, token, _FAILED)
        if task is None:
            return self._repeat(task_id, token, _FAILED)
        now = time.time()
        err = as_task_error(error)
        if task.id in self._waiting:
            # an administrative call on a task still waiting for its parents: a retry
            # keeps it waiting, with the error recorded; otherwise it fails
            if retry_in is not None:
                task.error = err
            else:
                self._finish(task, _FAILED, now, error=err)
            return True
        if (
            retry_in is not None
            and task.attempts < task.max_attempts
            and not (task.cancel_requested)
        ):
            self._leases.pop(task_id, None)
            task.status = _PENDING
            task.error = err
            task.worker_id = None
            due = now + retry_in
            task.scheduled_at = datetime.fromtimestamp(due, UTC)
            self._schedule(task, due, now)
            return True
        if task.cancel_requested:
            self._finish(task, _CANCELLED, now, error=self._cancel_error(task_id))
            return True
        self._finish(task, _FAILED, now, error=err)
        return True

    def _retried(self, task_id: str, token: int) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and task.status is _PENDING and task.token == token

    async def mark_cancelled(
        self, task_id: str, *, token: int | None = None, reason: str | None = None
    ) -> bool:
        """See `AbstractBroker.mark_cancelled`."""
        task = self._held(task_id, token, _CANCELLED)
        if task is None:
            return self._repeat(task_id, token, _CANCELLED)
        if reason is not None:
            self._cancel_reasons.setdefault(task_id, reason)
        self._finish(task, _CANCELLED, time.time(), error=self._cancel_error(task_id))
        return True

    async def release(self, task_id: str, *, token: int) -> bool:
        """See `AbstractBroker.release`."""
        task = self._tasks.get(task_id)
        if task is None or task.token != token or task.status is not _PROCESSING:
            return False
        now = time.time()
        task.attempts -= 1
        self._fence(task)
        if task.cancel_requested:
            self._finish(task, _CANCELLED, now, error=self._cancel_error(task_id))
            return True
        self._leases.pop(task_id, None)
        task.status = _PENDING
        task.worker_id = None
        self._schedule(task, now, now)
        return True

    def _fence(self, task: Task) -> None:
        """Give the task a new token: every report of its last holder is refused now."""
        self._tokens += 1
        task.token = self._tokens

    async def set_progress(
        self, task_id: str, progress: float, *, token: int | None = None
    ) -> bool:
        """See `AbstractBroker.set_progress`."""
        check_progress(progress)
        task = self._tasks.get(task_id)
        if task is None or task.status in FINAL_STATES:
            return False
        if token is not None and task.token != token:
            return False
        task.progress = float(progress)
        return True

    async def annotate(
        self, notes: Mapping[str, TaskNote], *, max_logs: int = 100
    ) -> dict[str, bool]:
        """See `AbstractBroker.annotate`."""
        check_not_negative("max_logs", max_logs)
        stored: dict[str, bool] = {}
        for task_id, note in notes.items():
            task = self._tasks.get(task_id)
            if task is None or task.status is not _PROCESSING or task.token != note.token:
                stored[task_id] = False
                continue
            if note.context is not None:
                task.context = normalize(note.context, "context")
            if note.logs:
                task.logs.extend(normalize(note.logs, "logs"))
                if len(task.logs) > max_logs:
                    del task.logs[: len(task.logs) - max_logs]
            stored[task_id] = True
        return stored

    # ----------------------------------------------------------------- control

    async def cancel(self, task_id: str, reason: str | None = None) -> bool:
        """See `AbstractBroker.cancel`."""
        now = time.time()
        self._maintain(now)
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status in FINAL_STATES:
            return False
        if reason is not None:
            self._cancel_reasons[task_id] = reason
        if task.status is _PENDING:
            self._fence(task)
            self._finish(task, _CANCELLED, now, error=self._cancel_error(task_id))
        else:
            task.cancel_requested = True
        return True

    def _cancel_error(self, task_id: str) -> TaskError:
        reason = self._cancel_reasons.pop(task_id, None)
        return TaskError("Cancelled", reason or "cancelled on request")

    async def requeue(self, task_id: str, delay_seconds: float = 0.0) -> Task:
        """See `AbstractBroker.requeue`."""
        check_not_negative("delay_seconds", delay_seconds)
        now = time.time()
        self._maintain(now)
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status not in FINAL_STATES:
            raise TaskStateError(f"task {task_id} is {task.status.value}, not final")
        open_parents = []
        for parent_id in task.depends_on:
            parent = self._tasks.get(parent_id)
            if parent is None:
                continue  # gone: it cannot hold the task back
            if parent.status is _FAILED or parent.status is _CANCELLED:
                ended = "failed" if parent.status is _FAILED else "cancelled"
                raise TaskStateError(
                    f"task {task_id} depends on {parent_id!r}, which {ended}: "
                    "requeue that task first"
                )
            if parent.status is not _COMPLETED:
                open_parents.append(parent_id)
        self._expires.pop(task_id, None)
        due = now + delay_seconds
        self._fence(task)
        task.status = _PENDING
        task.attempts = 0
        task.result = None
        task.error = None
        task.progress = 0.0
        task.started_at = None
        task.finished_at = None
        task.worker_id = None
        task.cancel_requested = False
        task.scheduled_at = datetime.fromtimestamp(due, UTC)
        if open_parents:
            self._hold(task, open_parents)
        else:
            self._schedule(task, due, now)
        return _snapshot(task)

    async def purge(self, status: TaskStatus = TaskStatus.PENDING) -> int:
        """See `AbstractBroker.purge`."""
        status = check_purgeable(status)
        self._maintain(time.time())
        doomed = [t.id for t in self._tasks.values() if t.status is status]
        for task_id in doomed:
            self._leave_waiting(self._tasks[task_id])
            del self._tasks[task_id]
            self._order.pop(task_id, None)
            self._queued.pop(task_id, None)
            self._expires.pop(task_id, None)
            self._cancel_reasons.pop(task_id, None)
            self._children.pop(task_id, None)
            for future in self._watchers.pop(task_id, ()):
                if not future.done():
                    future.set_result(None)
        if status is _PENDING:
            self._ready.retain(self._queued)
            self._delayed = [e for e in self._delayed if e[-1] in self._queued]
            heapq.heapify(self._delayed)
        return len(doomed)

    # ----------------------------------------------------------------- reading

    async def get_task(self, task_id: str) -> Task | None:
        """See `AbstractBroker.get_task`."""
        self._maintain(time.time())
        task = self._tasks.get(task_id)
        return None if task is None else _snapshot(task)

    async def wait_for(self, task_id: str, timeout: float | None = None) -> Task:
        """See `AbstractBroker.wait_for`."""
        self._maintain(time.time())
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        if task.status not in FINAL_STATES:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            watchers = self._watchers.setdefault(task_id, [])
            watchers.append(future)
            try:
                async with asyncio.timeout(timeout):
                    await future
            finally:
                if future in watchers:
                    watchers.remove(future)
                if not watchers and self._watchers.get(task_id) is watchers:
                    del self._watchers[task_id]
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError(task_id)
        return _snapshot(task)

    async def list_tasks(
        self, status: TaskStatus | None = None, *, limit: int = 100, newest_first: bool = False
    ) -> list[Task]:
        """See `AbstractBroker.list_tasks`."""
        check_not_negative("limit", limit)
        self._maintain(time.time())
        wanted = None if status is None else TaskStatus(status)
        found: list[Task] = []
        stored = self._tasks.values()
        for task in reversed(stored) if newest_first else stored:
            if len(found) >= limit:
                break
            if wanted is None or task.status is wanted:
                found.append(_snapshot(task))
        return found

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """See `AbstractBroker.count_tasks`."""
        self._maintain(time.time())
        counts = Counter(task.status for task in self._tasks.values())
        return {status: counts.get(status, 0) for status in TaskStatus}

    # ----------------------------------------------------------------- operations

    async def register_worker(self, worker: WorkerInfo, ttl: float) -> None:
        """See `AbstractBroker.register_worker`."""
        check_worker_ttl(ttl)
        now = time.time()
        self._drop_dead_workers(now)
        beat = replace(worker, heartbeat_at=datetime.fromtimestamp(now, UTC))
        self._workers[worker.worker_id] = (beat, now + ttl)

    async def unregister_worker(self, worker_id: str) -> bool:
        """See `AbstractBroker.unregister_worker`."""
        self._drop_dead_workers(time.time())
        return self._workers.pop(worker_id, None) is not None

    async def list_workers(self) -> list[WorkerInfo]:
        """See `AbstractBroker.list_workers`."""
        self._drop_dead_workers(time.time())
        workers = [info for info, _ in self._workers.values()]
        return sorted(workers, key=lambda w: (w.started_at, w.worker_id))

    def _drop_dead_workers(self, now: float) -> None:
        dead = [wid for wid, (_, expires) in self._workers.items() if expires <= now]
        for worker_id in dead:
            del self._workers[worker_id]

    async def get_stats(self, minutes: int = 60) -> QueueStats:
        """See `AbstractBroker.get_stats`."""
        check_stats_minutes(minutes)
        now = time.time()
        current = int(now // 60)
        rows = []
        for minute in range(current - minutes + 1, current + 1):
            counts = self._stats.get(minute, (0, 0, 0))
            rows.append(MinuteStats(minute_start(minute), *counts))
        return QueueStats(datetime.fromtimestamp(now, UTC), tuple(rows))

    def _stats_roll(self, now: float) -> None:
        """Make `now`'s minute the one finish counts go to; forget minutes past retention."""
        minute = int(now // 60)
        row = self._stats.get(minute)
        if row is None:
            row = self._stats[minute] = [0, 0, 0]
            oldest = minute - STATS_RETENTION_MINUTES
            for old in [m for m in self._stats if m <= oldest]:
                del self._stats[old]
        self._stats_from, self._stats_until = minute * 60.0, (minute + 1) * 60.0
        self._stats_row = row

    async def close(self) -> None:
        """Stop handing out tasks: waiting and later dequeues raise. Stored tasks are kept."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)

    # ----------------------------------------------------------------- internals

    def _finish(
        self,
        task: Task,
        status: TaskStatus,
        now: float,
        result: Any = None,
        error: TaskError | None = None,
    ) -> None:
        task_id = task.id
        if task.status is _PROCESSING:
            self._leases.pop(task_id, None)
        else:
            self._queued.pop(task_id, None)
            if self._waiting and task_id in self._waiting:
                self._leave_waiting(task)
        if self._cancel_reasons:
            self._cancel_reasons.pop(task_id, None)
        task.status = status
        task.result = result
        task.error = error
        task.finished_at = self._stamp(now)
        task.worker_id = None
        if not self._stats_from <= now < self._stats_until:
            self._stats_roll(now)
        self._stats_row[_STAT_COLUMN[status]] += 1
        if status is _COMPLETED:
            task.progress = 1.0
        if status is _FAILED:
            expire_at = now + self.dead_letter_ttl
            self._dead_expiry.append((expire_at, task_id))
        else:
            expire_at = now + self.result_ttl
            self._expiry.append((expire_at, task_id))
        self._expires[task_id] = expire_at
        watchers = self._watchers.pop(task_id, None) if self._watchers else None
        if watchers:
            for future in watchers:
                if not future.done():
                    future.set_result(None)
        if self._children and task_id in self._children:
            self._release_children(task_id, status, now)

    def _release_children(self, parent_id: str, status: TaskStatus, now: float) -> None:
        """A parent became final: its waiting children move on (when it completed and
        they wait on nothing else) or are cancelled, and theirs with them."""
        ended = [(parent_id, status)]
        while ended:
            finished_id, finished_status = ended.pop()
            for child_id in self._children.pop(finished_id, ()):
                remaining = self._waiting.get(child_id)
                if remaining is None:
                    continue  # cancelled or purged meanwhile
                child = self._tasks[child_id]
                if finished_status is _COMPLETED:
                    if remaining > 1:
                        self._waiting[child_id] = remaining - 1
                    else:
                        del self._waiting[child_id]
                        self._schedule(child, child.scheduled_at.timestamp(), now)
                    continue
                self._leave_waiting(child)
                self._fence(child)
                reason = _dependency_reason(finished_id, finished_status)
                logger.info(
                    "task %s [%s] cancelled: %s",
                    child_id,
                    child.name,
                    reason,
                    extra={"task_id": child_id, "task_name": child.name},
                )
                children = self._children.pop(child_id, None)
                self._finish(child, _CANCELLED, now, error=TaskError("Cancelled", reason))
                if children:
                    self._children[child_id] = children
                    ended.append((child_id, _CANCELLED))

    def _stamp(self, now: float) -> datetime:
        """`now` rounded up to the next millisecond, as an aware datetime.

        At high rates many tasks finish within one millisecond and share one object;
        rounding up keeps a finish time from reading earlier than its start.
        """
        ms = math.ceil(now * 1000)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp_dt = datetime.fromtimestamp(ms / 1000, UTC)
        return self._stamp_dt

    def _maintain(self, now: float) -> None:
        """Promote due delayed tasks, recover expired leases, drop expired final tasks.

        Each kind of work is bounded per call so a backlog never stalls the event loop;
        the rest is done by the next call.
        """
        delayed = self._delayed
        if delayed and delayed[0][0] <= now:
            queued = self._queued
            budget = self._batch
            while delayed and delayed[0][0] <= now and budget:
                _, seq, task_id = heapq.heappop(delayed)
                if queued.get(task_id) == seq:
                    priority = self._tasks[task_id].priority
                    self._ready.push(priority, self._order[task_id], seq, task_id)
                    budget -= 1
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            budget = self._batch
            while deadlines and deadlines[0][0] <= now and budget:
                deadline, task_id, token = deadlines.popleft()
                task = self._tasks.get(task_id)
                if (
                    task is not None
                    and task.status is _PROCESSING
                    and task.token == token
                    and self._leases.get(task_id) == deadline
                ):
                    self._recover(task, now)
                    budget -= 1
        for expiry in (self._expiry, self._dead_expiry):
            if expiry and expiry[0][0] <= now:
                budget = self._batch
                while expiry and expiry[0][0] <= now and budget:
                    expire_at, task_id = expiry.popleft()
                    if self._expires.get(task_id) == expire_at:
                        del self._expires[task_id]
                        del self._tasks[task_id]
                        self._order.pop(task_id, None)
                        budget -= 1

    def _recover(self, task: Task, now: float) -> None:
        holder = task.worker_id or "unknown worker"
        self._fence(task)
        if task.cancel_requested:
            logger.warning(
                "task %s [%s]: lease of %s expired after a cancel request; cancelled",
                task.id,
                task.name,
                holder,
                extra={"task_id": task.id, "task_name": task.name},
            )
            self._finish(task, _CANCELLED, now, error=self._cancel_error(task.id))
            return
        if task.attempts >= task.max_attempts:
            message = (
                f"lease expired on attempt {task.attempts} of {task.max_attempts} "
                f"(holder {holder} lost)"
            )
            logger.error(
                "task %s [%s]: %s; failed",
                task.id,
                task.name,
                message,
                extra={"task_id": task.id, "task_name": task.name},
            )
            self._finish(task, _FAILED, now, error=TaskError("LeaseExpired", message))
            return
        logger.warning(
            "task %s [%s]: lease of %s expired on attempt %d; task is ready again",
            task.id,
            task.name,
            holder,
            task.attempts,
            extra={"task_id": task.id, "task_name": task.name},
        )
        self._leases.pop(task.id, None)
        task.status = _PENDING
        task.worker_id = None
        self._schedule(task, now, now)
