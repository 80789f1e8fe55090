"""Real worker processes started with the `task-queue worker` command, on a real Redis.

Each run of an executor is recorded in Redis outside the queue (tests/apps/recorder.py),
so the checks do not trust the queue's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import pytest
from redis.asyncio import Redis

from task_queue import TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker
from tests.chaos.harness import RedisServer
from tests.conftest import REDIS_URL, forget, require_real_redis, unique_prefix

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


class Workers:
    """Worker processes of tests/apps/recorder.py, with their logs kept in files."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(self, concurrency: int) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        self._files.append(log)
        command = [
            sys.executable,
            "-m",
            "task_queue",
            "--log-level",
            os.environ.get("TQ_TEST_WORKER_LOG", "WARNING"),
            "worker",
        ]
        command += ["tests.apps.recorder:service", "--concurrency", str(concurrency)]
        proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def stop_all(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
        for log in self._files:
            log.close()
        return codes


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Wait for `check()` to hold, re-checking as the workers progress; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def worker_env(url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TQ_TEST_REDIS_URL=url, TQ_TEST_PREFIX=prefix, PYTHONPATH=str(REPO), **extra)
    return env


@pytest.fixture
async def real_redis() -> AsyncIterator[tuple[str, str]]:
    """(url, prefix) on the real Redis; everything under the prefix is deleted after."""
    await require_real_redis()
    prefix = unique_prefix()
    yield REDIS_URL, prefix
    broker = RedisBroker.from_url(REDIS_URL, prefix=prefix)
    await forget(broker)
    await broker.client.delete(f"{prefix}:runs", f"{prefix}:attempts", f"{prefix}:pids")
    await broker.close()


async def completed(broker: RedisBroker) -> int:
    return (await broker.count_tasks())[TaskStatus.COMPLETED]


async def test_three_worker_processes_run_every_task_exactly_once(
    real_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, prefix = real_redis
    workers = Workers(worker_env(url, prefix), tmp_path)
    broker = RedisBroker.from_url(url, prefix=prefix)
    producer = TaskQueueService(broker, check_names=False)
    oracle = Redis.from_url(url, decode_responses=True)
    try:
        for _ in range(3):
            workers.start(concurrency=20)
        ids: list[str] = []
        for start in range(0, 5000, 500):
            batch = [{"name": "record", "payload": {"n": n}} for n in range(start, start + 500)]
            ids += [t.id for t in await producer.add_tasks(batch)]

        async def all_done() -> bool:
            return await completed(broker) == 5000

        await wait_until(all_done, 90, "5,000 completed tasks")
        runs = await oracle.hgetall(f"{prefix}:runs")
        assert set(runs) == set(ids)
        assert all(count == "1" for count in runs.values())
        assert (await broker.count_tasks())[TaskStatus.PENDING] == 0
    finally:
        codes = workers.stop_all()
        await oracle.aclose()
        await broker.close()
    assert codes == [0, 0, 0], workers.output()


async def test_killed_worker_tasks_are_recovered_by_another_process(
    real_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, prefix = real_redis
    workers = Workers(worker_env(url, prefix, TQ_TEST_LEASE="1"), tmp_path)
    broker = RedisBroker.from_url(url, prefix=prefix, lease_seconds=1)
    producer = TaskQueueService(broker, check_names=False)
    oracle = Redis.from_url(url, decode_responses=True)
    try:
        doomed = workers.start(concurrency=20)
        batch = [{"name": "record", "payload": {"hang_first": True}} for _ in range(20)]
        ids = [t.id for t in await producer.add_tasks(batch)]

        async def all_held() -> bool:
            return len(await oracle.hgetall(f"{prefix}:attempts")) == 20

        await wait_until(all_held, 30, "the first worker to hold all 20 tasks")
        doomed.kill()
        doomed.wait(timeout=10)
        counts = await broker.count_tasks()
        assert counts[TaskStatus.PROCESSING] == 20  # leased by a dead process
        workers.start(concurrency=20)
        for task_id in ids:
            task = await broker.wait_for(task_id, timeout=30)
            assert task.status is TaskStatus.COMPLETED
            assert task.attempts == 2  # the attempt that died is counted
        runs = await oracle.hgetall(f"{prefix}:runs")
        assert all(runs[task_id] == "2" for task_id in ids)
    finally:
        codes = workers.stop_all()
        await oracle.aclose()
        await broker.close()
    assert codes[0] == -signal.SIGKILL
    assert codes[1:] == [0], workers.output()


async def test_workers_resume_after_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    await server.start()
    prefix = unique_prefix()
    # A dequeue whose reply the restart cut off leased tasks to nobody: they come back
    # when that lease expires, so keep the lease short here.
    workers = Workers(worker_env(server.url, prefix, TQ_TEST_LEASE="2"), tmp_path)
    broker = RedisBroker.from_url(server.url, prefix=prefix, retry_seconds=60, lease_seconds=2)
    producer = TaskQueueService(broker, check_names=False)
    oracle = Redis.from_url(server.url, decode_responses=True)
    try:
        for _ in range(2):
            workers.start(concurrency=20)
        ids: list[str] = []
        for start in range(0, 2000, 500):
            batch = [
                {"name": "record", "payload": {"n": n, "sleep": 0.005}}
                for n in range(start, start + 500)
            ]
            ids += [t.id for t in await producer.add_tasks(batch)]

        async def some_done() -> bool:
            return await completed(broker) >= 300

        await wait_until(some_done, 60, "the first 300 tasks")
        await server.restart()
        more = [{"name": "record", "payload": {"n": n}} for n in range(2000, 2100)]
        ids += [t.id for t in await producer.add_tasks(more)]

        async def all_done() -> bool:
            return await completed(broker) == 2100

        await wait_until(all_done, 90, "all 2,100 tasks after the restart")
        runs = await oracle.hgetall(f"{prefix}:runs")
        assert set(runs) == set(ids)  # nothing lost
    finally:
        codes = workers.stop_all()
        await oracle.aclose()
        await broker.close()
        server.stop()
    assert codes == [0, 0], workers.output()
