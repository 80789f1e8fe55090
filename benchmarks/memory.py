"""Benchmark of task_queue on the InMemoryBroker against a plain asyncio.PriorityQueue.

One run measures, `--runs` times each (interleaved, fresh objects every time):

(a) processing throughput: `--tasks` no-op async tasks prefilled with `add_tasks`, then
    `start_workers(--concurrency)`; timed from `start_workers` until the executor has
    counted the last task. The count and the broker's COMPLETED count are verified.
(b) the same no-op items, `(priority, seq, payload)`, through a prefilled
    `asyncio.PriorityQueue` drained by `--concurrency` consumer coroutines.
(c) enqueue throughput: `add_task` awaited one at a time, and `add_tasks` in bulk
    (baseline: `await queue.put(...)` one at a time, and a `put_nowait` loop).
(d) enqueue -> start latency: with idle workers (concurrency 100), tasks added one at a
    time, each awaited until its executor has started; p50 and p99 in milliseconds
    (baseline: `put` -> consumer start).

Prints median and min-max per metric, the ratio task_queue / baseline, and whether the
processing target is met. Stdlib only, plus task_queue:

    .venv/bin/python benchmarks/memory.py [--tasks N] [--concurrency C] [--runs R]
                                          [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import task_queue
from task_queue import InMemoryBroker, Task, TaskQueueService, TaskStatus

TARGET_TASKS_PER_SECOND = 100_000
LATENCY_TASKS = 2_000
LATENCY_WARMUP = 50
LATENCY_CONCURRENCY = 100

Item = tuple[int, int, dict[str, Any]]
Measurement = Callable[[], Coroutine[Any, Any, float]]

perf_counter = time.perf_counter


class _Sink:
    """A no-op async executor that counts its calls and sets `done` at the `target`th."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()

    async def run(self, _item: object) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set()


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark check failed: {message}")


async def _verify_completed(broker: InMemoryBroker, expected: int) -> None:
    counts = await broker.count_tasks()
    _check(
        counts[TaskStatus.COMPLETED] == expected and sum(counts.values()) == expected,
        f"expected {expected} COMPLETED tasks, broker has {dict(counts)}",
    )


# --------------------------------------------------------------------- (a), (b) processing


async def tq_processing(n: int, concurrency: int) -> float:
    """Tasks/s of task_queue draining `n` prefilled no-op tasks with `concurrency` slots."""
    broker = InMemoryBroker()
    sink = _Sink(n)
    service = TaskQueueService(broker, {"noop": sink.run}, concurrency=concurrency)
    await service.add_tasks([{"name": "noop"} for _ in range(n)])
    gc.collect()
    started = perf_counter()
    service.start_workers(concurrency)
    await sink.done.wait()
    elapsed = perf_counter() - started
    # Shutdown lets the slots settle the tasks they ran; only then is every one COMPLETED.
    await service.shutdown()
    _check(sink.count == n, f"executor counted {sink.count} of {n} tasks")
    await _verify_completed(broker, n)
    return n / elapsed


async def pq_processing(n: int, concurrency: int) -> float:
    """Items/s of `concurrency` consumers draining `n` items from an asyncio.PriorityQueue."""
    queue: asyncio.PriorityQueue[Item] = asyncio.PriorityQueue()
    for seq in range(n):
        queue.put_nowait((0, seq, {}))
    sink = _Sink(n)
    run = sink.run

    async def consume() -> None:
        while True:
            _, _, payload = await queue.get()
            await run(payload)
            queue.task_done()

    gc.collect()
    started = perf_counter()
    consumers = [asyncio.create_task(consume()) for _ in range(concurrency)]
    await sink.done.wait()
    elapsed = perf_counter() - started
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    _check(sink.count == n, f"consumers counted {sink.count} of {n} items")
    _check(queue.empty(), "queue not empty after draining")
    return n / elapsed


# --------------------------------------------------------------------- (c) enqueue


async def tq_enqueue_one(n: int) -> float:
    """Tasks/s of `await service.add_task(...)`, one at a time, no workers running."""
    broker = InMemoryBroker()
    service = TaskQueueService(broker, {"noop": _Sink(0).run})
    add_task = service.add_task
    gc.collect()
    started = perf_counter()
    for _ in range(n):
        await add_task("noop")
    elapsed = perf_counter() - started
    counts = await broker.count_tasks()
    _check(counts[TaskStatus.PENDING] == n, f"expected {n} PENDING tasks, got {dict(counts)}")
    return n / elapsed


async def tq_enqueue_bulk(n: int) -> float:
    """Tasks/s of one `await service.add_tasks([...])` call of `n` tasks."""
    broker = InMemoryBroker()
    service = TaskQueueService(broker, {"noop": _Sink(0).run})
    specs = [{"name": "noop"} for _ in range(n)]
    gc.collect()
    started = perf_counter()
    await service.add_tasks(specs)
    elapsed = perf_counter() - started
    counts = await broker.count_tasks()
    _check(counts[TaskStatus.PENDING] == n, f"expected {n} PENDING tasks, got {dict(counts)}")
    return n / elapsed


async def pq_enqueue_one(n: int) -> float:
    """Items/s of `await queue.put(item)`, one at a time."""
    queue: asyncio.PriorityQueue[Item] = asyncio.PriorityQueue()
    put = queue.put
    gc.collect()
    started = perf_counter()
    for seq in range(n):
        await put((0, seq, {}))
    elapsed = perf_counter() - started
    _check(queue.qsize() == n, f"expected {n} queued items, got {queue.qsize()}")
    return n / elapsed


async def pq_enqueue_bulk(n: int) -> float:
    """Items/s of a `put_nowait` loop over `n` prebuilt items (the queue has no bulk put)."""
    queue: asyncio.PriorityQueue[Item] = asyncio.PriorityQueue()
    items: list[Item] = [(0, seq, {}) for seq in range(n)]
    put_nowait = queue.put_nowait
    gc.collect()
    started = perf_counter()
    for item in items:
        put_nowait(item)
    elapsed = perf_counter() - started
    _check(queue.qsize() == n, f"expected {n} queued items, got {queue.qsize()}")
    return n / elapsed


# --------------------------------------------------------------------- (d) latency


def _percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `samples` (0 < fraction <= 1)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


async def tq_latency(count: int, concurrency: int) -> list[float]:
    """Seconds from just before `add_task` to the executor's start, per task."""
    broker = InMemoryBroker()
    starts: dict[str, float] = {}
    started = asyncio.Event()

    async def probe(task: Task) -> None:
        starts[task.id] = perf_counter()
        started.set()

    service = TaskQueueService(broker, {"probe": probe}, concurrency=concurrency)
    service.start_workers(concurrency)
    await asyncio.sleep(0.05)  # every slot idle, the fetcher asleep in dequeue_many
    gc.collect()
    samples: list[float] = []
    for index in range(LATENCY_WARMUP + count):
        started.clear()
        before = perf_counter()
        task = await service.add_task("probe")
        await started.wait()
        if index >= LATENCY_WARMUP:
            samples.append(starts[task.id] - before)
    await service.shutdown()
    _check(len(starts) == LATENCY_WARMUP + count, f"{len(starts)} executors started")
    await _verify_completed(broker, LATENCY_WARMUP + count)
    return samples


async def pq_latency(count: int, concurrency: int) -> list[float]:
    """Seconds from just before `queue.put` to the consumer's executor start, per item."""
    queue: asyncio.PriorityQueue[Item] = asyncio.PriorityQueue()
    starts: dict[int, float] = {}
    started = asyncio.Event()

    async def probe(seq: int) -> None:
        starts[seq] = perf_counter()
        started.set()

    async def consume() -> None:
        while True:
            _, seq, _ = await queue.get()
            await probe(seq)
            queue.task_done()

    consumers = [asyncio.create_task(consume()) for _ in range(concurrency)]
    await asyncio.sleep(0.05)
    gc.collect()
    samples: list[float] = []
    for seq in range(LATENCY_WARMUP + count):
        started.clear()
        before = perf_counter()
        await queue.put((0, seq, {}))
        await started.wait()
        if seq >= LATENCY_WARMUP:
            samples.append(starts[seq] - before)
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    _check(len(starts) == LATENCY_WARMUP + count, f"{len(starts)} consumers started")
    return samples


# --------------------------------------------------------------------- driver

METRICS: list[tuple[str, str, bool]] = [
    # key, label, is a throughput (higher is better)
    ("processing", "processing (tasks/s)", True),
    ("enqueue_one", "enqueue add_task one-by-one (tasks/s)", True),
    ("enqueue_bulk", "enqueue add_tasks bulk (tasks/s)", True),
    ("latency_p50_ms", "enqueue->start p50 (ms)", False),
    ("latency_p99_ms", "enqueue->start p99 (ms)", False),
]
SIDES = ("task_queue", "baseline")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement `args.runs` times, interleaved; return the raw results."""
    n: int = args.tasks
    concurrency: int = args.concurrency
    results: dict[str, dict[str, list[float]]] = {
        key: {side: [] for side in SIDES} for key, _, _ in METRICS
    }
    samples_ms: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    throughputs: list[tuple[str, str, Measurement]] = [
        ("processing", "task_queue", lambda: tq_processing(n, concurrency)),
        ("processing", "baseline", lambda: pq_processing(n, concurrency)),
        ("enqueue_one", "task_queue", lambda: tq_enqueue_one(n)),
        ("enqueue_one", "baseline", lambda: pq_enqueue_one(n)),
        ("enqueue_bulk", "task_queue", lambda: tq_enqueue_bulk(n)),
        ("enqueue_bulk", "baseline", lambda: pq_enqueue_bulk(n)),
    ]
    for run in range(1, args.runs + 1):
        for key, side, measure in throughputs:
            value = await measure()
            results[key][side].append(value)
            _log(f"run {run}/{args.runs}: {key:<13} {side:<10} {value:>12,.0f} tasks/s")
        for side, latency in (("task_queue", tq_latency), ("baseline", pq_latency)):
            seconds = await latency(LATENCY_TASKS, LATENCY_CONCURRENCY)
            millis = [s * 1000.0 for s in seconds]
            samples_ms[side].append(millis)
            p50, p99 = _percentile(millis, 0.50), _percentile(millis, 0.99)
            results["latency_p50_ms"][side].append(p50)
            results["latency_p99_ms"][side].append(p99)
            _log(f"run {run}/{args.runs}: latency       {side:<10} p50 {p50:.3f} p99 {p99:.3f} ms")
    return {"results": results, "latency_samples_ms": samples_ms}


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "task_queue_version": task_queue.__version__,
        "task_queue_path": str(Path(task_queue.__file__).resolve().parent),
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "latency_tasks": LATENCY_TASKS,
        "latency_warmup": LATENCY_WARMUP,
        "latency_concurrency": LATENCY_CONCURRENCY,
    }


def _fmt(value: float, throughput: bool) -> str:
    return f"{value:,.0f}" if throughput else f"{value:.3f}"


def _cell(values: list[float], throughput: bool) -> str:
    median = statistics.median(values)
    low, high = min(values), max(values)
    return f"{_fmt(median, throughput)} [{_fmt(low, throughput)}-{_fmt(high, throughput)}]"


def report(env: dict[str, Any], results: dict[str, dict[str, list[float]]]) -> bool:
    """Print the table; return whether the processing target is met."""
    print(
        f"Python {env['python']} ({env['implementation']}) on {env['platform']}, "
        f"machine {env['machine']}, os.cpu_count() = {env['cpu_count']}"
    )
    print(f"task_queue {env['task_queue_version']} from {env['task_queue_path']}")
    print(
        f"tasks={env['tasks']:,} concurrency={env['concurrency']} runs={env['runs']}; "
        f"latency: {env['latency_tasks']:,} tasks (+{env['latency_warmup']} warm-up) at "
        f"concurrency {env['latency_concurrency']}; baseline = asyncio.PriorityQueue"
    )
    print("cells: median [min-max] over runs; ratio = task_queue / baseline (medians)")
    print()
    header = ("metric", "task_queue", "baseline", "ratio")
    rows = [header]
    for key, label, throughput in METRICS:
        ours, theirs = results[key]["task_queue"], results[key]["baseline"]
        ratio = statistics.median(ours) / statistics.median(theirs)
        note = "" if throughput else " (lower is better)"
        rows.append(
            (label, _cell(ours, throughput), _cell(theirs, throughput), f"{ratio:.2f}x{note}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2])]
        print("  ".join([*cells, row[3]]))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    processing = statistics.median(results["processing"]["task_queue"])
    met = processing >= TARGET_TASKS_PER_SECOND
    print()
    print(f"target: >= {TARGET_TASKS_PER_SECOND:,} tasks/s processing")
    print(f"  measured median {processing:,.0f} tasks/s: {'MET' if met else 'NOT MET'}")
    return met


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=_positive, default=100_000, help="tasks per run")
    parser.add_argument("--concurrency", type=_positive, default=100, help="worker slots")
    parser.add_argument("--runs", type=_positive, default=3, help="repetitions per metric")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write raw results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write JSON; exit status 0."""
    args = parse_args(argv)
    env = _environment(args)
    raw = asyncio.run(run_all(args))
    met = report(env, raw["results"])
    if args.json is not None:
        summary = {
            key: {
                side: {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
                for side, values in sides.items()
            }
            for key, sides in raw["results"].items()
        }
        document = {
            "environment": env,
            "target_tasks_per_second": TARGET_TASKS_PER_SECOND,
            "target_met": met,
            "summary": summary,
            **raw,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
