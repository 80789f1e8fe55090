"""A service for the CLI tests, on the Redis and prefix named by the environment."""

from __future__ import annotations

import asyncio
import os

from task_queue import RetryPolicy, Task, TaskQueueService
from task_queue.broker.redis import RedisBroker

URL = os.environ.get("TQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TQ_TEST_PREFIX", "tqtest-ops")
LEASE = float(os.environ.get("TQ_TEST_LEASE", "30"))

broker = RedisBroker.from_url(URL, prefix=PREFIX, lease_seconds=LEASE)
service = TaskQueueService(broker, retry_policy=RetryPolicy(max_retries=0), concurrency=2)


@service.executor
async def echo(task: Task) -> dict[str, object]:
    """Return the payload."""
    return dict(task.payload)


@service.executor
async def boom(task: Task) -> None:
    """Fail with the payload's message."""
    raise RuntimeError(str(task.payload.get("message", "boom")))


@service.executor
async def nap(task: Task) -> None:
    """Sleep `seconds` seconds."""
    await asyncio.sleep(float(task.payload.get("seconds", 0)))
