"""task_queue: an asyncio task queue whose brokers are swappable.

Define async executors, enqueue named tasks with a JSON payload, a priority and an
optional delay, and run them in worker slots, on the in-memory broker inside one process
or on Redis across many.
"""

from __future__ import annotations

from .broker.base import AbstractBroker, RenewResult
from .broker.memory import InMemoryBroker
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
from .models import Task, TaskError, TaskStatus
from .retry import RetryPolicy
from .service import (
    Executor,
    TaskExecutor,
    TaskQueueService,
    current_task,
    report_progress,
)

__version__ = "0.1.0"

__all__ = [
    "AbstractBroker",
    "BrokerConnectionError",
    "DecodeError",
    "Executor",
    "InMemoryBroker",
    "PayloadError",
    "RenewResult",
    "RetryPolicy",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskExecutor",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskQueueError",
    "TaskQueueService",
    "TaskStateError",
    "TaskStatus",
    "UnknownTaskError",
    "__version__",
    "current_task",
    "report_progress",
]
