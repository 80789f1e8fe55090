"""TaskStatus and TaskInfo as the async-task-worker API shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..models import Task
from ..models import TaskStatus as CoreStatus

__all__ = ["TaskInfo", "TaskStatus"]


class TaskStatus(StrEnum):
    """Where a task is in its life; the values are plain strings (`"completed"`...)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def from_core(cls, status: CoreStatus) -> TaskStatus:
        """The status matching a broker's task status (PROCESSING reads as RUNNING)."""
        if status is CoreStatus.PROCESSING:
            return cls.RUNNING
        return cls(status.value)

    @property
    def is_final(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(slots=True)
class TaskInfo:
    """What is known about one task: status, progress, times, outcome and metadata.

    Times are aware UTC datetimes. `result` is set once the task completed, `error` (the
    exception's message) once it failed or was cancelled. `task_type` names the
    registered function that runs it.
    """

    id: str
    status: TaskStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: float = 0.0
    result: Any = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    task_type: str = ""

    @classmethod
    def from_task(cls, task: Task) -> TaskInfo:
        """Describe a broker's task snapshot."""
        status = TaskStatus.from_core(task.status)
        error = None
        if task.error is not None and status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            error = task.error.message or task.error.type
        return cls(
            id=task.id,
            status=status,
            created_at=task.created_at,
            started_at=task.started_at,
            completed_at=task.finished_at if status.is_final else None,
            progress=task.progress,
            result=task.result if status is TaskStatus.COMPLETED else None,
            error=error,
            metadata=dict(task.metadata),
            task_type=task.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """The info with JSON types only (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "task_type": self.task_type,
            "status": self.status.value,
            "progress": self.progress,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "result": self.result,
            "error": self.error,
            "metadata": self.metadata,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
