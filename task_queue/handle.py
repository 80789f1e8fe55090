"""TaskHandle: a reference to an enqueued task to wait for, inspect or cancel it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import TaskNotFoundError
from .models import Task, TaskStatus

if TYPE_CHECKING:
    from .service import TaskQueueService

__all__ = ["TaskHandle"]


class TaskHandle:
    """An enqueued task, seen from the code that enqueued it (or looked it up).

    `task` is the task as last read: when the handle was made from a `Task`, or by the
    latest `refresh()`; None for a handle made from an id and not refreshed yet. The
    methods ask the broker, so they work from any process on a shared broker.
    """

    __slots__ = ("_id", "_service", "task")

    def __init__(self, service: TaskQueueService, task: Task | str) -> None:
        self._service = service
        if isinstance(task, Task):
            self._id = task.id
            self.task: Task | None = task
        else:
            self._id = task
            self.task = None

    def __repr__(self) -> str:
        name = "?" if self.task is None else self.task.name
        return f"TaskHandle(id={self._id!r}, name={name!r})"

    @property
    def id(self) -> str:
        """The task's id."""
        return self._id

    async def get_task_id(self) -> str:
        """The task's id (an awaitable, as the queued-task API has it)."""
        return self._id

    async def refresh(self) -> Task:
        """Read the task as the broker holds it now; `TaskNotFoundError` once it is gone."""
        task = await self._service.get_task(self._id)
        if task is None:
            raise TaskNotFoundError(self._id)
        self.task = task
        return task

    async def status(self) -> TaskStatus:
        """The task's current status."""
        return (await self.refresh()).status

    async def get_state(self) -> TaskStatus:
        """The task's current status (the queued-task API's name for `status`)."""
        return await self.status()

    async def wait(self, timeout: float | None = None) -> Any:
        """Wait until the task is final and return its result.

        Raises `TaskFailedError` or `TaskCancelledError` when it did not complete and
        `TimeoutError` after `timeout` seconds.
        """
        return await self._service.get_result(self._id, timeout)

    async def cancel(self, reason: str | None = None) -> bool:
        """Cancel the task if it is not final yet; False when it already is."""
        return await self._service.cancel(self._id, reason)
