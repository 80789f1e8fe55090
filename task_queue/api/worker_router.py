"""create_task_worker_router: the HTTP API of an AsyncTaskWorker."""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from ..compat.models import TaskStatus
from ..compat.worker import AsyncTaskWorker
from ..errors import UnknownTaskError
from ..models import TaskStatus as CoreStatus
from .schemas import (
    CancelResponse,
    HealthResponse,
    TaskInfoModel,
    TaskSubmission,
    TaskTypesResponse,
)

__all__ = ["create_task_worker_router"]


def create_task_worker_router(
    worker: AsyncTaskWorker,
    prefix: str = "",
    tags: list[str | Enum] | None = None,
) -> APIRouter:
    """An APIRouter that submits, reads, lists and cancels the tasks of `worker`.

    Routes (under `prefix`): POST /tasks, GET /tasks, GET /tasks/types,
    GET /tasks/{task_id}, DELETE /tasks/{task_id}, GET /health. An unknown task type or
    task id answers 404, a malformed body 422.
    """
    router = APIRouter(prefix=prefix, tags=tags or ["tasks"])

    @router.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def submit_task(body: TaskSubmission) -> TaskInfoModel:
        """Queue a registered task type with `params` as its keyword arguments."""
        try:
            task_id = await worker.submit(
                body.task_type,
                kwargs=body.params,
                priority=body.priority,
                task_id=body.task_id,
                metadata=body.metadata,
                timeout=body.timeout,
                use_cache=body.use_cache,
                cache_ttl=body.cache_ttl,
            )
        except UnknownTaskError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None
        info = worker.get_task_info(task_id) or await worker.fetch_task_info(task_id)
        if info is None:  # expired already: only a re-used id can get here
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
        return TaskInfoModel.of(info)

    @router.get("/tasks")
    async def list_tasks(
        status_filter: Annotated[TaskStatus | None, Query(alias="status")] = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
        older_than_seconds: Annotated[float | None, Query(ge=0)] = None,
    ) -> list[TaskInfoModel]:
        """The tasks this worker added, newest first, optionally filtered."""
        older = None if older_than_seconds is None else timedelta(seconds=older_than_seconds)
        infos = worker.get_all_tasks(status=status_filter, limit=limit, older_than=older)
        return [TaskInfoModel.of(info) for info in infos]

    @router.get("/tasks/types")
    async def task_types() -> TaskTypesResponse:
        """The registered task types."""
        return TaskTypesResponse(task_types=worker.task_types())

    @router.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> TaskInfoModel:
        """A task's status, progress and outcome."""
        info = await worker.fetch_task_info(task_id) or worker.get_task_info(task_id)
        if info is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
        return TaskInfoModel.of(info)

    @router.delete("/tasks/{task_id}")
    async def cancel_task(task_id: str) -> CancelResponse:
        """Cancel a pending or running task; 409 when it has ended or was cancelled."""
        info = await worker.fetch_task_info(task_id)
        if info is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task with id {task_id!r}")
        if info.status.is_final or not await worker.cancel_task(task_id):
            now = await worker.fetch_task_info(task_id) or info
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"task {task_id!r} is already {now.status.value}"
            )
        # Accepted: the task reads cancelled from now on, though a running one may take
        # a moment to stop.
        return CancelResponse(id=task_id, cancelled=True, status=TaskStatus.CANCELLED.value)

    @router.get("/health")
    async def health() -> HealthResponse:
        """Whether the worker runs, its slots running and busy, and the broker's task
        counts (503 if the broker is unreachable)."""
        try:
            counts = await worker.broker.count_tasks()
        except Exception as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable: {exc}"
            ) from None
        tasks = {TaskStatus.from_core(CoreStatus(s)).value: n for s, n in counts.items()}
        service = worker.service
        return HealthResponse(
            status="ok",
            running=worker.running,
            workers=service.worker_info().concurrency,  # slots running, not configured
            active=service.active_count,
            tasks=tasks,
        )

    return router
