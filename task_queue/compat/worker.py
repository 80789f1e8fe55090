"""AsyncTaskWorker: the async-task-worker API as a facade over a TaskQueueService.

Each call of a task function becomes a broker task named by the function's task type,
with the JSON payload `{"args": [...], "kwargs": {...}}` (plus `"cache"` when its result
is cached), so any broker works and a worker process finds the function by name in the
registry. Tasks run at most once (`max_retries=0`), as in async-task-worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from ..broker.base import AbstractBroker
from ..broker.memory import InMemoryBroker
from ..codec import normalize
from ..errors import PayloadError, TaskNotFoundError, TaskStateError, UnknownTaskError
from ..models import Task, utcnow
from ..models import TaskStatus as CoreStatus
from ..retry import RetryPolicy
from ..service import TaskExecutor, TaskQueueService
from . import registry
from .cache import CacheAdapter, MemoryCacheAdapter, check_ttl, make_cache_key
from .calls import Call, accepts_progress, cache_key_of, check_call, follows_of
from .cancelling import cancel_and_wait
from .flights import PARK_SECONDS, Flights, await_ahead, replay_failure
from .models import TaskInfo, TaskStatus
from .progress import ProgressReporter
from .registry import TaskFunction, get_task_function, get_task_type, is_async_callable
from .tracking import TaskTracker

__all__ = ["AsyncTaskWorker", "set_default_broker"]

logger = logging.getLogger(__name__)

_default_broker: Callable[[], AbstractBroker] = InMemoryBroker


def set_default_broker(factory: Callable[[], AbstractBroker] | None) -> None:
    """Choose the broker of every `AsyncTaskWorker` made without `broker=`.

    `factory()` is called once per worker; None restores the default, a new
    `InMemoryBroker` per worker. Lets unchanged async-task-worker code run on Redis.
    """
    global _default_broker
    _default_broker = InMemoryBroker if factory is None else factory


def _log_extra(task: Task) -> dict[str, Any]:
    return {"task_id": task.id, "task_name": task.name}


class AsyncTaskWorker:
    """Runs registered async functions as background tasks, as async-task-worker does.

    `max_workers` tasks run at once in this process (0: none, the worker only adds and
    tracks tasks that other processes run). `task_timeout` bounds every task that sets
    no `timeout`. `worker_poll_interval` is how often the state of tasks running in
    other processes is refreshed for `get_task_info`. The result cache is on for every
    task with `cache_enabled`, or per task with `use_cache=True`; entries live
    `cache_ttl` seconds (None: no expiry) in `cache_adapter`, by default an in-memory LRU
    of `cache_max_size` entries. `broker` holds the tasks (default: see
    `set_default_broker`, else a new `InMemoryBroker`). `follower_park` (an attribute)
    is how long a task waiting for an identical one is parked before any worker may
    settle it (see `task_queue.compat.flights`).
    """

    def __init__(
        self,
        max_workers: int = 10,
        task_timeout: float | None = None,
        worker_poll_interval: float = 1.0,
        cache_enabled: bool = False,
        cache_ttl: int | None = 3600,
        cache_max_size: int | None = 1000,
        cache_adapter: CacheAdapter | None = None,
        broker: AbstractBroker | None = None,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, got {max_workers!r}")
        if max_workers < 0:
            raise ValueError(f"max_workers must be >= 0, got {max_workers}")
        if isinstance(worker_poll_interval, bool) or not isinstance(
            worker_poll_interval, int | float
        ):
            raise TypeError(f"worker_poll_interval must be a number, got {worker_poll_interval!r}")
        if not worker_poll_interval > 0:
            raise ValueError(f"worker_poll_interval must be > 0, got {worker_poll_interval}")
        if cache_adapter is not None and not isinstance(cache_adapter, CacheAdapter):
            raise TypeError(
                f"cache_adapter must be a CacheAdapter, got {type(cache_adapter).__name__}"
            )
        check_ttl(task_timeout, "task_timeout")
        self.max_workers = max_workers
        self.task_timeout = task_timeout
        self.worker_poll_interval = float(worker_poll_interval)
        self.cache_enabled = bool(cache_enabled)
        self.cache_ttl = check_ttl(cache_ttl, "cache_ttl")
        self.cache: CacheAdapter = (
            cache_adapter if cache_adapter is not None else MemoryCacheAdapter(cache_max_size)
        )
        # A broker made here is this worker's to close (see stop()).
        self._broker_factory: Callable[[], AbstractBroker] | None = (
            None if broker is not None else _default_broker
        )
        self._broker_closed = False
        self.broker: AbstractBroker = broker if broker is not None else _default_broker()
        self.service = TaskQueueService(
            self.broker,
            retry_policy=RetryPolicy(max_retries=0),
            default_timeout=task_timeout,
            concurrency=max(1, max_workers),
            # No task is leased ahead of a free slot: one added later with a lower
            # priority number still runs first, as in async-task-worker.
            prefetch=0,
        )
        retention = float(getattr(self.broker, "result_ttl", 3600.0))
        self._tracker = TaskTracker(
            self.broker, self._on_final, retention, on_gone=self._forget_local
        )
        self._flights = Flights(self.broker, self._tracker)
        self.follower_park = PARK_SECONDS
        """Seconds a task waiting for an identical one is parked before any worker may
        settle it (see task_queue.compat.flights)."""
        # Unregistered module-level functions by name, and the functions of unfinished
        # tasks whose function has no stable name (closures...), by task id.
        self._implicit: dict[str, TaskFunction] = {}
        self._local: dict[str, TaskFunction] = {}
        self._local_types: set[str] = set()
        self._uncached_warned: set[str] = set()
        self._registered: set[str] = set()
        self._started = False
        self._refresher: asyncio.Task[None] | None = None
        for task_type in registry.get_all_task_types():
            self._ensure_registered(task_type)
        registry.add_listener(self)

    def __repr__(self) -> str:
        return (
            f"AsyncTaskWorker(max_workers={self.max_workers}, broker={self.broker!r}, "
            f"running={self._started})"
        )

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._started

    async def start(self) -> None:
        """Start `max_workers` worker slots and the tracking of this worker's tasks."""
        if self._started:
            return
        self._reopen()
        self._started = True
        self._tracker.watch_all()
        if self.max_workers:
            self.service.start_workers(self.max_workers)
        self._refresher = asyncio.create_task(
            self._refresh_loop(), name="task-queue-compat-refresh"
        )
        logger.info("AsyncTaskWorker started with %d workers on %r", self.max_workers, self.broker)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker slots: running tasks get `timeout` seconds to finish.

        Tasks still running then are interrupted and go back to the broker as pending,
        with the tasks not started yet; a later `start()` runs them. A broker this
        worker made itself (no `broker=` given) is closed, releasing its connections;
        the next call that needs one makes a new one. An `InMemoryBroker` is kept: it
        holds the tasks themselves.
        """
        started, self._started = self._started, False
        try:
            if started:
                await self.service.shutdown(grace=timeout)
                try:
                    # Tasks interrupted just now are pending again in the broker.
                    await self._tracker.reread_running()
                except Exception as exc:
                    logger.warning("reading the state of interrupted tasks failed: %r", exc)
        finally:
            refresher, self._refresher = self._refresher, None
            if refresher is not None:
                await cancel_and_wait([refresher])
            await self._tracker.stop()
            await self._close_own_broker()
        if started:
            logger.info("AsyncTaskWorker stopped")

    async def _close_own_broker(self) -> None:
        if (
            self._broker_factory is None
            or self._broker_closed
            or isinstance(self.broker, InMemoryBroker)
        ):
            return
        self._broker_closed = True
        try:
            await self.broker.close()
        except Exception as exc:
            logger.warning("closing the broker %r failed: %r", self.broker, exc)

    def _reopen(self) -> None:
        """After stop() closed this worker's own broker, make a new one to go on with."""
        if not self._broker_closed or self._broker_factory is None:
            return
        broker = self._broker_factory()
        self._broker_closed = False
        self.broker = broker
        self.service.broker = broker
        self._tracker.broker = broker
        self._flights.broker = broker

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _refresh_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.worker_poll_interval)
            try:
                await self._tracker.refresh()
            except Exception as exc:
                if not failing:
                    logger.warning("refreshing task states failed: %r", exc)
                failing = True
            else:
                failing = False

    # ----------------------------------------------------------------- functions by name

    def task_types(self) -> list[str]:
        """Every task type this worker can run by name: the registry's, then those of
        unregistered module-level functions it was given."""
        registered = registry.get_all_task_types()
        return registered + [t for t in self._implicit if t not in set(registered)]

    def _lookup(self, task_type: str) -> TaskFunction | None:
        return get_task_function(task_type) or self._implicit.get(task_type)

    def _type_of(self, task_func: Any, *, remember: bool) -> str:
        return self._identify(task_func, remember=remember)[0]

    def _identify(self, task_func: Any, *, remember: bool) -> tuple[str, bool]:
        """The task type of `task_func`, and whether it is local: a function with no
        name that holds in another process, run only here, by the id of its task."""
        if isinstance(task_func, str):
            if self._lookup(task_func) is None:
                raise UnknownTaskError(task_func, self.task_types())
            return task_func, False
        if not is_async_callable(task_func):
            raise TypeError(
                f"task_func must be an async function (or a task type name), got {task_func!r}"
            )
        task_type = get_task_type(task_func)
        if task_type is not None:
            return task_type, False
        target = getattr(task_func, "__func__", task_func)  # a bound method's function
        module = getattr(target, "__module__", None) or "?"
        qualname = getattr(target, "__qualname__", None) or type(task_func).__qualname__
        name = f"{module}.{qualname}"
        stable = (
            inspect.isfunction(task_func)
            and "<locals>" not in qualname
            and "<lambda>" not in qualname
            and get_task_function(name) is None
        )
        if not stable:
            # A closure, lambda, bound method, partial or callable object: many may share
            # `name`, so it names the code, not the function, and is never cached.
            return name, True
        if remember:
            self._implicit[name] = task_func  # a redefinition replaces the old one
        return name, False

    def _ensure_registered(self, task_type: str) -> None:
        if task_type not in self._registered:
            self._registered.add(task_type)
            self.service.register(task_type, self._executor(task_type))

    def _task_registered(self, task_type: str) -> None:
        """Registry listener: a function registered later becomes runnable here too."""
        self._ensure_registered(task_type)

    def _executor(self, task_type: str) -> TaskExecutor:
        async def execute(task: Task) -> Any:
            return await self._execute(task_type, task)

        execute.__qualname__ = f"AsyncTaskWorker.execute[{task_type}]"
        return execute

    async def _execute(self, task_type: str, task: Task) -> Any:
        func = self._local.get(task.id) if task_type in self._local_types else None
        func = func or self._lookup(task_type)
        if func is None:
            if task_type in self._local_types:
                raise LookupError(
                    f"task {task.id} [{task_type}]: its function is not registered and "
                    "only the process that added the task knows it; register it with "
                    "@task to run it in any process"
                )
            raise UnknownTaskError(task_type, self.task_types())
        call = Call(task)
        self._tracker.started(task)
        try:
            value = await self._call(func, call, task)
        except Exception as exc:
            self._tracker.left(task.id, exc)
            raise
        except BaseException:
            self._tracker.left(task.id)
            raise
        self._tracker.left(task.id)
        return value

    async def _call(self, func: TaskFunction, call: Call, task: Task) -> Any:
        if call.cache_key is not None:
            hit, value = await self._cache_get(call.cache_key, task.name)
            if hit:
                logger.info(
                    "task %s [%s]: result found in the cache",
                    task.id,
                    task.name,
                    extra=_log_extra(task),
                )
                return value
        if call.follows:
            ahead = await await_ahead(self.broker, task, call.follows, call.cache_key)
            if ahead is not None and ahead.status is CoreStatus.COMPLETED:
                logger.info(
                    "task %s [%s]: takes the result of the identical task %s",
                    task.id,
                    task.name,
                    ahead.id,
                    extra=_log_extra(task),
                )
                value = normalize(ahead.result, "result")
                if call.cache_key is not None:
                    await self._cache_set(call.cache_key, value, call.cache_ttl, task)
                return value
            if ahead is not None:
                # Failed: fail the same way (with the very exception, when it was raised
                # here).
                raise self._tracker.exception_of(ahead.id) or replay_failure(ahead.error)
        kwargs = dict(call.kwargs)
        reporter: ProgressReporter | None = None
        if accepts_progress(func):
            tracker = self._tracker
            reporter = ProgressReporter(task, lambda p: tracker.progress(task.id, p))
            kwargs["progress_callback"] = reporter
        try:
            result = await func(*call.args, **kwargs)
        except Exception:
            if reporter is not None:
                await reporter.flush()
            raise
        except BaseException:
            if reporter is not None:
                reporter.cancel()
            raise
        if reporter is not None:
            await reporter.flush()
        value = normalize(result, "result")
        if call.cache_key is not None:
            await self._cache_set(call.cache_key, value, call.cache_ttl, task)
        return value

    # ----------------------------------------------------------------- adding tasks

    async def add_task(
        self,
        task_func: TaskFunction,
        *args: Any,
        priority: int = 0,
        task_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        use_cache: bool | None = None,
        cache_ttl: int | None = None,
        **kwargs: Any,
    ) -> str:
        """Queue `task_func(*args, **kwargs)` and return the task's id.

        `priority`: lower runs first. `task_id`: your own id (adding an id twice adds
        one task). `metadata`: a JSON dict kept with the task. `timeout`: seconds before
        the task fails with a TimeoutError (default `task_timeout`). `use_cache` and
        `cache_ttl` override the worker's cache settings for this task. Arguments must
        be JSON and fit the function's signature, else TypeError and nothing is added.
        """
        task_type, local = self._identify(task_func, remember=True)
        self._ensure_registered(task_type)
        if not local:
            func = self._lookup(task_type)
            assert func is not None
            return await self._submit(
                task_type,
                func,
                list(args),
                kwargs,
                priority,
                task_id,
                metadata,
                timeout,
                use_cache,
                cache_ttl,
            )
        self._local_types.add(task_type)
        if self._caching(use_cache) and task_type not in self._uncached_warned:
            self._uncached_warned.add(task_type)
            logger.warning(
                "[%s] results are not cached: the function is not registered and not a "
                "module-level function, so no name tells it apart in another process; "
                "register it with @task to cache it",
                task_type,
            )
        task_id = task_id or uuid.uuid4().hex
        mine = task_id not in self._local
        if mine:
            self._local[task_id] = task_func
        try:
            added = await self._submit(
                task_type,
                task_func,
                list(args),
                kwargs,
                priority,
                task_id,
                metadata,
                timeout,
                False,
                cache_ttl,
            )
        except BaseException:
            if mine:
                self._local.pop(task_id, None)
            raise
        info = self._tracker.view(added)
        if mine and (info is None or info.status.is_final or info.task_type != task_type):
            self._local.pop(task_id, None)  # the id was taken by a task of its own
        return added

    async def submit(
        self,
        task_type: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        task_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        use_cache: bool | None = None,
        cache_ttl: int | None = None,
    ) -> str:
        """`add_task` by task type name, with the arguments given as a list and a dict.

        Raises `UnknownTaskError` (a ValueError) naming the registered types when
        `task_type` is not one of them.
        """
        func = self._lookup(task_type) if isinstance(task_type, str) else None
        if func is None:
            raise UnknownTaskError(str(task_type), self.task_types())
        self._ensure_registered(task_type)
        return await self._submit(
            task_type,
            func,
            list(args or ()),
            dict(kwargs or {}),
            priority,
            task_id,
            metadata,
            timeout,
            use_cache,
            cache_ttl,
        )

    async def _submit(
        self,
        task_type: str,
        func: TaskFunction,
        args: list[Any],
        kwargs: dict[str, Any],
        priority: int,
        task_id: str | None,
        metadata: Mapping[str, Any] | None,
        timeout: float | None,
        use_cache: bool | None,
        cache_ttl: int | None,
    ) -> str:
        check_call(task_type, func, args, kwargs)
        self._reopen()
        cached = self._caching(use_cache)
        ttl = self.cache_ttl if cache_ttl is None else check_ttl(cache_ttl, "cache_ttl")
        payload: dict[str, Any] = {
            "args": normalize(args, "args"),
            "kwargs": normalize(kwargs, "kwargs"),
        }
        if task_id is not None and task_id in self._tracker:
            return task_id
        options: dict[str, Any] = {
            "priority": priority,
            "task_id": task_id,
            "timeout": timeout,
            "metadata": metadata,
        }
        if not cached:
            stored = await self.service.add_task(task_type, payload, **options)
            self._tracker.track(stored)
            return stored.id
        key = make_cache_key(task_type, payload["args"], payload["kwargs"])
        payload["cache"] = {"key": key, "ttl": ttl}
        hit, value = await self._cache_get(key, task_type)
        if hit:
            try:
                value = normalize(value, "cached result")
            except PayloadError as exc:
                logger.warning(
                    "cached result for %s is not JSON (%s); running the task", task_type, exc
                )
            else:
                return await self._add_from_cache(task_type, payload, value, options)
        flight = self._flights.current(key)
        if flight is not None:
            payload["follows"] = flight.chain()
            parked = await self._add_parked(task_type, payload, options)
            if parked is None:
                return str(task_id)
            self._tracker.track(parked, follows=flight.leader)
            await self._flights.follow(flight, parked.id)
            return parked.id
        options["task_id"] = task_id or uuid.uuid4().hex
        flight = self._flights.lead(key, options["task_id"])
        before = utcnow()
        try:
            stored = await self.service.add_task(task_type, payload, **options)
        except BaseException:
            await self._flights.abandon(flight)
            raise
        if stored.created_at < before and cache_key_of(stored) != key:
            await self._flights.abandon(flight)  # the id was taken by another call
        self._tracker.track(stored)
        return stored.id

    def _caching(self, use_cache: bool | None) -> bool:
        """Whether a task added with `use_cache` has its result cached.

        Besides True, False and None (the worker's setting), 1 and 0 are taken for
        True and False, as async-task-worker's truth test takes them.
        """
        if use_cache is None:
            return self.cache_enabled
        if isinstance(use_cache, bool):
            return use_cache
        if type(use_cache) is int and use_cache in (0, 1):
            return bool(use_cache)
        raise TypeError(f"use_cache must be True, False or None, got {use_cache!r}")

    async def _add_parked(
        self, task_type: str, payload: dict[str, Any], options: dict[str, Any]
    ) -> Task | None:
        """Store a task that no worker leases for `follower_park` seconds; None if it
        existed."""
        before = utcnow()
        stored = await self.service.add_task(
            task_type, payload, delay_seconds=self.follower_park, **options
        )
        if options["task_id"] is not None and stored.created_at < before:
            self._tracker.track(stored)
            return None
        return stored

    async def _add_from_cache(
        self, task_type: str, payload: dict[str, Any], value: Any, options: dict[str, Any]
    ) -> str:
        stored = await self._add_parked(task_type, payload, options)
        if stored is None:
            return str(options["task_id"])
        with contextlib.suppress(TaskStateError, TaskNotFoundError):
            # (Unless it was cancelled or is gone already: its watcher tells.)
            await self.broker.mark_complete(stored.id, value)
        self._tracker.track(stored)
        self._tracker.completed_now(stored.id, value)
        logger.info(
            "task %s [%s]: completed from the cache",
            stored.id,
            task_type,
            extra=_log_extra(stored),
        )
        return stored.id

    # ----------------------------------------------------------------- reading

    def get_task_info(self, task_id: str) -> TaskInfo | None:
        """What this worker knows of a task it added, without I/O; None if not one of them.

        Tasks run by this process are current at once; tasks other processes run are
        refreshed every `worker_poll_interval`. `fetch_task_info` asks the broker.
        """
        return self._tracker.view(task_id)

    def get_all_tasks(
        self,
        status: TaskStatus | str | None = None,
        limit: int | None = None,
        older_than: timedelta | None = None,
    ) -> list[TaskInfo]:
        """This worker's tasks, newest first, optionally in `status` and created more than
        `older_than` ago; at most `limit` of them (applied after sorting)."""
        wanted = None if status is None else TaskStatus(status)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        if older_than is not None and not isinstance(older_than, timedelta):
            raise TypeError(f"older_than must be a timedelta, got {older_than!r}")
        infos = self._tracker.views()
        if wanted is not None:
            infos = [i for i in infos if i.status is wanted]
        if older_than is not None:
            cutoff = utcnow() - older_than
            infos = [i for i in infos if i.created_at < cutoff]
        infos.sort(key=lambda i: i.created_at, reverse=True)
        return infos if limit is None else infos[:limit]

    async def fetch_task_info(self, task_id: str) -> TaskInfo | None:
        """The task as the broker holds it now (any producer's), or None."""
        self._reopen()
        task = await self.service.get_task(task_id)
        if task is None:
            return None
        self._tracker.observe(task)
        local = self._tracker.view(task_id)
        if local is not None and local.status.is_final and not task.is_final:
            return local  # a cancel accepted here, or requested elsewhere
        info = TaskInfo.from_task(task)
        if task.cancel_requested and not task.is_final:
            info.status = TaskStatus.CANCELLED  # not one of ours: the same rule
            info.error = "cancelled on request"
        if info.status.is_final:
            return info
        known = self._tracker.follows(task_id)
        for leader_id in [known] if known else follows_of(task):
            leader = await self.service.get_task(leader_id)
            if leader is None or leader.status is CoreStatus.CANCELLED:
                continue  # the next one ahead leads in its place
            if not leader.is_final:
                # A task waiting for an identical one shows that one's progress.
                info.status = TaskStatus.from_core(leader.status)
                info.started_at = leader.started_at
                info.progress = leader.progress
            break
        return info

    def get_task_future(self, task_id: str) -> asyncio.Future[Any]:
        """A future of the task's result: it raises the task's exception when it failed
        (a `TaskFailedError` when it failed in another process) and is cancelled when
        the task was. An id the broker does not know raises `TaskNotFoundError`."""
        return self._tracker.future(task_id)

    def get_task_futures(self, task_ids: Iterable[str]) -> list[asyncio.Future[Any]]:
        """`get_task_future` for each id, in order."""
        return [self._tracker.future(task_id) for task_id in task_ids]

    # ----------------------------------------------------------------- control

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel a pending or running task; False when it is unknown or already final
        (or already being cancelled). The task reads cancelled once this returns True."""
        known = self._tracker.view(task_id)
        if known is not None and known.status.is_final:
            return False
        self._reopen()
        current = await self.service.get_task(task_id)
        if current is None or current.is_final:
            return False
        if current.cancel_requested:
            self._tracker.observe(current)
            return False
        try:
            accepted = await self.service.cancel(task_id)
        except TaskNotFoundError:
            return False
        if accepted:
            self._tracker.cancelled_now(task_id)
        return accepted

    async def invalidate_cache(
        self, task_func: TaskFunction | str, *args: Any, **kwargs: Any
    ) -> bool:
        """Remove the cached result of `task_func(*args, **kwargs)`; True if there was one."""
        task_type, local = self._identify(task_func, remember=False)
        if local:
            return False  # never cached
        return await self.cache.delete(make_cache_key(task_type, args, kwargs))

    async def clear_cache(self) -> None:
        """Remove every cached result."""
        await self.cache.clear()

    # ----------------------------------------------------------------- internals

    async def _cache_get(self, key: str, task_type: str) -> tuple[bool, Any]:
        try:
            return await self.cache.get(key)
        except Exception as exc:
            logger.warning("[%s] cache lookup failed (%r); running the task", task_type, exc)
            return False, None

    async def _cache_set(self, key: str, value: Any, ttl: float | None, task: Task) -> None:
        try:
            await self.cache.set(key, value, None if ttl is None else _whole_seconds(ttl))
        except Exception as exc:
            logger.warning(
                "task %s [%s]: storing its result in the cache failed (%r)",
                task.id,
                task.name,
                exc,
                extra=_log_extra(task),
            )

    def _forget_local(self, task_id: str) -> None:
        """The task ended (or is gone): its unregistered function is not needed now."""
        self._local.pop(task_id, None)

    async def _on_final(self, task: Task) -> None:
        self._forget_local(task.id)
        key = cache_key_of(task)
        if key is None:
            return
        flight = self._flights.current(key)
        if (
            flight is not None
            and flight.leader == task.id
            and task.status is CoreStatus.COMPLETED
            and not self._tracker.ran_here(task.id)
        ):
            # Run in another process: keep the result here too.
            ttl = task.payload["cache"].get("ttl")
            await self._cache_set(
                key, task.result, ttl if isinstance(ttl, int | float) else None, task
            )
        await self._flights.ended(task, key)


def _whole_seconds(ttl: float) -> int:
    """A TTL as the whole seconds cache adapters take (rounded up)."""
    return max(1, math.ceil(ttl))
