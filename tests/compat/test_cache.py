"""The result cache: keys, the memory and Redis adapters, per-task overrides, single flight."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from task_queue import PayloadError, TaskFailedError
from task_queue.compat import (
    AsyncTaskWorker,
    CacheAdapter,
    MemoryCacheAdapter,
    make_cache_key,
    task,
)
from task_queue.models import TaskStatus as CoreStatus
from task_queue.models import utcnow
from tests.compat.conftest import TIMEOUT, SharedBrokers, WorkerFactory, wait_until
from tests.conftest import REDIS_URL, require_real_redis, unique_prefix


class Clock:
    """A hand-moved clock for TTLs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def result_of(worker: AsyncTaskWorker, task_id: str) -> Any:
    return await asyncio.wait_for(worker.get_task_future(task_id), TIMEOUT)


# ---------------------------------------------------------------- keys


def test_cache_key_depends_on_type_args_and_kwargs_not_on_keyword_order() -> None:
    key = make_cache_key("t", [1, {"b": 2, "a": 1}], {"x": 1, "y": [1, 2]})
    assert key == make_cache_key("t", (1, {"a": 1, "b": 2}), {"y": (1, 2), "x": 1})
    assert key != make_cache_key("u", [1, {"b": 2, "a": 1}], {"x": 1, "y": [1, 2]})
    assert key != make_cache_key("t", [2, {"b": 2, "a": 1}], {"x": 1, "y": [1, 2]})
    assert key != make_cache_key("t", [1, {"b": 2, "a": 1}], {"x": 2, "y": [1, 2]})
    assert len(key) == 64
    with pytest.raises(PayloadError, match=r"args\[0\]"):
        make_cache_key("t", [object()], {})


def test_cache_key_is_the_same_in_another_process() -> None:
    args, kwargs = [1, "x", {"k": [1.5, None]}], {"flag": True, "name": "é"}
    code = (
        "from task_queue.compat import make_cache_key;"
        f"print(make_cache_key('t', {args!r}, {kwargs!r}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert other.stdout.strip() == make_cache_key("t", args, kwargs)


# ---------------------------------------------------------------- memory adapter


async def test_memory_adapter_ttl_lru_delete_clear() -> None:
    clock = Clock()
    cache = MemoryCacheAdapter(max_size=2, clock=clock)
    await cache.set("a", 1, ttl=10)
    await cache.set("b", 2)
    assert await cache.get("a") == (True, 1)  # a is now the most recently used
    await cache.set("c", 3)
    assert await cache.get("b") == (False, None)  # b was the least recently used
    assert len(cache) == 2
    clock.now += 10
    assert await cache.get("a") == (False, None)  # expired
    assert await cache.get("c") == (True, 3)  # no TTL: kept
    assert await cache.delete("c") is True
    assert await cache.delete("c") is False
    await cache.set("d", 4)
    await cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_size"):
        MemoryCacheAdapter(max_size=0)
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("e", 5, ttl=0)


async def test_memory_adapter_counts_only_live_entries() -> None:
    clock = Clock()
    cache = MemoryCacheAdapter(max_size=2, clock=clock)
    await cache.set("live", "kept")  # the oldest, but it never expires
    await cache.set("dead", "soon gone", ttl=5)
    clock.now += 5
    await cache.set("new", "fresh")
    # The expired entry made room, not the least recently used live one.
    assert await cache.get("live") == (True, "kept")
    assert await cache.get("new") == (True, "fresh")
    assert len(cache) == 2

    unbounded = MemoryCacheAdapter(max_size=None, clock=clock)
    for n in range(100):
        await unbounded.set(f"k{n}", n, ttl=1)
    clock.now += 1
    await unbounded.set("last", 1)
    assert len(unbounded) == 1  # the expired entries do not pile up


# ---------------------------------------------------------------- redis adapter


@pytest.fixture(params=["redis-fake", "redis-real"])
async def redis_cache_factory(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Build RedisCacheAdapters (each under its own prefix) on fakeredis or real Redis."""
    from task_queue.compat import RedisCacheAdapter

    made: list[Any] = []
    if request.param == "redis-real":
        await require_real_redis()

    def factory(**options: Any) -> Any:
        options.setdefault("prefix", unique_prefix())
        if request.param == "redis-fake":
            import fakeredis

            adapter = RedisCacheAdapter(fakeredis.FakeAsyncRedis(), owns_client=True, **options)
        else:
            adapter = RedisCacheAdapter.from_url(REDIS_URL, **options)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.clear()
        await adapter.client.delete(adapter._lru, adapter._exp)
        await adapter.close()


@pytest.fixture
def redis_cache(redis_cache_factory: Any) -> Any:
    """A RedisCacheAdapter bounded to 3 entries."""
    return redis_cache_factory(max_size=3)


async def test_redis_adapter_round_trip_ttl_and_delete(redis_cache: Any) -> None:
    await redis_cache.set("k", {"rows": [1, 2], "ok": True}, ttl=60)
    assert await redis_cache.get("k") == (True, {"rows": [1, 2], "ok": True})
    ttl_ms = await redis_cache.client.pttl(redis_cache._values + "k")
    assert 0 < ttl_ms <= 60_000
    await redis_cache.set("forever", "v")
    assert await redis_cache.client.pttl(redis_cache._values + "forever") == -1
    assert await redis_cache.get("missing") == (False, None)
    assert await redis_cache.delete("k") is True
    assert await redis_cache.delete("k") is False
    with pytest.raises(PayloadError, match="cached value"):
        await redis_cache.set("bad", {1, 2})
    assert await redis_cache.get("bad") == (False, None)


async def test_redis_adapter_evicts_the_least_recently_used(redis_cache: Any) -> None:
    for key in ("a", "b", "c"):
        await redis_cache.set(key, key)
    assert (await redis_cache.get("a"))[0]  # a used again: b is now the oldest
    await redis_cache.set("d", "d")
    found = {key: (await redis_cache.get(key))[0] for key in "abcd"}
    assert found == {"a": True, "b": False, "c": True, "d": True}
    await redis_cache.clear()
    assert [(await redis_cache.get(key))[0] for key in "abcd"] == [False] * 4


async def test_redis_adapter_counts_only_live_entries(redis_cache_factory: Any) -> None:
    clock = Clock()
    cache = redis_cache_factory(max_size=3, clock=clock)
    await cache.set("live1", 1)
    await cache.set("live2", 2)
    await cache.set("dead", 3, ttl=60)
    clock.now += 60  # "dead" has expired by the adapter's clock
    await cache.set("new", 4)
    # The expired key made room, not the least recently used live one.
    found = {key: (await cache.get(key))[0] for key in ("live1", "live2", "new")}
    assert found == {"live1": True, "live2": True, "new": True}
    assert await cache.client.zcard(cache._lru) == 3

    unbounded = redis_cache_factory(max_size=None, clock=clock)
    for n in range(20):
        await unbounded.set(f"k{n}", n, ttl=1)
    clock.now += 1
    await unbounded.set("last", 1)
    assert await unbounded.client.zcard(unbounded._lru) == 1  # no pile of dead keys
    assert await unbounded.client.zcard(unbounded._exp) == 0


async def test_redis_adapter_forgets_a_key_found_expired(redis_cache: Any) -> None:
    await redis_cache.set("brief", "x", ttl=60)
    await redis_cache.client.pexpire(redis_cache._values + "brief", 1)  # Redis expires it
    await wait_until(
        lambda: _gone(redis_cache, "brief"), "the value expired in Redis", timeout=TIMEOUT
    )
    assert await redis_cache.get("brief") == (False, None)
    assert await redis_cache.client.zcard(redis_cache._lru) == 0
    assert await redis_cache.client.zcard(redis_cache._exp) == 0


async def _gone(cache: Any, key: str) -> bool:
    return not await cache.client.exists(cache._values + key)


# ---------------------------------------------------------------- the worker's cache


async def test_cached_result_completes_a_new_task_at_once(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=2, cache_enabled=True)
    await worker.start()
    calls: list[int] = []

    @task("square")
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    first = await worker.add_task(square, 3)
    assert await result_of(worker, first) == 9
    second = await worker.add_task(square, 3, metadata={"again": True})
    info = worker.get_task_info(second)  # no await needed: it is complete already
    assert second != first
    assert info.status == "completed"
    assert info.result == 9
    assert info.metadata == {"again": True}
    assert await result_of(worker, second) == 9
    assert (await worker.broker.get_task(second)).status is CoreStatus.COMPLETED
    other = await worker.add_task(square, 4)
    assert await result_of(worker, other) == 16
    assert calls == [3, 4]


async def test_use_cache_and_cache_ttl_override_the_worker_in_both_directions(
    worker_factory: WorkerFactory,
) -> None:
    clock = Clock()
    calls: list[str] = []

    @task("tag")
    async def tag(label: str) -> str:
        calls.append(label)
        return label.upper()

    adapter = MemoryCacheAdapter(clock=clock)  # empty, so falsy: must be used all the same
    on = await worker_factory(
        max_workers=1, cache_enabled=True, cache_ttl=100, cache_adapter=adapter
    )
    assert on.cache is adapter
    await on.start()
    assert await result_of(on, await on.add_task(tag, "a")) == "A"
    assert await result_of(on, await on.add_task(tag, "a", use_cache=False)) == "A"
    assert calls == ["a", "a"]  # bypassed although caching is on
    assert await result_of(on, await on.add_task(tag, "a")) == "A"
    assert calls == ["a", "a"]  # served from the cache
    assert await result_of(on, await on.add_task(tag, "b", cache_ttl=5)) == "B"
    clock.now += 5
    assert await result_of(on, await on.add_task(tag, "b")) == "B"
    assert calls == ["a", "a", "b", "b"]  # the short per-task TTL ran out
    clock.now += 100
    assert await result_of(on, await on.add_task(tag, "a")) == "A"
    assert calls == ["a", "a", "b", "b", "a"]  # the worker's TTL ran out

    off = await worker_factory(max_workers=1)  # caching off by default
    await off.start()
    calls.clear()
    assert await result_of(off, await off.add_task(tag, "c")) == "C"
    assert await result_of(off, await off.add_task(tag, "c")) == "C"
    assert calls == ["c", "c"]
    assert await result_of(off, await off.add_task(tag, "c", use_cache=True)) == "C"
    assert await result_of(off, await off.add_task(tag, "c", use_cache=True)) == "C"
    assert calls == ["c", "c", "c"]
    assert await result_of(off, await off.add_task(tag, "c", use_cache=1)) == "C"
    assert calls == ["c", "c", "c"]  # 1 reads as True
    assert await result_of(off, await off.add_task(tag, "c", use_cache=0)) == "C"
    assert calls == ["c", "c", "c", "c"]  # and 0 as False
    for wrong in ("yes", 2, 1.0):
        with pytest.raises(TypeError, match=r"use_cache must be True, False or None, got"):
            await off.add_task(tag, "c", use_cache=wrong)  # type: ignore[arg-type]


async def test_invalidate_and_clear(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=1, cache_enabled=True)
    await worker.start()
    calls: list[int] = []

    @task("inc")
    async def inc(x: int, step: int = 1) -> int:
        calls.append(x)
        return x + step

    assert await result_of(worker, await worker.add_task(inc, 1, step=2)) == 3
    assert await worker.invalidate_cache(inc, 1, step=1) is False  # another call
    assert await worker.invalidate_cache(inc, 1, step=2) is True
    assert await worker.invalidate_cache("inc", 1, step=2) is False
    assert await result_of(worker, await worker.add_task(inc, 1, step=2)) == 3
    assert calls == [1, 1]
    await worker.clear_cache()
    assert await result_of(worker, await worker.add_task(inc, 1, step=2)) == 3
    assert calls == [1, 1, 1]


class BrokenCache(CacheAdapter):
    """A cache whose every call fails."""

    async def get(self, key: str) -> tuple[bool, Any]:
        raise ConnectionError("cache down")

    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        raise ConnectionError("cache down")

    async def delete(self, key: str) -> bool:
        raise ConnectionError("cache down")

    async def clear(self) -> None:
        raise ConnectionError("cache down")


async def test_a_failing_cache_never_fails_a_task(
    worker_factory: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await worker_factory(max_workers=1, cache_enabled=True, cache_adapter=BrokenCache())
    await worker.start()

    @task("fine")
    async def fine() -> str:
        return "fine"

    assert await result_of(worker, await worker.add_task(fine)) == "fine"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cache lookup failed" in m for m in warnings)
    assert any("storing its result in the cache failed" in m for m in warnings)


async def test_redis_adapter_shares_results_between_workers(
    broker_kind: str, worker_factory: WorkerFactory, redis_cache: Any
) -> None:
    calls: list[int] = []

    @task("shared")
    async def shared(x: int) -> list[int]:
        calls.append(x)
        return [x, x]

    one = await worker_factory(max_workers=1, cache_enabled=True, cache_adapter=redis_cache)
    two = await worker_factory(max_workers=1, cache_enabled=True, cache_adapter=redis_cache)
    await one.start()
    await two.start()
    assert await result_of(one, await one.add_task(shared, 5)) == [5, 5]
    assert await result_of(two, await two.add_task(shared, 5)) == [5, 5]
    assert calls == [5]


# ---------------------------------------------------------------- single flight


async def test_identical_tasks_in_flight_run_once(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=4, cache_enabled=True)
    await worker.start()
    gate = asyncio.Event()
    calls: list[int] = []

    @task("expensive")
    async def expensive(x: int, progress_callback: Any = None) -> dict[str, int]:
        calls.append(x)
        progress_callback(0.4)
        await gate.wait()
        return {"value": x * 10}

    leader = await worker.add_task(expensive, 7)
    await wait_until(lambda: worker.get_task_info(leader).progress == 0.4, "leader runs")
    followers = [
        await worker.add_task(expensive, 7, metadata={"n": 1}),
        await worker.add_task(expensive, 7, task_id="my-follower"),
    ]
    assert followers[1] == "my-follower"
    for follower in followers:
        info = worker.get_task_info(follower)
        assert (info.status, info.progress) == ("running", 0.4)  # shows the leader's run
        fetched = await worker.fetch_task_info(follower)
        assert fetched.status == "running"
    assert worker.get_task_info(followers[0]).metadata == {"n": 1}
    gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(*worker.get_task_futures([leader, *followers])), TIMEOUT
    )
    assert results == [{"value": 70}] * 3
    assert calls == [7]
    for task_id in [leader, *followers]:
        await wait_until(lambda i=task_id: worker.get_task_info(i).status == "completed", "done")
        assert (await worker.broker.get_task(task_id)).result == {"value": 70}


async def test_followers_share_the_leaders_failure(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=2)
    await worker.start()
    gate = asyncio.Event()

    @task("flaky")
    async def flaky() -> None:
        await gate.wait()
        raise LookupError("no such row")

    leader = await worker.add_task(flaky, use_cache=True)
    follower = await worker.add_task(flaky, use_cache=True)
    gate.set()
    with pytest.raises(LookupError, match="no such row"):
        await result_of(worker, leader)
    with pytest.raises(LookupError, match="no such row"):
        await result_of(worker, follower)
    stored = await worker.broker.get_task(follower)
    assert stored.status is CoreStatus.FAILED
    assert stored.error.message == "no such row"


async def test_when_the_leader_is_cancelled_a_follower_takes_over(
    worker_factory: WorkerFactory,
) -> None:
    worker = await worker_factory(max_workers=2, cache_enabled=True)
    worker.follower_park = 0.2  # the follower taking over runs when its park ends
    await worker.start()
    release = asyncio.Event()
    calls: list[str] = []

    @task("report")
    async def report(name: str) -> str:
        calls.append(name)
        await release.wait()
        return f"report {name}"

    leader = await worker.add_task(report, "q1")
    await wait_until(lambda: calls == ["q1"], "leader runs")
    first = await worker.add_task(report, "q1")
    second = await worker.add_task(report, "q1")
    cancelled_follower = await worker.add_task(report, "q1")
    assert await worker.cancel_task(cancelled_follower) is True
    assert await worker.cancel_task(leader) is True
    await wait_until(lambda: calls == ["q1", "q1"], "a follower runs on its own")
    release.set()
    assert await result_of(worker, first) == "report q1"
    assert await result_of(worker, second) == "report q1"
    assert calls == ["q1", "q1"]
    with pytest.raises(asyncio.CancelledError):
        await result_of(worker, leader)
    with pytest.raises(asyncio.CancelledError):
        await result_of(worker, cancelled_follower)


class NoCache(CacheAdapter):
    """A cache that never holds anything: followers must get their outcome elsewhere."""

    async def get(self, key: str) -> tuple[bool, Any]:
        return False, None

    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        pass

    async def delete(self, key: str) -> bool:
        return False

    async def clear(self) -> None:
        pass


async def vanish(producer: AsyncTaskWorker) -> None:
    """The producer's process goes away: nothing it kept in memory acts any more."""
    await producer._tracker.stop()


async def producer_and_runner(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory, slots: int
) -> tuple[AsyncTaskWorker, AsyncTaskWorker]:
    """A producer-only worker with a short follower park, and a worker that runs tasks
    (in another process, as far as the producer can tell)."""
    producer_broker, runner_broker = await shared_brokers(2)
    producer = await worker_factory(max_workers=0, cache_enabled=True, broker=producer_broker)
    producer.follower_park = 0.05
    runner = await worker_factory(
        max_workers=slots, cache_enabled=True, cache_adapter=NoCache(), broker=runner_broker
    )
    await runner.start()
    return producer, runner


async def test_followers_of_a_vanished_producer_take_the_leaders_result(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    producer, runner = await producer_and_runner(shared_brokers, worker_factory, slots=3)
    gate = asyncio.Event()
    calls: list[int] = []

    @task("costly")
    async def costly(x: int) -> dict[str, int]:
        calls.append(x)
        await gate.wait()
        return {"value": x + 1}

    leader = await producer.add_task(costly, 1)
    await wait_until(lambda: calls == [1], "the leader runs")
    followers = [await producer.add_task(costly, 1) for _ in range(2)]
    assert (await producer.fetch_task_info(followers[0])).status == "running"  # as the leader
    await vanish(producer)
    gate.set()
    # The runner settles the followers from the broker: nobody hands them the outcome.
    results = await asyncio.wait_for(
        asyncio.gather(*runner.get_task_futures([leader, *followers])), TIMEOUT
    )
    assert results == [{"value": 2}] * 3
    assert calls == [1]
    for follower in followers:
        assert (await runner.broker.get_task(follower)).status is CoreStatus.COMPLETED


async def test_followers_of_a_vanished_producer_fail_like_the_leader(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    producer, runner = await producer_and_runner(shared_brokers, worker_factory, slots=2)
    gate = asyncio.Event()
    calls: list[str] = []

    @task("lookup_row")
    async def lookup_row(row: str) -> None:
        calls.append(row)
        await gate.wait()
        raise LookupError(f"no such row: {row}")

    leader = await producer.add_task(lookup_row, "r1")
    await wait_until(lambda: calls == ["r1"], "the leader runs")
    follower = await producer.add_task(lookup_row, "r1")
    await vanish(producer)
    gate.set()
    with pytest.raises(TaskFailedError, match="LookupError: no such row: r1"):
        await asyncio.wait_for(runner.get_task_future(follower), TIMEOUT)
    stored = await runner.broker.get_task(follower)
    assert stored.status is CoreStatus.FAILED
    assert (stored.error.type, stored.error.message) == ("LookupError", "no such row: r1")
    assert (await runner.broker.get_task(leader)).error.message == stored.error.message
    assert calls == ["r1"]


async def test_after_a_cancelled_leader_one_follower_runs_for_the_others(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    producer, runner = await producer_and_runner(shared_brokers, worker_factory, slots=3)
    gate = asyncio.Event()
    calls: list[str] = []

    @task("render")
    async def render(page: str) -> str:
        calls.append(page)
        await gate.wait()
        return f"<{page}>"

    leader = await producer.add_task(render, "home")
    await wait_until(lambda: calls == ["home"], "the leader runs")
    first = await producer.add_task(render, "home")
    second = await producer.add_task(render, "home")
    await vanish(producer)
    assert await runner.cancel_task(leader) is True
    # The first follower finds no live task ahead and runs; the second waits for it.
    await wait_until(lambda: calls == ["home", "home"], "the first follower runs")
    gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(*runner.get_task_futures([first, second])), TIMEOUT
    )
    assert results == ["<home>", "<home>"]
    assert calls == ["home", "home"]


async def test_a_follower_never_waits_for_a_leader_that_has_not_started(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    """With one slot, waiting for a pending leader would hold the slot it needs."""
    brokers = await shared_brokers(2)
    worker = await worker_factory(max_workers=1, cache_enabled=True, broker=brokers[0])
    worker.follower_park = 0.05
    await worker.start()
    observer = await worker_factory(max_workers=0, broker=brokers[1])
    release = asyncio.Event()
    calls: list[int] = []

    @task("hold_slot")
    async def hold_slot() -> None:
        await release.wait()

    @task("compute")
    async def compute(x: int) -> int:
        calls.append(x)
        return x * 100

    blocker = await worker.add_task(hold_slot)
    await wait_until(lambda: worker.get_task_info(blocker).status == "running", "blocked")
    leader = await worker.add_task(compute, 3)
    follower = await worker.add_task(compute, 3, priority=-1)  # leased before the leader
    await vanish(worker)  # no hand-off from memory either
    parked_until = (await worker.broker.get_task(follower)).scheduled_at
    await wait_until(lambda: utcnow() > parked_until, "the follower's park ends")
    release.set()
    results = await asyncio.wait_for(
        asyncio.gather(*observer.get_task_futures([follower, leader])), TIMEOUT
    )
    assert results == [300, 300]
    assert calls == [3]  # the follower ran it; the leader then found it in the cache


async def test_a_failed_task_in_another_process_raises_task_failed_error(
    worker: AsyncTaskWorker,
) -> None:
    """Without the exception object at hand, the future raises TaskFailedError."""

    @task("boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    task_id = await worker.add_task(boom)
    with pytest.raises(RuntimeError):
        await result_of(worker, task_id)
    # A second worker on the same broker did not run it: it only has the broker's record.
    other = AsyncTaskWorker(max_workers=0, broker=worker.broker)
    assert other.get_task_info(task_id) is None
    futures = other.get_task_futures([task_id, task_id])
    for outcome in await asyncio.wait_for(
        asyncio.gather(*futures, return_exceptions=True), TIMEOUT
    ):
        assert isinstance(outcome, TaskFailedError)
        assert str(outcome).endswith("RuntimeError: boom")
    assert other.get_task_info(task_id).error == "boom"  # tracked once it was asked for
    await other.stop()


async def test_a_result_cached_while_the_task_waited_is_used_when_it_starts(
    worker_factory: WorkerFactory,
) -> None:
    """Another process may store the result meanwhile: the task looks again as it starts."""
    worker = await worker_factory(max_workers=1, cache_enabled=True)
    await worker.start()
    gate = asyncio.Event()
    calls: list[str] = []

    @task("hold")
    async def hold() -> None:
        await gate.wait()

    @task("lookup")
    async def lookup(name: str) -> str:
        calls.append(name)
        return f"computed {name}"

    blocker = await worker.add_task(hold, use_cache=False)
    waiting = await worker.add_task(lookup, "n")
    assert worker.get_task_info(waiting).status == "pending"
    await worker.cache.set(make_cache_key("lookup", ["n"], {}), "cached n")
    gate.set()
    assert await result_of(worker, waiting) == "cached n"
    assert calls == []
    await result_of(worker, blocker)
