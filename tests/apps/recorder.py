"""A service for the multi-process tests, configured from the environment.

Every run is recorded before the executor returns, in a Redis hash that is not part of
the queue (`<prefix>:runs`, field "<task id>", one increment per run, and
`<prefix>:attempts`, field "<task id>:<attempt>"), so the tests can tell which tasks ran
how often whatever happened to the queue.
"""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from task_queue import RetryPolicy, Task, TaskQueueService
from task_queue.broker.redis import RedisBroker

URL = os.environ.get("TQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TQ_TEST_PREFIX", "tqtest-apps")
LEASE = float(os.environ.get("TQ_TEST_LEASE", "30"))

broker = RedisBroker.from_url(URL, prefix=PREFIX, lease_seconds=LEASE, retry_seconds=120)
oracle = Redis.from_url(URL)
service = TaskQueueService(
    broker,
    retry_policy=RetryPolicy(max_retries=5, base_delay=0.05, max_delay=0.5),
    shutdown_grace=10,
)


@service.executor
async def record(task: Task) -> int:
    """Record the run, then sleep `sleep` seconds (or hang on a first attempt if asked)."""
    await oracle.hincrby(f"{PREFIX}:runs", task.id, 1)
    await oracle.hincrby(f"{PREFIX}:attempts", f"{task.id}:{task.attempts}", 1)
    if task.payload.get("hang_first") and task.attempts == 1:
        await asyncio.Event().wait()
    sleep = float(task.payload.get("sleep", 0))
    if sleep:
        await asyncio.sleep(sleep)
    return int(task.payload.get("n", 0))
