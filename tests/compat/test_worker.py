"""AsyncTaskWorker on every broker kind: running, tracking, progress, cancel, errors."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest

from task_queue import InMemoryBroker, Task, TaskFailedError, TaskNotFoundError
from task_queue.compat import (
    AsyncTaskWorker,
    MemoryCacheAdapter,
    TaskStatus,
    register_task,
    task,
    tracking,
)
from task_queue.compat.tracking import TaskTracker
from task_queue.models import TaskStatus as CoreStatus
from tests.compat.conftest import (
    TIMEOUT,
    DefaultBrokers,
    SharedBrokers,
    WorkerFactory,
    wait_until,
)
from tests.conftest import BrokerFactory


async def result_of(worker: AsyncTaskWorker, task_id: str) -> Any:
    return await asyncio.wait_for(worker.get_task_future(task_id), TIMEOUT)


async def test_task_runs_and_its_info_follows_it(worker: AsyncTaskWorker) -> None:
    @task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    task_id = await worker.add_task(add, 2, b=3, metadata={"who": "test"})
    pending = worker.get_task_info(task_id)
    assert pending is not None
    assert pending.status in ("pending", "running")
    assert await result_of(worker, task_id) == 5

    await wait_until(lambda: worker.get_task_info(task_id).status == "completed", "completed")
    info = worker.get_task_info(task_id)
    assert info.status is TaskStatus.COMPLETED
    assert info.result == 5
    assert info.error is None
    assert info.progress == 1.0
    assert info.metadata == {"who": "test"}
    assert info.task_type == "add"
    assert info.created_at <= info.started_at <= info.completed_at
    stored = await worker.broker.get_task(task_id)
    assert stored.name == "add"
    assert stored.payload == {"args": [2], "kwargs": {"b": 3}}
    assert stored.max_retries == 0


async def test_status_values_are_the_seed_strings() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    assert TaskStatus.RUNNING == "running"
    assert TaskStatus("failed") is TaskStatus.FAILED
    assert TaskStatus.from_core(CoreStatus.PROCESSING) is TaskStatus.RUNNING


async def test_intermediate_progress_is_visible_while_the_task_runs(
    worker: AsyncTaskWorker,
) -> None:
    gate = asyncio.Event()

    @task("halfway")
    async def halfway(progress_callback: Any = None) -> str:
        progress_callback(0.25)
        progress_callback(0.5)
        await gate.wait()
        return "done"

    task_id = await worker.add_task(halfway)
    # This process runs it: the local view shows the latest value at once...
    await wait_until(lambda: worker.get_task_info(task_id).progress == 0.5, "local progress")
    assert worker.get_task_info(task_id).status == "running"
    # ...and the broker gets it for every other reader.
    await wait_until(
        lambda: _progress_in_broker(worker, task_id, 0.5), "progress stored in the broker"
    )
    gate.set()
    assert await result_of(worker, task_id) == "done"
    await wait_until(lambda: worker.get_task_info(task_id).status == "completed", "completed")
    assert worker.get_task_info(task_id).progress == 1.0


async def _progress_in_broker(worker: AsyncTaskWorker, task_id: str, value: float) -> bool:
    info = await worker.fetch_task_info(task_id)
    return info is not None and info.progress == value and info.status == "running"


async def test_progress_out_of_range_is_clamped_not_fatal(worker: AsyncTaskWorker) -> None:
    gate = asyncio.Event()

    @task("overshoot")
    async def overshoot(progress_callback: Any = None) -> str:
        progress_callback(-3)
        progress_callback(float("nan"))  # ignored
        assert progress_callback(0.0) is None
        progress_callback(50)  # a percentage by mistake: clamped to 1.0
        await gate.wait()
        progress_callback(1.0000000000000002)
        return "fine"

    task_id = await worker.add_task(overshoot)
    await wait_until(lambda: worker.get_task_info(task_id).progress == 1.0, "clamped progress")
    await wait_until(lambda: _progress_in_broker(worker, task_id, 1.0), "clamped progress stored")
    gate.set()
    assert await result_of(worker, task_id) == "fine"

    @task("wrong_type")
    async def wrong_type(progress_callback: Any = None) -> None:
        progress_callback("half")

    with pytest.raises(TypeError, match="progress must be a number"):
        await result_of(worker, await worker.add_task(wrong_type))


async def test_progress_reported_from_a_thread(worker: AsyncTaskWorker) -> None:
    gate = threading.Event()

    def crunch(progress_callback: Any) -> int:
        for step in range(1, 4):
            progress_callback(step / 4)
        gate.wait(TIMEOUT)
        return 42

    @task("threaded")
    async def threaded(progress_callback: Any = None) -> int:
        return await asyncio.to_thread(crunch, progress_callback)

    task_id = await worker.add_task(threaded)
    await wait_until(lambda: worker.get_task_info(task_id).progress == 0.75, "thread progress")
    await wait_until(lambda: _progress_in_broker(worker, task_id, 0.75), "thread progress stored")
    gate.set()
    assert await result_of(worker, task_id) == 42
    assert worker.get_task_info(task_id).status == "completed"


async def test_functions_taking_kwargs_receive_progress_callback(
    worker: AsyncTaskWorker,
) -> None:
    @task("kwargs_only")
    async def kwargs_only(x: int, **kwargs: Any) -> list[str]:
        kwargs["progress_callback"](0.5)
        return sorted(kwargs)

    task_id = await worker.add_task(kwargs_only, 1, extra=2)
    assert await result_of(worker, task_id) == ["extra", "progress_callback"]
    assert (await worker.broker.get_task(task_id)).payload["kwargs"] == {"extra": 2}
    with pytest.raises(TypeError, match="progress_callback is supplied by the worker"):
        await worker.add_task(kwargs_only, 1, progress_callback=None)


async def test_failure_keeps_the_message_and_the_future_raises_the_exception(
    worker: AsyncTaskWorker,
) -> None:
    raised: list[BaseException] = []

    @task("might_fail")
    async def might_fail(value: int) -> int:
        if value < 0:
            error = ValueError("Value cannot be negative")
            raised.append(error)
            raise error
        return value * 2

    task_id = await worker.add_task(might_fail, -5)
    with pytest.raises(ValueError, match="Value cannot be negative") as caught:
        await result_of(worker, task_id)
    assert caught.value is raised[0]
    await wait_until(lambda: worker.get_task_info(task_id).status == "failed", "failed")
    info = worker.get_task_info(task_id)
    assert info.status == TaskStatus.FAILED
    assert info.error == "Value cannot be negative"
    assert info.result is None
    stored = await worker.broker.get_task(task_id)
    assert stored.attempts == 1  # no retries, as in async-task-worker


async def test_task_timeout_and_per_task_timeout(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=2, task_timeout=0.1)
    await worker.start()

    @task("sleepy")
    async def sleepy() -> None:
        await asyncio.Event().wait()

    by_default = await worker.add_task(sleepy)
    with pytest.raises(TimeoutError, match=r"timeout of 0\.1s"):
        await result_of(worker, by_default)
    own = await worker.add_task(sleepy, timeout=0.05)
    with pytest.raises(TimeoutError, match=r"timeout of 0\.05s"):
        await result_of(worker, own)
    assert (await worker.broker.get_task(own)).timeout == 0.05
    await wait_until(lambda: worker.get_task_info(own).status == "failed", "failed")
    assert "timeout" in worker.get_task_info(own).error


async def test_lower_priority_number_runs_first(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=1)
    gate = asyncio.Event()
    order: list[str] = []

    @task("blocker")
    async def blocker() -> None:
        await gate.wait()

    @task("record")
    async def record(label: str) -> None:
        order.append(label)

    await worker.start()
    first = await worker.add_task(blocker)
    await wait_until(lambda: worker.get_task_info(first).status == "running", "blocker runs")
    ids = [
        await worker.add_task(record, label, priority=priority)
        for label, priority in (("low", 5), ("high", 1), ("mid", 3))
    ]
    gate.set()
    await asyncio.wait_for(asyncio.gather(*worker.get_task_futures(ids)), TIMEOUT)
    assert order == ["high", "mid", "low"]


async def test_cancel_running_pending_finished_and_unknown(
    worker_factory: WorkerFactory,
) -> None:
    worker = await worker_factory(max_workers=1)
    started = asyncio.Event()
    stopped: list[str] = []

    @task("forever")
    async def forever(label: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(label)
            raise

    @task("quick")
    async def quick() -> str:
        return "ok"

    await worker.start()
    running = await worker.add_task(forever, "running")
    await asyncio.wait_for(started.wait(), TIMEOUT)
    pending = await worker.add_task(forever, "pending")
    running_future = worker.get_task_future(running)

    assert await worker.cancel_task(pending) is True
    assert worker.get_task_info(pending).status == "cancelled"
    assert await worker.cancel_task(running) is True
    assert worker.get_task_info(running).status == "cancelled"
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running_future, TIMEOUT)
    assert stopped == ["running"]
    assert (await worker.broker.get_task(running)).status is CoreStatus.CANCELLED
    assert (await worker.broker.get_task(pending)).status is CoreStatus.CANCELLED

    done = await worker.add_task(quick)
    assert await result_of(worker, done) == "ok"
    assert await worker.cancel_task(done) is False
    assert await worker.cancel_task("no-such-task") is False
    assert worker.get_task_info(done).status == "completed"


async def test_a_cancel_requested_elsewhere_reads_cancelled_and_is_not_repeated(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    brokers = await shared_brokers(3)
    started = asyncio.Event()

    @task("long_haul")
    async def long_haul() -> None:
        started.set()
        await asyncio.Event().wait()

    runner = await worker_factory(max_workers=1, broker=brokers[0])
    producer = await worker_factory(max_workers=0, broker=brokers[1])
    other = await worker_factory(max_workers=0, broker=brokers[2])
    await runner.start()
    task_id = await producer.add_task(long_haul)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    # The runner stops it on its next heartbeat; until then the broker says processing.
    assert await producer.cancel_task(task_id) is True
    assert producer.get_task_info(task_id).status == "cancelled"
    assert await producer.cancel_task(task_id) is False
    assert await other.cancel_task(task_id) is False  # already being cancelled
    assert (await other.fetch_task_info(task_id)).status == "cancelled"


async def test_get_all_tasks_filters_sorts_newest_first_then_limits(
    worker: AsyncTaskWorker,
) -> None:
    @task("echo")
    async def echo(value: int) -> int:
        if value == 2:
            raise RuntimeError("two")
        return value

    ids = []
    for value in range(5):
        ids.append(await worker.add_task(echo, value))
        await wait_until(lambda: worker.get_task_info(ids[-1]).status.is_final, "final")

    everything = worker.get_all_tasks()
    assert [i.id for i in everything] == ids[::-1]
    completed = worker.get_all_tasks(status=TaskStatus.COMPLETED, limit=2)
    assert [i.id for i in completed] == [ids[4], ids[3]]
    assert [i.id for i in worker.get_all_tasks(status="failed")] == [ids[2]]
    assert worker.get_all_tasks(limit=0) == []
    assert worker.get_all_tasks(older_than=timedelta(hours=1)) == []
    assert len(worker.get_all_tasks(older_than=timedelta(0))) == 5
    with pytest.raises(ValueError, match="limit"):
        worker.get_all_tasks(limit=-1)
    with pytest.raises(ValueError, match="'bogus'"):
        worker.get_all_tasks(status="bogus")


async def test_custom_task_id_is_idempotent(worker: AsyncTaskWorker) -> None:
    @task("one")
    async def one() -> int:
        return 1

    first = await worker.add_task(one, task_id="custom-id")
    second = await worker.add_task(one, task_id="custom-id")
    assert first == second == "custom-id"
    assert await result_of(worker, "custom-id") == 1
    assert len(worker.get_all_tasks()) == 1
    assert sum((await worker.broker.count_tasks()).values()) == 1


async def test_bad_calls_are_refused_and_add_nothing(worker: AsyncTaskWorker) -> None:
    def not_async(x: int) -> int:
        return x

    @task("takes_one")
    async def takes_one(x: int, progress_callback: Any = None) -> int:
        return x

    with pytest.raises(TypeError, match="async function"):
        await worker.add_task(not_async, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"args\[0\].*not JSON serializable"):
        await worker.add_task(takes_one, object())
    with pytest.raises(TypeError, match="arguments do not match task 'takes_one'"):
        await worker.add_task(takes_one, 1, 2)
    with pytest.raises(TypeError, match="missing a required argument"):
        await worker.add_task(takes_one)
    with pytest.raises(TypeError, match="progress_callback is supplied by the worker"):
        await worker.add_task(takes_one, 1, progress_callback=print)
    with pytest.raises(TypeError, match="priority must be an int"):
        await worker.add_task(takes_one, 1, priority="high")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata"):
        await worker.add_task(takes_one, 1, metadata={"x": object()})
    with pytest.raises(ValueError, match="cache_ttl"):
        await worker.add_task(takes_one, 1, cache_ttl=-5)
    with pytest.raises(ValueError, match="unknown task name 'nope'"):
        await worker.submit("nope")
    assert worker.get_all_tasks() == []
    assert sum((await worker.broker.count_tasks()).values()) == 0


async def test_registry_rejects_plain_functions() -> None:
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="not an async function"):
        register_task("plain", plain)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="non-empty str"):
        task("")


async def test_unregistered_function_runs_in_this_process(worker: AsyncTaskWorker) -> None:
    async def local_only(x: int) -> int:
        return x * 3

    task_id = await worker.add_task(local_only, 4)
    assert await result_of(worker, task_id) == 12
    assert worker.get_task_info(task_id).task_type.endswith("local_only")


def make_adder(n: int) -> Any:
    async def add_n(x: int) -> int:
        return x + n

    return add_n


async def module_level_triple(x: int) -> int:
    return x * 3


async def test_unregistered_closures_leave_nothing_behind(worker: AsyncTaskWorker) -> None:
    executors = len(worker.service.task_executors)
    types = worker.task_types()
    ids = [await worker.add_task(make_adder(n), 1) for n in range(200)]
    results = await asyncio.wait_for(asyncio.gather(*worker.get_task_futures(ids)), TIMEOUT)
    assert results == [n + 1 for n in range(200)]  # each ran its own closure
    assert len(worker.service.task_executors) == executors + 1  # one per code, not per closure
    assert worker.task_types() == types  # closures cannot be submitted by name
    await wait_until(lambda: not worker._local, "the closures are forgotten")

    # A module-level function has a name that holds everywhere: it is listed and cached.
    task_id = await worker.add_task(module_level_triple, 2)
    assert await result_of(worker, task_id) == 6
    assert f"{__name__}.module_level_triple" in worker.task_types()
    assert (
        await result_of(worker, await worker.submit(f"{__name__}.module_level_triple", [3])) == 9
    )


async def test_closures_are_never_cached_under_a_shared_name(
    worker_factory: WorkerFactory,
) -> None:
    cache = MemoryCacheAdapter()
    one = await worker_factory(max_workers=1, cache_enabled=True, cache_adapter=cache)
    two = await worker_factory(max_workers=1, cache_enabled=True, cache_adapter=cache)
    await one.start()
    await two.start()
    assert await result_of(one, await one.add_task(make_adder(1), 0)) == 1
    assert await result_of(two, await two.add_task(make_adder(2), 0)) == 2
    assert len(cache) == 0
    assert await one.invalidate_cache(make_adder(1), 0) is False


async def test_a_closure_runs_only_in_the_process_that_added_it(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    """Another worker with a closure of the same code must not run its own in its place."""
    producer_broker, runner_broker = await shared_brokers(2)
    producer = await worker_factory(max_workers=0, broker=producer_broker)
    runner = await worker_factory(max_workers=1, broker=runner_broker)
    await producer.start()
    await runner.start()
    assert await result_of(runner, await runner.add_task(make_adder(100), 0)) == 100
    elsewhere = await producer.add_task(make_adder(1), 0)
    with pytest.raises(TaskFailedError, match="only the process that added the task knows it"):
        await result_of(producer, elsewhere)


async def test_function_registered_after_start_runs(worker: AsyncTaskWorker) -> None:
    async def late(x: int) -> int:
        return -x

    register_task("late", late)
    task_id = await worker.submit("late", [7])
    assert await result_of(worker, task_id) == -7
    assert "late" in worker.task_types()


async def test_futures_of_unknown_ids_and_of_many_tasks(worker: AsyncTaskWorker) -> None:
    @task("maybe")
    async def maybe(ok: bool) -> str:
        if not ok:
            raise KeyError("nope")
        return "yes"

    with pytest.raises(TaskNotFoundError):
        await asyncio.wait_for(worker.get_task_future("no-such-task"), TIMEOUT)
    good = await worker.add_task(maybe, True)
    bad = await worker.add_task(maybe, False)
    results = await asyncio.wait_for(
        asyncio.gather(*worker.get_task_futures([good, bad]), return_exceptions=True), TIMEOUT
    )
    assert results[0] == "yes"
    assert isinstance(results[1], KeyError)
    # A future asked for after the end settles at once, the same way.
    assert await result_of(worker, good) == "yes"


async def test_context_manager_starts_and_stops(worker_factory: WorkerFactory) -> None:
    @task("ping")
    async def ping() -> str:
        return "pong"

    async with await worker_factory(max_workers=2) as worker:
        assert worker.running
        task_id = await worker.add_task(ping)
        assert await result_of(worker, task_id) == "pong"
    assert not worker.running
    await worker.stop()  # stopping twice is harmless


async def test_stop_hands_running_tasks_back_and_start_runs_them(
    worker_factory: WorkerFactory,
) -> None:
    worker = await worker_factory(max_workers=1)
    runs: list[int] = []
    started = asyncio.Event()
    release = asyncio.Event()

    @task("resumable")
    async def resumable() -> int:
        runs.append(1)
        started.set()
        await release.wait()
        return len(runs)

    await worker.start()
    task_id = await worker.add_task(resumable)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await worker.stop(timeout=0)
    stored = await worker.broker.get_task(task_id)
    assert stored.status is CoreStatus.PENDING
    assert stored.attempts == 0  # handed back without spending its one attempt
    assert worker.get_task_info(task_id).status == "pending"  # as the broker says
    assert [i.id for i in worker.get_all_tasks(status="running")] == []
    release.set()
    await worker.start()
    assert await result_of(worker, task_id) == 2


async def test_tasks_run_by_another_worker_on_the_same_broker(
    shared_brokers: SharedBrokers, worker_factory: WorkerFactory
) -> None:
    """A producer-only worker adds; a worker with slots finds the function by name."""
    producer_broker, consumer_broker = await shared_brokers(2)
    gate = asyncio.Event()

    @task("remote_step")
    async def remote_step(n: int, progress_callback: Any = None) -> int:
        progress_callback(0.75)
        await gate.wait()
        return n + 1

    producer = await worker_factory(
        max_workers=0, broker=producer_broker, worker_poll_interval=0.02
    )
    consumer = await worker_factory(max_workers=2, broker=consumer_broker)
    await producer.start()
    await consumer.start()
    task_id = await producer.add_task(remote_step, 41)
    # The producer runs nothing itself; its view learns of the run by refreshing.
    await wait_until(
        lambda: (
            (info := producer.get_task_info(task_id)).status == "running" and info.progress == 0.75
        ),
        "the producer sees the remote run",
    )
    assert consumer.get_task_info(task_id) is None  # not the consumer's own task
    gate.set()
    assert await result_of(producer, task_id) == 42
    assert producer.get_task_info(task_id).status == "completed"


@pytest.mark.parametrize("read_each_max", [32, 0])
async def test_the_view_follows_tasks_run_elsewhere_however_many_run(
    shared_brokers: SharedBrokers,
    worker_factory: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
    read_each_max: int,
) -> None:
    """More tasks running in the queue than one listing returns (2 here, 1000 really)."""
    monkeypatch.setattr(tracking, "_REFRESH_LIMIT", 2)
    monkeypatch.setattr(tracking, "_READ_EACH_MAX", read_each_max, raising=False)
    producer_broker, runner_broker = await shared_brokers(2)
    producer = await worker_factory(
        max_workers=0, broker=producer_broker, worker_poll_interval=0.02
    )
    runner = await worker_factory(max_workers=5, broker=runner_broker)
    gate = asyncio.Event()

    @task("gated")
    async def gated(n: int) -> int:
        await gate.wait()
        return n

    await producer.start()
    await runner.start()
    ids = [await producer.add_task(gated, n) for n in range(5)]
    await wait_until(
        lambda: all(producer.get_task_info(i).status == "running" for i in ids),
        "all five read running",
    )
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*producer.get_task_futures(ids)), TIMEOUT) == [
        0,
        1,
        2,
        3,
        4,
    ]


async def test_worker_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        AsyncTaskWorker(max_workers=-1)
    with pytest.raises(TypeError, match="max_workers"):
        AsyncTaskWorker(max_workers=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="worker_poll_interval"):
        AsyncTaskWorker(worker_poll_interval=0)
    with pytest.raises(ValueError, match="task_timeout"):
        AsyncTaskWorker(task_timeout=0)
    with pytest.raises(ValueError, match="cache_ttl"):
        AsyncTaskWorker(cache_ttl=0)
    with pytest.raises(ValueError, match="max_size"):
        AsyncTaskWorker(cache_max_size=0)
    with pytest.raises(TypeError, match="CacheAdapter"):
        AsyncTaskWorker(cache_adapter={})  # type: ignore[arg-type]


async def test_final_tasks_leave_the_local_view_after_the_brokers_retention(
    worker_factory: WorkerFactory,
) -> None:
    worker = await worker_factory(max_workers=1, worker_poll_interval=0.01)
    assert worker._tracker.retention == worker.broker.result_ttl  # type: ignore[attr-defined]
    worker._tracker.retention = 0.0
    await worker.start()

    @task("brief")
    async def brief() -> str:
        return "x"

    task_id = await worker.add_task(brief)
    assert await result_of(worker, task_id) == "x"
    await wait_until(lambda: worker.get_task_info(task_id) is None, "forgotten")
    assert (await worker.fetch_task_info(task_id)).result == "x"  # the broker still has it


async def test_task_info_as_json(worker: AsyncTaskWorker) -> None:
    @task("jsonable")
    async def jsonable() -> dict[str, int]:
        return {"a": 1}

    task_id = await worker.add_task(jsonable, metadata={"m": True})
    await result_of(worker, task_id)
    await wait_until(lambda: worker.get_task_info(task_id).status == "completed", "completed")
    data = worker.get_task_info(task_id).to_dict()
    assert data["status"] == "completed"
    assert data["result"] == {"a": 1}
    assert data["metadata"] == {"m": True}
    assert data["task_type"] == "jsonable"
    assert data["created_at"].endswith("+00:00")
    assert data["completed_at"] >= data["started_at"] >= data["created_at"]


async def test_stop_closes_a_broker_the_worker_made_and_start_makes_another(
    default_brokers: DefaultBrokers,
) -> None:
    @task("hello")
    async def hello(name: str) -> str:
        return f"hello {name}"

    worker = AsyncTaskWorker(max_workers=1)
    assert default_brokers.made == [worker.broker]
    await worker.start()
    assert await result_of(worker, await worker.add_task(hello, "a")) == "hello a"
    await worker.stop()
    # Nothing of the broker is left running (its final-state listener, for one).
    leftovers = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("task-")]
    assert leftovers == []

    added_while_stopped = await worker.add_task(hello, "b")
    expected = 1 if default_brokers.kind == "memory" else 2  # the in-memory one is kept
    assert len(default_brokers.made) == expected
    assert default_brokers.made[-1] is worker.broker is worker.service.broker
    await worker.start()
    assert await result_of(worker, added_while_stopped) == "hello b"
    await worker.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("task-")] == []


async def test_stop_leaves_a_given_broker_open(broker_factory: BrokerFactory) -> None:
    broker = await broker_factory()
    worker = AsyncTaskWorker(max_workers=1, broker=broker)
    await worker.start()
    await worker.stop()
    assert await broker.get_task("nothing") is None  # still usable
    assert worker.broker is broker


class LosesACancel(InMemoryBroker):
    """A broker whose wait_for loses the first cancel it gets, as a redis-py call can
    on Python 3.11 when the cancel arrives just as the call completes."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait_for(self, task_id: str, timeout: float | None = None) -> Task:
        self.waiting.set()
        try:
            return await super().wait_for(task_id, timeout)
        except asyncio.CancelledError:
            return await super().wait_for(task_id, timeout)


async def test_stop_returns_even_when_a_cancel_is_lost() -> None:
    broker = LosesACancel()

    @task("nobody_runs_it")
    async def nobody_runs_it() -> None:
        pass

    worker = AsyncTaskWorker(max_workers=0, broker=broker)
    await worker.start()
    await worker.add_task(nobody_runs_it)  # pending for good: its watcher waits on
    await asyncio.wait_for(broker.waiting.wait(), TIMEOUT)
    await asyncio.wait_for(worker.stop(), TIMEOUT)
    await broker.close()


def tracker_on_memory() -> tuple[InMemoryBroker, TaskTracker]:
    """A task tracker of its own on an InMemoryBroker, as a worker holds one."""
    broker = InMemoryBroker()

    async def on_final(task: Task) -> None:
        return None

    return broker, TaskTracker(broker, on_final, retention=60)


async def test_a_run_that_fails_before_add_task_returns_keeps_its_exception() -> None:
    """A task added here can be leased, run and failed before `add_task` returns."""
    broker, tracker = tracker_on_memory()
    stored = await broker.enqueue(Task("t"))
    leased = await broker.dequeue()
    assert leased is not None
    error = RuntimeError("boom")
    tracker.started(leased)
    tracker.left(leased.id, error)
    assert await broker.mark_failed(leased.id, error, token=leased.token)
    tracker.track(stored)  # only now does add_task get its reply
    with pytest.raises(RuntimeError) as info:
        await asyncio.wait_for(tracker.future(stored.id), 5)
    assert info.value is error
    await tracker.stop()
    await broker.close()


async def test_a_run_of_an_earlier_task_with_the_same_id_is_not_adopted() -> None:
    broker, tracker = tracker_on_memory()
    await broker.enqueue(Task("t", id="report-1"))
    old = await broker.dequeue()
    assert old is not None
    tracker.started(old)
    tracker.left(old.id, RuntimeError("old run"))
    assert await broker.mark_failed(old.id, "old run", token=old.token)
    assert await broker.purge(CoreStatus.FAILED) == 1
    fresh = await broker.enqueue(Task("t", id="report-1"))
    info = tracker.track(fresh)
    assert info.status.value == "pending" and not tracker.ran_here(fresh.id)
    leased = await broker.dequeue()
    assert leased is not None
    assert await broker.mark_failed(leased.id, "new run", token=leased.token)
    with pytest.raises(TaskFailedError, match="new run"):
        await asyncio.wait_for(tracker.future(fresh.id), 5)
    await tracker.stop()
    await broker.close()
