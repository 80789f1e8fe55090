"""The JSON bodies of the HTTP API, as pydantic models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..compat.models import TaskInfo, TaskStatus
from ..models import Task
from ..models import TaskStatus as CoreStatus

__all__ = [
    "CancelResponse",
    "HealthResponse",
    "TaskCreate",
    "TaskErrorModel",
    "TaskInfoModel",
    "TaskModel",
    "TaskSubmission",
    "TaskTypesResponse",
]


class TaskSubmission(BaseModel):
    """POST /tasks of a worker router: which task type to run with which arguments.

    `params` are the function's keyword arguments.
    """

    model_config = ConfigDict(extra="forbid")

    task_type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    task_id: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None
    timeout: float | None = Field(default=None, gt=0)
    use_cache: bool | None = None
    cache_ttl: int | None = Field(default=None, gt=0)


class TaskInfoModel(BaseModel):
    """A task as the worker API shows it."""

    id: str
    task_type: str
    status: TaskStatus
    progress: float
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    result: Any
    error: str | None
    metadata: dict[str, Any]

    @classmethod
    def of(cls, info: TaskInfo) -> TaskInfoModel:
        """The model of a `TaskInfo`."""
        return cls(
            id=info.id,
            task_type=info.task_type,
            status=info.status,
            progress=info.progress,
            created_at=info.created_at,
            started_at=info.started_at,
            completed_at=info.completed_at,
            result=info.result,
            error=info.error,
            metadata=info.metadata,
        )


class TaskCreate(BaseModel):
    """POST /tasks of a service router: an executor name, a JSON payload and options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    delay_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    task_id: str | None = Field(default=None, min_length=1, max_length=256)
    max_retries: int | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    metadata: dict[str, Any] | None = None


class TaskErrorModel(BaseModel):
    """Why a task failed: the exception type and message (tracebacks stay in the logs)."""

    type: str
    message: str


class TaskModel(BaseModel):
    """A task as the service API shows it; `cancel_requested` is true for a running task
    asked to stop, until it has."""

    id: str
    name: str
    status: CoreStatus
    priority: int
    payload: dict[str, Any]
    created_at: datetime
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_retries: int
    timeout: float | None
    progress: float
    result: Any
    error: TaskErrorModel | None
    metadata: dict[str, Any]
    cancel_requested: bool = False

    @classmethod
    def of(cls, task: Task) -> TaskModel:
        """The model of a broker's `Task`."""
        error = task.error
        return cls(
            id=task.id,
            name=task.name,
            status=task.status,
            priority=task.priority,
            payload=task.payload,
            created_at=task.created_at,
            scheduled_at=task.scheduled_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            attempts=task.attempts,
            max_retries=task.max_retries,
            timeout=task.timeout,
            progress=task.progress,
            result=task.result,
            error=None
            if error is None
            else TaskErrorModel(type=error.type, message=error.message),
            metadata=task.metadata,
            cancel_requested=task.cancel_requested and not task.is_final,
        )


class CancelResponse(BaseModel):
    """DELETE /tasks/{id}: the cancel was accepted, so `status` is `"cancelled"`."""

    id: str
    cancelled: bool
    status: str


class TaskTypesResponse(BaseModel):
    """GET /tasks/types: the task types (or executor names) that can be submitted."""

    task_types: list[str]


class HealthResponse(BaseModel):
    """GET /health: whether workers run here, how many worker slots run (`workers`) and
    how many of them run a task now (`active`), and how many tasks are in each state."""

    status: str
    running: bool
    workers: int
    active: int
    tasks: dict[str, int]
