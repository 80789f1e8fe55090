"""The worker command's idle timeout, the CLI's renderers and its masking of secrets."""

from __future__ import annotations

import asyncio

import pytest

from task_queue import InMemoryBroker, Task, TaskQueueService, TaskStatus
from task_queue.cli import run_worker
from task_queue.cli.render import nested, table
from task_queue.cli.target import Secrets


async def test_run_worker_stops_when_idle_but_never_cuts_a_task_short() -> None:
    async def nap(task: Task) -> str:
        await asyncio.sleep(0.5)
        return "rested"

    broker = InMemoryBroker()
    service = TaskQueueService(broker, {"nap": nap})
    task = await service.add_task("nap")
    await asyncio.wait_for(run_worker(service, 2, grace=0, idle_timeout=0.2), 30)
    done = await broker.get_task(task.id)
    assert done is not None and done.status is TaskStatus.COMPLETED and done.result == "rested"
    assert await broker.list_workers() == []


async def test_run_worker_refuses_an_idle_timeout_that_is_not_positive() -> None:
    service = TaskQueueService(InMemoryBroker())
    with pytest.raises(ValueError, match="idle_timeout"):
        await run_worker(service, 1, idle_timeout=0)
    assert not service.running


# ------------------------------------------------------------------ renderers


def test_nested_shows_fields_it_does_not_know() -> None:
    record = {
        "id": "t1",
        "started_at": 0.0,
        "context": {"step": "validation", "order": {"id": 7}},
        "logs": [
            {"at": 0.0, "level": "INFO", "message": "checking"},
            {"at": 1.0, "level": "ERROR", "message": "two\nlines"},
        ],
        "depends_on": ["a", "b"],
        "empty": [],
        "notes": None,
    }
    lines = nested(record)
    assert lines[0].split() == ["id", "t1"]
    assert lines[1].startswith("started_at") and "1970-01-01 00:00:00.000 UTC" in lines[1]
    assert "context:" in lines
    assert "  step   validation" in lines
    assert "    id  7" in lines
    assert "logs:" in lines
    assert any(line.startswith("  - at") and "1970-01-01" in line for line in lines)
    assert "      two" in lines and "      lines" in lines
    assert "depends_on:" in lines and "  - a" in lines and "  - b" in lines
    assert any(line.split() == ["empty", "[]"] for line in lines)
    assert any(line.split() == ["notes", "-"] for line in lines)


def test_table_aligns_numbers_right() -> None:
    text = table(["NAME", "COUNT"], [["a", 5], ["longer", 120]])
    assert text.splitlines() == ["NAME    COUNT", "a           5", "longer    120"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pa%40ss@host:6379/0",
        "rediss://user:pa%40ss@host:6380/1",
        "redis://host:6379/0?password=pa%40ss",
    ],
)
def test_secrets_scrub_urls_and_passwords(url: str) -> None:
    secrets = Secrets()
    shown = secrets.add_url(url)
    assert "pa%40ss" not in shown and "***" in shown
    text = secrets.scrub(f"could not reach {url} with password pa@ss or pa%40ss")
    assert "pa@ss" not in text and "pa%40ss" not in text
    assert shown in text
