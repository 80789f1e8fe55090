"""What an executor can reach of the task it runs: the task, progress, context and logs.

Inside an executor (and inside pre_run and post_run hooks) `current_task()` returns the
task; `report_progress()` stores its progress; `set_context()` and `get_context()` read
and write its context, a JSON object addressed by dotted keys; and the loggers that
`get_logger()` returns keep each record with the task as well as passing it on to
normal logging. Context and log records are stored in batches, so a call costs no round
trip of its own; any process sees them through `get_task`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Protocol

from .codec import normalize
from .models import Task

__all__ = [
    "TaskLogger",
    "current_task",
    "get_context",
    "get_logger",
    "report_progress",
    "set_context",
]


class RunningTask(Protocol):
    """What the worker running a task offers the helpers of this module."""

    task: Task

    def context_changed(self, key: str, value: Any) -> None:
        """Set `key` (dotted) to `value` in the task's context and store it soon."""

    def logged(self, record: dict[str, Any]) -> None:
        """Keep a log record with the task."""

    async def progress(self, value: float) -> None:
        """Store the task's progress now."""


running: contextvars.ContextVar[RunningTask | None] = contextvars.ContextVar(
    "task_queue_running", default=None
)
"""The task the current executor runs; set by the worker for the executor's duration."""


def _running(what: str) -> RunningTask:
    run = running.get()
    if run is None:
        raise RuntimeError(f"{what} is only available inside a task executor")
    return run


def current_task() -> Task:
    """Return the task the calling executor is running; RuntimeError outside one."""
    return _running("current_task()").task


async def report_progress(progress: float) -> None:
    """Record the running task's progress (0.0 to 1.0), visible through `get_task`.

    Stored before it returns. Call it from inside an executor; RuntimeError elsewhere,
    ValueError out of range.
    """
    run = _running("report_progress()")
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise TypeError(f"progress must be a number, got {progress!r}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0.0 and 1.0, got {progress}")
    await run.progress(float(progress))


def _path(key: str) -> list[str]:
    if not isinstance(key, str) or not key:
        raise TypeError(f"context key must be a non-empty str, got {key!r}")
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"context key {key!r} has an empty part")
    return parts


def set_context(key: str, value: Any) -> None:
    """Set `key` in the running task's context; dots nest: `"validation.status"`.

    `value` must be JSON-compatible (`TypeError` naming the key otherwise). The task's
    context is stored with it and readable from any process through `get_task`.
    """
    run = _running("set_context()")
    parts = _path(key)
    value = normalize(value, f"context[{key!r}]")
    node: Any = run.task.context
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is not None and not isinstance(child, dict):
            holder = ".".join(parts[: depth + 1])
            raise TypeError(
                f"context key {key!r}: {holder!r} holds a {type(child).__name__}, not an object"
            )
        node = child if child is not None else {}
    run.context_changed(key, value)


def apply_context(context: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` to `value` in `context`, creating the objects on the way."""
    node = context
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def get_context(key: str | None = None, default: Any = None) -> Any:
    """Return the value at dotted `key` in the running task's context, or `default`.

    Without a key, a copy of the whole context.
    """
    context = _running("get_context()").task.context
    if key is None:
        return normalize(context)
    node: Any = context
    for part in _path(key):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records made inside an executor are also kept with the task.

    A record at `level` or above (default INFO) is kept with the running task whatever
    the logger's own level, so a task's history does not depend on how the console is
    configured. It then goes to the wrapped logger as usual, its level and handlers
    applied, with `task_id` and `task_name` added for formatters.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        super().__init__(logger, None)
        self.keep_level = level

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log `msg % args` at `level`, keeping it with the running task if any."""
        run = running.get()
        if run is not None:
            task = run.task
            extra = kwargs.get("extra") or {}
            kwargs["extra"] = {"task_id": task.id, "task_name": task.name, **extra}
            if level >= self.keep_level:
                message = _message(msg, args)
                exc_info = kwargs.get("exc_info")
                if exc_info:
                    message += "\n" + _format_exception(exc_info)
                run.logged(
                    {
                        "time": datetime.now(UTC).isoformat(),
                        "level": logging.getLevelName(level),
                        "logger": self.logger.name,
                        "message": message,
                    }
                )
        if self.logger.isEnabledFor(level):
            # Name the caller of the adapter, not this method, as the record's origin.
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.logger.log(level, msg, *args, **kwargs)


def _message(msg: object, args: tuple[Any, ...]) -> str:
    """`msg % args` as logging would make it; a broken format never raises."""
    record = logging.LogRecord("", logging.INFO, "", 0, msg, args, None)
    try:
        return record.getMessage()
    except Exception:
        return f"{msg} {args!r}"


def _format_exception(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if exc_info[0] is None:
        return "NoneType: None"
    return logging.Formatter().formatException(exc_info).rstrip()


def get_logger(name: str | None = None, *, level: int = logging.INFO) -> TaskLogger:
    """A `TaskLogger` around `logging.getLogger(name)`: inside an executor its records
    at `level` and above are kept with the task (its latest ones, see
    `TaskQueueService(max_task_logs=...)`) as well as logged as usual."""
    return TaskLogger(logging.getLogger(name), level)
