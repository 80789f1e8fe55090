"""collector_paused: the cycle collector is paused for large builds, and put back."""

from __future__ import annotations

import gc

import pytest

from task_queue import InMemoryBroker, Task
from task_queue.gcpause import PAUSE_FROM, collector_paused


def test_a_large_build_pauses_the_collector_and_resumes_it_even_on_errors() -> None:
    assert gc.isenabled()
    with collector_paused(PAUSE_FROM):
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused(PAUSE_FROM):
        raise RuntimeError("a bad item")
    assert gc.isenabled()


def test_a_small_build_or_an_app_that_paused_it_is_left_alone() -> None:
    with collector_paused(PAUSE_FROM - 1):
        assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused(PAUSE_FROM):
            pass
        assert not gc.isenabled()  # the application's choice stands
    finally:
        gc.enable()


async def test_the_memory_broker_stores_a_large_batch_with_the_collector_back_on() -> None:
    broker = InMemoryBroker()
    stored = await broker.enqueue_many([Task("job", {"n": i}) for i in range(PAUSE_FROM)])
    assert gc.isenabled()
    assert [t.payload["n"] for t in stored] == list(range(PAUSE_FROM))
    with pytest.raises(ValueError, match="priority"):
        await broker.enqueue_many(
            [*(Task("job") for _ in range(PAUSE_FROM)), Task("job", priority=10**9)]
        )
    assert gc.isenabled()
    await broker.close()
