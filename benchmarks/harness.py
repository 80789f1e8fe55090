"""task_queue side by side with arq, SAQ, taskiq, streaQ and async-task-worker.

Starts a dedicated redis-server on a free port (or uses $BENCH_REDIS_URL, whose database
it flushes), then runs the same workloads against one library after another, each in a
subprocess with the Python of the library's own virtualenv (benchmarks/.venv-peers/<lib>,
made by `make bench`); task_queue runs with the Python that runs this script. Every run
is repeated (--runs, default 3), interleaved across libraries, and the table shows the
median with the ratio to task_queue; min-max, settings and raw figures go to the JSON.

    python benchmarks/harness.py [--quick] [--full] [--libs arq,saq] [--save]

Standard library only: the chart is drawn by benchmarks/chart.py in the chart venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ADAPTERS = HERE / "adapters"
PEERS = HERE / ".venv-peers"
RESULTS = HERE / "results"
sys.path.insert(0, str(ADAPTERS))

from common import MiniRedis, percentile


@dataclass(frozen=True)
class Lib:
    """A library (or a variant of one) as the harness runs it."""

    key: str  # for --libs
    label: str
    adapter: str
    venv: str | None  # folder under .venv-peers; None: the Python running the harness
    backend: str  # "redis" or "memory"
    variant: str | None = None
    ours: bool = False
    reference: bool = False  # a floor to read figures against, not a task queue
    polls: bool = False  # idle workers poll: fewer latency samples, they are slow
    only: tuple[str, ...] = ()  # run only these workloads (a variant of another column)
    note: str = ""

    def python(self) -> Path:
        if self.venv is None:
            return Path(sys.executable)
        return PEERS / self.venv / "bin" / "python"


LIBS = [
    Lib("task_queue", "task_queue", "task_queue_adapter", None, "redis", ours=True),
    Lib(
        "arq", "arq", "arq_adapter", "arq", "redis", polls=True, note="poll_delay 0.5 s (default)"
    ),
    Lib(
        "arq-poll-10ms",
        "arq (poll-10ms)",
        "arq_adapter",
        "arq",
        "redis",
        variant="poll-10ms",
        only=("process_noop", "nap100", "nap500", "latency", "delayed"),
        note="poll_delay 0.01 s; enqueue and memory as arq",
    ),
    Lib("saq", "saq", "saq_adapter", "saq", "redis"),
    Lib("taskiq", "taskiq", "taskiq_adapter", "taskiq", "redis"),
    Lib("streaq", "streaq", "streaq_adapter", "streaq", "redis"),
    Lib(
        "task_queue-memory",
        "task_queue (memory)",
        "task_queue_adapter",
        None,
        "memory",
        variant="memory",
        ours=True,
    ),
    Lib(
        "async-task-worker",
        "async-task-worker",
        "async_task_worker_adapter",
        "async_task_worker",
        "memory",
    ),
    Lib(
        "priority-queue",
        "asyncio.PriorityQueue",
        "priority_queue_adapter",
        None,
        "memory",
        reference=True,
        note="the floor: no ids, states, retries or results",
    ),
]


@dataclass(frozen=True)
class Metric:
    key: str  # workload key
    field: str  # which number of its result: "value", "p50", "p99"
    label: str
    unit: str
    higher_is_better: bool


REDIS_METRICS = [
    Metric("enqueue_one", "value", "enqueue, one at a time", "tasks/s", True),
    Metric("enqueue_gather", "value", "enqueue, 32 concurrent producers", "tasks/s", True),
    Metric("enqueue_bulk", "value", "enqueue, bulk API", "tasks/s", True),
    Metric("process_noop", "value", "process no-op, 1 worker x 100", "tasks/s", True),
    Metric("nap100", "value", "process sleep(10ms), concurrency 100", "tasks/s", True),
    Metric("nap500", "value", "process sleep(10ms), concurrency 500", "tasks/s", True),
    Metric("latency", "p50", "enqueue->start p50, idle worker", "ms", False),
    Metric("latency", "p99", "enqueue->start p99, idle worker", "ms", False),
    Metric("delayed", "p50", "delayed task lateness p50", "ms", False),
    Metric("delayed", "p99", "delayed task lateness p99", "ms", False),
    Metric("redis_memory", "value", "Redis memory per queued task", "bytes", False),
    Metric("rss", "value", "worker RSS after draining the queue", "MiB", False),
]
MEMORY_METRICS = [m for m in REDIS_METRICS if m.key not in ("redis_memory", "rss")]
SCALING_METRICS = [
    Metric(f"scale{k}", "value", f"process no-op, {k} worker process(es) x 100", "tasks/s", True)
    for k in (1, 2, 4)
]

TARGETS = [
    # (section, key, field, comparison, threshold, label) from the Redis and foundation issues
    ("redis", "process_noop", "value", ">=", 20_000, "process >= 20,000 tasks/s"),
    ("redis", "enqueue_one", "value", ">=", 12_000, "enqueue one by one >= 12,000/s"),
    ("redis", "enqueue_bulk", "value", ">=", 100_000, "bulk enqueue >= 100,000/s"),
    ("redis", "latency", "p50", "<=", 0.3, "enqueue->start p50 <= 0.3 ms"),
    ("redis", "latency", "p99", "<=", 1.0, "enqueue->start p99 <= 1 ms"),
    ("redis", "delayed", "p99", "<=", 10.0, "delayed lateness p99 <= 10 ms"),
    ("memory", "process_noop", "value", ">=", 100_000, "in-memory process >= 100,000/s"),
]


@dataclass
class Options:
    runs: int
    tasks: int  # task_queue and in-memory libraries
    peer_tasks: int  # Redis peers
    latency_tasks: int
    polled_latency_tasks: int
    delayed_tasks: int
    rss_tasks: int
    peer_rss_tasks: int
    scaling: tuple[int, ...]
    libs: list[Lib]
    sections: set[str]
    loop: str
    save: bool
    chart: bool
    quick: bool
    timeout: float
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- Redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REDIS_ARGS = ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (url, description) of the Redis to use: $BENCH_REDIS_URL or our own."""
    url = os.environ.get("BENCH_REDIS_URL")
    if url:
        yield url, {"started_by_harness": False}
        return
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install Redis or set BENCH_REDIS_URL")
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, *REDIS_ARGS]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        give_up = time.monotonic() + 10
        while True:
            try:
                MiniRedis(url).close()
                break
            except OSError:
                if time.monotonic() > give_up or process.poll() is not None:
                    sys.exit(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield url, {"started_by_harness": True, "arguments": " ".join(args[1:])}
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def describe_redis(url: str) -> dict[str, Any]:
    client = MiniRedis(url)
    try:
        info = client.info("server")
        config = {}
        for name in ("appendonly", "save", "maxmemory-policy", "hz", "io-threads"):
            reply = client.call("CONFIG", "GET", name)
            config[name] = reply[1].decode() if reply else "?"
        samples = []
        for _ in range(1000):
            started = time.perf_counter()
            client.call("PING")
            samples.append((time.perf_counter() - started) * 1000)
        return {
            "version": info.get("redis_version", "?"),
            "config": config,
            "ping_rtt_p50_ms": percentile(samples, 0.5),
            "ping_rtt_p99_ms": percentile(samples, 0.99),
        }
    finally:
        client.close()


# --------------------------------------------------------------------------- plans


def plan_for(lib: Lib, options: Options) -> list[dict[str, Any]]:
    """The workloads of one run of `lib`."""
    n = options.tasks if (lib.ours or lib.backend == "memory") else options.peer_tasks
    workloads: list[dict[str, Any]] = []
    if lib.backend == "redis" and "redis" in options.sections:
        workloads.append({"name": "redis_memory", "n": n})
    if (lib.backend == "redis" and "redis" in options.sections) or (
        lib.backend == "memory" and "memory" in options.sections
    ):
        latency_n = options.polled_latency_tasks if lib.polls else options.latency_tasks
        workloads += [
            {"name": "enqueue_one", "n": n},
            {"name": "enqueue_gather", "n": n},
            {"name": "enqueue_bulk", "n": n},
            {"name": "process_noop", "n": n, "concurrency": 100},
            {"name": "process_nap", "key": "nap100", "n": n, "concurrency": 100},
            {"name": "process_nap", "key": "nap500", "n": n, "concurrency": 500},
            {"name": "latency", "n": latency_n, "concurrency": 100},
            {"name": "delayed", "n": options.delayed_tasks, "concurrency": 100},
        ]
    if lib.ours and lib.backend == "redis" and "scaling" in options.sections:
        for k in options.scaling:
            workloads.append({"name": "scaling", "key": f"scale{k}", "n": n, "processes": k})
    if lib.only:
        workloads = [w for w in workloads if w.get("key", w["name"]) in lib.only]
    for w in workloads:
        w.setdefault("timeout", options.timeout)
    return workloads


def run_plan(lib: Lib, url: str | None, workloads: list[dict[str, Any]], options: Options) -> Any:
    """Run `workloads` against `lib` in a subprocess; return its JSON document or None."""
    plan = {
        "adapter": lib.adapter,
        "variant": lib.variant,
        "url": url if lib.backend == "redis" else None,
        "loop": options.loop,
        "flush": lib.backend == "redis",
        "workloads": workloads,
    }
    command = [str(lib.python()), str(ADAPTERS / "run.py"), json.dumps(plan)]
    limit = 120 + sum(float(w.get("timeout", 300)) for w in workloads)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired as exc:
        log(f"  {lib.label}: no answer within {limit:g}s; skipped ({exc.stderr!r:.300})")
        return None
    lines = done.stdout.strip().splitlines()
    try:
        document = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        log(f"  {lib.label} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return None
    for entry in document["workloads"]:
        if "error" in entry:
            log(f"  {lib.label} {entry['key']}: ERROR {entry['error']}")
    return document


def run_rss(lib: Lib, url: str, options: Options) -> Any:
    """Prefill in one process, drain in another and report the drainer's RSS."""
    n = options.rss_tasks if lib.ours else options.peer_rss_tasks
    timeout = options.timeout
    filled = run_plan(lib, url, [{"name": "prefill", "n": n, "timeout": timeout}], options)
    if filled is None:
        return None
    spec = {"name": "drain_rss", "key": "rss", "n": n, "concurrency": 100, "timeout": timeout}
    spec["keep_data"] = True
    return run_plan(lib, url, [spec], options)


# --------------------------------------------------------------------------- results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def collect(documents: list[Any]) -> dict[str, dict[str, Any]]:
    """{label: {"info": ..., "workloads": {key: [result per run]}, "errors": {...}}}."""
    out: dict[str, dict[str, Any]] = {}
    for document in documents:
        if document is None:
            continue
        entry = out.setdefault(
            document["label"],
            {
                "info": {k: document[k] for k in ("library", "version", "loop", "settings")},
                "workloads": {},
                "skipped": {},
                "errors": {},
            },
        )
        for w in document["workloads"]:
            if "result" in w:
                entry["workloads"].setdefault(w["key"], []).append(w["result"])
            elif "skipped" in w:
                entry["skipped"][w["key"]] = w["skipped"]
            else:
                entry["errors"].setdefault(w["key"], []).append(w.get("error", "?"))
    return out


def summarize(collected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label, entry in collected.items():
        for key, results in entry["workloads"].items():
            for name in ("value", "p50", "p99"):
                values = [r[name] for r in results if name in r]
                if not values:
                    continue
                summary.setdefault(label, {})[f"{key}.{name}"] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "runs": values,
                    "n": results[0].get("n"),
                }
    return summary


def _fmt(value: float, unit: str) -> str:
    if unit in ("tasks/s", "bytes"):
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:,.1f}"
    return f"{value:,.2f}" if value >= 10 else f"{value:.3f}"


def _ratio(ours: float, theirs: float, higher: bool) -> str:
    if ours <= 0 or theirs <= 0:
        return ""
    r = ours / theirs if higher else theirs / ours
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def table(
    title: str,
    metrics: list[Metric],
    labels: list[str],
    summary: dict[str, Any],
    collected: dict[str, Any],
    ours: str,
    spread: bool,
) -> str:
    """One section: a row per metric, a column per library: median (ratio) or min-max."""
    rows = [["", *labels]]
    for metric in metrics:
        row = [f"{metric.label} ({metric.unit})"]
        mine = summary.get(ours, {}).get(f"{metric.key}.{metric.field}")
        for label in labels:
            cell = summary.get(label, {}).get(f"{metric.key}.{metric.field}")
            if cell is None:
                entry = collected.get(label, {})
                if metric.key in entry.get("errors", {}):
                    row.append("error")
                elif metric.key in entry.get("skipped", {}):
                    row.append("n/a")
                else:
                    row.append("-")
                continue
            if spread:
                row.append(f"{_fmt(cell['min'], metric.unit)}-{_fmt(cell['max'], metric.unit)}")
                continue
            text = _fmt(cell["median"], metric.unit)
            if label != ours and mine is not None:
                text += f" ({_ratio(mine['median'], cell['median'], metric.higher_is_better)})"
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(document: dict[str, Any]) -> str:
    summary, collected = document["summary"], document["collected"]
    env, redis = document["environment"], document["redis"]
    out = [
        f"task_queue benchmarks, {document['date']}: Python {env['python']} on "
        f"{env['platform']}, {env['cpu_count']} CPUs",
    ]
    if redis:
        config = ", ".join(f"{k} {v!r}" for k, v in redis.get("config", {}).items())
        out.append(
            f"Redis {redis.get('version')} on loopback ({config}); bare PING round trip "
            f"p50 {redis['ping_rtt_p50_ms']:.3f} ms, p99 {redis['ping_rtt_p99_ms']:.3f} ms"
        )
    opts = document["options"]
    sizes = f"{opts['runs']} run(s) per figure (median shown); tasks per throughput workload: "
    sizes += f"task_queue and in-memory {opts['tasks']:,}"
    if redis:
        sizes += f", Redis peers {opts['peer_tasks']:,}"
    sizes += (
        f"; latency {opts['latency_tasks']} tasks ({opts['polled_latency_tasks']} for a "
        f"polling default); delayed {opts['delayed_tasks']:,} tasks due over 2 s"
    )
    if any("rss.value" in cells for cells in summary.values()):
        sizes += (
            f"; worker RSS after {opts['rss_tasks']:,} tasks (peers "
            f"{opts['peer_rss_tasks']:,}), one run"
        )
    out.append(sizes)
    out.append(
        "(Nx) = how many times better task_queue is than that column (throughput ours / "
        "theirs, time and memory theirs / ours); n/a = no such feature; - = not run"
    )
    for section, metrics, title in (
        ("redis", REDIS_METRICS, "Redis (one library at a time on the same server)"),
        ("memory", MEMORY_METRICS, "In-memory, one process"),
        ("scaling", SCALING_METRICS, "task_queue on Redis, scaling out"),
    ):
        labels = [
            lib.label
            for lib in LIBS
            if lib.label in collected
            and (
                lib.backend == section
                or (section == "scaling" and lib.ours and lib.backend == "redis")
            )
        ]
        if not labels:
            continue
        ours = "task_queue" if section != "memory" else "task_queue (memory)"
        wanted = [
            m for m in metrics if any(f"{m.key}.{m.field}" in summary.get(x, {}) for x in labels)
        ]
        if not wanted:
            continue
        out.append("")
        out.append(
            table(f"== {title}: median (ratio)", wanted, labels, summary, collected, ours, False)
        )
        if document["options"]["runs"] > 1:
            out.append("")
            out.append(
                table("   min-max over the runs", wanted, labels, summary, collected, ours, True)
            )
    ours_redis = summary.get("task_queue", {})
    ours_memory = summary.get("task_queue (memory)", {})
    checks = []
    for section, key, name, cmp, threshold, label in TARGETS:
        cell = (ours_redis if section == "redis" else ours_memory).get(f"{key}.{name}")
        if cell is None:
            continue
        value = cell["median"]
        met = value >= threshold if cmp == ">=" else value <= threshold
        checks.append(f"  {label:<34} measured {value:>12,.3f}  {'met' if met else 'MISSED'}")
    if checks:
        out += ["", "task_queue against its targets (medians):", *checks]
    out += ["", "Settings:"]
    order = [lib.label for lib in LIBS if lib.label in collected]
    for label in order:
        info = collected[label]["info"]
        out.append(f"  {label} {info['version']}, event loop {info['loop']}:")
        for key, value in info["settings"].items():
            out.append(f"    {key}: {value}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run: a check")
    parser.add_argument(
        "--full", action="store_true", help="the issue's sizes for every library (slow)"
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3)")
    parser.add_argument("--tasks", type=int, help="tasks per throughput workload")
    parser.add_argument("--peer-tasks", type=int, help="the same for the Redis peers")
    parser.add_argument(
        "--libs",
        help="comma-separated libraries to run (default: all): "
        + ",".join(lib.key for lib in LIBS),
    )
    parser.add_argument(
        "--sections",
        default="redis,memory,scaling,rss",
        help="any of redis,memory,scaling,rss (default: all)",
    )
    parser.add_argument(
        "--loop",
        default="recommended",
        choices=("recommended", "asyncio", "uvloop"),
        help="event loop for every library (default: what each library recommends)",
    )
    parser.add_argument("--save", action="store_true", help="write results/<date>.json")
    parser.add_argument("--chart", action="store_true", help="also draw results/<date>.png")
    args = parser.parse_args(argv)
    runs, tasks, peer_tasks = 3, 20_000, 5_000
    latency, polled, delayed_n, rss, peer_rss = 500, 20, 1_000, 100_000, 20_000
    if args.full:
        peer_tasks, polled, peer_rss = 20_000, 100, 100_000
    timeout = 300.0
    if args.quick:
        timeout = 60.0
        runs, tasks, peer_tasks = 1, 2_000, 1_000
        latency, polled, delayed_n, rss, peer_rss = 50, 4, 200, 5_000, 2_000
    wanted = {s.strip() for s in args.libs.split(",")} if args.libs else None
    libs = [lib for lib in LIBS if wanted is None or lib.key in wanted]
    if wanted is not None and len(libs) != len(wanted):
        known = ", ".join(lib.key for lib in LIBS)
        parser.error(f"unknown library in --libs {args.libs!r}; known: {known}")
    return Options(
        runs=args.runs or runs,
        tasks=args.tasks or tasks,
        peer_tasks=args.peer_tasks or args.tasks or peer_tasks,
        latency_tasks=latency,
        polled_latency_tasks=polled,
        delayed_tasks=delayed_n,
        rss_tasks=rss,
        peer_rss_tasks=peer_rss,
        scaling=(1, 2, 4),
        libs=libs,
        sections={s.strip() for s in args.sections.split(",")},
        loop=args.loop,
        save=args.save,
        chart=args.chart,
        quick=args.quick,
        timeout=timeout,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # Terminated, still stop our redis-server (the `finally` of redis_server runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    missing = [lib for lib in options.libs if not lib.python().exists()]
    for lib in missing:
        log(f"skipping {lib.label}: {lib.python()} is missing (make bench creates it)")
    libs = [lib for lib in options.libs if lib not in missing]
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    documents: list[Any] = []
    with redis_server() as (url, server):
        redis = (
            {**server, **describe_redis(url)} if any(x.backend == "redis" for x in libs) else {}
        )
        for run in range(1, options.runs + 1):
            for lib in libs:
                workloads = plan_for(lib, options)
                if not workloads:
                    continue
                log(f"run {run}/{options.runs}: {lib.label} ({len(workloads)} workloads)")
                documents.append(run_plan(lib, url, workloads, options))
        if "rss" in options.sections:
            for lib in libs:
                if lib.backend == "redis" and not lib.only:
                    log(f"rss: {lib.label}")
                    documents.append(run_rss(lib, url, options))
    collected = collect(documents)
    document = {
        "date": date,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_after": os.getloadavg(),
        },
        "redis": redis,
        "options": {
            "runs": options.runs,
            "tasks": options.tasks,
            "peer_tasks": options.peer_tasks,
            "latency_tasks": options.latency_tasks,
            "polled_latency_tasks": options.polled_latency_tasks,
            "delayed_tasks": options.delayed_tasks,
            "rss_tasks": options.rss_tasks,
            "peer_rss_tasks": options.peer_rss_tasks,
            "loop": options.loop,
        },
        "summary": summarize(collected),
        "collected": collected,
        "libraries": {lib.label: {"note": lib.note, "backend": lib.backend} for lib in libs},
        "seconds": round(time.monotonic() - began, 1),
    }
    print(report(document))
    print(f"\n(took {document['seconds']:.0f} s)")
    if options.save:
        RESULTS.mkdir(exist_ok=True)
        # A --quick check never replaces the results of a real run (and git ignores it).
        suffix = "-quick" if options.quick else ""
        path = RESULTS / f"{date}{suffix}.json"
        path.write_text(json.dumps(document, indent=1) + "\n")
        print(f"raw results: {path.relative_to(HERE.parent)}")
        if options.chart:
            chart_python = PEERS / "chart" / "bin" / "python"
            png = RESULTS / f"chart{suffix}.png"  # a stable name for README and docs
            subprocess.run(
                [str(chart_python), str(HERE / "chart.py"), str(path), str(png)], check=True
            )
            print(f"chart: {png.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
