"""Lifecycle hooks: code a service runs around creating and running every task.

Four moments: `pre_create` (before the task is stored: it may change the task, e.g. its
context or metadata, or raise to reject it), `post_create` (once it is stored),
`pre_run` (in the worker, before the executor: raising fails the attempt like an
executor error) and `post_run` (after the executor, with its result or the exception).
An error in `post_create` or `post_run` is logged and changes nothing.

Register plain functions or coroutine functions with the service's decorators
(`@service.on_pre_run`), or subclass `Middleware` and pass it to `add_middleware`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .models import Task

__all__ = ["Hooks", "Middleware", "PostRunHook", "TaskHook"]

logger = logging.getLogger(__name__)

TaskHook = Callable[[Task], Awaitable[None] | None]
"""A pre_create, post_create or pre_run hook: takes the task; may be async."""

PostRunHook = Callable[..., Awaitable[None] | None]
"""A post_run hook: called as `hook(task, result=..., error=...)`; may be async."""

H = TypeVar("H", bound=Callable[..., Any])


class Middleware:
    """Base class for a group of hooks; override the moments you need.

    `error` in `post_run` is the exception the attempt ended with (a timeout is a
    `TimeoutError`, a cancel or shutdown an `asyncio.CancelledError`), or None when the
    executor returned `result`.
    """

    async def pre_create(self, task: Task) -> None:
        """Before `task` is stored; raise to reject it."""

    async def post_create(self, task: Task) -> None:
        """After `task` was stored."""

    async def pre_run(self, task: Task) -> None:
        """Before the executor runs `task`; raising fails this attempt."""

    async def post_run(
        self, task: Task, result: Any = None, error: BaseException | None = None
    ) -> None:
        """After the executor ran `task`."""


class Hooks:
    """The hooks of one service, run in the order they were added."""

    def __init__(self) -> None:
        self.pre_create: list[TaskHook] = []
        self.post_create: list[TaskHook] = []
        self.pre_run: list[TaskHook] = []
        self.post_run: list[PostRunHook] = []

    def add_middleware(self, middleware: Middleware) -> None:
        """Add the moments `middleware` overrides."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"middleware must be a Middleware, got {type(middleware).__name__}")
        kind = type(middleware)
        for moment in ("pre_create", "post_create", "pre_run", "post_run"):
            if getattr(kind, moment) is not getattr(Middleware, moment):
                getattr(self, moment).append(getattr(middleware, moment))

    @staticmethod
    def check(hook: H) -> H:
        """Refuse what cannot be called as a hook."""
        if not callable(hook):
            raise TypeError(f"a hook must be callable, got {hook!r}")
        return hook

    async def run_pre_create(self, task: Task) -> None:
        """Run the pre_create hooks; the first error propagates."""
        for hook in self.pre_create:
            await _call(hook, task)

    async def run_post_create(self, task: Task) -> None:
        """Run the post_create hooks, logging errors."""
        for hook in self.post_create:
            try:
                await _call(hook, task)
            except Exception:
                _log_failure("post_create", hook, task)

    async def run_pre_run(self, task: Task) -> None:
        """Run the pre_run hooks; the first error propagates."""
        for hook in self.pre_run:
            await _call(hook, task)

    async def run_post_run(self, task: Task, result: Any, error: BaseException | None) -> None:
        """Run the post_run hooks, logging errors."""
        for hook in self.post_run:
            try:
                await _call(hook, task, result=result, error=error)
            except Exception:
                _log_failure("post_run", hook, task)


async def _call(hook: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    outcome = hook(*args, **kwargs)
    if inspect.isawaitable(outcome):
        await outcome


def _log_failure(moment: str, hook: Callable[..., Any], task: Task) -> None:
    name = getattr(hook, "__qualname__", repr(hook))
    logger.exception(
        "task %s [%s]: %s hook %s raised; ignored",
        task.id,
        task.name,
        moment,
        name,
        extra={"task_id": task.id, "task_name": task.name},
    )
