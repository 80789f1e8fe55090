"""The task registry: async functions by task type name, shared by every worker.

A worker process finds the function for a task by its type name here, so the module
that registers the functions (with `@task` or `register_task`) must be imported in every
process that runs them.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

__all__ = [
    "TaskFunction",
    "get_all_task_types",
    "get_task_function",
    "get_task_type",
    "register_task",
    "task",
    "unregister_task",
]

logger = logging.getLogger(__name__)

TaskFunction = Callable[..., Awaitable[Any]]
"""An async function run as a task: any arguments, awaited for its result."""

F = TypeVar("F", bound=TaskFunction)


class _Listener(Protocol):
    def _task_registered(self, task_type: str) -> None: ...


_functions: dict[str, TaskFunction] = {}
_listeners: weakref.WeakSet[Any] = weakref.WeakSet()


def is_async_callable(func: object) -> bool:
    """True for an async function, a partial of one, or an object with an async __call__."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


def _check_type(task_type: object) -> str:
    if not isinstance(task_type, str) or not task_type:
        raise TypeError(f"task type must be a non-empty str, got {task_type!r}")
    return task_type


def register_task(task_type: str, task_func: F) -> F:
    """Register the async function `task_func` under `task_type` and return it.

    Registering a type again replaces its function. Raises TypeError when `task_func` is
    not an async function.
    """
    _check_type(task_type)
    if not is_async_callable(task_func):
        raise TypeError(
            f"task {task_type!r}: {task_func!r} is not an async function; "
            "tasks must be defined with 'async def'"
        )
    previous = _functions.get(task_type)
    if previous is not None and previous is not task_func:
        logger.warning(
            "task type %r registered again; the new function replaces the old", task_type
        )
    _functions[task_type] = task_func
    for listener in list(_listeners):
        listener._task_registered(task_type)
    return task_func


def task(task_type: str) -> Callable[[F], F]:
    """Decorator: register the decorated async function under `task_type`."""
    _check_type(task_type)

    def decorate(func: F) -> F:
        return register_task(task_type, func)

    return decorate


def unregister_task(task_type: str) -> bool:
    """Forget `task_type`; False when it was not registered."""
    return _functions.pop(task_type, None) is not None


def get_task_function(task_type: str) -> TaskFunction | None:
    """Return the function registered under `task_type`, or None."""
    return _functions.get(task_type)


def get_all_task_types() -> list[str]:
    """Return every registered task type, in the order they were registered."""
    return list(_functions)


def get_task_type(task_func: object) -> str | None:
    """Return the type `task_func` is registered under (the latest one), or None."""
    found = None
    for task_type, func in _functions.items():
        if func is task_func or func == task_func:  # == matches a bound method again
            found = task_type
    return found


def add_listener(listener: _Listener) -> None:
    """Have `listener._task_registered(task_type)` called on every registration.

    Listeners are held weakly: a worker that is gone stops listening.
    """
    _listeners.add(listener)
