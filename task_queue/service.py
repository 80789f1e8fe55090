"""TaskQueueService: executors by name, add_task, worker slots, heartbeat and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from .broker.base import MAX_PRIORITY, AbstractBroker, TaskNote, check_priority
from .codec import is_text, normalize
from .context import apply_context, current_task, report_progress, running
from .errors import (
    PayloadError,
    TaskCancelledError,
    TaskFailedError,
    UnknownTaskError,
)
from .gcpause import collector_paused
from .handle import TaskHandle
from .hooks import Hooks, Middleware, PostRunHook, TaskHook
from .models import Task, TaskError, TaskStatus, new_id, utcnow
from .monitoring import WorkerInfo
from .retry import RetryPolicy

__all__ = [
    "Executor",
    "TaskExecutor",
    "TaskQueueService",
    "current_task",
    "report_progress",
]

logger = logging.getLogger(__name__)

TaskExecutor = Callable[[Task], Coroutine[Any, Any, Any]]
"""The signature of an async executor: takes the `Task`, returns a JSON result."""

Executor = Callable[[Task], Any]
"""Any executor: an async function, or a plain one (run in a thread)."""

E = TypeVar("E", bound=Executor)

_MAX_ID_LENGTH = 256
_PENDING = TaskStatus.PENDING  # an enum member read from its class costs a lookup each time


@dataclass(slots=True)
class _Registered:
    fn: Executor
    is_async: bool


class _Lease:
    """A task this process holds: leased, buffered or running in a slot."""

    __slots__ = (
        "cancelling",
        "context_dirty",
        "lost",
        "new_logs",
        "noted",
        "releasing",
        "running",
        "service",
        "slot",
        "task",
        "token",
    )

    def __init__(self, service: TaskQueueService, task: Task) -> None:
        self.service = service
        self.task = task
        self.token = task.token
        self.slot: asyncio.Task[Any] | None = None
        self.running = False
        self.cancelling = False
        self.releasing = False
        self.lost = False
        self.context_dirty = False
        self.new_logs: list[dict[str, Any]] = []
        self.noted = False  # context or log records were made while it ran

    # What `task_queue.context` asks of a running task (its RunningTask protocol).

    def context_changed(self, key: str, value: Any) -> None:
        with self.service._notes_lock:
            apply_context(self.task.context, key, value)
            self.context_dirty = True
        self.service._noted(self)

    def logged(self, record: dict[str, Any]) -> None:
        limit = self.service.max_task_logs
        with self.service._notes_lock:
            self.new_logs.append(record)
            if len(self.new_logs) > limit:
                del self.new_logs[0]
            logs = self.task.logs
            logs.append(record)
            if len(logs) > limit:
                del logs[: len(logs) - limit]
        self.service._noted(self)

    async def progress(self, value: float) -> None:
        self.task.progress = value
        await self.service.broker.set_progress(self.task.id, value, token=self.token)


async def _finished(future: asyncio.Future[Any]) -> None:
    """Wait for `future` to end even if we are cancelled again meanwhile.

    A further cancel is absorbed (and its count taken back, so `asyncio.timeout` still
    reads the first one right); what it was for is in the lease's flags.
    """
    me = asyncio.current_task()
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if me is not None:
                me.uncancel()


def _finite(number: float) -> bool:
    """math.isfinite, also for an int too large for a float (not finite then)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _log_extra(task: Task) -> dict[str, Any]:
    return {"task_id": task.id, "task_name": task.name}


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class TaskQueueService:
    """Runs named executors for the tasks of one broker.

    `task_executors` maps task names to executors: async functions taking the `Task`
    (plain functions run in a thread). `retry_policy` decides how failed tasks retry,
    `default_timeout` bounds a task that sets no `timeout` of its own, `concurrency` is
    the number of slots `async with service:` starts, `prefetch` how many leased tasks
    beyond the free slots this process may hold, and `shutdown_grace` how long
    `shutdown()` lets running tasks finish before it cancels them and hands them back.
    With `check_names=False`, `add_task` accepts names this process has no executor for
    (a producer whose workers run elsewhere). `middleware` adds lifecycle hooks (see
    `task_queue.hooks`). A task keeps its latest `max_task_logs` log records;
    context and log records are stored at most `note_interval` seconds after they are
    made, many tasks in one broker call, and always before the task's outcome.
    """

    def __init__(
        self,
        broker: AbstractBroker,
        task_executors: Mapping[str, Executor] | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        default_timeout: float | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        shutdown_grace: float = 30.0,
        check_names: bool = True,
        worker_id: str | None = None,
        middleware: Iterable[Middleware] = (),
        max_task_logs: int = 100,
        note_interval: float = 0.2,
    ) -> None:
        if not isinstance(broker, AbstractBroker):
            raise TypeError(f"broker must be an AbstractBroker, got {type(broker).__name__}")
        if default_timeout is not None and not default_timeout > 0:
            raise ValueError(f"default_timeout must be > 0 or None, got {default_timeout}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0, got {shutdown_grace}")
        if isinstance(max_task_logs, bool) or not isinstance(max_task_logs, int):
            raise TypeError(f"max_task_logs must be an int, got {max_task_logs!r}")
        if max_task_logs < 0:
            raise ValueError(f"max_task_logs must be >= 0, got {max_task_logs}")
        if not note_interval >= 0:
            raise ValueError(f"note_interval must be >= 0, got {note_interval}")
        self.broker = broker
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_timeout = default_timeout
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.shutdown_grace = shutdown_grace
        self.check_names = check_names
        self.worker_id = worker_id or _default_worker_id()
        self.max_task_logs = max_task_logs
        self.note_interval = float(note_interval)
        self.hooks = Hooks()
        for item in middleware:
            self.hooks.add_middleware(item)
        self._executors: dict[str, _Registered] = {}
        for name, fn in (task_executors or {}).items():
            self.register(name, fn)
        self._held: dict[str, _Lease] = {}
        self._buffer: deque[_Lease] = deque()
        self._idle: deque[asyncio.Future[bool]] = deque()
        self._waking = 0
        self._slots = 0
        self._slot_counter = 0
        self._launched: set[asyncio.Task[None]] = set()
        self._slot_tasks: set[asyncio.Task[Any]] = set()
        self._capacity: asyncio.Event | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self._generation = 0  # shutdown() moves it on: slots started before it end
        self._acks: list[tuple[str, int, Any, asyncio.Future[bool]]] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        self._notes_lock = threading.Lock()
        self._noting: dict[str, _Lease] = {}
        self._note_flusher: asyncio.Task[None] | None = None
        self._notes_flushing = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._started_at = utcnow()
        self._idle_since = time.monotonic()
        self._registered = False
        self._registry_failing = False
        self._announcing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._executors))
        return f"TaskQueueService(broker={self.broker!r}, executors=[{names}])"

    # ----------------------------------------------------------------- registry

    @property
    def task_executors(self) -> dict[str, Executor]:
        """A copy of the name -> executor mapping."""
        return {name: reg.fn for name, reg in self._executors.items()}

    def register(self, name: str, executor: Executor) -> None:
        """Register `executor` for tasks named `name`; replaces an earlier one."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"task name must be a non-empty str, got {name!r}")
        if not callable(executor):
            raise TypeError(f"executor for {name!r} must be callable, got {executor!r}")
        is_async = inspect.iscoroutinefunction(executor) or inspect.iscoroutinefunction(
            getattr(executor, "__call__", None)  # noqa: B004
        )
        self._executors[name] = _Registered(executor, is_async)

    @overload
    def executor(self, name: E, /) -> E: ...

    @overload
    def executor(self, name: str | None = None, /) -> Callable[[E], E]: ...

    def executor(self, name: str | E | None = None, /) -> E | Callable[[E], E]:
        """Decorator registering an executor, under `name` or the function's own name.

        Use as `@service.executor`, `@service.executor()` or `@service.executor("name")`.
        """
        if callable(name):
            fn = name
            self.register(getattr(fn, "__name__", repr(fn)), fn)
            return fn

        label: str | None = name

        def decorate(fn: E) -> E:
            self.register(label or str(getattr(fn, "__name__", repr(fn))), fn)
            return fn

        return decorate

    # ----------------------------------------------------------------- hooks

    def on_pre_create(self, hook: TaskHook) -> TaskHook:
        """Decorator: run `hook(task)` before each task is stored; raising rejects it."""
        self.hooks.pre_create.append(Hooks.check(hook))
        return hook

    def on_post_create(self, hook: TaskHook) -> TaskHook:
        """Decorator: run `hook(task)` after each task was stored; errors are logged."""
        self.hooks.post_create.append(Hooks.check(hook))
        return hook

    def on_pre_run(self, hook: TaskHook) -> TaskHook:
        """Decorator: run `hook(task)` before each attempt; raising fails the attempt."""
        self.hooks.pre_run.append(Hooks.check(hook))
        return hook

    def on_post_run(self, hook: PostRunHook) -> PostRunHook:
        """Decorator: run `hook(task, result=..., error=...)` after each attempt; errors
        are logged and do not change the task's outcome."""
        self.hooks.post_run.append(Hooks.check(hook))
        return hook

    def add_middleware(self, middleware: Middleware) -> None:
        """Add the hooks a `Middleware` subclass overrides."""
        self.hooks.add_middleware(middleware)

    # ----------------------------------------------------------------- producing

    def _build(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        priority: int,
        delay_seconds: float,
        task_id: str | None,
        max_retries: int | None,
        timeout: float | None,
        metadata: Mapping[str, Any] | None,
        scheduled_at: datetime | None,
        depends_on: Iterable[Task | TaskHandle | str] | None = None,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Task:
        # Bulk enqueues call this once per task: each check tests the common case with
        # an exact type first and only then the slower general one.
        if (type(name) is not str and not isinstance(name, str)) or not name:
            raise TypeError(f"task name must be a non-empty str, got {name!r}")
        if not name.isascii() and not is_text(name):
            raise ValueError(f"task name {name!r} holds a lone surrogate: not valid Unicode")
        if self.check_names and name not in self._executors:
            raise UnknownTaskError(name, list(self._executors))
        if payload is None:
            payload = {}
        elif type(payload) is not dict and not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a dict (JSON object), got {type(payload).__name__}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(
                f"metadata must be a dict (JSON object), got {type(metadata).__name__}"
            )
        if context is not None and not isinstance(context, Mapping):
            raise TypeError(f"context must be a dict (JSON object), got {type(context).__name__}")
        if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            check_priority(priority)
        if (
            type(delay_seconds) is not float
            and type(delay_seconds) is not int
            and (isinstance(delay_seconds, bool) or not isinstance(delay_seconds, int | float))
        ):
            raise TypeError(f"delay_seconds must be a number, got {delay_seconds!r}")
        if delay_seconds and (not _finite(delay_seconds) or delay_seconds < 0):
            raise ValueError(f"delay_seconds must be a finite number >= 0, got {delay_seconds}")
        if task_id is None:
            task_id = new_id()
        else:
            if not isinstance(task_id, str) or not task_id:
                raise TypeError(f"task_id must be a non-empty str, got {task_id!r}")
            if len(task_id) > _MAX_ID_LENGTH:
                raise ValueError(f"task_id is longer than {_MAX_ID_LENGTH} characters")
            if not is_text(task_id):
                raise ValueError(f"task_id {task_id!r} holds a lone surrogate: not valid Unicode")
        if max_retries is None:
            max_retries = self.retry_policy.max_retries
        elif type(max_retries) is not int and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int)
        ):
            raise TypeError(f"max_retries must be an int, got {max_retries!r}")
        elif max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"timeout must be a number or None, got {timeout!r}")
            if not timeout > 0 or not _finite(timeout):
                raise ValueError(f"timeout must be a finite number > 0, got {timeout}")
            timeout = float(timeout)
        if now is None:
            now = utcnow()
        if scheduled_at is not None:
            if delay_seconds:
                raise ValueError("give either delay_seconds or scheduled_at, not both")
            if not isinstance(scheduled_at, datetime) or scheduled_at.tzinfo is None:
                raise TypeError("scheduled_at must be a timezone-aware datetime")
            try:
                due = scheduled_at.astimezone(UTC)
            except OverflowError:
                raise ValueError(f"scheduled_at {scheduled_at} is out of range in UTC") from None
        elif delay_seconds:
            try:
                due = now + timedelta(seconds=delay_seconds)
            except OverflowError:
                raise ValueError(
                    f"delay_seconds {delay_seconds} is too large: due after the year 9999"
                ) from None
        else:
            due = now
        parents = [] if depends_on is None else _parent_ids(depends_on, task_id)
        # Every field positionally: the dataclass defaults would draw an id and read the
        # clock again only to have them replaced.
        return Task(
            name,
            dict(payload),
            priority,
            task_id,
            due,
            now,
            _PENDING,
            0,
            max_retries,
            timeout,
            None,
            None,
            None,
            None,
            0.0,
            dict(metadata) if metadata else {},
            0,
            None,
            False,
            parents,
            normalize(dict(context), "context") if context else {},
            [],
        )

    async def add_task(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        priority: int = 0,
        delay_seconds: float = 0.0,
        *,
        task_id: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
        depends_on: Iterable[Task | TaskHandle | str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Task:
        """Enqueue a task for the executor `name` and return it as stored.

        `priority`: lower runs first. `delay_seconds` (or an aware `scheduled_at`) makes
        the task wait before it may start. `task_id` makes the call idempotent: adding
        an id that exists returns the existing task. `depends_on` names parent tasks
        (tasks, handles or ids): the task waits until every parent completed, and is
        cancelled, its error naming the parent, when one fails or is cancelled.
        `context` is the task's initial context (see `set_context`).

        Raises `UnknownTaskError` (a `ValueError`) for a name with no executor,
        `TypeError` naming the field for a payload that is not JSON, `ValueError` for a
        negative delay, `TaskNotFoundError` for a parent that does not exist, and
        whatever a pre_create hook raises; nothing is enqueued then.
        """
        task = self._build(
            name,
            payload,
            priority,
            delay_seconds,
            task_id,
            max_retries,
            timeout,
            metadata,
            scheduled_at,
            depends_on,
            context,
        )
        if self.hooks.pre_create:
            await self.hooks.run_pre_create(task)
        stored = await self.broker.enqueue(task)
        created = stored.created_at == task.created_at
        if created and self.hooks.post_create:
            await self.hooks.run_post_create(stored)
        if not created:
            logger.info(
                "task %s [%s] exists already; not enqueued again",
                stored.id,
                stored.name,
                extra=_log_extra(stored),
            )
        elif logger.isEnabledFor(logging.INFO):
            delay = "" if not delay_seconds else f", due in {delay_seconds:g}s"
            logger.info(
                "task %s [%s] created (priority %d%s)",
                stored.id,
                stored.name,
                stored.priority,
                delay,
                extra=_log_extra(stored),
            )
        return stored

    async def submit(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        priority: int = 0,
        delay_seconds: float = 0.0,
        **options: Any,
    ) -> TaskHandle:
        """Enqueue like `add_task` (same arguments) and return a `TaskHandle` to wait for
        the task, read its status or cancel it."""
        task = await self.add_task(name, payload, priority, delay_seconds, **options)
        return TaskHandle(self, task)

    def handle(self, task: Task | TaskHandle | str) -> TaskHandle:
        """A `TaskHandle` for a task enqueued earlier (a Task, a handle or an id)."""
        if isinstance(task, TaskHandle):
            task = task.task or task.id
        if isinstance(task, str) and task:
            return TaskHandle(self, task)
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, a TaskHandle or a task id, got {task!r}")
        return TaskHandle(self, task)

    async def add_tasks(self, tasks: Iterable[Mapping[str, Any]]) -> list[Task]:
        """Enqueue many tasks in one broker call; each item holds `add_task`'s arguments.

        Every item is checked first: one bad item raises and nothing is enqueued. An
        item may depend on an earlier item of the same call.
        """
        built = []
        now = utcnow()  # one creation time for the call
        specs = tasks if isinstance(tasks, list | tuple) else list(tasks)
        # The random ids of the call drawn at once: one read of the OS's random source
        # instead of one per task.
        fresh_ids = os.urandom(16 * len(specs)).hex()
        with collector_paused(len(specs)):
            for index, spec in enumerate(specs):
                if type(spec) is not dict and not isinstance(spec, Mapping):
                    raise TypeError(f"tasks[{index}] must be a mapping, got {type(spec).__name__}")
                if not spec.keys() <= _SPEC_KEYS:
                    unknown = sorted(set(spec) - _SPEC_KEYS, key=repr)
                    raise TypeError(f"tasks[{index}] has unknown keys: {unknown}")
                if "name" not in spec:
                    raise TypeError(f"tasks[{index}] has no 'name'")
                built.append(
                    self._build(
                        spec["name"],
                        spec.get("payload"),
                        spec.get("priority", 0),
                        spec.get("delay_seconds", 0.0),
                        spec.get("task_id", fresh_ids[32 * index : 32 * index + 32]),
                        spec.get("max_retries"),
                        spec.get("timeout"),
                        spec.get("metadata"),
                        spec.get("scheduled_at"),
                        spec.get("depends_on"),
                        spec.get("context"),
                        now,
                    )
                )
        if self.hooks.pre_create:
            for task in built:
                await self.hooks.run_pre_create(task)
        stored = await self.broker.enqueue_many(built)
        if self.hooks.post_create:
            for task, kept in zip(built, stored, strict=True):
                if kept.created_at == task.created_at:
                    await self.hooks.run_post_create(kept)
        logger.debug("%d tasks created in bulk", len(stored))
        return stored

    # ----------------------------------------------------------------- reading

    async def get_task(self, task_id: str) -> Task | None:
        """Return the task as the broker holds it now, or None."""
        return await self.broker.get_task(task_id)

    async def wait_for(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task is final and return it; `TimeoutError` after `timeout` s."""
        return await self.broker.wait_for(task_id, timeout)

    async def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the task and return its result.

        Raises `TaskFailedError` or `TaskCancelledError` when it did not complete, and
        `TimeoutError` after `timeout` seconds.
        """
        task = await self.broker.wait_for(task_id, timeout)
        if task.status is TaskStatus.FAILED:
            raise TaskFailedError(task)
        if task.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(task)
        return task.result

    async def cancel(self, task_id: str, reason: str | None = None) -> bool:
        """Cancel a pending or running task; False when it is already final.

        A pending task is CANCELLED at once. A running one is stopped by its worker:
        at once when it runs in this process, else within one heartbeat.
        """
        accepted = await self.broker.cancel(task_id, reason)
        lease = self._held.get(task_id)
        if accepted and lease is not None:
            self._cancel_local(lease)
        return accepted

    # ----------------------------------------------------------------- workers

    @property
    def running(self) -> bool:
        """True while worker slots of this service are running (or about to)."""
        self._launched = {t for t in self._launched if not t.done()}
        return self._slots > 0 or bool(self._launched)

    def start_workers(self, num_workers: int | None = None) -> list[asyncio.Task[None]]:
        """Start `num_workers` slots (default `concurrency`) and return their asyncio tasks.

        Call it from a running event loop, e.g. a FastAPI lifespan. Each slot runs one
        task at a time; the tasks end after `shutdown()`.
        """
        count = self.concurrency if num_workers is None else num_workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        started = []
        for _ in range(count):
            self._slot_counter += 1
            number = self._slot_counter
            started.append(
                asyncio.create_task(self.worker(number), name=f"task-queue-worker-{number}")
            )
        self._launched.update(started)
        return started

    async def worker(self, worker_number: int = 0) -> None:
        """Run one worker slot until `shutdown()`: take leased tasks and execute them."""
        me = asyncio.current_task()
        if me is None:  # pragma: no cover - always inside a task under asyncio
            raise RuntimeError("worker() must run inside an asyncio task")
        if self._stopping:
            return
        generation = self._generation
        self._start_runtime()
        self._slot_tasks.add(me)
        self._slots += 1
        self._wake_fetcher()
        logger.debug("worker slot %d of %s started", worker_number, self.worker_id)
        try:
            while True:
                lease: _Lease | None
                buffer = self._buffer
                if buffer and not self._stopping:
                    lease = buffer.popleft()
                    if buffer and not self._waking:
                        self._wake_idle()
                else:
                    lease = await self._wait_for_lease()
                    if lease is None:
                        return
                await self._run(lease, me)
                if self._stopping or self._generation != generation:
                    return
        finally:
            self._slots -= 1
            self._slot_tasks.discard(me)
            logger.debug("worker slot %d of %s stopped", worker_number, self.worker_id)

    def _take(self) -> _Lease:
        """Pop the next buffered lease; wake one idle slot when more are left."""
        lease = self._buffer.popleft()
        if self._buffer and not self._waking:
            self._wake_idle()
        return lease

    def _wake_idle(self) -> None:
        """Wake one idle slot to take from the buffer; at most one wake is in flight.

        A woken slot that takes a lease passes the wake on while leases are left, so
        slots join one per loop turn, and a slot that runs its tasks without awaiting
        drains the buffer without a wake-up per task.
        """
        while self._idle:
            future = self._idle.popleft()
            if not future.done():
                self._waking += 1
                future.set_result(True)
                return

    async def _wait_for_lease(self) -> _Lease | None:
        loop = asyncio.get_running_loop()
        while True:
            if self._stopping:
                return None
            if self._buffer:
                return self._take()
            future: asyncio.Future[bool] = loop.create_future()
            self._idle.append(future)
            self._wake_fetcher()
            try:
                woken = await future
            except asyncio.CancelledError:
                if future in self._idle:
                    self._idle.remove(future)
                elif future.done() and not future.cancelled() and future.result():
                    self._waking -= 1
                    if self._buffer:
                        self._wake_idle()  # woken for work it will not take: pass it on
                raise
            if woken:
                self._waking -= 1

    def _wake_fetcher(self) -> None:
        if self._capacity is not None:
            self._capacity.set()

    def _start_runtime(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._capacity is None:
            self._capacity = asyncio.Event()
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = asyncio.create_task(self._fetch_loop(), name="task-queue-fetcher")
        if self._heartbeat is None or self._heartbeat.done():
            self._started_at = utcnow()
            self._idle_since = time.monotonic()
            self._heartbeat = asyncio.create_task(
                self._heartbeat_loop(), name="task-queue-heartbeat"
            )

    def _prefetch(self) -> int:
        return self.prefetch if self.prefetch is not None else max(1, self._slots // 4)

    async def _fetch_loop(self) -> None:
        capacity = self._capacity
        assert capacity is not None
        failures = 0
        while not self._stopping:
            want = self._slots + self._prefetch() - len(self._held)
            if want <= 0 or self._slots == 0:
                capacity.clear()
                await capacity.wait()
                continue
            try:
                tasks = await self.broker.dequeue_many(
                    want, timeout=_FETCH_WAIT, worker_id=self.worker_id
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.error("leasing tasks failed, retrying: %r", exc)
                await asyncio.sleep(min(0.05 * 2 ** min(failures, 7), 5.0))
                continue
            if failures:
                logger.info("leasing tasks works again after %d failures", failures)
                failures = 0
            held = self._held
            buffer = self._buffer
            for task in tasks:
                lease = _Lease(self, task)
                held[task.id] = lease
                buffer.append(lease)
            if tasks and not self._waking:
                self._wake_idle()

    async def _run(self, lease: _Lease, slot: asyncio.Task[Any]) -> None:
        task = lease.task
        registered = self._executors.get(task.name)
        if lease.cancelling or lease.lost:
            await self._settle_cancelled(lease)
            return
        if registered is None:
            error = UnknownTaskError(task.name, list(self._executors))
            await self._settle_failure(lease, TaskError.from_exception(error), retry=True)
            return
        timeout = task.timeout if task.timeout is not None else self.default_timeout
        lease.slot = slot
        lease.running = True
        context_token = running.set(lease)
        info = logger.isEnabledFor(logging.INFO)
        if info:
            logger.info(
                "task %s [%s] started (attempt %d of %d)",
                task.id,
                task.name,
                task.attempts,
                task.max_attempts,
                extra=_log_extra(task),
            )
        outcome: TaskError | None = None
        result: Any = None
        scope: asyncio.Timeout | None = None
        raised: BaseException | None = None
        hooks = self.hooks
        try:
            if hooks.pre_run:
                await hooks.run_pre_run(task)
            if timeout is None:
                if registered.is_async:
                    result = await registered.fn(task)
                else:
                    result = await self._call(registered, task)
            else:
                async with asyncio.timeout(timeout) as scope:
                    result = await self._call(registered, task)
        except asyncio.CancelledError as exc:
            lease.running = False
            if lease.cancelling or lease.releasing or lease.lost:
                slot.uncancel()
                await self._after_run(lease, None, exc)
                running.reset(context_token)
                await self._settle_interrupted(lease)
                return
            # The slot itself is being cancelled from outside: hand the task back.
            await self._after_run(lease, None, exc)
            running.reset(context_token)
            await self._release(lease)
            raise
        except Exception as exc:
            raised = exc
            if isinstance(exc, TimeoutError) and scope is not None and scope.expired():
                message = f"task exceeded its timeout of {timeout:g}s"
                outcome = TaskError("TimeoutError", message, traceback.format_exc())
            else:
                outcome = TaskError.from_exception(exc, traceback.format_exc())
        lease.running = False
        lease.slot = None
        # Decided before the hooks and notes below are awaited: a cancel that arrives
        # once the executor has returned does not undo its result.
        interrupted = lease.cancelling or lease.releasing or lease.lost
        if hooks.post_run or lease.noted:
            await self._after_run(lease, result, raised)
        running.reset(context_token)
        if interrupted:
            # The executor swallowed our cancellation; honour it anyway.
            if slot.cancelling():
                slot.uncancel()
            await self._settle_interrupted(lease)
            return
        if outcome is not None:
            await self._settle_failure(lease, outcome, retry=True)
            return
        # The success path of _settle_success, inline: one coroutine less per task.
        try:
            if self.broker.batches_acks:
                accepted = await self._complete(lease, result)
            else:
                accepted = await self.broker.mark_complete(task.id, result, token=lease.token)
        except Exception as exc:
            await self._settle_success_error(lease, exc)
            return
        self._forget(lease)
        if accepted and info:
            logger.info("task %s [%s] completed", task.id, task.name, extra=_log_extra(task))

    async def _after_run(self, lease: _Lease, result: Any, error: BaseException | None) -> None:
        """Run the post_run hooks, then store the task's notes before its outcome."""
        if self.hooks.post_run:
            await self.hooks.run_post_run(lease.task, result, error)
        if lease.noted:
            # Flushes run one at a time, so this one also waits for an earlier flush that
            # carries notes of this task: all of them land before the outcome.
            await self._flush_notes()

    def _noted(self, lease: _Lease) -> None:
        """The lease has context or log records to store: store them soon, in a batch."""
        if threading.get_ident() != self._loop_thread:
            loop = self._loop
            if loop is not None:  # a sync executor's thread
                loop.call_soon_threadsafe(self._noted, lease)
            return
        lease.noted = True
        self._noting[lease.task.id] = lease
        if self._note_flusher is None or self._note_flusher.done():
            self._note_flusher = asyncio.create_task(
                self._flush_notes_later(), name="task-queue-notes"
            )

    async def _flush_notes_later(self) -> None:
        while self._noting:
            await asyncio.sleep(self.note_interval)
            await self._flush_notes()

    async def _flush_notes(self) -> None:
        """Store the pending notes of every task in one broker call; never raises."""
        async with self._notes_flushing:  # one call at a time: notes land in order
            if not self._noting:
                return
            batch, self._noting = self._noting, {}
            notes: dict[str, TaskNote] = {}
            with self._notes_lock:
                for task_id, lease in batch.items():
                    notes[task_id] = TaskNote(lease.token, self._context_of(lease), lease.new_logs)
                    lease.new_logs = []
            try:
                stored = await self.broker.annotate(notes, max_logs=self.max_task_logs)
            except Exception as exc:
                logger.error("storing context and logs of %d tasks failed: %r", len(notes), exc)
                return
            refused = [task_id for task_id, ok in stored.items() if not ok]
            if refused:
                logger.debug("context and logs of %d tasks no longer held: dropped", len(refused))

    @staticmethod
    def _context_of(lease: _Lease) -> dict[str, Any] | None:
        """The lease's context to store, or None when unchanged or not JSON."""
        if not lease.context_dirty:
            return None
        lease.context_dirty = False
        task = lease.task
        try:
            return normalize(task.context, "context")  # type: ignore[no-any-return]
        except PayloadError as exc:
            # Someone wrote to task.context directly, bypassing set_context's checks.
            logger.error(
                "task %s [%s]: context not stored: %s",
                task.id,
                task.name,
                exc,
                extra=_log_extra(task),
            )
            return None

    async def _call(self, registered: _Registered, task: Task) -> Any:
        if registered.is_async:
            return await registered.fn(task)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        thread = loop.run_in_executor(None, context.run, registered.fn, task)
        try:
            result = await asyncio.shield(thread)
        except asyncio.CancelledError:
            # A thread cannot be stopped. Until it ends, the task keeps its lease (the
            # heartbeat renews it), so a timeout, cancel or shutdown never lets a second
            # run start while this one is still at work.
            with contextlib.suppress(Exception):
                await _finished(thread)
            raise
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _settle_success_error(self, lease: _Lease, exc: Exception) -> None:
        task = lease.task
        if isinstance(exc, PayloadError):
            await self._settle_failure(lease, TaskError.from_exception(exc), retry=False)
            return
        self._forget(lease)
        logger.error(
            "task %s [%s]: could not record completion (%r); its lease will expire "
            "and it will run again",
            task.id,
            task.name,
            exc,
            extra=_log_extra(task),
        )

    async def _complete(self, lease: _Lease, result: Any) -> bool:
        if not self.broker.batches_acks:
            return await self.broker.mark_complete(lease.task.id, result, token=lease.token)
        # Acks queue up while a batch is in flight and go out together in the next one.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks.append((lease.task.id, lease.token, result, future))
        if self._ack_flusher is None or self._ack_flusher.done():
            self._ack_flusher = asyncio.create_task(self._flush_acks(), name="task-queue-acks")
        return await future

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                accepted = await self.broker.mark_complete_many(
                    [(task_id, token, result) for task_id, token, result, _ in batch]
                )
            except PayloadError:
                # One result cannot be stored: settle them one by one so the rest land.
                for task_id, token, result, future in batch:
                    try:
                        ok = await self.broker.mark_complete(task_id, result, token=token)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(ok)
                continue
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), ok in zip(batch, accepted, strict=True):
                if not future.done():
                    future.set_result(ok)

    async def _settle_failure(self, lease: _Lease, error: TaskError, *, retry: bool) -> None:
        task = lease.task
        retry_in: float | None = None
        if retry and task.attempts < task.max_attempts:
            retry_in = self.retry_policy.delay(task.attempts)
        try:
            await self.broker.mark_failed(task.id, error, token=lease.token, retry_in=retry_in)
        except Exception as exc:
            logger.error(
                "task %s [%s]: could not record failure (%r); its lease will expire",
                task.id,
                task.name,
                exc,
                extra=_log_extra(task),
            )
        finally:
            self._forget(lease)
        if retry_in is not None:
            logger.warning(
                "task %s [%s] failed attempt %d of %d with %s; retrying in %.2fs",
                task.id,
                task.name,
                task.attempts,
                task.max_attempts,
                error,
                retry_in,
                extra=_log_extra(task),
            )
        else:
            logger.error(
                "task %s [%s] failed after %d attempt(s): %s\n%s",
                task.id,
                task.name,
                task.attempts,
                error,
                error.traceback or "",
                extra=_log_extra(task),
            )

    async def _settle_interrupted(self, lease: _Lease) -> None:
        if lease.lost:
            self._forget(lease)
            logger.warning(
                "task %s [%s]: lease lost while running; stopped without reporting",
                lease.task.id,
                lease.task.name,
                extra=_log_extra(lease.task),
            )
        elif lease.cancelling:
            await self._settle_cancelled(lease)
        else:
            await self._release(lease)

    async def _settle_cancelled(self, lease: _Lease) -> None:
        task = lease.task
        try:
            if not lease.lost:
                await self.broker.mark_cancelled(task.id, token=lease.token)
        except Exception as exc:
            logger.error(
                "task %s [%s]: could not record cancellation (%r)",
                task.id,
                task.name,
                exc,
                extra=_log_extra(task),
            )
        finally:
            self._forget(lease)
        logger.info("task %s [%s] cancelled", task.id, task.name, extra=_log_extra(task))

    async def _release(self, lease: _Lease) -> None:
        task = lease.task
        try:
            await self.broker.release(task.id, token=lease.token)
            logger.info(
                "task %s [%s] handed back to the queue",
                task.id,
                task.name,
                extra=_log_extra(task),
            )
        except Exception as exc:
            logger.error(
                "task %s [%s]: could not hand back (%r); its lease will expire",
                task.id,
                task.name,
                exc,
                extra=_log_extra(task),
            )
        finally:
            self._forget(lease)

    def _forget(self, lease: _Lease) -> None:
        if self._held.get(lease.task.id) is lease:
            del self._held[lease.task.id]
            if not self._held:
                self._idle_since = time.monotonic()
            capacity = self._capacity
            if capacity is not None and not self._stopping:
                capacity.set()

    def _cancel_local(self, lease: _Lease) -> None:
        lease.cancelling = True
        if lease.running and lease.slot is not None:
            lease.slot.cancel()

    async def _heartbeat_loop(self) -> None:
        me = asyncio.current_task()
        interval = self.broker.lease_seconds / 3
        failures = 0
        self._refresh_registry()
        while True:
            await asyncio.sleep(interval)
            self._refresh_registry()
            # Renew even with no leases: the call also runs the broker's upkeep (recovery of
            # other workers' expired leases, deleting tasks past their retention).
            leases = {task_id: lease.token for task_id, lease in self._held.items()}
            outcome = None
            try:
                outcome = await self.broker.renew(leases)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.error("renewing %d leases failed: %r", len(leases), exc)
            if me is not None and me.cancelling():
                # Cancelled while renewing, and the broker's client (redis-py, fakeredis)
                # swallowed it: stop all the same, or shutdown() would wait forever.
                raise asyncio.CancelledError
            if outcome is None:
                continue
            failures = 0
            for task_id in outcome.lost:
                lease = self._held.get(task_id)
                if lease is None or lease.token != leases[task_id]:
                    continue
                lease.lost = True
                if lease in self._buffer:
                    self._buffer.remove(lease)
                    self._forget(lease)
                elif lease.running and lease.slot is not None:
                    lease.slot.cancel()
            for task_id in outcome.cancel_requested:
                lease = self._held.get(task_id)
                if lease is not None and not lease.cancelling:
                    self._cancel_local(lease)

    # ----------------------------------------------------------------- registry

    @property
    def active_count(self) -> int:
        """How many tasks this process's worker slots are running now."""
        return sum(1 for lease in self._held.values() if lease.running)

    @property
    def idle_seconds(self) -> float:
        """Seconds since this process last held a task (leased or running); 0.0 while it holds one.

        Counted from `start_workers` when no task has been held since.
        """
        if self._held:
            return 0.0
        return time.monotonic() - self._idle_since

    def worker_info(self) -> WorkerInfo:
        """Describe this process's workers as the broker's worker registry lists them."""
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queue=self.broker.queue,
            concurrency=self._slots,
            active=self.active_count,
            started_at=self._started_at,
        )

    def _refresh_registry(self) -> None:
        # In the background: a slow registry call never delays the renewal of leases.
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.create_task(self._announce(), name="task-queue-registry")

    async def _announce(self) -> None:
        """Register or refresh this process in the worker registry; never raises."""
        self._registered = True  # set first: a cancel mid-call must still unregister
        try:
            await self.broker.register_worker(self.worker_info(), ttl=self.broker.lease_seconds)
        except Exception as exc:
            if not self._registry_failing:
                self._registry_failing = True
                logger.warning("worker %s: registry refresh failed: %r", self.worker_id, exc)
            return
        if self._registry_failing:
            self._registry_failing = False
            logger.info("worker %s: registry refresh works again", self.worker_id)

    async def _withdraw(self) -> None:
        """Remove this process from the worker registry at shutdown; never raises."""
        if self._announcing is not None:
            self._announcing.cancel()
            await asyncio.gather(self._announcing, return_exceptions=True)
            self._announcing = None
        if not self._registered:
            return
        self._registered = False
        try:
            await self.broker.unregister_worker(self.worker_id)
        except Exception as exc:
            logger.warning(
                "worker %s: could not leave the registry (%r); its entry expires in %gs",
                self.worker_id,
                exc,
                self.broker.lease_seconds,
            )

    # ----------------------------------------------------------------- shutdown

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop the workers without losing a task.

        Leasing stops at once and leased tasks not yet started go back to the queue.
        Running tasks get `grace` seconds (default `shutdown_grace`) to finish; the rest
        are cancelled and handed back at once without spending an attempt. Returns when
        every worker slot has ended.
        """
        grace = self.shutdown_grace if grace is None else grace
        self._stopping = True
        self._generation += 1
        try:
            if self._fetcher is not None:
                self._fetcher.cancel()
                await asyncio.gather(self._fetcher, return_exceptions=True)
            while self._buffer:
                await self._release(self._buffer.popleft())
            while self._idle:
                future = self._idle.popleft()
                if not future.done():
                    future.set_result(False)
            me = asyncio.current_task()
            slots = {slot for slot in self._slot_tasks | self._launched if slot is not me}
            abandoned: set[asyncio.Task[Any]] = set()
            if slots:
                _, late = await asyncio.wait(slots, timeout=grace)
                if late:
                    for lease in list(self._held.values()):
                        if lease.running and lease.slot is not None:
                            lease.releasing = True
                            lease.slot.cancel()
                    # An executor that swallows every cancellation cannot be stopped:
                    # after a bounded wait it is left running, keeping its lease (never
                    # handed back while it runs); the lease expires and the task runs
                    # again elsewhere.
                    _, abandoned = await asyncio.wait(late, timeout=max(grace, 1.0))
            for lease in list(self._held.values()):
                if lease.slot is not None and lease.slot is me:
                    continue  # shutdown() called from an executor: its own task goes on
                if lease.slot is not None and lease.slot in abandoned:
                    logger.error(
                        "task %s [%s] ignored cancellation at shutdown; left running, its "
                        "lease will expire and it may run again elsewhere",
                        lease.task.id,
                        lease.task.name,
                        extra=_log_extra(lease.task),
                    )
                    continue
                await self._release(lease)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                await asyncio.gather(self._heartbeat, return_exceptions=True)
            await self._flush_notes()  # whatever tasks noted that was not stored yet
            flusher = self._note_flusher
            if flusher is not None and not flusher.done():
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
            await self._withdraw()
            self._fetcher = None
            self._heartbeat = None
            self._capacity = None
            self._waking = 0
            self._stopping = False
        logger.info("task queue service %s shut down", self.worker_id)

    async def __aenter__(self) -> Self:
        self.start_workers()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


_FETCH_WAIT = 5.0

_SPEC_KEYS = frozenset(
    {
        "name",
        "payload",
        "priority",
        "delay_seconds",
        "task_id",
        "max_retries",
        "timeout",
        "metadata",
        "scheduled_at",
        "depends_on",
        "context",
    }
)


def _parent_ids(parents: Iterable[Task | TaskHandle | str], own_id: str) -> list[str]:
    if isinstance(parents, str | Task | TaskHandle):
        parents = [parents]
    ids: list[str] = []
    for parent in parents:
        if isinstance(parent, str) and parent:
            parent_id = parent
        elif isinstance(parent, Task | TaskHandle):
            parent_id = parent.id
        else:
            raise TypeError(f"depends_on takes tasks, handles or task ids, got {parent!r}")
        if parent_id == own_id:
            raise ValueError(f"task {own_id!r} cannot depend on itself")
        if parent_id not in ids:
            ids.append(parent_id)
    return ids
