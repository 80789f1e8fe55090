"""The `task-queue` command line: its arguments, and the dispatch to each command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from ..models import TaskStatus
from ..monitoring import STATS_RETENTION_MINUTES
from .commands import COMMANDS
from .target import URL_ENV, CliError, Secrets, open_target
from .worker import load_service, run_worker

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

_EPILOG = f"""\
Where the queues are: --url redis://[:password@]host:port/db with --queue (repeatable,
default "default") and --prefix (default "tq"), or --app package.module:service to use
that service's broker; ${URL_ENV} stands in for --url. Options may come before or after
the command. Exit status: 0 ok, 1 not found or failed, 2 usage error.
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _minutes(text: str) -> int:
    value = int(text)
    if not 1 <= value <= STATS_RETENTION_MINUTES:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {STATS_RETENTION_MINUTES}, got {text}"
        )
    return value


def _common() -> argparse.ArgumentParser:
    # Accepted before and after the command: SUPPRESS keeps a later parser from
    # overwriting a value given earlier with its default.
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the queues are")
    where.add_argument("--url", default=argparse.SUPPRESS, help=f"Redis URL (or ${URL_ENV})")
    where.add_argument(
        "--queue",
        action="append",
        default=argparse.SUPPRESS,
        help='queue name with --url; repeat for several (default "default")',
    )
    where.add_argument(
        "--prefix", default=argparse.SUPPRESS, help='key prefix with --url (default "tq")'
    )
    where.add_argument(
        "--app",
        default=argparse.SUPPRESS,
        metavar="MODULE:SERVICE",
        help="use the broker of this service instead of --url",
    )
    output = common.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON for scripts"
    )
    output.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="logging level (default: INFO for worker, ERROR otherwise; or $TASK_QUEUE_LOG_LEVEL)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `task-queue` command."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="task-queue",
        description="Run task_queue workers, and inspect and control their queues.",
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_text, description=help_text)

    worker = command("worker", "run a worker process for a service")
    worker.add_argument(
        "service", nargs="?", metavar="MODULE:SERVICE", help="the service (or --app)"
    )
    worker.add_argument(
        "--concurrency",
        "-c",
        type=_positive_int,
        default=None,
        help="worker slots in this process (default: the service's concurrency)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds running tasks get to finish at shutdown (default: the service's)",
    )
    worker.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="exit gracefully after this long with no task running or due",
    )

    status = command("status", "task counts per state per queue, and the live workers")
    status.add_argument("--watch", "-w", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="refresh interval of --watch (default 2)",
    )

    stats = command("stats", "completed/failed/cancelled tasks per minute, and throughput")
    stats.add_argument(
        "--minutes",
        type=_minutes,
        default=60,
        help=f"how many minutes back, the current one included (default 60, "
        f"at most {STATS_RETENTION_MINUTES})",
    )

    listing = command("list", "list tasks, oldest first")
    listing.add_argument("--status", "-s", choices=[s.value for s in TaskStatus])
    listing.add_argument("--limit", "-n", type=_positive_int, default=20, help="default 20")
    listing.add_argument("--newest", action="store_true", help="newest first")

    show = command("show", "show one task with all its fields")
    show.add_argument("id", help="task id")

    retry = command("retry", "run failed tasks again from their first attempt")
    retry.add_argument("ids", nargs="*", metavar="ID", help="task ids (any final task)")
    retry.add_argument("--all", action="store_true", help="every failed task")

    cancel = command("cancel", "cancel tasks (running ones are stopped by their worker)")
    cancel.add_argument("ids", nargs="+", metavar="ID", help="task ids")
    cancel.add_argument("--reason", default=None, help="stored as the cancellation message")

    purge = command("purge", "delete every task in a state (pending by default)")
    purge.add_argument(
        "--status",
        "-s",
        default=TaskStatus.PENDING.value,
        choices=[s.value for s in TaskStatus if s is not TaskStatus.PROCESSING],
    )
    purge.add_argument("--yes", "-y", action="store_true", help="confirm the deletion")

    command("workers", "the live worker processes")
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    # Other commands print their own errors; library warnings (the Redis settings check,
    # retries of a connection that then fails) would only repeat or distract.
    default = "INFO" if args.command == "worker" else "ERROR"
    level = getattr(args, "log_level", None) or os.environ.get("TASK_QUEUE_LOG_LEVEL", default)
    logging.basicConfig(
        level=str(level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _worker(args: argparse.Namespace) -> int:
    spec = args.service or getattr(args, "app", None)
    if not spec:
        print(
            "task-queue: worker needs a service: task-queue worker MODULE:SERVICE", file=sys.stderr
        )
        return 2
    if args.service and getattr(args, "app", None) and args.service != args.app:
        print("task-queue: give the service once, as an argument or with --app", file=sys.stderr)
        return 2
    if any(getattr(args, name, None) for name in ("url", "queue", "prefix")):
        print(
            "task-queue: worker runs the service's own broker; --url, --queue and --prefix "
            "do not apply",
            file=sys.stderr,
        )
        return 2
    try:
        service = load_service(spec)
    except (ImportError, ValueError, TypeError) as exc:
        print(f"task-queue: cannot load {spec}: {exc}", file=sys.stderr)
        return 2
    concurrency = args.concurrency if args.concurrency is not None else service.concurrency
    asyncio.run(run_worker(service, concurrency, args.grace, args.idle_timeout))
    return 0


async def _run(args: argparse.Namespace, secrets: Secrets) -> int:
    target = open_target(args, secrets)
    if target.in_memory:
        print(
            f"task-queue: note: {target.where} uses an in-memory broker; "
            "this process sees only its own tasks",
            file=sys.stderr,
        )
    try:
        return await COMMANDS[args.command](args, target, sys.stdout)
    finally:
        await target.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `task-queue` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    if args.command == "worker":
        return _worker(args)
    secrets = Secrets()
    try:
        return asyncio.run(_run(args, secrets))
    except CliError as exc:
        print(f"task-queue: {secrets.scrub(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if logger.isEnabledFor(logging.DEBUG):
            print(secrets.scrub(traceback.format_exc()), file=sys.stderr)
        message = secrets.scrub(f"{type(exc).__name__}: {exc}")
        print(f"task-queue: {args.command} failed: {message}", file=sys.stderr)
        return 1
