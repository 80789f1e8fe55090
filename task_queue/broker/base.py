"""AbstractBroker: the contract every broker keeps. Its docstrings are the specification.

A broker stores tasks and makes every state change atomic. Delivery is at-least-once:

* `dequeue_many` moves due tasks from ready to in-flight in one step, counts an attempt
  and grants each a lease (a deadline) with a fencing token drawn from a counter of the
  queue, so a token is never handed out twice, not even after a purge. Cancelling a
  pending task, handing a task back, recovering and requeueing it also draw a new token.
* The holder reports the outcome with `mark_complete`, `mark_failed`, `mark_cancelled` or
  `release`, presenting the token; a holder whose token is stale is refused (the call
  returns False and the broker logs a warning). Reporting the same outcome twice is
  harmless.
* The holder keeps its leases alive with `renew`. A lease that runs out (its worker was
  killed or stalled) is recovered by the broker: the task is ready again, or FAILED when
  it has used all its attempts, or CANCELLED when a cancel was requested meanwhile.
* Among due tasks the lowest `priority` number is handed out first, FIFO within a
  priority; a delayed task never blocks a due one.
* A task with `depends_on` stays PENDING (waiting, never handed out) until every parent
  is COMPLETED. When a parent ends FAILED or CANCELLED, its waiting children become
  CANCELLED with a reason naming that parent, and so on down the tree, in the same
  atomic step.

Tasks returned by a broker are snapshots: changing them changes nothing stored.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from ..errors import TaskNotFoundError, TaskStateError
from ..models import Task, TaskError, TaskStatus
from ..monitoring import STATS_RETENTION_MINUTES, QueueStats, WorkerInfo

__all__ = ["AbstractBroker", "RenewResult", "TaskNote"]

logger = logging.getLogger(__name__)


def check_max_tasks(max_tasks: int) -> None:
    """Refuse a lease request for fewer than one task."""
    if max_tasks < 1:
        raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")


MAX_PRIORITY = 1_000_000
"""Priorities lie within +-MAX_PRIORITY on every broker (Redis keeps them in a float
score that must stay exact)."""


def check_priority(priority: int) -> None:
    """Refuse a priority that is not an int or lies outside +-MAX_PRIORITY."""
    if type(priority) is not int:
        raise TypeError(f"priority must be an int, got {priority!r}")
    if abs(priority) > MAX_PRIORITY:
        raise ValueError(f"priority must be within +-{MAX_PRIORITY}, got {priority}")


def check_not_negative(name: str, value: float | None) -> None:
    """Refuse a negative delay, retry delay or limit (None passes)."""
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_progress(progress: float) -> None:
    """Refuse a progress outside 0.0 .. 1.0."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0.0 and 1.0, got {progress}")


def check_purgeable(status: TaskStatus) -> TaskStatus:
    """Return `status` as a TaskStatus, refusing PROCESSING (running tasks are cancelled)."""
    status = TaskStatus(status)
    if status is TaskStatus.PROCESSING:
        raise TaskStateError("running tasks cannot be purged; cancel them instead")
    return status


def check_stats_minutes(minutes: int) -> None:
    """Refuse a stats window outside 1 .. STATS_RETENTION_MINUTES minutes."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise TypeError(f"minutes must be an int, got {minutes!r}")
    if not 1 <= minutes <= STATS_RETENTION_MINUTES:
        raise ValueError(f"minutes must be between 1 and {STATS_RETENTION_MINUTES}, got {minutes}")


def check_worker_ttl(ttl: float) -> None:
    """Refuse a registry time-to-live that is not a positive number of seconds."""
    if not ttl > 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl}")


def as_task_error(error: TaskError | BaseException | str) -> TaskError:
    """Describe what a failed attempt reported as a `TaskError`."""
    if isinstance(error, TaskError):
        return error
    if isinstance(error, BaseException):
        return TaskError.from_exception(error)
    return TaskError("Error", str(error))


@dataclass(frozen=True, slots=True)
class RenewResult:
    """What `renew` found: leases extended, leases no longer held, cancels requested.

    `lost` holds the ids whose lease this holder no longer owns (expired and recovered,
    finished, or leased again to someone else): the holder must stop reporting on them.
    `cancel_requested` holds ids, still leased to this holder, that someone asked to
    cancel: the holder should stop running them and call `mark_cancelled`.
    """

    renewed: frozenset[str] = field(default_factory=frozenset)
    lost: frozenset[str] = field(default_factory=frozenset)
    cancel_requested: frozenset[str] = field(default_factory=frozenset)


@dataclass(slots=True)
class TaskNote:
    """What a running task's holder adds to its record besides progress.

    `context` replaces the task's stored context when not None; `logs` are new log
    records (dicts of JSON values) appended to the task's logs. `token` is the holder's
    fencing token.
    """

    token: int
    context: dict[str, Any] | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)


class AbstractBroker(ABC):
    """Storage and atomic state changes of tasks, shared by producers and workers.

    `lease_seconds` is how long a lease lasts without renewal; workers renew every third
    of it. A broker with `batches_acks` gets its workers' successes in batches.
    """

    lease_seconds: float = 30.0
    batches_acks: bool = False
    """True when the broker prefers many acks in one `mark_complete_many` call."""
    queue: str = "default"
    """The name of the queue this broker serves (shown by the worker registry)."""

    # ----------------------------------------------------------------- producing

    @abstractmethod
    async def enqueue(self, task: Task) -> Task:
        """Store `task` as PENDING, due at `task.scheduled_at`, and return it as stored.

        The result is either a copy or, for a broker that keeps only serialized tasks
        (Redis), `task` itself, its payload, metadata and context replaced by fresh
        copies where JSON would not give them back unchanged. Either way it shares no
        mutable value with the broker.

        Idempotent on `task.id`: when a task with that id already exists, nothing changes
        and the existing task is returned, so a producer may safely retry after a timeout.
        Raises `PayloadError` (a `TypeError`) naming the field when the payload or
        metadata cannot be stored as JSON; nothing is stored then.

        `task.depends_on` names parent tasks of the same queue. The task waits until all
        of them completed; if one of them has already failed or been cancelled, the task
        is stored CANCELLED at once, its error naming that parent. Raises
        `TaskNotFoundError` when a parent does not exist (or expired); nothing is stored
        then. Cycles cannot form, as parents must exist before their children.
        """

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[Task]:
        """Enqueue several tasks; same rules as `enqueue`, one result per input task.

        Every task is checked before any is stored, so an encoding error or a missing
        parent stores nothing. A task may depend on one that comes before it in `tasks`.
        """
        return [await self.enqueue(task) for task in tasks]

    # ----------------------------------------------------------------- consuming

    @abstractmethod
    async def dequeue_many(
        self,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        worker_id: str | None = None,
    ) -> list[Task]:
        """Lease up to `max_tasks` due tasks, best first, and return them PROCESSING.

        Each returned task has `attempts` counted, a lease of `lease_seconds` and a new
        `token`. When none is due, wait up to `timeout` seconds (None: until one is) for
        an enqueue or for a delayed task to come due, without polling; return an empty
        list when the wait ends with nothing. Due delayed tasks are promoted and expired
        leases recovered as part of the call. Cancelling the call leases nothing.
        """

    async def dequeue(
        self, timeout: float | None = 0.0, *, worker_id: str | None = None
    ) -> Task | None:
        """Lease the next due task (see `dequeue_many`), or None if none came in time."""
        tasks = await self.dequeue_many(1, timeout, worker_id=worker_id)
        return tasks[0] if tasks else None

    @abstractmethod
    async def renew(self, leases: Mapping[str, int]) -> RenewResult:
        """Extend the leases `{task_id: token}` held by one holder, all in one call."""

    @abstractmethod
    async def mark_complete(
        self, task_id: str, result: Any = None, *, token: int | None = None
    ) -> bool:
        """Record success with `result` (JSON) and end the lease.

        With `token`, only the current holder may do this: a stale token is refused and
        False returned. Without a token the call is an administrative override for any
        task not yet final. Returns True when the task is (now) COMPLETED by this holder,
        including a repeated call. Raises `PayloadError` when `result` cannot be stored
        as JSON; the task is left as it was then.
        """

    @abstractmethod
    async def mark_failed(
        self,
        task_id: str,
        error: TaskError | BaseException | str,
        *,
        token: int | None = None,
        retry_in: float | None = None,
    ) -> bool:
        """Record a failed attempt.

        With `retry_in` and attempts left (`attempts < max_retries + 1`), the task is
        PENDING again and due after `retry_in` seconds; otherwise it is FAILED for good
        and kept as a dead letter for the retention period. Token rules and the return
        value are as for `mark_complete`.
        """

    @abstractmethod
    async def mark_cancelled(
        self, task_id: str, *, token: int | None = None, reason: str | None = None
    ) -> bool:
        """Record that the holder stopped a running task because a cancel was requested."""

    @abstractmethod
    async def release(self, task_id: str, *, token: int) -> bool:
        """Hand a leased task back: ready again at once, the attempt not counted.

        Used at shutdown for tasks that were not allowed to finish. A cancel requested
        meanwhile makes the task CANCELLED instead. The token moves on, so every later
        report of the old holder is refused. Returns False when `token` does not hold
        the task's lease.
        """

    @abstractmethod
    async def set_progress(
        self, task_id: str, progress: float, *, token: int | None = None
    ) -> bool:
        """Store the running task's progress (0.0 to 1.0) so any reader sees it."""

    @abstractmethod
    async def annotate(
        self, notes: Mapping[str, TaskNote], *, max_logs: int = 100
    ) -> dict[str, bool]:
        """Store what running tasks' holders noted: context and new log records.

        One call for many tasks (task id -> `TaskNote`). A task keeps its latest
        `max_logs` log records. Returns, per task id, whether the note was stored: False
        when the token no longer holds the task (or it is gone or final).
        """

    # ----------------------------------------------------------------- control

    @abstractmethod
    async def cancel(self, task_id: str, reason: str | None = None) -> bool:
        """Cancel a task that is not final.

        A PENDING task becomes CANCELLED at once. A PROCESSING task gets a flag its
        holder sees on its next `renew` (or sooner), after which it reports
        `mark_cancelled`; if its lease runs out first, recovery makes it CANCELLED.
        Returns False when the task is already final; raises `TaskNotFoundError` when
        there is no such task.
        """

    @abstractmethod
    async def requeue(self, task_id: str, delay_seconds: float = 0.0) -> Task:
        """Run a final task (failed, cancelled or completed) again from its first attempt.

        Raises `TaskStateError` when the task is not final, `TaskNotFoundError` when
        there is no such task.
        """

    @abstractmethod
    async def purge(self, status: TaskStatus = TaskStatus.PENDING) -> int:
        """Delete every task in `status` and return how many; PROCESSING is refused."""

    # ----------------------------------------------------------------- reading

    @abstractmethod
    async def get_task(self, task_id: str) -> Task | None:
        """Return a snapshot of the task, or None when there is none (or it expired)."""

    @abstractmethod
    async def wait_for(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait, without polling, until the task is final and return it.

        Raises `TimeoutError` after `timeout` seconds and `TaskNotFoundError` when
        there is no such task.
        """

    @abstractmethod
    async def list_tasks(
        self, status: TaskStatus | None = None, *, limit: int = 100, newest_first: bool = False
    ) -> list[Task]:
        """Return up to `limit` tasks, in `status` if given, oldest first.

        With `newest_first`, the most recently created ones, newest first.
        """

    @abstractmethod
    async def count_tasks(self) -> dict[TaskStatus, int]:
        """Return how many tasks are in each state (every state present, maybe 0)."""

    # ----------------------------------------------------------------- operations

    @abstractmethod
    async def register_worker(self, worker: WorkerInfo, ttl: float) -> None:
        """Add or refresh `worker` in the registry of live worker processes.

        The broker stamps `heartbeat_at` with its own clock. The entry is dropped when
        no refresh comes within `ttl` seconds (its process is taken for dead), so dead
        entries never pile up. Each worker process calls this when its slots start and
        on every heartbeat.
        """

    @abstractmethod
    async def unregister_worker(self, worker_id: str) -> bool:
        """Remove a worker from the registry; False when it was not registered."""

    @abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Return the live registered workers, longest running first."""

    @abstractmethod
    async def get_stats(self, minutes: int = 60) -> QueueStats:
        """Return how many tasks became completed, failed and cancelled, per minute.

        Covers the last `minutes` minutes (1 to `STATS_RETENTION_MINUTES`), the current
        one included, oldest first, minutes without any as zeros. Counts are kept when a
        task becomes final and forgotten after `STATS_RETENTION_MINUTES`.
        """

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Release connections and wake any waiting caller; stored tasks are kept."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- Katana API

    async def update_task_status(
        self, task_id: str, status: TaskStatus, *, token: int | None = None
    ) -> bool:
        """Move a task to `status` by the matching operation; returns its result.

        PENDING requeues a final task (or releases a leased one when `token` is given),
        PROCESSING is accepted only for a task already leased (use `dequeue` to lease),
        COMPLETED, FAILED and CANCELLED act as `mark_complete`, `mark_failed` and
        `cancel` (or `mark_cancelled` with a token).
        """
        status = TaskStatus(status)
        if status is TaskStatus.COMPLETED:
            return await self.mark_complete(task_id, token=token)
        if status is TaskStatus.FAILED:
            error = TaskError("Failed", "marked failed by update_task_status")
            return await self.mark_failed(task_id, error, token=token)
        if status is TaskStatus.CANCELLED:
            if token is not None:
                return await self.mark_cancelled(task_id, token=token)
            return await self.cancel(task_id)
        current = await self.get_task(task_id)
        if current is None:
            raise TaskNotFoundError(task_id)
        if status is TaskStatus.PROCESSING:
            if current.status is TaskStatus.PROCESSING:
                return True
            raise TaskStateError(
                f"task {task_id} is {current.status.value}; only dequeue leases a task"
            )
        if current.status is TaskStatus.PENDING:
            return True
        if current.status is TaskStatus.PROCESSING:
            if token is None:
                raise TaskStateError(f"task {task_id} is processing; pass its lease token")
            return await self.release(task_id, token=token)
        await self.requeue(task_id)
        return True

    async def mark_complete_many(self, outcomes: Iterable[tuple[str, int, Any]]) -> list[bool]:
        """Acknowledge several `(task_id, token, result)` successes; one bool each."""
        return [await self.mark_complete(i, r, token=t) for i, t, r in outcomes]
