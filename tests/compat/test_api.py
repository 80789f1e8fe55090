"""The HTTP routers over real HTTP semantics (httpx + ASGITransport), on every broker kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from task_queue import Task, TaskQueueService
from task_queue.api import create_task_queue_router, create_task_worker_router
from task_queue.compat import AsyncTaskWorker, task
from tests.compat.conftest import TIMEOUT, WorkerFactory, wait_until
from tests.conftest import BrokerFactory

Client = Callable[..., httpx.AsyncClient]


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def json_when(client: httpx.AsyncClient, url: str, check: Callable[[Any], bool]) -> Any:
    """GET `url` until `check(body)` holds; returns the body."""
    seen: list[Any] = []

    async def ok() -> bool:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        seen.append(response.json())
        return check(seen[-1])

    await wait_until(ok, f"GET {url}")
    return seen[-1]


# ---------------------------------------------------------------- the worker router


@pytest.fixture
async def worker_app(worker_factory: WorkerFactory) -> AsyncIterator[tuple[AsyncTaskWorker, Any]]:
    worker = await worker_factory(max_workers=2)
    await worker.start()
    app = FastAPI()
    app.include_router(create_task_worker_router(worker))
    async with client_for(app) as client:
        yield worker, client


async def test_submit_then_read_the_result(worker_app: tuple[AsyncTaskWorker, Any]) -> None:
    worker, client = worker_app

    @task("process_data")
    async def process_data(data_id: str, options: dict[str, Any], progress_callback: Any = None):
        progress_callback(0.5)
        return {"data_id": data_id, "normalized": options["normalize"]}

    response = await client.post(
        "/tasks",
        json={
            "task_type": "process_data",
            "params": {"data_id": "123", "options": {"normalize": True}},
            "priority": 1,
            "metadata": {"source": "api"},
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] in ("pending", "running")
    assert created["task_type"] == "process_data"
    assert created["metadata"] == {"source": "api"}
    body = await json_when(client, f"/tasks/{created['id']}", lambda b: b["status"] == "completed")
    assert body["result"] == {"data_id": "123", "normalized": True}
    assert body["progress"] == 1.0
    assert body["error"] is None
    assert body["created_at"] <= body["started_at"] <= body["completed_at"]
    assert (await worker.broker.get_task(created["id"])).priority == 1


async def test_progress_and_failure_over_http(worker_app: tuple[AsyncTaskWorker, Any]) -> None:
    _, client = worker_app
    gate = asyncio.Event()

    @task("stepwise")
    async def stepwise(fail: bool, progress_callback: Any = None) -> None:
        progress_callback(0.3)
        await gate.wait()
        if fail:
            raise ValueError("step 2 broke")

    task_id = (
        await client.post("/tasks", json={"task_type": "stepwise", "params": {"fail": True}})
    ).json()["id"]
    body = await json_when(client, f"/tasks/{task_id}", lambda b: b["progress"] == 0.3)
    assert body["status"] == "running"
    gate.set()
    body = await json_when(client, f"/tasks/{task_id}", lambda b: b["status"] == "failed")
    assert body["error"] == "step 2 broke"
    assert body["result"] is None


async def test_unknown_type_unknown_id_and_bad_bodies(
    worker_app: tuple[AsyncTaskWorker, Any],
) -> None:
    worker, client = worker_app

    @task("needs_x")
    async def needs_x(x: int) -> int:
        return x

    response = await client.post("/tasks", json={"task_type": "nope", "params": {}})
    assert response.status_code == 404
    assert "unknown task name 'nope'" in response.json()["detail"]
    assert "'needs_x'" in response.json()["detail"]
    assert (await client.get("/tasks/no-such-id")).status_code == 404
    assert (await client.delete("/tasks/no-such-id")).status_code == 404

    bad_bodies: list[Any] = [
        {"params": {}},  # no task_type
        {"task_type": "needs_x", "params": [1]},
        {"task_type": "needs_x", "params": {"x": 1}, "priority": "high"},
        {"task_type": "needs_x", "params": {"x": 1}, "unexpected": 1},
        {"task_type": "needs_x", "params": {"x": 1}, "timeout": -1},
        "not an object",
    ]
    for body in bad_bodies:
        response = await client.post("/tasks", json=body)
        assert response.status_code == 422, body
    response = await client.post("/tasks", json={"task_type": "needs_x", "params": {"y": 1}})
    assert response.status_code == 422
    assert "arguments do not match task 'needs_x'" in response.json()["detail"]
    response = await client.post(
        "/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert worker.get_all_tasks() == []
    assert sum((await worker.broker.count_tasks()).values()) == 0


async def test_cancel_list_types_and_health(worker_app: tuple[AsyncTaskWorker, Any]) -> None:
    worker, client = worker_app
    started = asyncio.Event()

    @task("wait_forever")
    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @task("quick")
    async def quick(n: int) -> int:
        return n

    running = (await client.post("/tasks", json={"task_type": "wait_forever"})).json()["id"]
    await asyncio.wait_for(started.wait(), TIMEOUT)
    response = await client.delete(f"/tasks/{running}")
    assert response.status_code == 200
    assert response.json()["cancelled"] is True
    await json_when(client, f"/tasks/{running}", lambda b: b["status"] == "cancelled")
    assert (await client.delete(f"/tasks/{running}")).status_code == 409

    done = []
    for n in range(3):
        done.append(
            (await client.post("/tasks", json={"task_type": "quick", "params": {"n": n}})).json()[
                "id"
            ]
        )
    for task_id in done:
        await json_when(client, f"/tasks/{task_id}", lambda b: b["status"] == "completed")
    listed = (await client.get("/tasks", params={"status": "completed", "limit": 2})).json()
    assert [b["id"] for b in listed] == [done[2], done[1]]
    everything = (await client.get("/tasks")).json()
    assert [b["id"] for b in everything] == [*done[::-1], running]
    assert (await client.get("/tasks", params={"status": "bogus"})).status_code == 422
    assert (await client.get("/tasks", params={"limit": 0})).status_code == 422

    types = (await client.get("/tasks/types")).json()["task_types"]
    assert {"wait_forever", "quick"} <= set(types)

    health = (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["running"] is True
    assert (health["workers"], health["active"]) == (2, 0)
    assert health["tasks"]["completed"] == 3
    assert health["tasks"]["cancelled"] == 1
    assert set(health["tasks"]) == {"pending", "running", "completed", "failed", "cancelled"}
    await worker.stop()
    health = (await client.get("/health")).json()
    assert (health["running"], health["workers"]) == (False, 0)


async def test_delete_reports_cancelled_everywhere_at_once(
    worker_app: tuple[AsyncTaskWorker, Any],
) -> None:
    _, client = worker_app
    started = asyncio.Event()
    may_stop = asyncio.Event()

    @task("slow_to_stop")
    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await may_stop.wait()  # cleaning up: the broker still says processing
            raise

    task_id = (await client.post("/tasks", json={"task_type": "slow_to_stop"})).json()["id"]
    await asyncio.wait_for(started.wait(), TIMEOUT)
    response = await client.delete(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == {"id": task_id, "cancelled": True, "status": "cancelled"}
    assert (await client.get(f"/tasks/{task_id}")).json()["status"] == "cancelled"
    listed = (await client.get("/tasks")).json()
    assert [(b["id"], b["status"]) for b in listed] == [(task_id, "cancelled")]
    again = await client.delete(f"/tasks/{task_id}")
    assert again.status_code == 409
    assert again.json()["detail"] == f"task {task_id!r} is already cancelled"
    may_stop.set()
    await json_when(client, f"/tasks/{task_id}", lambda b: b["status"] == "cancelled")
    again = await client.delete(f"/tasks/{task_id}")
    assert again.json()["detail"] == f"task {task_id!r} is already cancelled"


async def test_prefix_and_tags(worker_factory: WorkerFactory) -> None:
    worker = await worker_factory(max_workers=1)
    app = FastAPI()
    app.include_router(
        create_task_worker_router(worker, prefix="/api/v1", tags=["background-tasks"])
    )
    async with client_for(app) as client:
        assert (await client.get("/api/v1/health")).status_code == 200
        assert (await client.get("/health")).status_code == 404
        schema = (await client.get("/openapi.json")).json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}", "/api/v1/tasks/types"} <= set(
        schema["paths"]
    )
    assert all(op["tags"] == ["background-tasks"] for op in operations)


# ---------------------------------------------------------------- the service router


@pytest.fixture
async def service_app(
    broker_factory: BrokerFactory,
) -> AsyncIterator[tuple[TaskQueueService, Any, asyncio.Event]]:
    gate = asyncio.Event()

    async def send_email(task: Task) -> dict[str, Any]:
        if task.payload.get("wait"):
            await gate.wait()
        return {"sent_to": task.payload["to"]}

    service = TaskQueueService(await broker_factory(), {"send_email": send_email})
    service.start_workers(2)
    app = FastAPI()
    app.include_router(create_task_queue_router(service, prefix="/queue"))
    async with client_for(app) as client:
        yield service, client, gate
    await service.shutdown(grace=0)


async def test_service_router_add_read_list_cancel(
    service_app: tuple[TaskQueueService, Any, asyncio.Event],
) -> None:
    _, client, gate = service_app
    response = await client.post(
        "/queue/tasks",
        json={"name": "send_email", "payload": {"to": "a@b.c"}, "priority": 2},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] in ("pending", "processing")
    assert created["priority"] == 2
    done = await json_when(
        client, f"/queue/tasks/{created['id']}", lambda b: b["status"] == "completed"
    )
    assert done["result"] == {"sent_to": "a@b.c"}
    assert done["attempts"] == 1

    delayed = (
        await client.post(
            "/queue/tasks",
            json={"name": "send_email", "payload": {"to": "x"}, "delay_seconds": 60},
        )
    ).json()
    assert delayed["status"] == "pending"
    assert delayed["scheduled_at"] > delayed["created_at"]
    pending = (await client.get("/queue/tasks", params={"status": "pending"})).json()
    assert [t["id"] for t in pending] == [delayed["id"]]
    response = await client.delete(f"/queue/tasks/{delayed['id']}")
    assert response.json() == {"id": delayed["id"], "cancelled": True, "status": "cancelled"}
    assert (await client.delete(f"/queue/tasks/{delayed['id']}")).status_code == 409

    waiting = (
        await client.post(
            "/queue/tasks", json={"name": "send_email", "payload": {"to": "y", "wait": True}}
        )
    ).json()
    await json_when(client, f"/queue/tasks/{waiting['id']}", lambda b: b["status"] == "processing")
    assert (await client.get("/queue/health")).json()["active"] == 1
    gate.set()
    await json_when(client, f"/queue/tasks/{waiting['id']}", lambda b: b["status"] == "completed")

    assert (await client.get("/queue/tasks/types")).json() == {"task_types": ["send_email"]}
    health = (await client.get("/queue/health")).json()
    assert health["running"] is True
    # The slots started (2), not the service's configured concurrency (10).
    assert (health["workers"], health["active"]) == (2, 0)
    assert health["tasks"]["completed"] == 2
    assert health["tasks"]["cancelled"] == 1


async def test_service_router_cancels_a_running_task_once(
    broker_factory: BrokerFactory,
) -> None:
    started = asyncio.Event()
    may_stop = asyncio.Event()

    async def slow_to_stop(task: Task) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await may_stop.wait()
            raise

    service = TaskQueueService(await broker_factory(), {"slow_to_stop": slow_to_stop})
    service.start_workers(1)
    app = FastAPI()
    app.include_router(create_task_queue_router(service))
    try:
        async with client_for(app) as client:
            task_id = (await client.post("/tasks", json={"name": "slow_to_stop"})).json()["id"]
            await asyncio.wait_for(started.wait(), TIMEOUT)
            response = await client.delete(f"/tasks/{task_id}")
            assert response.json() == {"id": task_id, "cancelled": True, "status": "cancelled"}
            body = (await client.get(f"/tasks/{task_id}")).json()
            assert (body["status"], body["cancel_requested"]) == ("processing", True)
            again = await client.delete(f"/tasks/{task_id}")
            assert again.status_code == 409
            assert again.json()["detail"] == f"task {task_id!r} is already cancelled"
            may_stop.set()
            body = await json_when(
                client, f"/tasks/{task_id}", lambda b: b["status"] != "processing"
            )
            assert (body["status"], body["cancel_requested"]) == ("cancelled", False)
            again = await client.delete(f"/tasks/{task_id}")
            assert again.json()["detail"] == f"task {task_id!r} is already cancelled"
    finally:
        may_stop.set()
        await service.shutdown(grace=0)


async def test_service_router_errors(
    service_app: tuple[TaskQueueService, Any, asyncio.Event],
) -> None:
    service, client, _ = service_app
    response = await client.post("/queue/tasks", json={"name": "nope", "payload": {}})
    assert response.status_code == 404
    assert "'send_email'" in response.json()["detail"]
    for body in (
        {"payload": {}},
        {"name": "send_email", "payload": {}, "delay_seconds": -1},
        {"name": "send_email", "payload": "text"},
        {"name": "send_email", "priority": 1.5},
        {"name": "send_email", "max_retries": -1},
    ):
        assert (await client.post("/queue/tasks", json=body)).status_code == 422, body
    assert (await client.get("/queue/tasks/unknown")).status_code == 404
    assert (await client.delete("/queue/tasks/unknown")).status_code == 404
    assert (await client.get("/queue/tasks", params={"status": "running"})).status_code == 422
    assert sum((await service.broker.count_tasks()).values()) == 0


async def test_health_reports_an_unreachable_broker() -> None:
    from task_queue.broker.redis import RedisBroker

    broker = RedisBroker.from_url("redis://127.0.0.1:1/0", retry_seconds=0)
    worker = AsyncTaskWorker(max_workers=1, broker=broker)
    service = TaskQueueService(broker)
    app = FastAPI()
    app.include_router(create_task_worker_router(worker, prefix="/w"))
    app.include_router(create_task_queue_router(service, prefix="/s"))
    async with client_for(app) as client:
        for url in ("/w/health", "/s/health"):
            response = await client.get(url)
            assert response.status_code == 503
            assert "broker unavailable" in response.json()["detail"]
    await broker.close()
