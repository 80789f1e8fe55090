"""A compat producer in this process, a worker process started with `task-queue worker`.

The worker process imports tests/apps/compat_tasks.py and runs the functions by their
registered names; the producer only adds tasks and tracks them. Real Redis only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import pytest
from redis.asyncio import Redis

from task_queue import TaskFailedError
from task_queue.broker.redis import RedisBroker
from task_queue.compat import AsyncTaskWorker
from tests.compat.conftest import TIMEOUT, wait_until
from tests.conftest import REDIS_URL, forget, require_real_redis, unique_prefix

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def start_worker(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "task_queue", "--log-level", "WARNING", "worker"]
    command += ["tests.apps.compat_worker:service", "--concurrency", "4"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)


def stop_worker(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


@pytest.fixture
async def worker_process(tmp_path: Path) -> AsyncIterator[tuple[str, Redis]]:
    """(prefix, client): a worker process running on the real Redis under `prefix`."""
    await require_real_redis()
    prefix = unique_prefix()
    env = dict(os.environ, TQ_TEST_REDIS_URL=REDIS_URL, TQ_TEST_PREFIX=prefix)
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = start_worker(env, log)
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            yield prefix, client
        finally:
            code = stop_worker(proc)
            broker = RedisBroker.from_url(REDIS_URL, prefix=prefix)
            await forget(broker)
            await broker.close()
            await client.delete(f"{prefix}:compat-runs", f"{prefix}:gate")
            await client.aclose()
    assert code == 0, log_path.read_text()


async def test_a_worker_process_runs_tasks_by_registered_name(
    worker_process: tuple[str, Redis],
) -> None:
    from tests.apps import compat_tasks

    prefix, client = worker_process
    broker = RedisBroker.from_url(REDIS_URL, prefix=prefix)
    producer = AsyncTaskWorker(
        max_workers=0, broker=broker, worker_poll_interval=0.05, cache_enabled=True
    )
    await producer.start()
    try:
        gated = await producer.add_task(compat_tasks.double, 100)
        # Run elsewhere, its progress reaches this process's view by refreshing.
        await wait_until(
            lambda: (
                (info := producer.get_task_info(gated)).status == "running"
                and info.progress == 0.5
            ),
            "progress of the remote run",
        )
        follower = await producer.add_task(compat_tasks.double, 100)  # identical: waits
        await client.rpush(f"{prefix}:gate", "go")
        result: dict[str, Any] = await asyncio.wait_for(producer.get_task_future(gated), TIMEOUT)
        assert result["doubled"] == 200
        assert result["pid"] != os.getpid()
        assert await asyncio.wait_for(producer.get_task_future(follower), TIMEOUT) == result
        # The result reached this process's cache: the same call completes at once.
        cached = await producer.add_task(compat_tasks.double, 100)
        assert producer.get_task_info(cached).status == "completed"
        assert await client.hget(f"{prefix}:compat-runs", "compat_double") == "1"

        failing = await producer.add_task(compat_tasks.fail, "it broke")
        with pytest.raises(TaskFailedError, match="ValueError: it broke"):
            await asyncio.wait_for(producer.get_task_future(failing), TIMEOUT)
        assert producer.get_task_info(failing).error == "it broke"
    finally:
        await producer.stop()
        await broker.close()


PRODUCER = """
import asyncio, os
from task_queue.broker.redis import RedisBroker
from task_queue.compat import AsyncTaskWorker
from tests.apps import compat_tasks

async def main():
    broker = RedisBroker.from_url(compat_tasks.URL, prefix=compat_tasks.PREFIX)
    worker = AsyncTaskWorker(max_workers=0, cache_enabled=True, broker=broker)
    worker.follower_park = 0.2
    leader = await worker.add_task(compat_tasks.double, 150)
    follower = await worker.add_task(compat_tasks.double, 150)  # identical: waits
    print(leader, follower, flush=True)
    os._exit(0)  # the producer's process goes away without a word

asyncio.run(main())
"""


async def test_a_follower_is_settled_when_its_producer_process_is_gone(
    worker_process: tuple[str, Redis],
) -> None:
    prefix, client = worker_process
    env = dict(os.environ, TQ_TEST_REDIS_URL=REDIS_URL, TQ_TEST_PREFIX=prefix)
    env["PYTHONPATH"] = str(REPO)
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRODUCER, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(producer.communicate(), TIMEOUT)
    assert producer.returncode == 0
    leader, follower = output.decode().split()
    await client.rpush(f"{prefix}:gate", "go")
    broker = RedisBroker.from_url(REDIS_URL, prefix=prefix)
    observer = AsyncTaskWorker(max_workers=0, broker=broker)
    await observer.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*observer.get_task_futures([leader, follower])), TIMEOUT
        )
        assert results[0]["doubled"] == 300
        assert results[1] == results[0]  # the worker process handed it over
        assert await client.hget(f"{prefix}:compat-runs", "compat_double") == "1"
    finally:
        await observer.stop()
        await broker.close()
