"""Workflows on every broker kind: dependencies, hooks, task context and logs, handles."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from task_queue import (
    Middleware,
    Task,
    TaskCancelledError,
    TaskFailedError,
    TaskHandle,
    TaskNotFoundError,
    TaskQueueService,
    TaskStatus,
    get_context,
    get_logger,
    set_context,
)
from task_queue.broker.redis import RedisBroker
from tests.conftest import REDIS_URL, forget, require_real_redis, unique_prefix


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until `check()` is true; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - the state lives in the broker
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ dependencies


async def test_children_run_after_their_parents(make_service: Any) -> None:
    ran: list[str] = []

    async def step(task: Task) -> str:
        ran.append(task.payload["name"])
        return str(task.payload["name"])

    service = await make_service({"step": step})
    fetch = await service.add_task("step", {"name": "fetch"})
    parse = await service.add_task("step", {"name": "parse"}, depends_on=[fetch])
    other = await service.add_task("step", {"name": "other"})
    report = await service.submit("step", {"name": "report"}, depends_on=[parse, other.id])
    service.start_workers(4)
    assert await report.wait(timeout=10) == "report"
    assert ran.index("fetch") < ran.index("parse") < ran.index("report")
    assert ran.index("other") < ran.index("report")
    done = await service.get_task(parse.id)
    first = await service.get_task(fetch.id)
    assert done is not None and first is not None
    assert done.depends_on == [fetch.id] and first.status is TaskStatus.COMPLETED


async def test_a_failed_parent_cancels_the_tree_below_it(make_service: Any) -> None:
    async def boom(task: Task) -> None:
        raise RuntimeError("disk full")

    async def fine(task: Task) -> None:
        return None

    service = await make_service({"boom": boom, "fine": fine})
    parent = await service.add_task("boom", max_retries=0)
    child = await service.submit("fine", depends_on=parent)
    grandchild = await service.submit("fine", depends_on=[child])
    service.start_workers(2)
    with pytest.raises(TaskCancelledError):
        await grandchild.wait(timeout=10)
    with pytest.raises(TaskFailedError, match="disk full"):
        await service.get_result(parent.id, timeout=5)
    cancelled = await child.refresh()
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error is not None
    assert cancelled.error.message == f"parent task {parent.id} failed"
    last = await grandchild.refresh()
    assert last.error is not None and child.id in last.error.message


async def test_bad_dependencies_are_refused_before_anything_is_stored(make_service: Any) -> None:
    service = await make_service({"job": lambda task: None})
    with pytest.raises(TaskNotFoundError, match="'ghost'"):
        await service.add_task("job", depends_on=["ghost"])
    with pytest.raises(ValueError, match="cannot depend on itself"):
        await service.add_task("job", task_id="me", depends_on=["me"])
    with pytest.raises(TypeError, match="depends_on takes"):
        await service.add_task("job", depends_on=[42])
    with pytest.raises(TaskNotFoundError):
        await service.add_tasks(
            [{"name": "job", "task_id": "a"}, {"name": "job", "depends_on": ["ghost"]}]
        )
    assert sum((await service.broker.count_tasks()).values()) == 0


async def test_add_tasks_may_chain_items_of_the_same_call(make_service: Any) -> None:
    order: list[int] = []

    async def step(task: Task) -> None:
        order.append(task.payload["n"])

    service = await make_service({"step": step})
    specs: list[dict[str, Any]] = [{"name": "step", "payload": {"n": 0}, "task_id": "s0"}]
    for n in range(1, 5):
        specs.append(
            {"name": "step", "payload": {"n": n}, "task_id": f"s{n}", "depends_on": [f"s{n - 1}"]}
        )
    await service.add_tasks(specs)
    service.start_workers(4)
    await service.wait_for("s4", timeout=10)
    assert order == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ hooks


async def test_hooks_run_in_order_around_each_task(make_service: Any) -> None:
    seen: list[tuple[str, Any]] = []

    async def job(task: Task) -> dict[str, Any]:
        seen.append(("run", get_context("workspace")))
        return {"ok": True}

    service = await make_service({"job": job})

    @service.on_pre_create
    async def capture(task: Task) -> None:
        task.context["workspace"] = 42
        seen.append(("pre_create", task.status))

    @service.on_post_create
    def created(task: Task) -> None:  # a plain function works as well
        seen.append(("post_create", task.id))

    @service.on_pre_run
    async def restore(task: Task) -> None:
        seen.append(("pre_run", get_context("workspace")))

    @service.on_post_run
    async def cleanup(task: Task, result: Any = None, error: BaseException | None = None) -> None:
        seen.append(("post_run", (result, error)))

    task = await service.add_task("job")
    service.start_workers(1)
    assert await service.get_result(task.id, timeout=5) == {"ok": True}
    assert seen == [
        ("pre_create", TaskStatus.PENDING),
        ("post_create", task.id),
        ("pre_run", 42),
        ("run", 42),
        ("post_run", ({"ok": True}, None)),
    ]
    stored = await service.get_task(task.id)
    assert stored is not None and stored.context == {"workspace": 42}


async def test_a_pre_create_hook_that_raises_rejects_the_task(make_service: Any) -> None:
    service = await make_service({"job": lambda task: None})

    @service.on_pre_create
    def deny(task: Task) -> None:
        if task.payload.get("user") == "mallory":
            raise PermissionError("mallory may not enqueue")

    with pytest.raises(PermissionError, match="mallory"):
        await service.add_task("job", {"user": "mallory"})
    with pytest.raises(PermissionError):
        await service.add_tasks([{"name": "job"}, {"name": "job", "payload": {"user": "mallory"}}])
    assert sum((await service.broker.count_tasks()).values()) == 0
    assert (await service.add_task("job", {"user": "alice"})).status is TaskStatus.PENDING


async def test_post_run_errors_are_logged_and_change_nothing(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException | None] = []

    async def flaky(task: Task) -> str:
        if task.attempts == 1:
            raise ValueError("first try fails")
        return "second try"

    service = await make_service({"flaky": flaky})

    @service.on_post_run
    async def broken(task: Task, result: Any = None, error: BaseException | None = None) -> None:
        errors.append(error)
        raise RuntimeError("hook bug")

    task = await service.add_task("flaky")
    service.start_workers(1)
    with caplog.at_level(logging.ERROR, logger="task_queue.hooks"):
        assert await service.get_result(task.id, timeout=5) == "second try"
    assert [type(e) for e in errors] == [ValueError, type(None)]
    records = [r for r in caplog.records if "post_run hook" in r.getMessage()]
    assert len(records) == 2 and all(r.task_id == task.id for r in records)  # type: ignore[attr-defined]


async def test_a_pre_run_error_fails_the_attempt(make_service: Any) -> None:
    ran: list[str] = []

    async def job(task: Task) -> None:
        ran.append(task.id)

    class Gate(Middleware):
        async def pre_run(self, task: Task) -> None:
            raise LookupError("workspace 7 is gone")

    service = await make_service({"job": job}, middleware=[Gate()])
    task = await service.add_task("job", max_retries=0)
    service.start_workers(1)
    with pytest.raises(TaskFailedError, match="workspace 7 is gone"):
        await service.get_result(task.id, timeout=5)
    assert ran == []


async def test_middleware_overrides_only_what_it_needs(make_service: Any) -> None:
    calls: list[str] = []

    class Audit(Middleware):
        async def post_create(self, task: Task) -> None:
            calls.append(f"created {task.name}")

        async def post_run(
            self, task: Task, result: Any = None, error: BaseException | None = None
        ) -> None:
            calls.append(f"ran {task.name} -> {result}")

    service = await make_service({"job": lambda task: 7})
    service.add_middleware(Audit())
    assert service.hooks.pre_run == [] and len(service.hooks.post_run) == 1
    task = await service.add_task("job")
    service.start_workers(1)
    await service.wait_for(task.id, timeout=5)
    assert calls == ["created job", "ran job -> 7"]
    with pytest.raises(TypeError, match="Middleware"):
        service.add_middleware(object())  # type: ignore[arg-type]


# ------------------------------------------------------------------ context and logs


async def test_context_is_stored_with_the_task_in_batches(make_service: Any) -> None:
    release = asyncio.Event()

    async def process(task: Task) -> int:
        set_context("dataset.id", task.payload["dataset"])
        set_context("step", "validation")
        for n in range(50):
            set_context("validation.checked", n + 1)
        await release.wait()
        set_context("step", "done")
        return int(get_context("validation.checked", 0))

    service = await make_service({"process": process}, note_interval=0.05)
    calls = 0
    annotate = service.broker.annotate

    async def counting(*args: Any, **kw: Any) -> dict[str, bool]:
        nonlocal calls
        calls += 1
        return await annotate(*args, **kw)

    service.broker.annotate = counting  # type: ignore[method-assign]
    task = await service.add_task("process", {"dataset": 9})
    service.start_workers(1)

    async def visible() -> bool:
        seen = await service.get_task(task.id)
        return seen is not None and seen.context.get("step") == "validation"

    await eventually(visible)
    assert calls == 1  # 52 writes, one broker call
    release.set()
    assert await service.get_result(task.id, timeout=5) == 50
    stored = await service.get_task(task.id)
    assert stored is not None
    assert stored.context == {"dataset": {"id": 9}, "step": "done", "validation": {"checked": 50}}
    assert calls == 2


async def test_context_misuse_is_a_clear_error(make_service: Any) -> None:
    with pytest.raises(RuntimeError, match="only available inside a task executor"):
        set_context("a", 1)
    errors: dict[str, str] = {}

    async def job(task: Task) -> None:
        set_context("a", "text")
        for key, value in (("a.b", 1), ("when", object()), ("x..y", 1)):
            try:
                set_context(key, value)
            except (TypeError, ValueError) as exc:
                errors[key] = str(exc)

    service = await make_service({"job": job})
    task = await service.add_task("job")
    service.start_workers(1)
    await service.get_result(task.id, timeout=5)
    assert "'a' holds a str" in errors["a.b"]
    assert "context['when']" in errors["when"]
    assert "empty part" in errors["x..y"]


async def test_records_of_the_task_logger_are_kept_with_the_task(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log = get_logger("tests.workflows.data")

    async def job(task: Task) -> None:
        log.info("starting dataset %s", task.payload["dataset"])
        for n in range(5):
            log.warning("row %d looks odd", n)
        try:
            raise KeyError("column")
        except KeyError:
            log.exception("lookup failed")

    def blocking(task: Task) -> None:  # runs in a thread
        log.info("from a thread")

    service = await make_service({"job": job, "blocking": blocking}, max_task_logs=4)
    with caplog.at_level(logging.INFO, logger="tests.workflows"):
        task = await service.add_task("job", {"dataset": 3})
        threaded = await service.add_task("blocking")
        service.start_workers(2)
        await service.get_result(task.id, timeout=5)
        await service.get_result(threaded.id, timeout=5)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert [r["message"].splitlines()[0] for r in stored.logs] == [
        "row 2 looks odd",
        "row 3 looks odd",
        "row 4 looks odd",
        "lookup failed",
    ]
    last = stored.logs[-1]
    assert last["level"] == "ERROR" and "KeyError: 'column'" in last["message"]
    assert stored.logs[0]["logger"] == "tests.workflows.data" and stored.logs[0]["time"]
    other = await service.get_task(threaded.id)
    assert other is not None and [r["message"] for r in other.logs] == ["from a thread"]
    mine = [r for r in caplog.records if r.name == "tests.workflows.data"]
    assert len(mine) == 8  # normal logging sees every record, with the task named
    assert {r.task_id for r in mine} == {task.id, threaded.id}  # type: ignore[attr-defined]


async def test_task_logs_do_not_depend_on_the_console_level(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log = get_logger("tests.workflows.quiet")
    debug_too = get_logger("tests.workflows.quiet", level=logging.DEBUG)

    async def job(task: Task) -> None:
        log.debug("not kept: below INFO")
        log.info("kept although the logger is at WARNING")
        debug_too.debug("kept: this logger keeps DEBUG")

    service = await make_service({"job": job})
    with caplog.at_level(logging.WARNING, logger="tests.workflows.quiet"):
        task = await service.add_task("job")
        service.start_workers(1)
        await service.get_result(task.id, timeout=5)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert [(r["level"], r["message"]) for r in stored.logs] == [
        ("INFO", "kept although the logger is at WARNING"),
        ("DEBUG", "kept: this logger keeps DEBUG"),
    ]
    assert not [r for r in caplog.records if r.name == "tests.workflows.quiet"]
    log.warning("outside a task: logged as usual, kept nowhere")
    assert caplog.records[-1].getMessage() == "outside a task: logged as usual, kept nowhere"


async def test_context_written_on_redis_is_read_by_another_client() -> None:
    await require_real_redis()
    prefix = unique_prefix()
    worker_side = RedisBroker.from_url(REDIS_URL, prefix=prefix)
    reader = RedisBroker.from_url(REDIS_URL, prefix=prefix)

    async def job(task: Task) -> None:
        set_context("stage.name", "loaded")
        get_logger("tests.workflows.redis").warning("visible elsewhere")

    service = TaskQueueService(worker_side, {"job": job})
    try:
        task = await service.add_task("job")
        service.start_workers(1)
        done = await reader.wait_for(task.id, timeout=5)
        assert done.context == {"stage": {"name": "loaded"}}
        assert [r["message"] for r in done.logs] == ["visible elsewhere"]
    finally:
        await service.shutdown(grace=0)
        await forget(worker_side)
        await worker_side.close()
        await reader.close()


# ------------------------------------------------------------------ handles


async def test_handles_wait_report_status_and_cancel(make_service: Any) -> None:
    service = await make_service({"double": lambda task: task.payload["n"] * 2})
    handle = await service.submit("double", {"n": 21})
    assert isinstance(handle, TaskHandle) and await handle.get_task_id() == handle.id
    assert await handle.status() is TaskStatus.PENDING
    later = await service.submit("double", {"n": 1}, delay_seconds=60)
    service.start_workers(1)
    assert await handle.wait(timeout=5) == 42
    assert await handle.get_state() is TaskStatus.COMPLETED
    assert await later.cancel("not needed")
    with pytest.raises(TaskCancelledError):
        await later.wait(timeout=5)
    assert await later.cancel() is False
    again = service.handle(handle.id)
    assert (await again.refresh()).result == 42
    with pytest.raises(TaskNotFoundError):
        await service.handle("ghost").status()


# ------------------------------------------------------------------ robustness


async def test_a_non_json_context_written_directly_does_not_kill_the_worker(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def careless(task: Task) -> str:
        task.context["when"] = object()  # bypasses set_context's check
        set_context("step", "after")
        return "done anyway"

    service = await make_service({"careless": careless, "fine": lambda task: "fine"})
    first = await service.add_task("careless")
    service.start_workers(1)
    with caplog.at_level(logging.ERROR, logger="task_queue.service"):
        assert await service.get_result(first.id, timeout=5) == "done anyway"
    assert any("context not stored" in r.getMessage() for r in caplog.records)
    second = await service.add_task("fine")
    assert await service.get_result(second.id, timeout=5) == "fine"  # the slot lives on


async def test_a_cancel_after_the_executor_returned_keeps_its_result(make_service: Any) -> None:
    async def job(task: Task) -> str:
        return "finished first"

    service = await make_service({"job": job})

    @service.on_post_run
    async def cancel_late(task: Task, result: Any = None, error: Any = None) -> None:
        assert await service.cancel(task.id, "too late")

    task = await service.add_task("job")
    service.start_workers(1)
    done = await service.wait_for(task.id, timeout=5)
    assert done.status is TaskStatus.COMPLETED and done.result == "finished first"


async def test_notes_made_during_a_slow_store_follow_it(make_service: Any) -> None:
    gate, calling, proceed, returned = (asyncio.Event() for _ in range(4))
    log = get_logger("tests.workflows.slow")

    async def job(task: Task) -> None:
        set_context("step", 1)
        log.info("A")
        await calling.wait()  # the first store is in flight (and held)
        set_context("step", 2)
        log.info("B")
        gate.set()
        await proceed.wait()
        returned.set()

    service = await make_service({"job": job}, note_interval=0.01)
    annotate = service.broker.annotate
    first = True

    async def slow_once(*args: Any, **kw: Any) -> dict[str, bool]:
        nonlocal first
        if first:
            first = False
            calling.set()
            await gate.wait()
        return await annotate(*args, **kw)

    service.broker.annotate = slow_once  # type: ignore[method-assign]
    task = await service.add_task("job")
    service.start_workers(1)

    async def second_step_stored() -> bool:
        seen = await service.get_task(task.id)
        return seen is not None and seen.context.get("step") == 2

    await eventually(second_step_stored)  # while the task still runs
    proceed.set()
    done = await service.wait_for(task.id, timeout=5)
    assert [r["message"] for r in done.logs] == ["A", "B"]


async def test_task_logger_formats_like_logging_and_names_the_caller(
    make_service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log = get_logger("tests.workflows.format")

    async def job(task: Task) -> None:
        log.warning("%(n)s items", {"n": 3})
        log.info("%d broken", "x")  # logging would print a formatting error, not raise

    service = await make_service({"job": job})
    with caplog.at_level(logging.WARNING, logger="tests.workflows.format"):
        task = await service.add_task("job")
        service.start_workers(1)
        await service.get_result(task.id, timeout=5)
    stored = await service.get_task(task.id)
    assert stored is not None
    assert [r["message"] for r in stored.logs] == ["3 items", "%d broken ('x',)"]
    [record] = [r for r in caplog.records if r.name == "tests.workflows.format"]
    assert record.filename == "test_workflows.py" and record.funcName == "job"


async def test_handles_from_ids_and_handles(make_service: Any) -> None:
    service = await make_service({"job": lambda task: 1})
    task = await service.add_task("job")
    by_id = service.handle(task.id)
    assert by_id.task is None and by_id.id == task.id and "?" in repr(by_id)
    assert service.handle(by_id).id == task.id
    assert (await by_id.refresh()).name == "job" and by_id.task is not None
    with pytest.raises(TypeError, match="expected a Task"):
        service.handle(42)  # type: ignore[arg-type]
