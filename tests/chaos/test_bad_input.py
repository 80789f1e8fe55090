"""Bad input on every broker kind: each gets a clear error or is failed with a reason,
nothing is half-stored, no worker dies, and the tasks around it run as if it were not
there."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from task_queue import (
    AbstractBroker,
    RetryPolicy,
    Task,
    TaskQueueService,
    TaskStatus,
    UnknownTaskError,
)
from tests.chaos.harness import wait_until
from tests.conftest import BrokerFactory

pytestmark = pytest.mark.chaos

FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)

ServiceFactory = Callable[..., Any]


async def echo(task: Task) -> Any:
    return task.payload.get("n")


@pytest.fixture
async def make_service(broker_factory: BrokerFactory) -> AsyncIterator[ServiceFactory]:
    """Build services on one broker of the current kind (or on `broker=`)."""
    services: list[TaskQueueService] = []
    shared: list[AbstractBroker] = []

    async def factory(executors: dict[str, Any], **options: Any) -> TaskQueueService:
        if "broker" not in options:
            if not shared:
                shared.append(await broker_factory())
            options["broker"] = shared[0]
        options.setdefault("retry_policy", FAST_RETRY)
        options.setdefault("shutdown_grace", 5)
        service = TaskQueueService(task_executors=executors, **options)
        services.append(service)
        return service

    yield factory
    for service in services:
        await service.shutdown(grace=0)


async def total(broker: AbstractBroker) -> int:
    return sum((await broker.count_tasks()).values())


def circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


# ------------------------------------------------------------------ payloads


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"when": datetime(2030, 1, 1, tzinfo=UTC)}, r"payload\['when'\]"),
        ({"raw": b"\x80\x04pickle"}, r"payload\['raw'\]"),
        ({"tags": {"a", "b"}}, r"payload\['tags'\]"),
        ({"ratio": float("nan")}, r"payload\['ratio'\]"),
        ({"big": float("inf")}, r"payload\['big'\]"),
        ({"deep": {"list": [1, object()]}}, r"payload\['deep'\]\['list'\]\[1\]"),
        (circular(), "circular"),
        ({("tuple", "key"): 1}, "key of type tuple"),
        ({"name": "lone \udc80 surrogate"}, r"payload\['name'\]"),
        ({"\ud83d": "surrogate key"}, "payload"),
        ([1, 2], "payload must be a dict"),
        ("text", "payload must be a dict"),
    ],
)
async def test_a_payload_that_is_not_json_is_refused_naming_the_field(
    make_service: ServiceFactory, payload: Any, where: str
) -> None:
    service = await make_service({"job": echo})
    await service.add_task("job", {"n": 1})
    with pytest.raises(TypeError, match=where):
        await service.add_task("job", payload)
    with pytest.raises(TypeError, match=where):  # one bad task in a batch stores none
        await service.add_tasks([{"name": "job"}, {"name": "job", "payload": payload}])
    with pytest.raises(TypeError, match=where.replace("payload", "metadata")):
        await service.add_task("job", {}, metadata=payload)
    assert await total(service.broker) == 1


async def test_results_and_errors_that_are_not_json_fail_only_their_own_task(
    make_service: ServiceFactory,
) -> None:
    gate = asyncio.Event()
    started = 0

    async def outcome(task: Task) -> Any:
        nonlocal started
        kind = task.payload.get("kind")
        if kind == "set":
            return {"a set"}
        started += 1
        await gate.wait()  # the rest finish in one loop turn: their acks go out together
        if kind == "surrogate":
            return {"path": "caf\udce9.txt"}  # os.listdir() of a file name not in UTF-8
        if kind == "raise":
            raise OSError("cannot read caf\udce9.txt")
        return task.payload["n"]

    service = await make_service({"outcome": outcome})
    specs: list[dict[str, Any]] = [{"name": "outcome", "payload": {"n": n}} for n in range(30)]
    for kind in ("set", "surrogate", "raise"):
        specs.insert(10, {"name": "outcome", "payload": {"kind": kind}})
    tasks = await service.add_tasks(specs)
    service.start_workers(len(specs))

    async def all_started() -> bool:
        return started >= len(specs) - 1

    await wait_until(all_started, 20, "every task to start", every=0.01)
    gate.set()
    finals = {t.id: await service.wait_for(t.id, timeout=20) for t in tasks}
    for task in tasks:
        final = finals[task.id]
        kind = task.payload.get("kind")
        if kind is None:  # the others ran once and completed
            assert final.status is TaskStatus.COMPLETED, final.error
            assert final.result == task.payload["n"] and final.attempts == 1
            continue
        assert final.status is TaskStatus.FAILED and final.error is not None
        if kind == "raise":  # an error is retried, then stored legibly
            assert final.attempts == FAST_RETRY.max_retries + 1
            assert final.error.type == "OSError"
            assert final.error.message == "cannot read caf\\udce9.txt"
        else:  # a result that cannot be stored fails at once: running again won't help
            assert final.attempts == 1
            assert final.error.type == "PayloadError"
            assert "result" in final.error.message
    assert service.running


# ------------------------------------------------------------------ names


async def test_a_name_only_a_newer_deploy_knows_fails_with_a_reason_until_it_is_deployed(
    make_service: ServiceFactory,
) -> None:
    old = await make_service({"job": echo})
    with pytest.raises(UnknownTaskError, match=r"'v2\.report'.*registered names: 'job'"):
        await old.add_task("v2.report")
    producer = await make_service({}, check_names=False)  # a producer of the new release
    newer = await producer.add_task("v2.report", {"n": "v2"})
    others = await producer.add_tasks([{"name": "job", "payload": {"n": n}} for n in range(20)])
    old.start_workers(4)
    failed = await old.wait_for(newer.id, timeout=20)
    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == FAST_RETRY.max_retries + 1  # a bounded number of tries
    assert failed.error is not None and failed.error.type == "UnknownTaskError"
    assert "'v2.report'" in failed.error.message and "'job'" in failed.error.message
    for task in others:
        final = await old.wait_for(task.id, timeout=20)
        assert final.status is TaskStatus.COMPLETED and final.attempts == 1
    later = await old.add_task("job", {"n": "still working"})
    assert await old.get_result(later.id, timeout=20) == "still working"
    await old.shutdown()
    # The new release is deployed: the dead letter is requeued and runs.
    new = await make_service({"job": echo, "v2.report": echo}, broker=old.broker)
    new.start_workers(2)
    await new.broker.requeue(newer.id)
    assert await new.get_result(newer.id, timeout=20) == "v2"


# ------------------------------------------------------------------ size


async def test_a_ten_megabyte_payload_runs_and_leaves_the_others_alone(
    make_service: ServiceFactory,
) -> None:
    blob = os.urandom(5 * 1024 * 1024).hex()  # 10 MiB of text
    digest = hashlib.sha256(blob.encode()).hexdigest()

    async def check(task: Task) -> Any:
        if "blob" in task.payload:
            return hashlib.sha256(task.payload["blob"].encode()).hexdigest()
        return task.payload["n"]

    service = await make_service({"check": check})
    small = await service.add_tasks([{"name": "check", "payload": {"n": n}} for n in range(20)])
    big = await service.add_task("check", {"blob": blob})
    small += await service.add_tasks([{"name": "check", "payload": {"n": n}} for n in range(20)])
    service.start_workers(4)
    assert await service.get_result(big.id, timeout=60) == digest
    for task in small:
        assert await service.get_result(task.id, timeout=60) == task.payload["n"]
    stored = await service.get_task(big.id)
    assert stored is not None and stored.attempts == 1


# ------------------------------------------------------------------ task ids

ODD_IDS = [
    "a:b:c",
    "{tag}",
    "}{",
    "{",
    "with space",
    "new\nline\r\n",
    "tab\there",
    "nul\x00byte",
    "é漢字🙂",
    "../../etc/passwd",
    "*?[a-z]\\",
    "'\"`$(rm -rf)`",
    "ready",
    ":inflight",
    "%s%d%n",
    "-1",
    "1e5",
    "x" * 256,
]


async def test_odd_task_ids_run_end_to_end(make_service: ServiceFactory) -> None:
    async def whoami(task: Task) -> str:
        return task.id

    service = await make_service({"whoami": whoami})
    service.start_workers(4)
    for task_id in ODD_IDS:
        task = await service.add_task("whoami", task_id=task_id)
        assert task.id == task_id
    for task_id in ODD_IDS:
        assert await service.get_result(task_id, timeout=20) == task_id
        stored = await service.get_task(task_id)
        assert stored is not None and stored.id == task_id and stored.attempts == 1
    again = await service.add_task("whoami", task_id="{tag}")  # idempotent, even so
    assert again.status is TaskStatus.COMPLETED


@pytest.mark.parametrize(
    ("task_id", "error", "match"),
    [
        ("", TypeError, "task_id"),
        ("x" * 257, ValueError, "task_id"),
        (42, TypeError, "task_id"),
        (b"bytes", TypeError, "task_id"),
        ("lone \ud800", ValueError, "task_id"),
    ],
)
async def test_task_ids_that_cannot_be_stored_are_refused(
    make_service: ServiceFactory, task_id: Any, error: type[Exception], match: str
) -> None:
    service = await make_service({"job": echo})
    with pytest.raises(error, match=match):
        await service.add_task("job", task_id=task_id)
    assert await total(service.broker) == 0
