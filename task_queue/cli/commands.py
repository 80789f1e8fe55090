"""The inspection and control commands: status, stats, list, show, retry, cancel, purge, workers.

Each command takes the parsed arguments and the target queues, writes its output and
returns the exit status (0 ok, 1 not found or failed); `CliError` carries other failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from ..codec import task_to_dict
from ..errors import TaskNotFoundError, TaskStateError
from ..models import Task, TaskStatus
from ..monitoring import QueueStats, WorkerInfo
from .render import age, clock, dump_json, nested, table
from .target import CliError, Queue, Target

__all__ = ["COMMANDS"]

Command = Callable[[argparse.Namespace, Target, TextIO], Awaitable[int]]

_STATES = [status.value for status in TaskStatus]
_THROUGHPUT_WINDOWS = (1, 5, 15, 60)


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _emit(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _note(text: str) -> None:
    sys.stderr.write(f"task-queue: {text}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ status


async def _snapshot(target: Target) -> dict[str, Any]:
    """Counts and workers of every queue, read concurrently."""

    async def one(queue: Queue) -> dict[str, Any]:
        counts, workers = await asyncio.gather(
            queue.broker.count_tasks(), queue.broker.list_workers()
        )
        return {
            "queue": queue.name,
            "counts": {status.value: counts[status] for status in TaskStatus},
            "workers": [w.to_dict() for w in workers],
        }

    queues = await asyncio.gather(*(one(q) for q in target.queues))
    return {"where": target.where, "at": time.time(), "queues": list(queues)}


def _status_text(snapshot: dict[str, Any]) -> str:
    rows = []
    workers: list[dict[str, Any]] = []
    for queue in snapshot["queues"]:
        entries = queue["workers"]
        workers += entries
        rows.append(
            [
                queue["queue"],
                *(queue["counts"][state] for state in _STATES),
                len(entries),
                sum(w["concurrency"] for w in entries),
                sum(w["active"] for w in entries),
            ]
        )
    headers = ["QUEUE", *(s.upper() for s in _STATES), "WORKERS", "SLOTS", "ACTIVE"]
    parts = [
        f"{snapshot['where']}  at {clock(snapshot['at'])}",
        "",
        table(headers, rows),
        "",
        _workers_text(workers, snapshot["at"]),
    ]
    return "\n".join(parts)


async def cmd_status(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Counts per state per queue and the live workers; `--watch` refreshes them."""
    if not args.watch:
        snapshot = await _snapshot(target)
        _emit(out, dump_json(snapshot) if _json(args) else _status_text(snapshot))
        return 0
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    clear = out.isatty() and not _json(args)
    try:
        while not stop.is_set():
            snapshot = await _snapshot(target)
            if _json(args):
                _emit(out, dump_json(snapshot, compact=True))
            else:
                text = _status_text(snapshot)
                footer = f"\nrefreshing every {args.interval:g}s; Ctrl-C to quit"
                _emit(out, ("\x1b[H\x1b[2J" if clear else "") + text + footer)
                if not clear:
                    _emit(out, "")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


# ------------------------------------------------------------------ workers


def _workers_text(workers: list[dict[str, Any]], now: float) -> str:
    if not workers:
        return "no live workers"
    rows = [
        [
            w["worker_id"],
            w["host"],
            w["pid"],
            w["queue"],
            w["concurrency"],
            w["active"],
            age(now - w["started_at"]),
            "-" if w["heartbeat_at"] is None else f"{age(now - w['heartbeat_at'])} ago",
        ]
        for w in workers
    ]
    headers = ["WORKER", "HOST", "PID", "QUEUE", "SLOTS", "ACTIVE", "UP", "HEARTBEAT"]
    return table(headers, rows)


async def cmd_workers(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """The live worker processes of every queue."""
    found: list[WorkerInfo] = []
    for listed in await asyncio.gather(*(q.broker.list_workers() for q in target.queues)):
        found += listed
    entries = [w.to_dict() for w in found]
    _emit(out, dump_json(entries) if _json(args) else _workers_text(entries, time.time()))
    return 0


# ------------------------------------------------------------------ stats


def _stats_text(name: str, stats: QueueStats) -> str:
    window = len(stats.minutes)
    lines = [
        f"queue {name}: {stats.completed} completed, {stats.failed} failed, "
        f"{stats.cancelled} cancelled in the last {window} min",
    ]
    rates = [f"{n} min {stats.throughput(n):.2f}/s" for n in _THROUGHPUT_WINDOWS if n <= window]
    lines.append("throughput (completed + failed): " + "   ".join(rates))
    rows = [
        [clock(m.minute)[:-7], m.completed, m.failed, m.cancelled]
        for m in stats.minutes
        if m.completed or m.failed or m.cancelled
    ]
    if rows:
        lines += ["", table(["MINUTE (UTC)", "COMPLETED", "FAILED", "CANCELLED"], rows)]
    else:
        lines.append("no task finished in this window")
    return "\n".join(lines)


async def cmd_stats(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Completed, failed and cancelled tasks per minute, and throughput."""
    results = await asyncio.gather(*(q.broker.get_stats(args.minutes) for q in target.queues))
    if _json(args):
        queues = [
            {"queue": q.name, **stats.to_dict()}
            for q, stats in zip(target.queues, results, strict=True)
        ]
        _emit(out, dump_json({"queues": queues}))
    else:
        texts = [_stats_text(q.name, s) for q, s in zip(target.queues, results, strict=True)]
        _emit(out, "\n\n".join(texts))
    return 0


# ------------------------------------------------------------------ list and show


def _record(queue: Queue, task: Task) -> dict[str, Any]:
    return {"queue": queue.name, **task_to_dict(task)}


async def cmd_list(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Tasks, in a state if asked, oldest (or newest) first."""
    status = None if args.status is None else TaskStatus(args.status)
    found: list[tuple[Queue, Task]] = []
    for queue in target.queues:
        tasks = await queue.broker.list_tasks(status, limit=args.limit, newest_first=args.newest)
        found += [(queue, task) for task in tasks]
    found.sort(key=lambda pair: pair[1].created_at, reverse=args.newest)
    found = found[: args.limit]
    if _json(args):
        _emit(out, dump_json([_record(q, t) for q, t in found]))
        return 0
    if not found:
        _emit(out, "no tasks" if status is None else f"no {status.value} tasks")
        return 0
    now = time.time()
    many = len(target.queues) > 1
    rows = []
    for queue, task in found:
        error = "" if task.error is None else str(task.error)
        row = [
            task.id,
            task.name,
            task.status.value,
            f"{task.attempts}/{task.max_attempts}",
            task.priority,
            f"{age(now - task.created_at.timestamp())} ago",
            error if len(error) <= 60 else error[:57] + "...",
        ]
        rows.append([queue.name, *row] if many else row)
    headers = ["ID", "NAME", "STATUS", "ATTEMPTS", "PRIORITY", "CREATED", "ERROR"]
    _emit(out, table(["QUEUE", *headers] if many else headers, rows))
    return 0


async def _find(target: Target, task_id: str) -> tuple[Queue, Task] | None:
    for queue in target.queues:
        task = await queue.broker.get_task(task_id)
        if task is not None:
            return queue, task
    return None


def _where(target: Target) -> str:
    names = ", ".join(q.name for q in target.queues)
    return f"queue {names}" if len(target.queues) == 1 else f"queues {names}"


async def cmd_show(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """One task with every field it has (payload, result, error, context, logs, ...)."""
    found = await _find(target, args.id)
    if found is None:
        raise CliError(f"no task with id {args.id!r} in {_where(target)}")
    record = _record(*found)
    _emit(out, dump_json(record) if _json(args) else "\n".join(nested(record)))
    return 0


# ------------------------------------------------------------------ retry, cancel, purge


async def _retry_all(queue: Queue) -> int:
    """Requeue every failed task of `queue` once, in batches; returns how many."""
    seen: set[str] = set()
    requeued = 0
    while True:
        batch = await queue.broker.list_tasks(TaskStatus.FAILED, limit=500)
        fresh = [task for task in batch if task.id not in seen]
        if not fresh:
            return requeued
        for task in fresh:
            seen.add(task.id)
            try:
                await queue.broker.requeue(task.id)
            except (TaskNotFoundError, TaskStateError):
                continue  # changed meanwhile (requeued, purged or expired elsewhere)
            requeued += 1


async def cmd_retry(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Failed tasks back to pending, from their first attempt: all, or the ids given."""
    if args.all == bool(args.ids):
        raise CliError("give task ids or --all (every failed task), not both", 2)
    if args.all:
        counts = {q.name: await _retry_all(q) for q in target.queues}
        if _json(args):
            _emit(out, dump_json({"requeued": counts}))
        else:
            for name, count in counts.items():
                _emit(out, f"queue {name}: {count} failed task(s) requeued")
        return 0
    results: list[dict[str, Any]] = []
    code = 0
    for task_id in args.ids:
        found = await _find(target, task_id)
        if found is None:
            results.append({"id": task_id, "requeued": False, "reason": "not found"})
            code = 1
            continue
        queue, task = found
        if not task.is_final:
            reason = f"is {task.status.value}, not final"
            results.append({"id": task_id, "requeued": False, "reason": reason})
            code = 1
            continue
        try:
            await queue.broker.requeue(task_id)
        except (TaskNotFoundError, TaskStateError) as exc:
            results.append({"id": task_id, "requeued": False, "reason": str(exc)})
            code = 1
            continue
        results.append({"id": task_id, "requeued": True, "was": task.status.value})
    if _json(args):
        _emit(out, dump_json(results))
    else:
        for r in results:
            if r["requeued"]:
                _emit(out, f"task {r['id']} requeued (was {r['was']})")
            else:
                _note(f"task {r['id']} not requeued: {r['reason']}")
    return code


async def cmd_cancel(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Cancel tasks: pending ones at once, running ones by their worker."""
    results: list[dict[str, Any]] = []
    code = 0
    for task_id in args.ids:
        found = await _find(target, task_id)
        if found is None:
            results.append({"id": task_id, "cancelled": False, "reason": "not found"})
            code = 1
            continue
        queue, task = found
        try:
            accepted = await queue.broker.cancel(task_id, args.reason)
        except TaskNotFoundError:
            accepted = False
        current = await queue.broker.get_task(task_id)
        state = "gone" if current is None else current.status.value
        if not accepted:
            results.append({"id": task_id, "cancelled": False, "reason": f"already {state}"})
            code = 1
        elif task.status is TaskStatus.PROCESSING and state == TaskStatus.PROCESSING.value:
            results.append({"id": task_id, "cancelled": True, "status": "cancel requested"})
        else:
            results.append({"id": task_id, "cancelled": True, "status": state})
    if _json(args):
        _emit(out, dump_json(results))
    else:
        for r in results:
            if not r["cancelled"]:
                _note(f"task {r['id']} not cancelled: {r['reason']}")
            elif r["status"] == "cancel requested":
                _emit(out, f"task {r['id']}: cancel requested; its worker stops it")
            else:
                _emit(out, f"task {r['id']} cancelled")
    return code


def _confirm(question: str) -> bool:
    """Ask on the terminal; only called when stdin and stderr are terminals."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


async def cmd_purge(args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Delete every task in a state (pending by default); needs --yes or a terminal's yes."""
    status = TaskStatus(args.status)
    counts = {q.name: (await q.broker.count_tasks())[status] for q in target.queues}
    total = sum(counts.values())
    what = f"{total} {status.value} task(s) of {_where(target)}"
    if not args.yes:
        if total == 0:
            _emit(
                out, dump_json({"purged": counts}) if _json(args) else f"no {status.value} tasks"
            )
            return 0
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise CliError(f"purge would delete {what}; nothing deleted: pass --yes to confirm", 2)
        if not _confirm(f"delete {what}?"):
            raise CliError("nothing deleted", 1)
    purged = {q.name: await q.broker.purge(status) for q in target.queues}
    if _json(args):
        _emit(out, dump_json({"purged": purged}))
    else:
        for name, count in purged.items():
            _emit(out, f"queue {name}: {count} {status.value} task(s) deleted")
    return 0


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "stats": cmd_stats,
    "list": cmd_list,
    "show": cmd_show,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "purge": cmd_purge,
    "workers": cmd_workers,
}
