"""The optional dependencies stay optional: importing task_queue or its compat layer
loads neither redis nor fastapi; task_queue.api loads fastapi but not redis."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"{statement}; import sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import task_queue", {"redis", "fastapi", "pydantic", "starlette"}),
        (
            "from task_queue.compat import AsyncTaskWorker, CacheAdapter, task",
            {"redis", "fastapi", "pydantic", "starlette"},
        ),
        ("from task_queue.api import create_task_worker_router", {"redis"}),
    ],
)
def test_optional_dependencies_are_imported_only_when_needed(
    statement: str, absent: set[str]
) -> None:
    assert loaded_after(statement) & absent == set()


def test_redis_cache_adapter_is_imported_on_demand() -> None:
    assert "redis" in loaded_after("from task_queue.compat import RedisCacheAdapter")
