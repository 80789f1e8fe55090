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

    `task` is the task as it was when the handle was made; the methods ask the broker,
    so they work from any process on a shared broker.
    """

    __slots__ = ("_service", "task")

    def __init__(self, service: TaskQueueService, task: Task) -> None:
        self._service = service
        self.task = task

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.task.id!r}, name={self.task.name!r})"

    @property
    def id(self) -> str:
        """The task's id."""
        return self.task.id

    async def get_task_id(self) -> str:
        """The task's id (an awaitable, as the queued-task API has it)."""
        return self.task.id

    async def refresh(self) -> Task:
        """Read the task as the broker holds it now; `TaskNotFoundError` once it is gone."""
        task = await self._service.get_task(self.task.id)
        if task is None:
            raise TaskNotFoundError(self.task.id)
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
        return await self._service.get_result(self.task.id, timeout)

    async def cancel(self, reason: str | None = None) -> bool:
        """Cancel the task if it is not final yet; False when it already is."""
        return await self._service.cancel(self.task.id, reason)
