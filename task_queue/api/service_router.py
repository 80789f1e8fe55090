"""create_task_queue_router: the HTTP API of a TaskQueueService."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from ..errors import TaskNotFoundError, UnknownTaskError
from ..models import TaskStatus
from ..service import TaskQueueService
from .schemas import CancelResponse, HealthResponse, TaskCreate, TaskModel, TaskTypesResponse

__all__ = ["create_task_queue_router"]


def create_task_queue_router(
    service: TaskQueueService,
    prefix: str = "",
    tags: list[str | Enum] | None = None,
) -> APIRouter:
    """An APIRouter that adds, reads, lists and cancels the tasks of `service`.

    The same routes as `create_task_worker_router`; POST /tasks takes `name`, `payload`,
    `priority`, `delay_seconds` (and optionally `task_id`, `max_retries`, `timeout`,
    `metadata`). An unknown executor name or task id answers 404, a malformed body 422.
    """
    router = APIRouter(prefix=prefix, tags=tags or ["tasks"])

    @router.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def add_task(body: TaskCreate) -> TaskModel:
        """Enqueue a task for the executor `name`."""
        try:
            task = await service.add_task(
                body.name,
                body.payload,
                body.priority,
                body.delay_seconds,
                task_id=body.task_id,
                max_retries=body.max_retries,
                timeout=body.timeout,
                metadata=body.metadata,
            )
        except UnknownTaskError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None
        return TaskModel.of(task)

    @router.get("/tasks")
    async def list_tasks(
        status_filter: Annotated[TaskStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[TaskModel]:
        """Up to `limit` tasks of the broker, oldest first, optionally in one state."""
        tasks = await service.broker.list_tasks(status_filter, limit=limit)
        return [TaskModel.of(task) for task in tasks]

    @router.get("/tasks/types")
    async def task_types() -> TaskTypesResponse:
        """The executor names this service runs."""
        return TaskTypesResponse(task_types=sorted(service.task_executors))

    @router.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> TaskModel:
        """A task's state, progress and outcome."""
        task = await service.get_task(task_id)
        if task is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
        return TaskModel.of(task)

    @router.delete("/tasks/{task_id}")
    async def cancel_task(task_id: str) -> CancelResponse:
        """Cancel a pending or running task; 409 when it has ended or was cancelled.

        A running task whose cancel is accepted stops within a heartbeat of its worker;
        it reads `"cancel_requested": true` until then.
        """
        task = await service.get_task(task_id)
        if task is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
        if task.cancel_requested and not task.is_final:
            raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id!r} is already cancelled")
        try:
            accepted = await service.cancel(task_id)
        except TaskNotFoundError:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}"
            ) from None
        if not accepted:
            now = await service.get_task(task_id)
            state = (now or task).status.value
            raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id!r} is already {state}")
        return CancelResponse(id=task_id, cancelled=True, status=TaskStatus.CANCELLED.value)

    @router.get("/health")
    async def health() -> HealthResponse:
        """Worker slots running here, tasks they run, and the broker's task counts (503
        if the broker is unreachable)."""
        try:
            counts = await service.broker.count_tasks()
        except Exception as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable: {exc}"
            ) from None
        return HealthResponse(
            status="ok",
            running=service.running,
            workers=service.worker_info().concurrency,  # slots running, not configured
            active=service.active_count,
            tasks={s.value: n for s, n in counts.items()},
        )

    return router
