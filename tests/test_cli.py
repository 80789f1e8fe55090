"""The real `task-queue` command, run as `python -m task_queue` against a real Redis.

Each test fills a queue under its own key prefix through a RedisBroker, runs the command
in a subprocess and checks what a user sees: the output, the exit status and the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from task_queue import Task, TaskStatus
from task_queue.broker.redis import RedisBroker
from task_queue.codec import task_to_dict
from task_queue.monitoring import WorkerInfo
from tests.conftest import REDIS_URL, Cleanup, make_broker

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs the command against one queue prefix."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.env = {
            **os.environ,
            "TQ_TEST_REDIS_URL": REDIS_URL,
            "TQ_TEST_PREFIX": broker.prefix,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("TASK_QUEUE_URL", None)

    def command(self, *args: str, target: bool = True) -> list[str]:
        where = ["--url", REDIS_URL, "--prefix", self.broker.prefix] if target else []
        return [sys.executable, "-m", "task_queue", *where, *args]

    async def start(self, *args: str, target: bool = True) -> asyncio.subprocess.Process:
        """Start the command in the background, its output piped."""
        return await asyncio.create_subprocess_exec(
            *self.command(*args, target=target),
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    async def __call__(self, *args: str, target: bool = True) -> Result:
        done = await asyncio.to_thread(
            subprocess.run,
            self.command(*args, target=target),
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    cleanups: list[Cleanup] = []
    made = await make_broker("redis-real", cleanups)
    assert isinstance(made, RedisBroker)
    yield made
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
def cli(broker: RedisBroker) -> Cli:
    return Cli(broker)


async def fill(broker: RedisBroker) -> dict[str, Task]:
    """One task in each state, two pending (one of them delayed); returned by role."""
    now = datetime.now(UTC)
    roles = ["completed", "failed", "cancelled", "processing", "pending"]
    tasks = {
        role: Task("job", payload={"role": role}, created_at=now + timedelta(seconds=n))
        for n, role in enumerate(roles)
    }
    tasks["delayed"] = Task(
        "job", scheduled_at=now + timedelta(hours=1), created_at=now + timedelta(seconds=9)
    )
    await broker.enqueue_many(list(tasks.values())[:4])
    leased = {t.payload["role"]: t for t in await broker.dequeue_many(4)}
    await broker.enqueue_many([tasks["pending"], tasks["delayed"]])
    await broker.mark_complete(
        tasks["completed"].id, {"ok": True}, token=leased["completed"].token
    )
    await broker.mark_failed(tasks["failed"].id, "it broke", token=leased["failed"].token)
    await broker.cancel(tasks["cancelled"].id)
    await broker.mark_cancelled(tasks["cancelled"].id, token=leased["cancelled"].token)
    return tasks


def a_worker(
    broker: RedisBroker, worker_id: str = "web-1:4242:abcd", active: int = 2
) -> WorkerInfo:
    started = datetime.now(UTC) - timedelta(minutes=5)
    return WorkerInfo(worker_id, "web-1", 4242, broker.queue, 8, active, started)


# ------------------------------------------------------------------ status, workers, stats


async def test_status_shows_counts_per_state_and_the_workers(
    broker: RedisBroker, cli: Cli
) -> None:
    await fill(broker)
    await broker.register_worker(a_worker(broker), ttl=60)
    result = await cli("status", "--json")
    assert result.code == 0, result.err
    [queue] = result.json()["queues"]
    assert queue["queue"] == "default"
    assert queue["counts"] == {
        "pending": 2,
        "processing": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    [entry] = queue["workers"]
    assert (entry["worker_id"], entry["concurrency"], entry["active"]) == ("web-1:4242:abcd", 8, 2)

    text = await cli("status")
    assert text.code == 0, text.err
    header, row = text.out.splitlines()[2:4]
    assert header.split() == [
        "QUEUE",
        "PENDING",
        "PROCESSING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "WORKERS",
        "SLOTS",
        "ACTIVE",
    ]
    assert row.split() == ["default", "2", "1", "1", "1", "1", "1", "8", "2"]
    assert "web-1:4242:abcd" in text.out


async def test_status_of_several_queues(broker: RedisBroker, cli: Cli) -> None:
    other = RedisBroker.from_url(REDIS_URL, prefix=broker.prefix, queue="emails")
    try:
        await other.enqueue_many([Task("job"), Task("job")])
        result = await cli("--queue", "default", "status", "--queue", "emails", "--json")
    finally:
        await other.delete_all()
        await other.close()
    assert result.code == 0, result.err
    counts = {q["queue"]: q["counts"]["pending"] for q in result.json()["queues"]}
    assert counts == {"emails": 2}  # options after the command win over those before it


async def test_workers_lists_live_workers_only(broker: RedisBroker, cli: Cli) -> None:
    await broker.register_worker(a_worker(broker), ttl=60)
    await broker.register_worker(a_worker(broker, "gone:1:dead"), ttl=0.05)
    await asyncio.sleep(0.1)  # the time-to-live of "gone" is what is under test
    result = await cli("workers", "--json")
    assert result.code == 0, result.err
    assert [w["worker_id"] for w in result.json()] == ["web-1:4242:abcd"]
    text = await cli("workers")
    assert text.out.split()[:8] == [
        "WORKER",
        "HOST",
        "PID",
        "QUEUE",
        "SLOTS",
        "ACTIVE",
        "UP",
        "HEARTBEAT",
    ]
    assert "web-1:4242:abcd" in text.out and "gone" not in text.out


async def test_stats_show_finished_tasks_and_throughput(broker: RedisBroker, cli: Cli) -> None:
    await fill(broker)
    result = await cli("stats", "--minutes", "5", "--json")
    assert result.code == 0, result.err
    [queue] = result.json()["queues"]
    assert (queue["completed"], queue["failed"], queue["cancelled"]) == (1, 1, 1)
    assert len(queue["minutes"]) == 5
    assert queue["throughput_per_second"]["5m"] > 0
    text = await cli("stats")
    assert "1 completed, 1 failed, 1 cancelled in the last 60 min" in text.out
    assert "MINUTE (UTC)" in text.out


# ------------------------------------------------------------------ list and show


async def test_list_failed_tasks_newest_first_with_a_limit(broker: RedisBroker, cli: Cli) -> None:
    now = datetime.now(UTC)
    tasks = [Task("job", created_at=now + timedelta(seconds=n)) for n in range(3)]
    await broker.enqueue_many([*tasks, Task("job", created_at=now + timedelta(seconds=5))])
    for leased in await broker.dequeue_many(4):
        if leased.id in {t.id for t in tasks}:
            await broker.mark_failed(leased.id, "broken", token=leased.token)
            # Redis reads a final set in finish-time order: one millisecond apart each.
            await asyncio.sleep(0.002)
    result = await cli("list", "--status", "failed", "--limit", "2", "--newest", "--json")
    assert result.code == 0, result.err
    assert [t["id"] for t in result.json()] == [tasks[2].id, tasks[1].id]
    assert all(t["status"] == "failed" for t in result.json())
    text = await cli("list", "--status", "failed")
    lines = text.out.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "STATUS", "ATTEMPTS"]
    assert [line.split()[0] for line in lines[1:]] == [t.id for t in tasks]
    assert "Error: broken" in lines[1]


async def test_show_prints_the_whole_task(broker: RedisBroker, cli: Cli) -> None:
    tasks = await fill(broker)
    failed = await broker.get_task(tasks["failed"].id)
    assert failed is not None
    result = await cli("show", failed.id, "--json")
    assert result.code == 0, result.err
    assert result.json() == {"queue": "default", **task_to_dict(failed)}
    text = await cli("show", failed.id)
    assert text.code == 0, text.err
    for field in task_to_dict(failed):
        assert any(line.startswith(field) for line in text.out.splitlines()), field
    assert "  message    it broke" in text.out
    assert "role  failed" in text.out


async def test_show_of_an_unknown_task_exits_1(cli: Cli) -> None:
    result = await cli("show", "no-such-task")
    assert result.code == 1
    assert "no task with id 'no-such-task'" in result.err
    assert result.out == ""


# ------------------------------------------------------------------ retry, cancel, purge


async def test_retry_by_id_and_all(broker: RedisBroker, cli: Cli) -> None:
    tasks = await fill(broker)
    result = await cli("retry", tasks["failed"].id, tasks["pending"].id, "missing")
    assert result.code == 1
    assert f"task {tasks['failed'].id} requeued (was failed)" in result.out
    assert "is pending, not final" in result.err and "missing not requeued" in result.err
    again = await broker.get_task(tasks["failed"].id)
    assert again is not None and again.status is TaskStatus.PENDING and again.attempts == 0

    more = [Task("job"), Task("job")]
    await broker.enqueue_many(more)
    leased = await broker.dequeue_many(10)
    for task in leased:
        await broker.mark_failed(task.id, "broken again", token=task.token)
    everything = await cli("retry", "--all", "--json")
    assert everything.code == 0, everything.err
    assert everything.json() == {"requeued": {"default": len(leased)}}
    assert (await broker.count_tasks())[TaskStatus.FAILED] == 0


async def test_retry_needs_ids_or_all(cli: Cli) -> None:
    result = await cli("retry")
    assert result.code == 2
    assert "--all" in result.err


async def test_cancel_pending_unknown_and_final_tasks(broker: RedisBroker, cli: Cli) -> None:
    tasks = await fill(broker)
    result = await cli("cancel", tasks["pending"].id, "--reason", "not needed")
    assert result.code == 0, result.err
    assert f"task {tasks['pending'].id} cancelled" in result.out
    cancelled = await broker.get_task(tasks["pending"].id)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error is not None and cancelled.error.message == "not needed"

    running = await cli("cancel", tasks["processing"].id, "--json")
    assert running.json() == [
        {"id": tasks["processing"].id, "cancelled": True, "status": "cancel requested"}
    ]
    refused = await cli("cancel", tasks["completed"].id, "nope")
    assert refused.code == 1
    assert "already completed" in refused.err and "nope not cancelled: not found" in refused.err


async def test_purge_refuses_without_yes_and_never_prompts(broker: RedisBroker, cli: Cli) -> None:
    await fill(broker)
    refused = await cli("purge")  # stdin is not a terminal: no question asked
    assert refused.code == 2
    assert "2 pending task(s)" in refused.err and "--yes" in refused.err
    assert (await broker.count_tasks())[TaskStatus.PENDING] == 2
    done = await cli("purge", "--yes")
    assert done.code == 0, done.err
    assert "2 pending task(s) deleted" in done.out
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PENDING] == 0 and counts[TaskStatus.FAILED] == 1
    failed = await cli("purge", "--status", "failed", "--yes", "--json")
    assert failed.json() == {"purged": {"default": 1}}


# ------------------------------------------------------------------ usage, secrets, --app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "--url"),
        (["--url", REDIS_URL, "--app", "x:y", "status"], "either --url or --app"),
        (["--url", "http://example.com", "status"], "schemes"),
        (["--app", "no_such_module:service", "status"], "cannot load"),
        (["nonsense"], "invalid choice"),
        (["--url", REDIS_URL, "stats", "--minutes", "0"], "between 1 and 1440"),
    ],
)
async def test_usage_errors_exit_2(cli: Cli, args: list[str], message: str) -> None:
    result = await cli(*args, target=False)
    assert result.code == 2
    assert message in result.err


async def test_passwords_are_masked_in_output_and_errors(cli: Cli) -> None:
    refused = await cli(
        "--url", "redis://nobody:sup3r-secret@127.0.0.1:6379/0", "status", target=False
    )
    assert refused.code == 1
    assert "redis://nobody:***@127.0.0.1:6379/0" in refused.err
    assert "sup3r-secret" not in refused.out + refused.err
    # A password the server does not ask for is accepted: it must not show up either.
    host = REDIS_URL.split("://", 1)[1]
    shown = await cli(
        "--url",
        f"redis://:sup3r-secret@{host}",
        "--prefix",
        cli.broker.prefix,
        "status",
        target=False,
    )
    assert shown.code == 0, shown.err
    assert f"redis://:***@{host}" in shown.out
    assert "sup3r-secret" not in shown.out + shown.err


async def test_url_may_come_from_the_environment(broker: RedisBroker, cli: Cli) -> None:
    await broker.enqueue(Task("job"))
    cli.env["TASK_QUEUE_URL"] = REDIS_URL
    result = await cli("--prefix", broker.prefix, "list", "--json", target=False)
    assert result.code == 0, result.err
    assert len(result.json()) == 1


async def test_app_option_reads_the_services_broker(broker: RedisBroker, cli: Cli) -> None:
    await fill(broker)
    result = await cli("--app", "tests.apps.ops_app:service", "list", "--json", target=False)
    assert result.code == 0, result.err
    assert len(result.json()) == 6


# ------------------------------------------------------------------ long-running commands


async def test_status_watch_refreshes_until_interrupted(broker: RedisBroker, cli: Cli) -> None:
    await broker.enqueue(Task("job"))
    proc = await cli.start("status", "--watch", "--interval", "0.1", "--json")
    try:
        assert proc.stdout is not None
        frames = [json.loads(await proc.stdout.readline())]
        await broker.enqueue(Task("job"))
        while frames[-1]["queues"][0]["counts"]["pending"] != 2:
            frames.append(json.loads(await proc.stdout.readline()))
        assert frames[0]["queues"][0]["counts"]["pending"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


async def test_worker_exits_after_its_idle_timeout(broker: RedisBroker, cli: Cli) -> None:
    nap = await broker.enqueue(Task("nap", payload={"seconds": 1.0}))
    proc = await cli.start(
        "worker", "tests.apps.ops_app:service", "--idle-timeout", "0.5", target=False
    )
    try:
        seen: list[WorkerInfo] = []
        while not seen and proc.returncode is None:  # registered while it works
            seen = await broker.list_workers()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = (out + err).decode(errors="replace")
    assert proc.returncode == 0, log
    assert "idle for 0.5s" in log
    [entry] = seen
    assert entry.pid == proc.pid and entry.concurrency == 2
    done = await broker.get_task(nap.id)
    assert done is not None and done.status is TaskStatus.COMPLETED  # not cut short
    assert await broker.list_workers() == []  # unregistered on the way out
