"""A tour of task_queue on the in-memory broker, run by `make demo` in about two seconds.

It shows, in order:

1. priorities: tasks enqueued before any worker runs start lowest priority number
   first, first-in first-out within a priority;
2. a delayed task (`delay_seconds`) that starts after its delay while due tasks run;
3. a failing task retried with exponential backoff, then FAILED with its error;
4. progress reported with `report_progress()` and read back with `get_task()`;
5. a running task cancelled with `service.cancel()`;
6. a small workflow: tasks that depend on others (`depends_on`), a hook, the task
   context (`set_context`) and per-task logs (`get_logger`), and a failed parent that
   cancels the task waiting on it;
7. a graceful `shutdown()` that lets the running task finish and keeps pending ones;

and ends with a summary of every task the broker holds. Nothing waits on a guessed
sleep: the demo waits with `service.wait_for()` or on events set by the executors.
The library's own records of WARNING and above (retries, failures) are printed as
single `[log]` lines. The exit status is 1 if any check in the output says MISMATCH.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import defaultdict
from typing import Any

from task_queue import (
    InMemoryBroker,
    RetryPolicy,
    Task,
    TaskQueueService,
    TaskStatus,
    get_logger,
    report_progress,
    set_context,
)

WORKERS = 2
failures: list[str] = []


class CompactFormatter(logging.Formatter):
    """One line per record: the level and the first line of the message, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        first_line = record.getMessage().splitlines()[0]
        return f"     [log {record.levelname.lower()}] {first_line}"


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CompactFormatter())
    library = logging.getLogger("task_queue")
    library.setLevel(logging.WARNING)
    library.addHandler(handler)
    library.propagate = False


def heading(text: str) -> None:
    print(f"\n== {text}")


def check(ok: bool, what: str) -> None:
    print(f"   {'ok' if ok else 'MISMATCH'}: {what}")
    if not ok:
        failures.append(what)


class Tracker:
    """What the executors tell the demo: who started when, and progress handshakes."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.starts: list[tuple[str, float]] = []
        self._started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.progress_reported: asyncio.Queue[float] = asyncio.Queue()
        self.progress_go_on: asyncio.Queue[None] = asyncio.Queue()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def mark_started(self, task: Task) -> None:
        self.starts.append((task.id, self.now()))
        self._started[task.id].set()

    async def wait_started(self, task_id: str) -> None:
        await asyncio.wait_for(self._started[task_id].wait(), timeout=5)


def make_executors(tracker: Tracker) -> dict[str, Any]:
    """The executors, keyed by task name; each is an async function taking the Task."""

    async def resize_image(task: Task) -> str:
        tracker.mark_started(task)
        await asyncio.sleep(task.payload["seconds"])
        return f"resized {task.payload['file']}"

    async def send_reminder(task: Task) -> str:
        tracker.mark_started(task)
        return f"reminded {task.payload['to']}"

    async def charge_card(task: Task) -> None:
        tracker.mark_started(task)
        print(f"   charge_card attempt {task.attempts} at +{tracker.now():.2f}s: raising")
        raise ConnectionError("payment gateway unreachable")

    async def build_report(task: Task) -> dict[str, int]:
        tracker.mark_started(task)
        steps = task.payload["steps"]
        for step in range(1, steps + 1):
            await asyncio.sleep(0.01)  # one chunk of real work
            await report_progress(step / steps)
            await tracker.progress_reported.put(step / steps)
            await tracker.progress_go_on.get()  # the demo has read the progress back
        return {"pages": steps * 10}

    async def crawl_site(task: Task) -> None:
        tracker.mark_started(task)
        try:
            await asyncio.Event().wait()  # crawls until someone stops it
        except asyncio.CancelledError:
            print("   crawl_site: received CancelledError, cleaning up")
            raise

    async def nightly_backup(task: Task) -> None:
        tracker.mark_started(task)

    log = get_logger("demo.etl")

    async def extract(task: Task) -> int:
        tracker.mark_started(task)
        set_context("source.rows", 120)
        log.info("read %d rows from %s", 120, task.payload["source"])
        return 120

    async def load(task: Task) -> str:
        tracker.mark_started(task)
        set_context("step", "loaded")
        log.info("loaded into %s", task.payload["table"])
        return f"loaded {task.payload['table']}"

    return {
        "extract": extract,
        "load": load,
        "resize_image": resize_image,
        "send_reminder": send_reminder,
        "charge_card": charge_card,
        "build_report": build_report,
        "crawl_site": crawl_site,
        "nightly_backup": nightly_backup,
    }


async def demo_priorities(service: TaskQueueService, tracker: Tracker) -> list[asyncio.Task[None]]:
    heading("1. Priorities (lower number runs first, FIFO within a priority)")
    plan = [("img-a", 5), ("img-b", 1), ("img-c", 9), ("img-d", 1), ("img-e", 0), ("img-f", 5)]
    for task_id, priority in plan:
        await service.add_task(
            "resize_image",
            {"file": f"{task_id}.png", "seconds": 0.05},
            priority=priority,
            task_id=task_id,
        )
    print("   enqueued with no worker running: " + ", ".join(f"{i}(p{p})" for i, p in plan))
    workers = service.start_workers(WORKERS)
    print(f"   started {len(workers)} workers")
    for task_id, _ in plan:
        await service.wait_for(task_id, timeout=5)
    order = [task_id for task_id, _ in tracker.starts]
    print("   start order: " + " -> ".join(order))
    expected = [task_id for task_id, _ in sorted(plan, key=lambda item: item[1])]
    check(order == expected, "priority 0, then 1 (b before d), 5 (a before f), 9")
    return workers


async def demo_delay(service: TaskQueueService, tracker: Tracker) -> None:
    heading("2. A delayed task waits; due tasks run meanwhile")
    tracker.starts.clear()
    section_start = tracker.now()
    await service.add_task(
        "send_reminder", {"to": "ana@example.com"}, delay_seconds=1.0, task_id="reminder"
    )
    due = [f"thumb-{n}" for n in range(1, 5)]
    for task_id in due:
        await service.add_task(
            "resize_image", {"file": f"{task_id}.png", "seconds": 0.2}, task_id=task_id
        )
    print("   enqueued 'reminder' with delay_seconds=1.0, then 4 due tasks of 0.2 s each")
    for task_id in [*due, "reminder"]:
        await service.wait_for(task_id, timeout=5)
    for task_id, at in tracker.starts:
        print(f"   +{at - section_start:.2f}s  {task_id} started")
    starts = {task_id: at - section_start for task_id, at in tracker.starts}
    check(starts["reminder"] >= 1.0, "reminder started no earlier than its 1.0 s delay")
    check(max(starts[t] for t in due) < starts["reminder"], "every due task started before it")


async def demo_retry(service: TaskQueueService, tracker: Tracker) -> None:
    policy = service.retry_policy
    heading(
        f"3. Retries with backoff (max_retries={policy.max_retries}, "
        f"base_delay={policy.base_delay}s, doubling)"
    )
    tracker.origin = time.monotonic()
    await service.add_task("charge_card", {"order": 1017}, task_id="charge-1017")
    task = await service.wait_for("charge-1017", timeout=5)
    print(f"   final status: {task.status.value} after {task.attempts} attempts")
    print(f"   error: {task.error}")
    check(
        task.status is TaskStatus.FAILED and task.attempts == policy.max_retries + 1,
        "FAILED after max_retries + 1 attempts",
    )


async def demo_progress(service: TaskQueueService, tracker: Tracker) -> None:
    heading("4. Progress reported by the executor, read back with get_task()")
    await service.add_task("build_report", {"steps": 4}, task_id="report-q3")
    for _ in range(4):
        await asyncio.wait_for(tracker.progress_reported.get(), timeout=5)
        snapshot = await service.get_task("report-q3")
        assert snapshot is not None
        print(f"   get_task: status={snapshot.status.value:<10} progress={snapshot.progress:.0%}")
        tracker.progress_go_on.put_nowait(None)
    task = await service.wait_for("report-q3", timeout=5)
    print(f"   final: {task.status.value}, progress {task.progress:.0%}, result {task.result}")


async def demo_cancel(service: TaskQueueService, tracker: Tracker) -> None:
    heading("5. Cancelling a running task")
    await service.add_task("crawl_site", {"url": "https://example.com"}, task_id="crawl-1")
    await tracker.wait_started("crawl-1")
    snapshot = await service.get_task("crawl-1")
    assert snapshot is not None
    print(f"   crawl-1 is {snapshot.status.value}; calling service.cancel()")
    await service.cancel("crawl-1", reason="user pressed stop")
    task = await service.wait_for("crawl-1", timeout=5)
    print(f"   final status: {task.status.value} ({task.error})")
    check(task.status is TaskStatus.CANCELLED, "the task ended CANCELLED")


async def demo_workflow(service: TaskQueueService, tracker: Tracker) -> None:
    heading("6. A workflow: depends_on, a hook, task context and logs")
    tracker.starts.clear()

    @service.on_pre_create
    def stamp(task: Task) -> None:
        task.context["requested_by"] = "demo"

    users = await service.submit("extract", {"source": "users.csv"}, task_id="extract-users")
    orders = await service.submit("extract", {"source": "orders.csv"}, task_id="extract-orders")
    merged = await service.submit(
        "load", {"table": "warehouse"}, task_id="load-all", depends_on=[users, orders]
    )
    charge = await service.submit("charge_card", {"order": 2048}, task_id="charge-2048")
    ship = await service.submit(
        "send_reminder", {"to": "ops"}, task_id="ship-2048", depends_on=charge
    )
    print("   load-all waits for extract-users and extract-orders; ship-2048 for charge-2048")
    print(f"   load-all result: {await merged.wait(timeout=5)}")
    order = [task_id for task_id, _ in tracker.starts]
    check(
        order.index("load-all") > max(order.index("extract-users"), order.index("extract-orders")),
        "load-all started after both of its parents",
    )
    done = await merged.refresh()
    print(f"   load-all context: {done.context}")
    print(f"   load-all logs: {[record['message'] for record in done.logs]}")
    check(done.context == {"requested_by": "demo", "step": "loaded"}, "context kept with the task")
    await service.wait_for(charge.id, timeout=5)
    shipped = await service.wait_for(ship.id, timeout=5)
    print(f"   ship-2048: {shipped.status.value} ({shipped.error})")
    check(shipped.status is TaskStatus.CANCELLED, "a failed parent cancels the task waiting on it")
    service.hooks.pre_create.remove(stamp)


async def demo_shutdown(
    service: TaskQueueService, tracker: Tracker, workers: list[asyncio.Task[None]]
) -> None:
    heading("7. Graceful shutdown")
    await service.add_task(
        "nightly_backup", {"db": "main"}, delay_seconds=3600, task_id="backup-nightly"
    )
    await service.add_task(
        "resize_image", {"file": "banner.png", "seconds": 0.3}, task_id="banner"
    )
    await tracker.wait_started("banner")
    print("   'banner' (0.3 s) is running, 'backup-nightly' is due in an hour")
    began = time.monotonic()
    await service.shutdown(grace=5)
    print(f"   shutdown() returned after {time.monotonic() - began:.2f}s")
    banner = await service.get_task("banner")
    backup = await service.get_task("backup-nightly")
    assert banner is not None
    assert backup is not None
    print(f"   banner: {banner.status.value}; backup-nightly: {backup.status.value}")
    check(banner.status is TaskStatus.COMPLETED, "the running task finished within the grace")
    check(backup.status is TaskStatus.PENDING, "the delayed task is kept, still pending")
    check(all(worker.done() for worker in workers), "every worker task has ended")


def cell(value: object, width: int) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


async def summary(broker: InMemoryBroker) -> None:
    heading("Summary")
    counts = await broker.count_tasks()
    print("   " + ", ".join(f"{status.value}: {n}" for status, n in counts.items()))
    print()
    columns = ("id", "name", "prio", "status", "attempts", "result / error")
    widths = (14, 14, 4, 10, 8, 44)
    print("   " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("   " + "  ".join("-" * w for w in widths))
    for task in await broker.list_tasks(limit=100):
        outcome = task.error if task.error is not None else task.result
        outcome = "-" if outcome is None else outcome
        row = (task.id, task.name, task.priority, task.status.value, task.attempts, outcome)
        print(
            "   "
            + "  ".join(cell(v, w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        )


async def main() -> int:
    configure_logging()
    began = time.monotonic()
    tracker = Tracker()
    broker = InMemoryBroker()
    service = TaskQueueService(
        broker,
        make_executors(tracker),
        retry_policy=RetryPolicy(max_retries=2, base_delay=0.1, jitter=False),
    )
    print(f"task_queue demo: InMemoryBroker, {WORKERS} workers")
    workers = await demo_priorities(service, tracker)
    await demo_delay(service, tracker)
    await demo_retry(service, tracker)
    await demo_progress(service, tracker)
    await demo_cancel(service, tracker)
    await demo_workflow(service, tracker)
    await demo_shutdown(service, tracker, workers)
    await summary(broker)
    await broker.close()
    print(f"\ndone in {time.monotonic() - began:.1f}s" + (" with MISMATCHES" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
