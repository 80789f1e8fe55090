"""What only RedisBroker has: keys, scripts, waking across processes, bad records, secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from task_queue import BrokerConnectionError, Task, TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker, mask_url
from tests.conftest import REDIS_URL, BrokerFactory, forget, require_real_redis, unique_prefix

REDIS_KINDS = pytest.mark.parametrize("broker_kind", ["redis-fake", "redis-real"])


async def pair(broker_factory: BrokerFactory, **options: Any) -> tuple[RedisBroker, RedisBroker]:
    """Two brokers on one queue, as two processes would have."""
    first = await broker_factory(**options)
    assert isinstance(first, RedisBroker)
    if first.client.__class__.__name__.startswith("Fake"):
        import fakeredis

        server = first.client.connection_pool.connection_kwargs["server"]
        second_client = fakeredis.FakeAsyncRedis(server=server)
        second = RedisBroker(second_client, prefix=first.prefix, owns_client=True, **options)
    else:
        second = RedisBroker.from_url(REDIS_URL, prefix=first.prefix, **options)
    return first, second


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Wait until `condition()` holds (checked every event-loop turn), or fail."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a broker's inner state has no event
            await asyncio.sleep(0)


async def blocked_consumer(
    broker_factory: BrokerFactory,
) -> tuple[RedisBroker, RedisBroker, asyncio.Task[Task | None]]:
    """A consumer whose dequeue is blocked, its lease queued behind the wait, and a
    producer on the same queue."""
    consumer, producer = await pair(broker_factory, max_idle_wait=5.0)
    waiting = asyncio.create_task(consumer.dequeue(timeout=10))
    await until(lambda: consumer._priming)
    return consumer, producer, waiting


# ------------------------------------------------------------------ secrets and URLs


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380/2", "rediss://user:***@host:6380/2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user:p%40ss@[::1]:6379", "redis://user:***@[::1]:6379"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=***&db=1"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


async def test_tls_url_is_accepted_and_password_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RedisBroker.from_url("rediss://app:s3cret@127.0.0.1:1/0", retry_seconds=0.2)
    assert "s3cret" not in repr(broker)
    pool_kwargs = broker.client.connection_pool.connection_kwargs
    assert pool_kwargs["password"] == "s3cret"
    assert broker.client.connection_pool.connection_class.__name__ == "SSLConnection"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerConnectionError) as info:
        await broker.count_tasks()
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)
    assert "s3cret" not in caplog.text
    await broker.close()


async def test_unreachable_redis_raises_a_connection_error_naming_it() -> None:
    broker = RedisBroker.from_url("redis://:pw@127.0.0.1:1/0", retry_seconds=0.2)
    service = TaskQueueService(broker, check_names=False)
    with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1:1"):
        await service.add_task("anything")
    await broker.close()


async def test_refused_credentials_fail_at_once_without_retrying() -> None:
    from redis.exceptions import AuthenticationError

    broker = RedisBroker.from_url("redis://:wrong@127.0.0.1:1/0", retry_seconds=30)
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise AuthenticationError("invalid username-password pair")

    started = time.perf_counter()
    with pytest.raises(BrokerConnectionError, match="refused the credentials"):
        await broker._retrying(refused, "test")
    assert calls == 1 and time.perf_counter() - started < 1
    await broker.close()


# ------------------------------------------------------------------ keys


@REDIS_KINDS
async def test_every_key_shares_one_hash_tag(broker: RedisBroker) -> None:
    await broker.enqueue(Task("job"))
    await broker.enqueue(Task("job", scheduled_at=datetime(2100, 1, 1, tzinfo=UTC)))
    got = await broker.dequeue()
    assert got is not None
    await broker.mark_complete(got.id, token=got.token)
    tag = broker.base_key
    keys: list[str] = []
    async for key in broker.client.scan_iter(match=f"{tag}*"):
        keys.append(key.decode())
    assert keys
    assert all(key.startswith(tag) for key in keys)
    assert tag == f"{{{broker.prefix}:default}}"


@REDIS_KINDS
async def test_prefixes_keep_two_apps_apart(broker_factory: BrokerFactory) -> None:
    one = await broker_factory()
    other = await broker_factory()
    await one.enqueue(Task("job", id="same-id", payload={"app": 1}))
    await other.enqueue(Task("job", id="same-id", payload={"app": 2}))
    a, b = await one.dequeue(), await other.dequeue()
    assert a is not None and a.payload == {"app": 1}
    assert b is not None and b.payload == {"app": 2}


@REDIS_KINDS
async def test_final_tasks_are_deleted_after_their_retention(
    broker_factory: BrokerFactory,
) -> None:
    broker = await broker_factory(result_ttl=0.2, dead_letter_ttl=60)
    assert isinstance(broker, RedisBroker)
    await broker.enqueue_many([Task("ok"), Task("bad")])
    ok, bad = await broker.dequeue_many(2)
    await broker.mark_complete(ok.id, token=ok.token)
    await broker.mark_failed(bad.id, "boom", token=bad.token)
    ok_key = f"{broker.base_key}:task:{ok.id}"
    assert await broker.client.exists(ok_key)
    await asyncio.sleep(0.3)  # the retention is what is under test: let it pass
    assert await broker.get_task(ok.id) is None  # hidden at once when read
    await broker.renew({})  # the heartbeat's upkeep deletes it
    assert not await broker.client.exists(ok_key)
    assert await broker.client.zscore(f"{broker.base_key}:completed", ok.id) is None
    kept = await broker.get_task(bad.id)
    assert kept is not None and kept.status is TaskStatus.FAILED


@REDIS_KINDS
async def test_scripts_are_reloaded_after_the_server_forgets_them(broker: RedisBroker) -> None:
    await broker.enqueue(Task("job"))
    assert broker._use_functions
    if broker.client.__class__.__name__.startswith("Fake"):
        await broker.client.script_flush()
        await broker.client.function_flush()
    else:
        # A shared server keeps its functions: make this broker forget its library's
        # name instead (a flush on a server of its own is in the chaos tests' style
        # below).
        broker._functions = {name: f"{fn}_gone" for name, fn in broker._functions.items()}
        broker._prefixes.clear()
        broker._library = broker._library.replace("', function(KEYS", "_gone', function(KEYS")
    got = await broker.dequeue()
    assert got is not None


async def test_a_server_that_lost_its_functions_gets_them_again(tmp_path: Any) -> None:
    from tests.chaos.harness import RedisServer

    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        broker = RedisBroker.from_url(server.url, prefix=unique_prefix())
        first = await broker.enqueue(Task("job"))
        admin = server.client()
        await admin.function_flush()  # our own server: as after a restart without AOF
        await admin.script_flush()
        second = await broker.enqueue(Task("job"))
        got = [await broker.dequeue(), await broker.dequeue()]
        assert {t.id for t in got if t is not None} == {first.id, second.id}
        assert len(await admin.function_list()) == 1
        await admin.aclose()
        await broker.close()
    finally:
        server.stop()


async def test_out_of_memory_purge_and_upkeep_still_free_memory(tmp_path: Any) -> None:
    """Redis refuses a function whole when out of memory; the broker then runs the
    script form, whose deletes Redis allows: memory can be freed."""
    from redis.exceptions import ResponseError

    from tests.chaos.harness import RedisServer

    server = RedisServer(tmp_path / "redis")
    await server.start()
    admin = server.client()
    try:
        broker = RedisBroker.from_url(server.url, prefix=unique_prefix())
        await broker.enqueue_many([Task("job", {"pad": "x" * 1000}) for _ in range(500)])
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", used - 100_000)
        with pytest.raises(ResponseError, match="OOM"):
            await broker.enqueue(Task("job", {"pad": "y" * 1000}))
        assert await broker.purge(TaskStatus.PENDING) == 500
        await admin.config_set("maxmemory", 0)
        assert await broker.enqueue(Task("job"))  # and functions again
        assert broker._use_functions
        await broker.close()
    finally:
        await admin.aclose()
        server.stop()


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_an_undecodable_task_that_falls_due_while_waiting_is_failed_once(
    broker: RedisBroker,
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    task = await broker.enqueue(Task("job", scheduled_at=due))
    await broker.client.hset(broker._task_key(task.id), "data", "{not json")
    fails = 0
    plain_script = broker._script

    async def counted(name: str, *args: Any) -> Any:
        nonlocal fails
        fails += name == "fail"
        return await plain_script(name, *args)

    broker._script = counted  # type: ignore[method-assign]
    started = time.monotonic()
    assert await broker.dequeue(timeout=1.5) is None
    assert time.monotonic() - started < 3
    assert fails == 1
    assert await broker.client.hget(broker._task_key(task.id), "status") == b"failed"


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_closing_while_a_lease_rides_behind_the_wait_loses_no_task(
    broker_factory: BrokerFactory,
) -> None:
    consumer, producer, waiting = await blocked_consumer(broker_factory)
    try:
        task = await producer.enqueue(Task("job"))
        await consumer.close()
        try:
            got = await asyncio.wait_for(waiting, 5)
        except BrokerConnectionError:
            got = None
        stored = await producer.get_task(task.id)
        assert stored is not None
        if got is None:  # not leased: still there for any worker
            assert stored.status is TaskStatus.PENDING
        else:  # leased and handed to the caller, who can report on it
            assert got.id == task.id and stored.status is TaskStatus.PROCESSING
    finally:
        await producer.close()


@REDIS_KINDS
async def test_a_server_without_functions_runs_the_scripts_with_evalsha(
    broker_factory: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import ResponseError

    async def refused(self: Any, code: str, replace: bool = False) -> Any:
        raise ResponseError("unknown command 'FUNCTION'")  # as Redis 6 answers

    monkeypatch.setattr(Redis, "function_load", refused)
    broker = await broker_factory()
    assert isinstance(broker, RedisBroker)
    task = await broker.enqueue(Task("job", {"n": 1}))
    assert broker._use_functions is False
    got = await broker.dequeue()
    assert got is not None and got.id == task.id and got.token is not None
    assert await broker.mark_complete(got.id, "done", token=got.token)
    final = await broker.get_task(task.id)
    assert final is not None and final.status is TaskStatus.COMPLETED
    if broker.client.__class__.__name__.startswith("Fake"):
        await broker.client.script_flush()  # NOSCRIPT: reloaded as a script, not a function
    second = await broker.enqueue(Task("job"))
    assert (await broker.get_task(second.id)) is not None


# ------------------------------------------------------------------ waking


@REDIS_KINDS
async def test_idle_dequeue_is_woken_by_another_process(broker_factory: BrokerFactory) -> None:
    consumer, producer = await pair(broker_factory, max_idle_wait=5.0)
    try:
        waiting = asyncio.create_task(consumer.dequeue(timeout=10))
        await asyncio.sleep(0.2)  # let the consumer block on its wake-up key
        started = time.perf_counter()
        task = await producer.enqueue(Task("job"))
        got = await asyncio.wait_for(waiting, 5)
        assert got is not None and got.id == task.id
        assert time.perf_counter() - started < 1.0  # far below the 5 s idle wait
    finally:
        await producer.close()


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_the_lease_after_a_wake_up_takes_no_extra_round_trip(
    broker_factory: BrokerFactory,
) -> None:
    consumer, producer = await pair(broker_factory, max_idle_wait=5.0)
    leases = 0
    plain_lease = consumer._lease

    async def counted(*args: Any) -> Any:
        nonlocal leases
        leases += 1
        return await plain_lease(*args)

    consumer._lease = counted  # type: ignore[method-assign]
    try:
        waiting = asyncio.create_task(consumer.dequeue(timeout=10))
        await until(lambda: consumer._priming)  # blocked, the lease queued behind
        task = await producer.enqueue(Task("job"))
        got = await asyncio.wait_for(waiting, 5)
        assert got is not None and got.id == task.id
        assert leases == 1  # the first look found nothing; the wake-up brought the task
    finally:
        await producer.close()


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_a_due_time_ends_the_blocking_wait(broker: RedisBroker) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    task = await broker.enqueue(Task("job", scheduled_at=due))
    got = await broker.dequeue(timeout=4)  # max_idle_wait is 5 s: the wake-up is ours
    assert got is not None and got.id == task.id
    assert datetime.now(UTC) - due < timedelta(seconds=0.25)
    assert await broker.client.exists(broker._self_wake) == 0  # our wake-up was used


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_a_left_over_wake_up_does_not_cut_the_next_wait_short(
    broker: RedisBroker,
) -> None:
    await broker.client.zadd(broker._self_wake, {"w": 0})  # as a race would leave it
    started = time.monotonic()
    assert await broker.dequeue_many(5, timeout=0.3) == []
    assert time.monotonic() - started >= 0.29
    task = await broker.enqueue(Task("job"))
    got = await broker.dequeue(timeout=1)
    assert got is not None and got.id == task.id


@pytest.mark.parametrize("broker_kind", ["redis-real"])
async def test_a_cancelled_blocking_dequeue_leaves_nothing_leased(
    broker_factory: BrokerFactory,
) -> None:
    consumer, producer, waiting = await blocked_consumer(broker_factory)
    try:
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not consumer._priming
        task = await producer.enqueue(Task("job"))
        counts = await producer.count_tasks()
        assert counts[TaskStatus.PENDING] == 1 and counts[TaskStatus.PROCESSING] == 0
        got = await consumer.dequeue(timeout=2)  # the blocking line still works
        assert got is not None and got.id == task.id
        assert await consumer.client.exists(consumer._self_wake) == 0
    finally:
        await producer.close()


@REDIS_KINDS
async def test_delayed_task_is_handed_out_when_due(broker: RedisBroker) -> None:
    task = Task("job", scheduled_at=Task("x").scheduled_at)
    task.scheduled_at = task.scheduled_at.fromtimestamp(
        time.time() + 0.3, task.scheduled_at.tzinfo
    )
    await broker.enqueue(task)
    got = await broker.dequeue(timeout=5)
    late = time.time() - task.scheduled_at.timestamp()
    assert got is not None and got.id == task.id
    assert -0.01 <= late < 0.25


@REDIS_KINDS
@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_retries", 10**5000, ValueError),
        ("created_at", "2024-01-01", TypeError),
        ("scheduled_at", 1700000000.0, TypeError),
    ],
    ids=["huge-max-retries", "created-at-str", "scheduled-at-float"],
)
async def test_a_task_the_store_cannot_hold_fails_the_call_before_any_batch(
    broker: RedisBroker, field: str, value: object, error: type[Exception]
) -> None:
    # Checked before the first of the two batches goes out, not when its own is encoded.
    tasks = [Task("job", payload={"n": i}) for i in range(1500)]
    setattr(tasks[-1], field, value)
    with pytest.raises(error):
        await broker.enqueue_many(tasks)
    assert await broker.get_task(tasks[0].id) is None
    assert sum((await broker.count_tasks()).values()) == 0


@REDIS_KINDS
async def test_delays_count_from_when_the_batch_is_sent(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Encoding a large batch takes a while; its tasks must still come due when asked,
    # not that much later. Here encoding takes 0.6 s in all.
    encode = RedisBroker._static

    def slow_encode(task: Task, middle: str | None = None) -> str:
        time.sleep(0.001)
        return encode(task, middle)

    monkeypatch.setattr(RedisBroker, "_static", staticmethod(slow_encode))
    due = datetime.fromtimestamp(time.time() + 30, UTC)
    tasks = [Task("job", scheduled_at=due) for _ in range(600)]
    await broker.enqueue_many(tasks)
    stored = await broker.get_task(tasks[0].id)
    assert stored is not None
    assert abs((stored.scheduled_at - due).total_seconds()) < 0.3


@REDIS_KINDS
async def test_result_wait_is_woken_from_another_process(broker_factory: BrokerFactory) -> None:
    waiter, worker = await pair(broker_factory)
    try:
        task = await waiter.enqueue(Task("job"))
        waiting = asyncio.create_task(waiter.wait_for(task.id, timeout=10))
        leased = await worker.dequeue()
        assert leased is not None
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await worker.mark_complete(task.id, {"v": 1}, token=leased.token)
        done = await asyncio.wait_for(waiting, 5)
        assert done.status is TaskStatus.COMPLETED and done.result == {"v": 1}
    finally:
        await worker.close()


@REDIS_KINDS
async def test_cancel_from_another_process_stops_the_running_task(
    broker_factory: BrokerFactory,
) -> None:
    runner_broker, other = await pair(broker_factory, lease_seconds=0.6)
    started = asyncio.Event()

    async def forever(task: Task) -> None:
        started.set()
        await asyncio.Event().wait()

    runner = TaskQueueService(runner_broker, {"forever": forever})
    try:
        runner.start_workers(1)
        task = await runner.add_task("forever")
        await asyncio.wait_for(started.wait(), 5)
        began = time.perf_counter()
        assert await other.cancel(task.id, reason="from elsewhere")
        final = await other.wait_for(task.id, timeout=5)
        assert final.status is TaskStatus.CANCELLED
        assert final.error is not None and final.error.message == "from elsewhere"
        assert time.perf_counter() - began < 0.6  # within one heartbeat (lease / 3)
    finally:
        await runner.shutdown(grace=0)
        await other.close()


@REDIS_KINDS
async def test_progress_is_visible_from_another_process(broker_factory: BrokerFactory) -> None:
    one, two = await pair(broker_factory)
    try:
        await one.enqueue(Task("job"))
        got = await one.dequeue()
        assert got is not None
        await one.set_progress(got.id, 0.4, token=got.token)
        seen = await two.get_task(got.id)
        assert seen is not None and seen.progress == 0.4
    finally:
        await two.close()


# ------------------------------------------------------------------ bad records


@REDIS_KINDS
async def test_undecodable_record_is_failed_and_never_handed_out(
    broker: RedisBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broken, fine = Task("job"), Task("job")
    await broker.enqueue_many([broken, fine])
    await broker.client.hset(f"{broker.base_key}:task:{broken.id}", "data", "{not json")
    got = await broker.dequeue_many(5)
    assert [t.id for t in got] == [fine.id]
    raw = await broker.client.hgetall(f"{broker.base_key}:task:{broken.id}")
    assert raw[b"status"] == b"failed"
    assert b"DecodeError" in raw[b"error"]
    assert "undecodable" in caplog.text


@REDIS_KINDS
async def test_queue_entries_without_a_task_are_dropped(
    broker: RedisBroker, caplog: pytest.LogCaptureFixture
) -> None:
    ready = f"{broker.base_key}:ready"
    await broker.client.zadd(ready, {"ghost": 0})
    await broker.client.set(f"{broker.base_key}:task:wrong-type", "a string")
    await broker.client.zadd(ready, {"wrong-type": 1})
    real = await broker.enqueue(Task("job"))
    got = await broker.dequeue_many(5)
    assert [t.id for t in got] == [real.id]
    assert "ghost" in caplog.text and "wrong-type" in caplog.text
    assert await broker.client.zcard(ready) == 0
    await broker.client.delete(f"{broker.base_key}:task:wrong-type")


@REDIS_KINDS
async def test_a_record_whose_numbers_were_corrupted_is_failed_and_the_queue_goes_on(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by tests/chaos/test_bad_records.py: such a record made the dequeue script
    # raise a Lua error on every call, for every worker, so the whole queue stopped.
    broker = await broker_factory(lease_seconds=0.1)
    assert isinstance(broker, RedisBroker)
    orphans = [Task("job", id=f"orphan-{n}") for n in range(3)]
    await broker.enqueue_many(orphans)
    assert len(await broker.dequeue_many(3, worker_id="dead")) == 3
    late = Task("job", id="late", scheduled_at=datetime.now(UTC) + timedelta(seconds=0.1))
    await broker.enqueue(late)
    key = f"{broker.base_key}:task:"
    await broker.client.hdel(f"{key}orphan-0", "max_attempts")
    await broker.client.hset(f"{key}orphan-1", "attempts", "many")
    await broker.client.hset(f"{key}orphan-2", "score", "nan")
    await broker.client.hset(f"{key}late", "score", "")
    ids = [*(t.id for t in orphans), late.id]
    deadline = time.monotonic() + 10
    while [await broker.client.hget(key + i, "status") for i in ids] != [b"failed"] * 4:
        assert time.monotonic() < deadline, "the corrupted records were never failed"
        await broker.renew({})  # the upkeep meets them once their time is up
        await asyncio.sleep(0.02)
    for task_id in ids:
        assert b"DecodeError" in await broker.client.hget(key + task_id, "error")
        assert f"task {task_id}: its record's attempts" in caplog.text
    fine = await broker.enqueue(Task("job"))
    got = await broker.dequeue_many(5)
    assert [t.id for t in got] == [fine.id]
    await broker.client.hdel(key + fine.id, "max_attempts")  # no retry can be counted
    assert await broker.mark_failed(fine.id, "boom", token=got[0].token, retry_in=0)
    assert await broker.client.hget(key + fine.id, "status") == b"failed"


@REDIS_KINDS
async def test_priority_out_of_range_is_refused(broker: RedisBroker) -> None:
    with pytest.raises(ValueError, match="priority"):
        await broker.enqueue(Task("job", priority=10**7))


# ------------------------------------------------------------------ settings check


async def test_unsafe_settings_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    await require_real_redis()
    broker = RedisBroker.from_url(REDIS_URL, prefix=unique_prefix())
    try:
        aof = next(iter((await broker.client.config_get("appendonly")).values()))
        policy = next(iter((await broker.client.config_get("maxmemory-policy")).values()))
        await broker.count_tasks()
        await broker.enqueue(Task("job"))
        assert ("appendonly" in caplog.text) == (aof not in ("yes", b"yes"))
        assert ("maxmemory-policy" in caplog.text) == (policy not in ("noeviction", b"noeviction"))
    finally:
        await forget(broker)
        await broker.close()


@REDIS_KINDS
async def test_a_dequeue_rerun_after_a_lost_reply_returns_the_same_tasks(
    broker: RedisBroker,
) -> None:
    await broker.enqueue_many([Task("job") for _ in range(10)])
    args = ("dequeue", 4, 30_000, "w1", 100, "request-1")
    first = await broker._script(*args)
    again = await broker._script(*args)  # as if the first reply never arrived
    ids = [bytes(values[0]) for values in first[1]]
    assert len(ids) == 4
    assert [bytes(values[0]) for values in again[1]] == ids
    counts = await broker.count_tasks()
    assert counts[TaskStatus.PROCESSING] == 4 and counts[TaskStatus.PENDING] == 6
    other = await broker._script("dequeue", 4, 30_000, "w1", 100, "request-2")
    assert len(other[1]) == 4 and not {bytes(v[0]) for v in other[1]} & set(ids)


def test_a_queue_name_with_a_colon_is_refused() -> None:
    import fakeredis

    from task_queue.broker.redis import RedisBroker

    with pytest.raises(ValueError, match="must not contain ':'"):
        RedisBroker(fakeredis.FakeAsyncRedis(), prefix="a", queue="b:c")
    assert RedisBroker(fakeredis.FakeAsyncRedis(), prefix="a:b", queue="c").queue == "c"
