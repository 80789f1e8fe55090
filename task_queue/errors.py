"""The exception types users of task_queue catch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Task

__all__ = [
    "BrokerConnectionError",
    "DecodeError",
    "PayloadError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskQueueError",
    "TaskStateError",
    "UnknownTaskError",
]


class TaskQueueError(Exception):
    """Base class of every error raised by task_queue."""


class UnknownTaskError(TaskQueueError, ValueError):
    """A task name has no executor registered for it."""

    def __init__(self, name: str, registered: list[str]) -> None:
        self.name = name
        self.registered = sorted(registered)
        known = ", ".join(repr(n) for n in self.registered) or "none"
        super().__init__(f"unknown task name {name!r}; registered names: {known}")


class PayloadError(TaskQueueError, TypeError):
    """A payload or result cannot be encoded; `path` names the offending field."""

    def __init__(self, message: str, path: str) -> None:
        self.path = path
        super().__init__(message)


class DecodeError(TaskQueueError, ValueError):
    """A record read from a broker cannot be turned back into a task."""


class TaskNotFoundError(TaskQueueError, LookupError):
    """No task with this id exists (or its record has expired)."""

    def __init__(self, task_id: str, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or f"no task with id {task_id!r}")


class TaskStateError(TaskQueueError, ValueError):
    """The requested change is not allowed from the task's current state."""


class TaskFailedError(TaskQueueError):
    """The awaited task ended FAILED; `task.error` says why."""

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"task {task.id} ({task.name}) failed: {task.error}")


class TaskCancelledError(TaskQueueError):
    """The awaited task ended CANCELLED."""

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"task {task.id} ({task.name}) was cancelled")


class BrokerConnectionError(TaskQueueError, ConnectionError):
    """The broker's server cannot be reached; the message names it with secrets masked."""
