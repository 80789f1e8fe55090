"""Security properties: nothing is unpickled, prefixes keep apps apart, a password in the
URL never shows, and TLS (`rediss://`) works end to end."""

from __future__ import annotations

import ast
import asyncio
import logging
import pickle
import shutil
import subprocess
import traceback
from pathlib import Path
from typing import Any

import pytest

from task_queue import BrokerConnectionError, DecodeError, Task, TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker
from tests.chaos.harness import REPO, Ledger, RedisServer, WorkerPool, app_env, wait_until
from tests.conftest import REDIS_URL, BrokerFactory, require_real_redis, unique_prefix

pytestmark = pytest.mark.chaos

PACKAGE = REPO / "task_queue"


async def echo(task: Task) -> Any:
    return task.payload


# ------------------------------------------------------------------ no unpickling


class Tripwire:
    """Unpickling this creates `marker`: proof that someone unpickled broker data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_the_package_has_no_way_to_unpickle() -> None:
    banned = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
    banned |= {"jsonpickle", "yaml"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                modules = [node.func.id] if node.func.id in ("eval", "exec") else []
            else:
                continue
            found += [f"{path.name}: {m}" for m in modules if m.split(".")[0] in banned]
            found += [f"{path.name}: {m}()" for m in modules if m in ("eval", "exec")]
    assert found == []


@pytest.mark.parametrize("broker_kind", ["redis-fake", "redis-real"])
async def test_a_pickle_planted_in_redis_is_failed_and_never_unpickled(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = await broker_factory()
    assert isinstance(broker, RedisBroker)
    marker = tmp_path / "unpickled"
    blob = pickle.dumps(Tripwire(marker))
    planted, fine = Task("job", id="planted"), Task("job", payload={"ok": True})
    done = Task("job", id="done")
    await broker.enqueue_many([planted, done])
    key = f"{broker.base_key}:task:"
    await broker.client.hset(key + "planted", "data", blob)
    service = TaskQueueService(broker, {"job": echo})
    service.start_workers(2)
    try:
        assert await service.get_result(done.id, timeout=10) == {}
        await broker.client.hset(key + "done", "result", blob)  # a pickled "result"
        await service.add_tasks([{"name": "job", "payload": {"ok": True}, "task_id": fine.id}])
        assert await service.get_result(fine.id, timeout=10) == {"ok": True}

        async def failed() -> bool:
            return await broker.client.hget(key + "planted", "status") == b"failed"

        await wait_until(failed, 10, "the planted record to be failed")
        assert b"DecodeError" in await broker.client.hget(key + "planted", "error")
        for task_id in ("planted", "done"):
            with pytest.raises(DecodeError):
                await broker.get_task(task_id)
        assert await broker.list_tasks(TaskStatus.COMPLETED) == [await broker.get_task(fine.id)]
    finally:
        await service.shutdown()
    assert not marker.exists()


# ------------------------------------------------------------------ prefixes


async def test_prefixes_keep_two_apps_on_one_redis_apart() -> None:
    await require_real_redis()
    # One prefix starts with the other: a careless pattern match would mix them up.
    first = unique_prefix()
    apps = {"A": first, "B": first + "-2"}
    seen: dict[str, list[tuple[str, str]]] = {"A": [], "B": []}
    services = {}
    for app, prefix in apps.items():

        async def record(task: Task, app: str = app) -> str:
            seen[app].append((task.id, task.payload["app"]))
            return app

        broker = RedisBroker.from_url(REDIS_URL, prefix=prefix)
        services[app] = TaskQueueService(broker, {"job": record})
    ids = [f"shared-{n}" for n in range(20)]
    try:
        for app, service in services.items():  # same queue name, same ids, same names
            await service.add_tasks(
                [{"name": "job", "task_id": i, "payload": {"app": app}} for i in ids]
            )
            service.start_workers(4)
        for app, service in services.items():
            for task_id in ids:
                assert await service.get_result(task_id, timeout=10) == app
            assert sorted(seen[app]) == sorted((i, app) for i in ids)  # its own, once
        a, b = services["A"].broker, services["B"].broker
        assert isinstance(a, RedisBroker) and isinstance(b, RedisBroker)
        async for key in a.client.scan_iter(match=f"*{first}*"):
            assert key.decode().startswith((a.base_key, b.base_key)), key
        await services["A"].shutdown()
        await a.delete_all()
        assert await a.get_task("shared-0") is None
        survivor = await b.get_task("shared-0")
        assert survivor is not None and survivor.result == "B"
        assert (await b.count_tasks())[TaskStatus.COMPLETED] == 20
    finally:
        for service in services.values():
            await service.shutdown()
            if isinstance(service.broker, RedisBroker):
                await service.broker.delete_all()
            await service.broker.close()


# ------------------------------------------------------------------ passwords

PASSWORD = "Sup3r:S3cret@pw/x"
QUOTED = "Sup3r%3AS3cret%40pw%2Fx"
WRONG = "Wr0ng-Passw0rd"


def leaks(text: str) -> list[str]:
    """The secrets (as given or as written in a URL) that `text` shows."""
    return [s for s in (PASSWORD, QUOTED, WRONG, "S3cret", "Passw0rd") if s in text]


def described(exc: BaseException) -> str:
    """Everything a user may see of an exception: message, repr, chained traceback."""
    return f"{exc}\n{exc!r}\n" + "".join(traceback.format_exception(exc))


async def test_a_password_in_the_url_never_shows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    await server.start()
    port = server.port
    urls = [
        f"redis://:{QUOTED}@127.0.0.1:{port}/0",
        f"redis://default:{QUOTED}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={QUOTED}",
    ]
    try:
        for url in urls:
            broker = RedisBroker.from_url(url, prefix=unique_prefix(), retry_seconds=0.5)
            service = TaskQueueService(broker, {"job": echo})
            service.start_workers(2)
            task = await service.add_task("job", {"n": 1})
            assert await service.get_result(task.id, timeout=10) == {"n": 1}
            assert leaks(repr(broker) + repr(service)) == []
            await service.shutdown()
            await server.kill()
            with pytest.raises(BrokerConnectionError) as lost:
                await broker.count_tasks()
            assert leaks(described(lost.value)) == []
            await broker.close()
            await server.start()
        wrong = RedisBroker.from_url(f"redis://:{WRONG}@127.0.0.1:{port}/0", retry_seconds=5)
        with pytest.raises(BrokerConnectionError, match="refused the credentials") as refused:
            await TaskQueueService(wrong, check_names=False).add_task("job")
        assert leaks(described(refused.value)) == []
        await wrong.close()
    finally:
        server.stop()
    assert "unreachable" in caplog.text  # the outages were logged...
    assert leaks(caplog.text) == []  # ...without the password


async def test_a_worker_process_never_logs_the_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    await server.start()
    url = f"redis://:{QUOTED}@127.0.0.1:{server.port}/0"
    prefix = unique_prefix()
    ledger = Ledger(tmp_path / "ledger")
    pool = WorkerPool(
        app_env(url, prefix, 2.0, ledger.directory), tmp_path / "logs", 4, log_level="DEBUG"
    )
    broker = RedisBroker.from_url(url, prefix=prefix, retry_seconds=30)
    producer = TaskQueueService(broker, check_names=False)
    try:
        pool.start()
        await pool.wait_ready()
        await server.kill()  # an outage for the worker to report

        async def reported() -> bool:
            return "unreachable" in pool.output()

        await wait_until(reported, 30, "the worker to report the outage")
        await server.start()
        tasks = await producer.add_tasks([{"name": "work", "payload": {"ms": 5}}] * 20)
        for task in tasks:
            assert (await broker.wait_for(task.id, timeout=30)).status is TaskStatus.COMPLETED
        codes = await pool.stop()
    finally:
        await pool.stop()
        await broker.close()
        ledger.close()
        server.stop()
    logs = pool.output()
    assert codes == [0], logs
    assert "***" in logs and "unreachable" in logs  # it did describe the server and outage
    assert leaks(logs) == []


# ------------------------------------------------------------------ TLS


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (cert, key, ca)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ca = ["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=task-queue test CA"]
    csr = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]
    sign = ["-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
    steps = [
        ["req", "-x509", *ec, *ca, "-days", "2"],
        ["req", *ec, *csr],
        ["x509", "-req", *sign, "-out", "server.crt", "-days", "2", "-extfile", "san.cnf"],
    ]
    for step in steps:
        subprocess.run([openssl, *step], cwd=folder, check=True, capture_output=True)
    return folder / "server.crt", folder / "server.key", folder / "ca.crt"


async def test_tls_connections_work_end_to_end(tmp_path: Path) -> None:
    cert, key, ca = await asyncio.to_thread(make_certificates, tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", password=PASSWORD, tls=(cert, key, ca))
    await server.start()
    tls_url = f"rediss://:{QUOTED}@127.0.0.1:{server.port}/0?ssl_ca_certs={ca}"
    broker = RedisBroker.from_url(tls_url, prefix=unique_prefix())
    service = TaskQueueService(broker, {"job": echo})
    plain = RedisBroker.from_url(f"redis://:{QUOTED}@127.0.0.1:{server.port}/0", retry_seconds=1)
    try:
        assert repr(broker).startswith("RedisBroker(url='rediss://:***@127.0.0.1")
        service.start_workers(4)
        tasks = await service.add_tasks([{"name": "job", "payload": {"n": n}} for n in range(50)])
        for task in tasks:  # leased, acked and waited for (pub/sub), all over TLS
            assert await service.get_result(task.id, timeout=20) == task.payload
        async with asyncio.timeout(30):  # a plain connection to the TLS port is refused
            with pytest.raises(BrokerConnectionError) as refused:
                await plain.count_tasks()
        assert leaks(described(refused.value)) == []
    finally:
        await service.shutdown()
        await broker.close()
        await plain.close()
        server.stop()
