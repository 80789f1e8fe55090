"""FastAPI routers for task_queue (the `api` extra).

`create_task_worker_router(worker)` serves an `AsyncTaskWorker` with the routes of
async-task-worker's `task_worker_api`; `create_task_queue_router(service)` serves a plain
`TaskQueueService` the same way. `AsyncTaskWorker` is re-exported so
`from task_queue.api import AsyncTaskWorker, create_task_worker_router` works.
"""

from __future__ import annotations

from ..compat.worker import AsyncTaskWorker
from .service_router import create_task_queue_router
from .worker_router import create_task_worker_router

__all__ = ["AsyncTaskWorker", "create_task_queue_router", "create_task_worker_router"]
