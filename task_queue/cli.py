"""The `task-queue` command: run a worker process for a service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .service import TaskQueueService

__all__ = ["load_service", "main", "run_worker"]

logger = logging.getLogger(__name__)


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


async def run_worker(
    service: TaskQueueService, concurrency: int, grace: float | None = None
) -> None:
    """Run `concurrency` worker slots until SIGTERM/SIGINT, then shut down gracefully."""
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
    try:
        await stop.wait()
        logger.info("worker %s stopping", service.worker_id)
        await service.shutdown(grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await service.broker.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-queue", description="Run and inspect task_queue workers."
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TASK_QUEUE_LOG_LEVEL", "INFO"),
        help="logging level (default INFO, or $TASK_QUEUE_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a worker process for a service")
    worker.add_argument("app", help="the service, as package.module:attribute")
    worker.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="worker slots in this process (default: the service's concurrency)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds running tasks get to finish at shutdown (default: the service's)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `task-queue` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        service = load_service(args.app)
    except (ImportError, ValueError, TypeError) as exc:
        print(f"task-queue: cannot load {args.app}: {exc}", file=sys.stderr)
        return 2
    concurrency = args.concurrency if args.concurrency is not None else service.concurrency
    if concurrency < 1:
        print("task-queue: --concurrency must be >= 1", file=sys.stderr)
        return 2
    asyncio.run(run_worker(service, concurrency, args.grace))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
