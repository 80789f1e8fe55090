"""TaskTracker: a worker's local view of its tasks, readable without awaiting.

The async-task-worker API reads task state synchronously (`get_task_info`), while the
truth lives in a broker that may be in another process. The tracker keeps a `TaskInfo`
per task the worker added and keeps it current from three sources: the worker's own
executor (running, progress) at once, one watcher per task that waits on the broker
for the final state (no polling), and a refresh every poll interval for tasks that
other processes are running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ..broker.base import AbstractBroker
from ..errors import TaskFailedError, TaskNotFoundError
from ..models import Task, utcnow
from ..models import TaskStatus as CoreStatus
from .cancelling import cancel_and_wait
from .models import TaskInfo, TaskStatus

__all__ = ["TaskTracker"]

logger = logging.getLogger(__name__)

_REFRESH_LIMIT = 1000
_READ_EACH_MAX = 32  # up to this many tasks to refresh are read one by one
_PRUNE_EVERY = 1024
_RETRY_CAP = 5.0
_EARLY_LIMIT = 1024


class _Record:
    """One tracked task: its info and what the worker knows beyond the broker."""

    __slots__ = ("exception", "follows", "futures", "info", "ran_here", "running_here", "watcher")

    def __init__(self, info: TaskInfo, follows: str | None) -> None:
        self.info = info
        self.follows = follows
        self.futures: list[asyncio.Future[Any]] = []
        self.watcher: asyncio.Task[None] | None = None
        self.exception: BaseException | None = None
        self.running_here = False
        self.ran_here = False


def _failure(task: Task) -> BaseException:
    """The exception a future raises for a task that failed in another process."""
    if task.error is not None and task.error.type == "TimeoutError":
        return TimeoutError(task.error.message)
    return TaskFailedError(task)


class TaskTracker:
    """Local `TaskInfo`s, futures and final-state watchers of one worker's tasks.

    `on_final(task)` is awaited once per tracked task when the broker reports it final,
    after the info and futures are settled; `on_gone(task_id)` is called for a tracked
    task the broker no longer knows. Final tasks are forgotten `retention` seconds after
    they ended.
    """

    def __init__(
        self,
        broker: AbstractBroker,
        on_final: Callable[[Task], Awaitable[None]],
        retention: float,
        on_gone: Callable[[str], None] | None = None,
    ) -> None:
        self.broker = broker
        self.retention = retention
        self._on_final = on_final
        self._on_gone = on_gone
        self._records: dict[str, _Record] = {}
        self._adopting: dict[str, _Record] = {}  # asked for by id, not added here
        # Runs that began before `track`: a task added here can be leased and run
        # before its `add_task` call returns. Only the newest _EARLY_LIMIT are kept
        # (tasks added by other processes land here too and are never tracked).
        self._early: dict[str, _Record] = {}
        self._watching = True
        self._finishing: set[asyncio.Future[None]] = set()
        self._added = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._records

    # ----------------------------------------------------------------- recording

    def track(self, task: Task, follows: str | None = None) -> TaskInfo:
        """Start tracking `task` (a broker snapshot) and watch it until it is final."""
        record = self._records.get(task.id)
        if record is None:
            record = self._early.pop(task.id, None)
            if record is None or record.info.created_at != task.created_at:
                # (A run of an earlier task with the same id, since purged: not this one.)
                record = _Record(TaskInfo.from_task(task), follows)
            record.follows = follows
            self._records[task.id] = record
            self._added += 1
            if self._added % _PRUNE_EVERY == 0:
                self._prune()  # also when no refresh loop runs (a worker never started)
        self._watch(task.id, record)
        return record.info

    def follows(self, task_id: str) -> str | None:
        """The id of the task `task_id` waits for (single flight), or None."""
        record = self._local(task_id)
        return None if record is None else record.follows

    def set_follows(self, task_id: str, leader: str | None) -> None:
        """Record which task `task_id` now waits for (None: it runs on its own)."""
        record = self._local(task_id)
        if record is not None:
            record.follows = leader

    def completed_now(self, task_id: str, result: Any) -> None:
        """Show a task completed at once (a cache hit) before the broker's word arrives."""
        record = self._local(task_id)
        if record is not None and not record.info.status.is_final:
            info = record.info
            info.status = TaskStatus.COMPLETED
            info.result = result
            info.progress = 1.0
            info.completed_at = utcnow()

    def cancelled_now(self, task_id: str) -> None:
        """Show an accepted cancel at once; the broker's final state overrides it later."""
        record = self._records.get(task_id)
        if record is not None and not record.info.status.is_final:
            record.info.status = TaskStatus.CANCELLED
            record.info.error = "cancelled on request"
            record.info.completed_at = utcnow()

    def _local(self, task_id: str) -> _Record | None:
        """The record of a task, tracked or only run here so far."""
        return self._records.get(task_id) or self._early.get(task_id)

    def _running(self, task: Task) -> _Record:
        """The record of a task this process runs, tracked yet or not."""
        record = self._local(task.id)
        if record is None:
            record = self._early[task.id] = _Record(TaskInfo.from_task(task), None)
            if len(self._early) > _EARLY_LIMIT:
                del self._early[next(iter(self._early))]
        return record

    def started(self, task: Task) -> None:
        """The task began running in this process."""
        record = self._running(task)
        if not record.info.status.is_final:
            record.running_here = True
            record.info.status = TaskStatus.RUNNING
            record.info.started_at = task.started_at or utcnow()
            record.info.progress = task.progress

    def progress(self, task_id: str, progress: float) -> None:
        """The task, running in this process, reported `progress`."""
        record = self._local(task_id)
        if record is not None and not record.info.status.is_final:
            record.info.progress = progress

    def left(self, task_id: str, exception: BaseException | None = None) -> None:
        """The task's function returned or raised `exception` in this process."""
        record = self._local(task_id)
        if record is not None:
            record.running_here = False
            record.ran_here = True
            if exception is not None:
                record.exception = exception

    def ran_here(self, task_id: str) -> bool:
        """True when this process ran the task's function (or found its result cached)."""
        record = self._local(task_id)
        return record is not None and record.ran_here

    def exception_of(self, task_id: str) -> BaseException | None:
        """The exception the task's function raised in this process, if it did."""
        record = self._local(task_id)
        return None if record is None else record.exception

    def share_exception(self, task_id: str, source_id: str) -> None:
        """Make `task_id`'s future raise the same exception object as `source_id`'s."""
        source = self._local(source_id)
        record = self._local(task_id)
        if source is not None and record is not None and source.exception is not None:
            record.exception = source.exception

    # ----------------------------------------------------------------- reading

    def view(self, task_id: str) -> TaskInfo | None:
        """A copy of the task's info, or None when it is not tracked here."""
        record = self._records.get(task_id)
        return None if record is None else self._view(record)

    def views(self) -> list[TaskInfo]:
        """Copies of every tracked task's info, in the order they were added."""
        return [self._view(record) for record in self._records.values()]

    def _view(self, record: _Record) -> TaskInfo:
        info = dataclasses.replace(record.info, metadata=dict(record.info.metadata))
        leader = self._records.get(record.follows) if record.follows else None
        if leader is not None and not info.status.is_final and not leader.info.status.is_final:
            # A task waiting for an identical one shows that one's progress.
            info.status = leader.info.status
            info.started_at = leader.info.started_at
            info.progress = leader.info.progress
        return info

    def future(self, task_id: str) -> asyncio.Future[Any]:
        """A new future for the task's result; settled when the task is final."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        record = self._records.get(task_id)
        if record is None:
            # Not added here: learn about it from the broker, then track it.
            record = self._adopting.get(task_id)
            if record is None:
                record = _Record(TaskInfo(task_id, TaskStatus.PENDING, utcnow()), None)
                self._adopting[task_id] = record
            record.futures.append(future)
            self._watch(task_id, record, adopt=True)
            return future
        if record.info.status.is_final and record.watcher is None:
            self._settle(record, future)
        else:
            record.futures.append(future)
            self._watch(task_id, record)
        return future

    # ----------------------------------------------------------------- watching

    def watch_all(self) -> None:
        """(Re)start the watchers of every tracked task not known to be final."""
        self._watching = True
        for task_id, record in self._records.items():
            if not record.info.status.is_final or record.futures:
                self._watch(task_id, record)
        for task_id, record in self._adopting.items():
            self._watch(task_id, record, adopt=True)

    async def stop(self) -> None:
        """Stop every watcher; futures stay pending until `watch_all` runs again."""
        self._watching = False
        records = [*self._records.values(), *self._adopting.values()]
        watchers = [r.watcher for r in records if r.watcher is not None]
        await cancel_and_wait(watchers)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    def _watch(self, task_id: str, record: _Record, adopt: bool = False) -> None:
        if not self._watching or (record.watcher is not None and not record.watcher.done()):
            return
        record.watcher = asyncio.get_running_loop().create_task(
            self._watcher(task_id, record, adopt), name=f"task-queue-compat-watch-{task_id}"
        )

    async def _watcher(self, task_id: str, record: _Record, adopt: bool) -> None:
        delay = 0.05
        try:
            while True:
                try:
                    task = await self.broker.wait_for(task_id)
                    break
                except TaskNotFoundError as exc:
                    self._forget(task_id, record, exc)
                    return
                except Exception as exc:
                    logger.warning(
                        "task %s: waiting for its final state failed (%r); retrying",
                        task_id,
                        exc,
                        extra={"task_id": task_id},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_CAP)
            if adopt:
                self._adopting.pop(task_id, None)
                self._records.setdefault(task_id, record)
            self._finalize(record, task)
        finally:
            record.watcher = None
        # Shielded: stopping the watchers must not leave a final state half handled.
        handling = asyncio.ensure_future(self._handle_final(task))
        self._finishing.add(handling)
        handling.add_done_callback(self._finishing.discard)
        await asyncio.shield(handling)

    async def _handle_final(self, task: Task) -> None:
        try:
            await self._on_final(task)
        except Exception:
            logger.exception(
                "task %s [%s]: handling its final state failed",
                task.id,
                task.name,
                extra={"task_id": task.id, "task_name": task.name},
            )

    def _finalize(self, record: _Record, task: Task) -> None:
        follows = record.follows
        record.info = TaskInfo.from_task(task)
        record.follows = follows
        record.running_here = False
        if task.status is CoreStatus.FAILED and record.exception is None:
            record.exception = _failure(task)
        futures, record.futures = record.futures, []
        for future in futures:
            self._settle(record, future)

    def _settle(self, record: _Record, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        status = record.info.status
        if status is TaskStatus.COMPLETED:
            future.set_result(record.info.result)
        elif status is TaskStatus.FAILED:
            future.set_exception(record.exception or RuntimeError(record.info.error))
        else:
            future.cancel()

    def _forget(self, task_id: str, record: _Record, exc: TaskNotFoundError) -> None:
        if self._records.get(task_id) is record:
            del self._records[task_id]
            if self._on_gone is not None:
                self._on_gone(task_id)
        if self._adopting.get(task_id) is record:
            del self._adopting[task_id]
        futures, record.futures = record.futures, []
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    # ----------------------------------------------------------------- refreshing

    async def refresh(self) -> None:
        """Bring tasks that other processes run up to date, and forget old final ones."""
        self._prune()
        candidates = [
            record
            for record in self._records.values()
            if not record.info.status.is_final and not record.running_here and not record.follows
        ]
        if not candidates:
            return
        running: dict[str, Task] = {}
        listed_all = False
        if len(candidates) > _READ_EACH_MAX:
            # Many of ours: one call for every running task of the queue, unless there
            # are more of those than one call returns.
            listed = await self.broker.list_tasks(CoreStatus.PROCESSING, limit=_REFRESH_LIMIT)
            running = {t.id: t for t in listed}
            listed_all = len(listed) < _REFRESH_LIMIT
        for record in candidates:
            task: Task | None = running.get(record.info.id)
            if task is None and (not listed_all or record.info.status is TaskStatus.RUNNING):
                task = await self.broker.get_task(record.info.id)  # or handed back, or ended
            if task is not None and not task.is_final:
                self.observe(task)  # a final state is the watcher's to record

    async def reread_running(self) -> None:
        """Read every task shown running from the broker again (after the worker slots
        stopped, the tasks they handed back read pending)."""
        for record in list(self._records.values()):
            if record.info.status is TaskStatus.RUNNING and not record.running_here:
                task = await self.broker.get_task(record.info.id)
                if task is not None:
                    self.observe(task)

    def observe(self, task: Task) -> None:
        """Take in a snapshot of a tracked task read from the broker, if it is news.

        The local view is never behind what this worker has read: a task seen final by
        `fetch_task_info` reads final through `get_task_info` too, and a task whose
        cancel was requested reads cancelled. Futures are still settled by the watcher.
        """
        record = self._records.get(task.id)
        if record is None or record.info.status.is_final:
            return
        if task.cancel_requested and not task.is_final:
            self.cancelled_now(task.id)  # accepted: it reads cancelled from now on
            return
        if record.running_here and not task.is_final:
            return  # this process's own executor knows better
        if task.is_final:
            record.info = TaskInfo.from_task(task)
            return
        info = record.info
        info.status = TaskStatus.from_core(task.status)
        info.started_at = task.started_at
        info.progress = task.progress

    def _prune(self) -> None:
        cutoff = time.time() - self.retention
        stale = [
            task_id
            for task_id, record in self._records.items()
            if record.info.status.is_final
            and not record.futures
            and record.watcher is None
            and _before(record.info.completed_at, cutoff)
        ]
        for task_id in stale:
            del self._records[task_id]


def _before(moment: datetime | None, cutoff: float) -> bool:
    return moment is not None and moment.timestamp() < cutoff
