"""task_queue: an asyncio task queue whose brokers are swappable.

Define async executors, enqueue named tasks with a JSON payload, a priority and an
optional delay, and run them in worker slots, on the in-memory broker inside one process
or on Redis across many.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .broker.base import AbstractBroker, RenewResult, TaskNote
from .broker.memory import InMemoryBroker
from .context import current_task, get_context, get_logger, report_progress, set_context
from .errors import (
    BrokerConnectionError,
    DecodeError,
    PayloadError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskQueueError,
    TaskStateError,
    UnknownTaskError,
)
from .handle import TaskHandle
from .hooks import Middleware
from .models import Task, TaskError, TaskStatus
from .retry import RetryPolicy
from .service import Executor, TaskExecutor, TaskQueueService

if TYPE_CHECKING:
    from .broker.redis import RedisBroker

__version__ = "0.1.0"

__all__ = [
    "AbstractBroker",
    "BrokerConnectionError",
    "DecodeError",
    "Executor",
    "InMemoryBroker",
    "Middleware",
    "RedisBroker",
    "PayloadError",
    "RenewResult",
    "RetryPolicy",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskExecutor",
    "TaskFailedError",
    "TaskHandle",
    "TaskNote",
    "TaskNotFoundError",
    "TaskQueueError",
    "TaskQueueService",
    "TaskStateError",
    "TaskStatus",
    "UnknownTaskError",
    "__version__",
    "current_task",
    "get_context",
    "get_logger",
    "report_progress",
    "set_context",
]


def __getattr__(name: str) -> Any:
    # RedisBroker needs redis-py, an optional extra: import it only when it is asked for.
    if name == "RedisBroker":
        from .broker.redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
