"""The Katana seed document's code examples, run against task_queue.

The seed (`/work/shared/seeds/003_7de448a95295fb33.txt`) documents the Katana task queue
with four code examples: two executors, `application_startup()`, an API endpoint that
enqueues a delayed e-mail, and `application_shutdown()`. Each is embedded below exactly as
written there; the only change is to import lines (`katana.task_queue.X` becomes
`task_queue.X`, and the executors' module gets the `import asyncio` it was missing). The
examples run in one namespace, like the `main.py` the seed describes.

The example executors sleep for 1-2 seconds. To keep the tests fast, the `asyncio` name
inside the examples' namespace only is a proxy whose `sleep` records the requested delay
and sleeps a hundredth of it; everything else, and the library itself, uses the real
asyncio.
"""

from __future__ import annotations

import asyncio
import collections.abc
import logging
import re
import typing
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

SEED = Path("/work/shared/seeds/003_7de448a95295fb33.txt")
EXAMPLE_MODULE = "katana_seed_example"
TIMEOUT = 5.0

# ---------------------------------------------------------------- the seed's examples

EXECUTORS_EXAMPLE = """\
# In your application code (e.g., main.py or a dedicated tasks module)
import logging
from katana.task_queue.models import Task # Or from ..models if relative

logger = logging.getLogger(__name__)

async def my_email_task_executor(task: Task):
    logger.info(f"Sending email for task {task.id} with payload: {task.payload}")
    # Simulate sending email
    await asyncio.sleep(2)
    if "error" in task.payload:
        raise ValueError("Simulated email sending error")
    logger.info(f"Email sent for task {task.id}")

async def data_processing_executor(task: Task):
    logger.info(f"Processing data for task {task.id}: {task.payload.get('data_id')}")
    await asyncio.sleep(1)
    logger.info(f"Data processing complete for task {task.id}")

"""

STARTUP_EXAMPLE = """\
# In main.py or similar
import asyncio
from katana.task_queue.broker import InMemoryBroker
from katana.task_queue.service import TaskQueueService
# Import your defined executors
# from .my_tasks import my_email_task_executor, data_processing_executor

# Global or application-scoped variables
task_queue_service: TaskQueueService = None
task_queue_worker_tasks: list = []

async def application_startup():
    global task_queue_service, task_queue_worker_tasks

    # 1. Define your task executors mapping
    # (Ensure executors are imported or defined in scope)
    registered_executors = {
        "send_email": my_email_task_executor, # Defined above
        "process_data": data_processing_executor, # Defined above
    }

    # 2. Initialize Broker
    broker = InMemoryBroker()

    # 3. Initialize Service
    task_queue_service = TaskQueueService(broker=broker, task_executors=registered_executors)

    # 4. Start Workers
    num_workers = 2 # Adjust as needed
    task_queue_worker_tasks = task_queue_service.start_workers(num_workers=num_workers)
    logger.info(f"Task queue service started with {num_workers} workers.")

    # ... other startup logic ...
"""

ENDPOINT_EXAMPLE = """\
# Example: In a FastAPI endpoint or other service logic
async def some_api_endpoint_handler():
    # ...
    user_email = "user@example.com"
    email_content = "Your report is ready."

    if task_queue_service:
        try:
            await task_queue_service.add_task(
                name="send_email", # Must match a key in registered_executors
                payload={"to": user_email, "subject": "Report", "body": email_content},
                priority=1, # Lower is higher
                delay_seconds=5 # Optional: delay execution by 5 seconds
            )
            logger.info("Email task enqueued.")
        except ValueError as e: # e.g., if task name is not registered
            logger.error(f"Failed to enqueue task: {e}")
        except Exception as e:
            logger.error(f"An unexpected error occurred while enqueuing task: {e}")
    # ...
    return {"message": "Request accepted, processing in background."}
"""

SHUTDOWN_EXAMPLE = """\
# In your application's shutdown sequence (e.g., FastAPI `shutdown` event)
async def application_shutdown():
    global task_queue_service, task_queue_worker_tasks

    if task_queue_service and task_queue_worker_tasks:
        logger.info("Shutting down task queue workers...")
        await task_queue_service.shutdown() # Signal workers
        try:
            await asyncio.gather(*task_queue_worker_tasks, return_exceptions=True)
            logger.info("All task queue workers have shut down.")
        except Exception as e:
            logger.error(f"Error during task queue worker shutdown: {e}")
    # ... other shutdown logic ...
"""

EXAMPLES = [EXECUTORS_EXAMPLE, STARTUP_EXAMPLE, ENDPOINT_EXAMPLE, SHUTDOWN_EXAMPLE]

# Executors use asyncio without importing it; adding the import is an import-line change.
ADDED_IMPORTS = {0: "import asyncio\n"}


def port(source: str) -> str:
    """The example as it runs against task_queue: only import lines are changed."""
    return re.sub(
        r"^(\s*(?:from|import)\s+)katana\.task_queue\.", r"\1task_queue.", source, flags=re.M
    )


def ported_examples() -> list[str]:
    return [ADDED_IMPORTS.get(i, "") + port(source) for i, source in enumerate(EXAMPLES)]


class FastSleepAsyncio:
    """`asyncio` for the examples' namespace: `sleep` is 100 times shorter and recorded."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.sleeping = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.sleeps.append(delay)
        self.sleeping.set()
        return await asyncio.sleep(delay / 100, result)


class Example:
    """The examples' shared namespace (their `main.py`), with typed accessors."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": EXAMPLE_MODULE}
        for index, source in enumerate(ported_examples()):
            exec(compile(source, f"<katana seed example {index + 1}>", "exec"), self.ns)
        self.asyncio = FastSleepAsyncio()
        self.ns["asyncio"] = self.asyncio

    def __getattr__(self, name: str) -> Any:
        try:
            return self.ns[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def service(self) -> Any:
        return self.ns["task_queue_service"]

    @property
    def workers(self) -> list[asyncio.Task[None]]:
        return list(self.ns["task_queue_worker_tasks"])


@pytest.fixture
async def example() -> AsyncIterator[Example]:
    ex = Example()
    yield ex
    service = ex.ns["task_queue_service"]
    if service is not None:
        # Leave nothing running if a test failed half-way.
        await service.shutdown(grace=0)
        await asyncio.gather(*ex.workers, return_exceptions=True)
        await service.broker.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=EXAMPLE_MODULE)
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == EXAMPLE_MODULE and r.levelno == level
    ]


# ---------------------------------------------------------------- the examples themselves


def test_examples_change_only_import_lines() -> None:
    for original, ported in zip(EXAMPLES, ported_examples(), strict=True):
        before = original.splitlines()
        after = ported.splitlines()
        changed_before = [line for line in before if line not in after]
        changed_after = [line for line in after if line not in before]
        for line in changed_before + changed_after:
            assert re.match(r"\s*(from|import)\s", line), line
        assert "katana" not in "".join(changed_after)
    assert "from task_queue.models import Task" in ported_examples()[0]


@pytest.mark.skipif(not SEED.exists(), reason="the seed document is not available here")
def test_embedded_examples_are_the_seeds_examples() -> None:
    blocks = re.findall(r"```python\n(.*?)```", SEED.read_text(), flags=re.S)
    assert blocks == EXAMPLES


def test_documented_imports() -> None:
    from task_queue.broker import AbstractBroker, InMemoryBroker
    from task_queue.models import Task, TaskStatus
    from task_queue.service import TaskExecutor, TaskQueueService

    for state in ("PENDING", "PROCESSING", "COMPLETED", "FAILED"):
        assert isinstance(getattr(TaskStatus, state), TaskStatus)
    for method in (
        "enqueue",
        "dequeue",
        "get_task",
        "update_task_status",
        "mark_complete",
        "mark_failed",
    ):
        assert callable(getattr(AbstractBroker, method)), method
    assert issubclass(InMemoryBroker, AbstractBroker)
    task = Task(name="send_email", payload={"to": "a@b.c"}, priority=1)
    for field in ("id", "name", "priority", "payload", "scheduled_at", "created_at", "status"):
        assert hasattr(task, field), field
    assert task.status is TaskStatus.PENDING
    assert typing.get_origin(TaskExecutor) is collections.abc.Callable
    assert typing.get_args(TaskExecutor)[0] == [Task]
    assert typing.get_origin(typing.get_args(TaskExecutor)[1]) is collections.abc.Coroutine
    for name in ("add_task", "worker", "start_workers", "shutdown"):
        assert callable(getattr(TaskQueueService, name)), name


async def test_documented_broker_methods_priority_and_delay() -> None:
    """The seed's broker claims: lowest priority first, delayed tasks held back."""
    from task_queue.broker import InMemoryBroker
    from task_queue.models import Task, TaskStatus

    broker = InMemoryBroker()
    low = await broker.enqueue(Task(name="send_email", priority=5))
    high = await broker.enqueue(Task(name="send_email", priority=1))
    later = Task(name="send_email", priority=0)
    later.scheduled_at += timedelta(seconds=60)
    await broker.enqueue(later)

    first = await broker.dequeue()
    second = await broker.dequeue()
    assert first is not None
    assert second is not None
    assert [first.id, second.id] == [high.id, low.id]
    assert await broker.dequeue() is None  # the delayed task is not due
    assert first.status is TaskStatus.PROCESSING

    assert await broker.mark_complete(first.id, token=first.token)
    assert await broker.mark_failed(second.id, "boom", token=second.token)
    assert await broker.update_task_status(later.id, TaskStatus.FAILED)
    stored = [await broker.get_task(t.id) for t in (high, low, later)]
    assert [t.status if t else None for t in stored] == [
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.FAILED,
    ]
    await broker.close()


async def test_startup_starts_two_workers(
    example: Example, logs: pytest.LogCaptureFixture
) -> None:
    from task_queue.broker import InMemoryBroker
    from task_queue.service import TaskQueueService

    assert example.service is None
    await example.application_startup()

    service = example.service
    assert isinstance(service, TaskQueueService)
    assert isinstance(service.broker, InMemoryBroker)
    assert service.task_executors == {
        "send_email": example.my_email_task_executor,
        "process_data": example.data_processing_executor,
    }
    assert len(example.workers) == 2
    assert all(isinstance(t, asyncio.Task) and not t.done() for t in example.workers)
    assert "Task queue service started with 2 workers." in messages(logs)


async def test_endpoint_enqueues_a_delayed_priority_email(
    example: Example, logs: pytest.LogCaptureFixture
) -> None:
    from task_queue.models import TaskStatus

    await example.application_startup()
    response = await example.some_api_endpoint_handler()

    assert response == {"message": "Request accepted, processing in background."}
    assert "Email task enqueued." in messages(logs)
    assert messages(logs, logging.ERROR) == []
    [task] = await example.service.broker.list_tasks()
    assert task.name == "send_email"
    assert task.priority == 1
    assert task.payload == {
        "to": "user@example.com",
        "subject": "Report",
        "body": "Your report is ready.",
    }
    assert task.scheduled_at - task.created_at == timedelta(seconds=5)
    # Held back by its delay: the two idle workers do not pick it up early.
    with pytest.raises(TimeoutError):
        await example.service.wait_for(task.id, timeout=0.3)
    held = await example.service.get_task(task.id)
    assert held.status is TaskStatus.PENDING
    assert held.attempts == 0
    assert example.asyncio.sleeps == []


async def test_unregistered_name_raises_value_error_and_endpoint_logs_it(
    example: Example, logs: pytest.LogCaptureFixture
) -> None:
    from task_queue.broker import InMemoryBroker
    from task_queue.service import TaskQueueService

    await example.application_startup()
    with pytest.raises(ValueError, match="not_registered"):
        await example.service.add_task(name="not_registered", payload={})

    # A service that has no "send_email" executor: the endpoint's except branch logs.
    started = example.service
    example.ns["task_queue_service"] = TaskQueueService(
        broker=InMemoryBroker(),
        task_executors={"process_data": example.data_processing_executor},
    )
    response = await example.some_api_endpoint_handler()
    assert response == {"message": "Request accepted, processing in background."}
    [error] = messages(logs, logging.ERROR)
    assert error.startswith("Failed to enqueue task: ")
    assert "'send_email'" in error
    assert "Email task enqueued." not in messages(logs)
    assert await example.service.broker.list_tasks() == []
    await example.service.broker.close()
    example.ns["task_queue_service"] = started


async def test_executors_run_and_complete(
    example: Example, logs: pytest.LogCaptureFixture
) -> None:
    from task_queue.models import TaskStatus

    await example.application_startup()
    service = example.service
    email = await service.add_task(name="send_email", payload={"to": "a@b.c"}, priority=1)
    data = await service.add_task(name="process_data", payload={"data_id": 42})

    done_email = await service.wait_for(email.id, timeout=TIMEOUT)
    done_data = await service.wait_for(data.id, timeout=TIMEOUT)

    for task in (done_email, done_data):
        assert task.status is TaskStatus.COMPLETED
        assert task.attempts == 1
        assert task.error is None
    assert sorted(example.asyncio.sleeps) == [1, 2]
    info = messages(logs)
    assert f"Sending email for task {email.id} with payload: {{'to': 'a@b.c'}}" in info
    assert f"Email sent for task {email.id}" in info
    assert f"Processing data for task {data.id}: 42" in info
    assert f"Data processing complete for task {data.id}" in info


async def test_delayed_email_runs_after_its_delay(example: Example) -> None:
    from task_queue.models import TaskStatus

    await example.application_startup()
    task = await example.service.add_task(
        name="send_email", payload={"to": "a@b.c"}, priority=1, delay_seconds=0.3
    )
    done = await example.service.wait_for(task.id, timeout=TIMEOUT)
    assert done.status is TaskStatus.COMPLETED
    assert done.started_at is not None
    assert done.started_at - done.created_at >= timedelta(seconds=0.3)


async def test_error_payload_fails(example: Example, logs: pytest.LogCaptureFixture) -> None:
    from task_queue.models import TaskStatus

    await example.application_startup()
    task = await example.service.add_task(
        name="send_email", payload={"error": "yes"}, max_retries=0
    )
    failed = await example.service.wait_for(task.id, timeout=TIMEOUT)
    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == 1
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert failed.error.message == "Simulated email sending error"
    assert f"Email sent for task {task.id}" not in messages(logs)


async def test_error_payload_fails_after_retries(example: Example) -> None:
    from task_queue import RetryPolicy
    from task_queue.models import TaskStatus

    await example.application_startup()
    example.service.retry_policy = RetryPolicy(max_retries=2, base_delay=0.01, jitter=False)
    task = await example.service.add_task(name="send_email", payload={"error": True})
    assert task.max_retries == 2

    failed = await example.service.wait_for(task.id, timeout=TIMEOUT)
    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == 3
    assert str(failed.error) == "ValueError: Simulated email sending error"
    assert example.asyncio.sleeps == [2, 2, 2]  # the executor ran once per attempt


async def test_shutdown_gathers_workers_and_lets_running_task_finish(
    example: Example, logs: pytest.LogCaptureFixture
) -> None:
    from task_queue.models import TaskStatus

    await example.application_startup()
    service = example.service
    first = await service.add_task(name="process_data", payload={"data_id": 1})
    await service.wait_for(first.id, timeout=TIMEOUT)
    assert service.running
    await example.some_api_endpoint_handler()  # due in 5 s: still pending at shutdown
    [delayed] = await service.broker.list_tasks(TaskStatus.PENDING)

    example.asyncio.sleeping.clear()
    running = await service.add_task(name="send_email", payload={"to": "a@b.c"})
    await asyncio.wait_for(example.asyncio.sleeping.wait(), timeout=TIMEOUT)
    await asyncio.wait_for(example.application_shutdown(), timeout=TIMEOUT)

    info = messages(logs)
    assert "Shutting down task queue workers..." in info
    assert "All task queue workers have shut down." in info
    assert messages(logs, logging.ERROR) == []
    assert not service.running
    for worker in example.workers:
        assert worker.done()
        assert not worker.cancelled()
        assert worker.exception() is None
    assert (await service.get_task(running.id)).status is TaskStatus.COMPLETED
    assert (await service.get_task(delayed.id)).status is TaskStatus.PENDING


async def test_shutdown_without_startup_does_nothing(example: Example) -> None:
    await example.application_shutdown()
    assert example.service is None


async def test_shutdown_right_after_startup(example: Example) -> None:
    """No await between the two: the worker tasks were created but have not run yet."""
    await example.application_startup()
    async with asyncio.timeout(TIMEOUT):  # inline: asyncio.wait_for would yield first
        await example.application_shutdown()
    assert all(worker.done() for worker in example.workers)
    assert not example.service.running
