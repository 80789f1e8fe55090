"""How a call of a task function is checked and carried in a task's payload.

The payload is `{"args": [...], "kwargs": {...}}`, plus `"cache": {"key", "ttl"}` when the
result is cached and `"follows": [<task id>, ...]` for a task waiting for an identical
one: the ids of the tasks ahead of it, the leader first.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..models import Task
from .registry import TaskFunction

__all__ = ["Call", "accepts_progress", "cache_key_of", "check_call", "follows_of"]


class Call:
    """A compat task's payload, decoded."""

    __slots__ = ("args", "cache_key", "cache_ttl", "follows", "kwargs")

    def __init__(self, task: Task) -> None:
        payload = task.payload
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        cache = payload.get("cache")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError(
                f"task {task.id} [{task.name}]: the payload is not an AsyncTaskWorker call "
                '(expected {"args": [...], "kwargs": {...}})'
            )
        self.args: list[Any] = args
        self.kwargs: dict[str, Any] = kwargs
        self.cache_key: str | None = None
        self.cache_ttl: float | None = None
        if isinstance(cache, dict) and isinstance(cache.get("key"), str):
            self.cache_key = cache["key"]
            ttl = cache.get("ttl")
            self.cache_ttl = float(ttl) if isinstance(ttl, int | float) else None
        self.follows: list[str] = follows_of(task)


def follows_of(task: Task) -> list[str]:
    """The ids of the tasks a follower waits for, the leader first; [] for others."""
    follows = task.payload.get("follows") if isinstance(task.payload, dict) else None
    if isinstance(follows, str):
        return [follows]  # written by an earlier version: the leader alone
    if isinstance(follows, list):
        return [task_id for task_id in follows if isinstance(task_id, str)]
    return []


def cache_key_of(task: Task) -> str | None:
    """The cache key a task's payload carries, or None when its result is not cached."""
    cache = task.payload.get("cache") if isinstance(task.payload, dict) else None
    if isinstance(cache, dict) and isinstance(cache.get("key"), str):
        return str(cache["key"])
    return None


def accepts_progress(func: TaskFunction) -> bool:
    """True when `func` takes a `progress_callback` keyword: a parameter of that name,
    or `**kwargs` (which async-task-worker passes it to as well)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("progress_callback")
    if parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_call(
    task_type: str, func: TaskFunction, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Refuse arguments the function cannot take, before anything is enqueued."""
    if "progress_callback" in kwargs:
        raise TypeError("progress_callback is supplied by the worker; do not pass one")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    extra = {"progress_callback": None} if accepts_progress(func) else {}
    try:
        signature.bind(*args, **kwargs, **extra)
    except TypeError as exc:
        raise TypeError(f"arguments do not match task {task_type!r}{signature}: {exc}") from None
