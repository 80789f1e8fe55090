"""Task functions for the compat multi-process tests, registered by type name.

Both the test (the producer) and the worker process import this module; the worker
finds each function by its registered name. Runs are counted in Redis outside the queue
(`<prefix>:compat-runs`, field = task type) so the tests can tell how often each ran.
"""

from __future__ import annotations

import os
from typing import Any

from redis.asyncio import Redis

from task_queue.compat import task

URL = os.environ.get("TQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("TQ_TEST_PREFIX", "tqtest-compat")

_oracle: Redis | None = None


def oracle() -> Redis:
    """The Redis client the functions record on (made on first use, in its loop)."""
    global _oracle
    if _oracle is None:
        _oracle = Redis.from_url(URL, decode_responses=True)
    return _oracle


@task("compat_double")
async def double(value: int, progress_callback: Any = None) -> dict[str, Any]:
    """Report half progress, wait for the test to open the gate, return 2 * value."""
    await oracle().hincrby(f"{PREFIX}:compat-runs", "compat_double", 1)
    progress_callback(0.5)
    if value >= 100:  # the test opens the gate with an RPUSH
        await oracle().blpop([f"{PREFIX}:gate"], timeout=30)
    return {"doubled": value * 2, "pid": os.getpid()}


@task("compat_fail")
async def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)
