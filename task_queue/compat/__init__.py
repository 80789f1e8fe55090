"""The async-task-worker API on task_queue: change the import, keep the code.

`from task_queue.compat import AsyncTaskWorker, task` replaces
`from task_worker import ...` / `from async_task_worker import ...`. The worker runs on
any task_queue broker; see docs/migration-async-task-worker.md for what differs.
`RedisCacheAdapter` needs the `redis` extra and is imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import CacheAdapter, MemoryCacheAdapter, make_cache_key
from .models import TaskInfo, TaskStatus
from .registry import (
    get_all_task_types,
    get_task_function,
    get_task_type,
    register_task,
    task,
    unregister_task,
)
from .worker import AsyncTaskWorker, set_default_broker

if TYPE_CHECKING:
    from .redis_cache import RedisCacheAdapter

__all__ = [
    "AsyncTaskWorker",
    "CacheAdapter",
    "MemoryCacheAdapter",
    "RedisCacheAdapter",
    "TaskInfo",
    "TaskStatus",
    "get_all_task_types",
    "get_task_function",
    "get_task_type",
    "make_cache_key",
    "register_task",
    "set_default_broker",
    "task",
    "unregister_task",
]


def __getattr__(name: str) -> Any:
    # RedisCacheAdapter needs redis-py, an optional extra: import it only when asked for.
    if name == "RedisCacheAdapter":
        from .redis_cache import RedisCacheAdapter

        return RedisCacheAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
