"""TaskQueueService on every broker kind: validation, execution, retries, cancel, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from task_queue import (
    InMemoryBroker,
    RenewResult,
    RetryPolicy,
    Task,
    TaskCancelledError,
    TaskFailedError,
    TaskQueueService,
    TaskStatus,
    UnknownTaskError,
    current_task,
    report_progress,
)
from tests.conftest import FAST_RETRY, BrokerFactory


async def noop(task: Task) -> None:
    return None


# ------------------------------------------------------------------ add_task validation


async def test_unknown_name_is_a_value_error_listing_registered_names(
    make_service: Any,
) -> None:
    service = await make_service({"send_email": noop, "resize": noop})
    with pytest.raises(ValueError, match=r"'nope'.*'resize', 'send_email'") as info:
        await service.add_task(name="nope", payload={})
    assert isinstance(info.value, UnknownTaskError)
    assert sum((await service.broker.count_tasks()).values()) == 0


async def test_payload_not_json_is_a_type_error_and_nothing_is_enqueued(
    make_service: Any,
) -> None:
    service = await make_service({"job": noop})
    with pytest.raises(TypeError, match=r"payload\['user'\]\['joined'\]"):
        await service.add_task("job", {"user": {"joined": datetime.now(UTC)}})
    with pytest.raises(TypeError, match="payload must be a dict"):
        await service.add_task("job", [1, 2])  # type: ignore[arg-type]
    assert sum((await service.broker.count_tasks()).values()) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"delay_seconds": -1}, ValueError, "delay_seconds"),
        ({"delay_seconds": float("inf")}, ValueError, "delay_seconds"),
        ({"delay_seconds": "5"}, TypeError, "delay_seconds"),
        ({"priority": 1.5}, TypeError, "priority"),
        ({"priority": True}, TypeError, "priority"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"task_id": ""}, TypeError, "task_id"),
        ({"metadata": ["x"]}, TypeError, "metadata"),
        ({"scheduled_at": datetime(2030, 1, 1)}, TypeError, "timezone-aware"),
        # Found by tests/chaos/test_fuzz.py: these raised OverflowError/UnicodeEncodeError.
        ({"delay_seconds": 10**400}, ValueError, "delay_seconds"),
        ({"delay_seconds": 1e15}, ValueError, "delay_seconds .* year 9999"),
        ({"timeout": float("inf")}, ValueError, "timeout"),
        ({"timeout": 10**400}, ValueError, "timeout"),
        ({"task_id": "lone \ud800"}, ValueError, "task_id"),
        (
            {"scheduled_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))},
            ValueError,
            "scheduled_at",
        ),
    ],
)
async def test_bad_arguments_are_refused(
    make_service: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    service = await make_service({"job": noop})
    with pytest.raises(error, match=match):
        await service.add_task("job", {}, **kwargs)
    assert sum((await service.broker.count_tasks()).values()) == 0


async def test_add_task_returns_the_stored_task(make_service: Any) -> None:
    service = await make_service({"job": noop})
    before = datetime.now(UTC)
    task = await service.add_task(
        "job", {"a": 1}, priority=2, delay_seconds=5, task_id="t-1", metadata={"m": 1}
    )
    assert task.id == "t-1" and task.status is TaskStatus.PENDING and task.priority == 2
    assert task.scheduled_at >= before + timedelta(seconds=5)
    again = await service.add_task("job", {"a": 2}, task_id="t-1")
    assert again.payload == {"a": 1}


async def test_add_tasks_bulk_is_all_or_nothing(make_service: Any) -> None:
    service = await make_service({"job": noop})
    with pytest.raises(UnknownTaskError):
        await service.add_tasks([{"name": "job"}, {"name": "other"}])
    with pytest.raises(TypeError, match="unknown keys"):
        await service.add_tasks([{"name": "job", "prio": 1}])
    assert sum((await service.broker.count_tasks()).values()) == 0
    tasks = await service.add_tasks([{"name": "job", "payload": {"n": i}} for i in range(50)])
    more = await service.add_tasks({"name": "job", "payload": {"n": i}} for i in range(50))
    ids = [t.id for t in tasks + more]
    assert len(set(ids)) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert (await service.broker.count_tasks())[TaskStatus.PENDING] == 100


async def test_add_tasks_leaves_the_cycle_collector_as_it_found_it(make_service: Any) -> None:
    import gc

    service = await make_service({"job": noop})
    many = [{"name": "job", "payload": {"n": i}} for i in range(600)]
    assert gc.isenabled()
    assert len(await service.add_tasks(many)) == 600
    assert gc.isenabled()
    with pytest.raises(UnknownTaskError):  # the last item is bad: raised mid-build
        await service.add_tasks([*many, {"name": "other"}])
    assert gc.isenabled()
    gc.disable()  # the application's choice: kept
    try:
        await service.add_tasks(many)
        assert not gc.isenabled()
    finally:
        gc.enable()


class JobName(enum.StrEnum):
    JOB = "job"


class Retries(int):
    """An int subclass, as some config libraries hand out."""


async def test_enum_names_and_int_subclasses_are_accepted(make_service: Any) -> None:
    service = await make_service({"job": noop})
    one = await service.add_task(JobName.JOB, {"a": 1}, max_retries=Retries(2))
    many = await service.add_tasks([{"name": JobName.JOB, "max_retries": Retries(1)}] * 3)
    for task in [one, *many]:
        stored = await service.get_task(task.id)
        assert stored is not None and stored.name == "job"
    assert (await service.get_task(one.id)).max_retries == 2  # type: ignore[union-attr]


async def test_producer_only_service_accepts_unregistered_names(make_service: Any) -> None:
    service = await make_service(check_names=False)
    task = await service.add_task("runs.elsewhere", {"x": 1})
    assert task.status is TaskStatus.PENDING


async def test_a_name_that_is_not_valid_unicode_is_refused(make_service: Any) -> None:
    service = await make_service(check_names=False)
    with pytest.raises(ValueError, match="task name"):
        await service.add_task("report\udc80")
    assert sum((await service.broker.count_tasks()).values()) == 0


# ------------------------------------------------------------------ running tasks


async def test_result_is_stored_and_returned(make_service: Any) -> None:
    async def add(task: Task) -> int:
        return int(task.payload["a"]) + int(task.payload["b"])

    service = await make_service({"add": add})
    service.start_workers(2)
    task = await service.add_task("add", {"a": 2, "b": 3})
    assert await service.get_result(task.id, timeout=5) == 5
    done = await service.wait_for(task.id, timeout=5)
    assert done.status is TaskStatus.COMPLETED and done.attempts == 1


async def test_priorities_decide_the_order_of_work(make_service: Any) -> None:
    order: list[int] = []

    async def record(task: Task) -> None:
        order.append(task.priority)

    service = await make_service({"record": record})
    tasks = [await service.add_task("record", priority=p) for p in (5, 0, 3, 0, 1)]
    service.start_workers(1)
    for task in tasks:
        await service.wait_for(task.id, timeout=5)
    assert order == [0, 0, 1, 3, 5]


async def test_delayed_task_runs_after_its_delay(make_service: Any) -> None:
    started: dict[str, datetime] = {}

    async def stamp(task: Task) -> None:
        started[task.id] = datetime.now(UTC)

    service = await make_service({"stamp": stamp})
    service.start_workers(2)
    delayed = await service.add_task("stamp", delay_seconds=0.2)
    due = await service.add_task("stamp")
    await service.wait_for(due.id, timeout=5)
    assert delayed.id not in started
    await service.wait_for(delayed.id, timeout=5)
    assert started[delayed.id] >= delayed.scheduled_at


async def test_failing_task_retries_then_fails_with_details(make_service: Any) -> None:
    calls = 0

    async def flaky(task: Task) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"broken {calls}")

    service = await make_service({"flaky": flaky})
    service.start_workers(1)
    task = await service.add_task("flaky", max_retries=2)
    with pytest.raises(TaskFailedError, match="broken 3") as info:
        await service.get_result(task.id, timeout=5)
    failed = info.value.task
    assert calls == 3 and failed.attempts == 3 and failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.type == "ValueError"
    assert failed.error.traceback is not None and "flaky" in failed.error.traceback


async def test_task_succeeding_on_a_retry_completes(make_service: Any) -> None:
    async def second_time_lucky(task: Task) -> str:
        if current_task().attempts < 2:
            raise ConnectionError("transient")
        return "ok"

    service = await make_service({"lucky": second_time_lucky})
    service.start_workers(1)
    task = await service.add_task("lucky")
    assert await service.get_result(task.id, timeout=5) == "ok"
    done = await service.get_task(task.id)
    assert done is not None and done.attempts == 2


async def test_timeout_fails_the_attempt(make_service: Any) -> None:
    async def slow(task: Task) -> None:
        await asyncio.Event().wait()

    service = await make_service({"slow": slow})
    service.start_workers(1)
    task = await service.add_task("slow", timeout=0.05, max_retries=1)
    final = await service.wait_for(task.id, timeout=5)
    assert final.status is TaskStatus.FAILED and final.attempts == 2
    assert final.error is not None and final.error.type == "TimeoutError"
    assert "0.05" in final.error.message


async def test_executor_raising_timeout_itself_is_a_plain_failure(make_service: Any) -> None:
    async def raises(task: Task) -> None:
        raise TimeoutError("upstream timed out")

    service = await make_service({"raises": raises}, default_timeout=10)
    service.start_workers(1)
    task = await service.add_task("raises", max_retries=0)
    final = await service.wait_for(task.id, timeout=5)
    assert final.error is not None and final.error.message == "upstream timed out"


async def test_result_that_is_not_json_fails_without_retry(make_service: Any) -> None:
    async def bad(task: Task) -> object:
        return object()

    service = await make_service({"bad": bad})
    service.start_workers(1)
    task = await service.add_task("bad")
    final = await service.wait_for(task.id, timeout=5)
    assert final.status is TaskStatus.FAILED and final.attempts == 1
    assert final.error is not None and "result" in final.error.message


async def test_sync_executor_runs_in_a_thread(make_service: Any) -> None:
    def blocking(task: Task) -> str:
        return threading.current_thread().name

    service = await make_service({"blocking": blocking})
    service.start_workers(1)
    task = await service.add_task("blocking")
    thread_name = await service.get_result(task.id, timeout=5)
    assert thread_name != threading.current_thread().name


async def test_progress_is_visible_while_running(make_service: Any) -> None:
    halfway, finish = asyncio.Event(), asyncio.Event()

    async def steps(task: Task) -> None:
        await report_progress(0.5)
        halfway.set()
        await finish.wait()

    service = await make_service({"steps": steps})
    service.start_workers(1)
    task = await service.add_task("steps")
    await asyncio.wait_for(halfway.wait(), 5)
    running = await service.get_task(task.id)
    assert running is not None and running.progress == 0.5
    assert running.status is TaskStatus.PROCESSING
    finish.set()
    done = await service.wait_for(task.id, timeout=5)
    assert done.progress == 1.0


async def test_progress_outside_an_executor_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        await report_progress(0.1)
    with pytest.raises(RuntimeError):
        current_task()


async def test_unknown_name_at_the_worker_fails_with_a_clear_error(make_service: Any) -> None:
    service = await make_service({"known": noop}, check_names=False)
    service.start_workers(1)
    task = await service.add_task("from.a.newer.deploy", max_retries=1)
    final = await service.wait_for(task.id, timeout=5)
    assert final.status is TaskStatus.FAILED and final.attempts == 2
    assert final.error is not None and "from.a.newer.deploy" in final.error.message


async def test_worker_survives_failures_and_keeps_working(make_service: Any) -> None:
    async def maybe(task: Task) -> int:
        if task.payload["n"] % 3 == 0:
            raise RuntimeError("every third")
        return int(task.payload["n"])

    service = await make_service({"maybe": maybe}, retry_policy=RetryPolicy(max_retries=0))
    service.start_workers(3)
    tasks = await service.add_tasks([{"name": "maybe", "payload": {"n": i}} for i in range(30)])
    finals = [await service.wait_for(t.id, timeout=5) for t in tasks]
    assert sum(f.status is TaskStatus.FAILED for f in finals) == 10
    assert sum(f.status is TaskStatus.COMPLETED for f in finals) == 20


async def test_decorator_and_context_manager(make_service: Any) -> None:
    service = await make_service(concurrency=2)

    @service.executor
    async def hello(task: Task) -> str:
        return f"hello {task.payload['who']}"

    @service.executor("renamed")
    async def other(task: Task) -> str:
        return "renamed"

    async with service:
        assert service.running
        a = await service.add_task("hello", {"who": "you"})
        b = await service.add_task("renamed")
        assert await service.get_result(a.id, timeout=5) == "hello you"
        assert await service.get_result(b.id, timeout=5) == "renamed"
    assert not service.running


# ------------------------------------------------------------------ cancel


async def test_cancel_running_task(make_service: Any) -> None:
    started = asyncio.Event()

    async def forever(task: Task) -> None:
        started.set()
        await asyncio.Event().wait()

    service = await make_service({"forever": forever, "noop": noop})
    service.start_workers(1)
    task = await service.add_task("forever")
    await asyncio.wait_for(started.wait(), 5)
    assert await service.cancel(task.id, reason="user asked")
    with pytest.raises(TaskCancelledError):
        await service.get_result(task.id, timeout=5)
    after = await service.add_task("noop")
    done = await service.wait_for(after.id, timeout=5)
    assert done.status is TaskStatus.COMPLETED


async def test_cancel_of_an_executor_that_swallows_cancellation(make_service: Any) -> None:
    started, swallowed = asyncio.Event(), asyncio.Event()

    async def stubborn(task: Task) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        return "finished anyway"

    service = await make_service({"stubborn": stubborn, "noop": noop})
    service.start_workers(1)
    task = await service.add_task("stubborn")
    await asyncio.wait_for(started.wait(), 5)
    await service.cancel(task.id)
    final = await service.wait_for(task.id, timeout=5)
    assert swallowed.is_set() and final.status is TaskStatus.CANCELLED
    after = await service.add_task("noop")
    assert (await service.wait_for(after.id, timeout=5)).status is TaskStatus.COMPLETED


async def test_cancel_pending_task(make_service: Any) -> None:
    service = await make_service({"noop": noop})
    task = await service.add_task("noop", delay_seconds=30)
    assert await service.cancel(task.id)
    final = await service.wait_for(task.id, timeout=1)
    assert final.status is TaskStatus.CANCELLED
    assert not await service.cancel(task.id)


# ------------------------------------------------------------------ shutdown


async def test_shutdown_lets_running_tasks_finish(make_service: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def work(task: Task) -> str:
        started.set()
        await release.wait()
        return "finished"

    service = await make_service({"work": work})
    workers = service.start_workers(2)
    task = await service.add_task("work")
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(service.shutdown(grace=5))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert all(w.done() for w in workers)
    done = await service.get_task(task.id)
    assert done is not None and done.status is TaskStatus.COMPLETED


async def test_shutdown_hands_back_unfinished_tasks_without_spending_attempts(
    make_service: Any,
) -> None:
    started = asyncio.Event()

    async def forever(task: Task) -> None:
        started.set()
        await asyncio.Event().wait()

    service = await make_service({"forever": forever}, prefetch=5)
    workers = service.start_workers(1)
    first = await service.add_task("forever")
    queued = [await service.add_task("forever") for _ in range(3)]
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(service.shutdown(grace=0.05), 5)
    await asyncio.gather(*workers)
    for task in [first, *queued]:
        stored = await service.get_task(task.id)
        assert stored is not None and stored.status is TaskStatus.PENDING
        assert stored.attempts == 0
    # and a new service on the same broker runs them
    ran = asyncio.Event()

    async def quick(task: Task) -> None:
        ran.set()

    replacement = await make_service({"forever": quick}, broker=service.broker)
    replacement.start_workers(1)
    done = await replacement.wait_for(first.id, timeout=5)
    assert done.status is TaskStatus.COMPLETED and done.attempts == 1


async def test_katana_style_worker_coroutines(make_service: Any) -> None:
    service = await make_service({"noop": noop})
    workers = [asyncio.create_task(service.worker(i)) for i in range(2)]
    task = await service.add_task("noop")
    assert (await service.wait_for(task.id, timeout=5)).status is TaskStatus.COMPLETED
    await service.shutdown()
    results = await asyncio.gather(*workers, return_exceptions=True)
    assert results == [None, None]


async def test_workers_can_restart_after_shutdown(make_service: Any) -> None:
    service = await make_service({"noop": noop})
    service.start_workers(1)
    await service.shutdown()
    service.start_workers(1)
    task = await service.add_task("noop")
    assert (await service.wait_for(task.id, timeout=5)).status is TaskStatus.COMPLETED


async def test_lost_lease_stops_the_local_run(broker_factory: BrokerFactory) -> None:
    """A holder whose lease was recovered elsewhere stops and does not report."""
    broker = await broker_factory(lease_seconds=0.3)
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow(task: Task) -> str:
        started.set()
        await finish.wait()
        return "stale"

    # No prefetch: the service must not lease the released task again before "other".
    service = TaskQueueService(broker, {"slow": slow}, retry_policy=FAST_RETRY, prefetch=0)
    service.start_workers(1)
    task = await service.add_task("slow")
    await asyncio.wait_for(started.wait(), 5)
    # Someone else takes the task over with a newer token.
    stolen = await broker.get_task(task.id)
    assert stolen is not None
    await broker.release(task.id, token=stolen.token)
    other = await broker.dequeue(worker_id="other")
    assert other is not None and other.id == task.id
    # The next heartbeat tells the service it lost the lease; its late result is refused.
    finish.set()
    await broker.mark_complete(task.id, "fresh", token=other.token)
    final = await service.wait_for(task.id, timeout=5)
    assert final.result == "fresh"
    await service.shutdown(grace=1)


async def test_shutdown_right_after_start_leaves_no_live_worker(make_service: Any) -> None:
    service = await make_service({"noop": noop})
    workers = service.start_workers(3)
    await service.shutdown()
    assert all(w.done() for w in workers) and not service.running
    task = await service.add_task("noop")
    with pytest.raises(TimeoutError):
        await service.wait_for(task.id, timeout=0.1)


class SwallowingBroker(InMemoryBroker):
    """Its first renewal swallows a cancellation, as redis-py and fakeredis calls can."""

    def __init__(self) -> None:
        super().__init__(lease_seconds=0.03)
        self.renewing = asyncio.Event()
        self.swallowed = False

    async def renew(self, leases: Mapping[str, int]) -> RenewResult:
        if not self.swallowed:
            self.renewing.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.swallowed = True
        return await super().renew(leases)


async def test_shutdown_ends_even_if_the_broker_swallows_the_heartbeat_cancel() -> None:
    # Found by tests/chaos/test_bad_records.py on fakeredis: shutdown() hung for good.
    broker = SwallowingBroker()
    service = TaskQueueService(broker, {"job": noop})
    service.start_workers(1)
    await asyncio.wait_for(broker.renewing.wait(), 5)
    await asyncio.wait_for(service.shutdown(), 5)
    assert broker.swallowed and not service.running


async def test_shutdown_called_from_an_executor_keeps_its_own_task(make_service: Any) -> None:
    service = await make_service({"noop": noop})

    async def stopper(task: Task) -> str:
        await service.shutdown(grace=1)
        return "stopped the service"

    service.register("stopper", stopper)
    service.start_workers(2)
    task = await service.add_task("stopper")
    final = await service.wait_for(task.id, timeout=5)
    assert final.status is TaskStatus.COMPLETED and final.attempts == 1
    assert final.result == "stopped the service"


async def test_a_timed_out_thread_ends_before_the_task_runs_again(make_service: Any) -> None:
    runs: list[tuple[int, float, float]] = []
    release = threading.Event()

    def slow(task: Task) -> str:
        import time

        started = time.monotonic()
        if task.attempts == 1:
            release.wait(5)  # far past the 0.05 s timeout
        runs.append((task.attempts, started, time.monotonic()))
        return "ok"

    service = await make_service({"slow": slow}, concurrency=2)
    service.start_workers(2)
    task = await service.add_task("slow", timeout=0.05, max_retries=1)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, release.set)
    final = await service.wait_for(task.id, timeout=10)
    assert final.status is TaskStatus.COMPLETED and final.attempts == 2
    (first, _, first_end), (second, second_start, _) = runs
    assert (first, second) == (1, 2)
    assert second_start >= first_end  # never two runs of one task at once


async def test_shutdown_called_from_an_executor_ends_every_slot(make_service: Any) -> None:
    async def stop(task: Task) -> str:
        await service.shutdown(grace=5)
        return "stopped from inside"

    service = await make_service({"stop": stop})
    task = await service.add_task("stop")
    workers = service.start_workers(3)
    async with asyncio.timeout(10):
        await asyncio.gather(*workers)
    assert not service.running
    assert await service.get_result(task.id, timeout=5) == "stopped from inside"


async def test_shutdown_returns_although_an_executor_swallows_cancellation(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    started, give_up = asyncio.Event(), asyncio.Event()

    async def stubborn(task: Task) -> str:
        started.set()
        while not give_up.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # refuses to stop
                await asyncio.sleep(0.01)
        return "finally"

    service = await make_service({"stubborn": stubborn})
    task = await service.add_task("stubborn")
    workers = service.start_workers(1)
    await asyncio.wait_for(started.wait(), 5)
    with caplog.at_level(logging.ERROR, logger="task_queue.service"):
        async with asyncio.timeout(10):
            await service.shutdown(grace=0.1)
    assert any("ignored cancellation" in r.getMessage() for r in caplog.records)
    held = await service.get_task(task.id)
    assert held is not None and held.status is TaskStatus.PROCESSING  # not handed back
    give_up.set()
    await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 5)
