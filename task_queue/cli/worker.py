"""`task-queue worker`: run a service's worker slots until SIGTERM, SIGINT or idleness."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys

from ..service import TaskQueueService

__all__ = ["load_service", "run_worker"]

logger = logging.getLogger(__name__)

_IDLE_POLL = 0.5  # how often a busy worker checks whether it has gone idle (seconds)


def load_service(spec: str) -> TaskQueueService:
    """Import `package.module:attribute` and return the service it names.

    The attribute may be a `TaskQueueService` or a function returning one.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'package.module:service', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(target) and not isinstance(target, TaskQueueService):
        target = target()
    if not isinstance(target, TaskQueueService):
        raise TypeError(f"{spec} is a {type(target).__name__}, not a TaskQueueService")
    return target


async def _stop_when_idle(service: TaskQueueService, idle_timeout: float) -> None:
    """Return once the service has held no task for `idle_timeout` seconds."""
    while True:
        idle = service.idle_seconds
        if idle >= idle_timeout:
            return
        # Idle: sleep until the timeout would run out. Busy: look again shortly.
        await asyncio.sleep(max(idle_timeout - idle, 0.01) if idle > 0 else _IDLE_POLL)


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


async def run_worker(
    service: TaskQueueService,
    concurrency: int,
    grace: float | None = None,
    idle_timeout: float | None = None,
) -> None:
    """Run `concurrency` worker slots until SIGTERM/SIGINT, then shut down gracefully.

    With `idle_timeout`, also stop gracefully once no task has been running or
    available (due) for that many seconds. The broker is closed at the end.
    """
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service.start_workers(concurrency)
    logger.info(
        "worker %s running %d slots on %r; executors: %s",
        service.worker_id,
        concurrency,
        service.broker,
        ", ".join(sorted(service.task_executors)) or "none",
    )
    idle_watch: asyncio.Task[None] | None = None
    try:
        stopping = asyncio.create_task(_wait(stop))
        waiting = {stopping}
        if idle_timeout is not None:
            idle_watch = asyncio.create_task(_stop_when_idle(service, idle_timeout))
            waiting.add(idle_watch)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if stop.is_set():
            logger.info("worker %s stopping", service.worker_id)
        else:
            logger.info(
                "worker %s stopping: idle for %gs", service.worker_id, float(idle_timeout or 0)
            )
        await service.shutdown(grace)
    finally:
        if idle_watch is not None:
            idle_watch.cancel()
            await asyncio.gather(idle_watch, return_exceptions=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await service.broker.close()
