"""What every library adapter shares: the probe its task bodies call, the workloads, and
a tiny Redis client.

Each adapter module (`<lib>_adapter.py`) defines a `Library` subclass that knows how to
enqueue a task of one of four kinds and how to start and stop a worker, nothing more; the
workloads below drive every library the same way. This module imports only the standard
library: it runs inside every peer's own virtualenv.

Task kinds, each taking one number as its argument:

- noop:  count the run.
- nap:   `await asyncio.sleep(0.01)`, then count the run.
- stamp: note the time the task started (argument: a sequence number), then count.
- late:  note how late the task started (argument: its due time, epoch seconds).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

KINDS = ("noop", "nap", "stamp", "late")
GATHER_WIDTH = 32
NAP_SECONDS = 0.01


class NotSupported(Exception):
    """The library has no way to do what a workload asks (e.g. no bulk enqueue)."""


class WorkloadError(Exception):
    """A workload did not do what it had to (e.g. not every task ran)."""


# --------------------------------------------------------------------------- the probe


class Probe:
    """What the task bodies of every library report to; reset before each workload."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = asyncio.Event()
        self.started: dict[int, float] = {}
        self.lateness: list[float] = []
        self.waiting: dict[int, asyncio.Future[float]] = {}

    def ran(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    async def nap(self) -> None:
        await asyncio.sleep(NAP_SECONDS)
        self.ran()

    def stamp(self, number: Any) -> None:
        now = time.perf_counter()
        key = int(number)
        self.started[key] = now
        future = self.waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(now)
        self.ran()

    def late(self, due: Any) -> None:
        self.lateness.append(time.time() - float(due))
        self.ran()


probe = Probe()


# The workload functions as plain coroutine functions taking one float, for the
# libraries that register functions as they are (streaQ, async-task-worker).


async def noop(a: float) -> None:
    probe.ran()


async def nap(a: float) -> None:
    await probe.nap()


async def stamp(a: float) -> None:
    probe.stamp(a)


async def late(a: float) -> None:
    probe.late(a)


FUNCTIONS = {"noop": noop, "nap": nap, "stamp": stamp, "late": late}


# --------------------------------------------------------------------------- library


class Library:
    """One library under test, as an adapter sees it. Subclasses fill in the hooks."""

    name = "?"
    """Short name shown in the table, e.g. "arq"."""
    backend = "redis"
    """"redis" or "memory": which section of the table the library belongs to."""
    recommended_loop = "asyncio"
    """The event loop the library's docs recommend for speed: "asyncio" or "uvloop"."""
    poll_interval: float | None = None
    """Seconds between polls when an idle worker polls for new work, else None."""
    delay_resolution: float | None = None
    """Seconds between the scheduler's checks for due delayed tasks, when it polls."""

    def __init__(self, url: str | None, variant: str | None) -> None:
        self.url = url
        self.variant = variant
        self.concurrency = 0

    @property
    def label(self) -> str:
        """Name plus variant, as a column header."""
        return self.name

    def version(self) -> str:
        return "?"

    def settings(self) -> dict[str, Any]:
        """The settings that matter for speed, printed with the results."""
        return {}

    async def open(self, concurrency: int) -> None:
        """Connect; `concurrency` is what the worker will run with."""
        self.concurrency = concurrency

    async def close(self) -> None:
        """Disconnect and drop everything."""

    async def enqueue(self, kind: str, arg: float) -> None:
        """Enqueue one task and return once the library says it is stored."""
        raise NotImplementedError

    async def enqueue_bulk(self, kind: str, args: list[float]) -> None:
        """Enqueue many tasks through the library's bulk API; NotSupported without one."""
        raise NotSupported("no bulk enqueue API")

    async def enqueue_at(self, kind: str, arg: float, due: float) -> None:
        """Enqueue a task due at `due` (epoch seconds); NotSupported without delays."""
        raise NotSupported("no delayed tasks")

    async def enqueue_bulk_at(self, kind: str, items: list[tuple[float, float]]) -> None:
        """Enqueue many delayed `(arg, due)` tasks at once; NotSupported when it cannot."""
        raise NotSupported("no bulk enqueue of delayed tasks")

    async def start_worker(self) -> None:
        """Start one worker with `self.concurrency` slots in this process."""
        raise NotImplementedError

    async def stop_worker(self) -> None:
        """Stop the worker (tasks it holds may be abandoned: the workload is over)."""
        raise NotImplementedError

    async def check_stored(self, count: int) -> None:
        """Raise WorkloadError unless `count` tasks are stored and pending (optional)."""

    async def fill(self, kind: str, args: list[float]) -> None:
        """Enqueue many tasks the fastest way the library has (not timed)."""
        try:
            for start in range(0, len(args), 5000):
                await self.enqueue_bulk(kind, args[start : start + 5000])
        except NotSupported:
            await gather_enqueue(self, kind, args)


async def gather_enqueue(lib: Library, kind: str, args: list[float]) -> None:
    """Enqueue `args` from GATHER_WIDTH concurrent producers, each one at a time."""
    it = iter(args)

    async def producer() -> None:
        for arg in it:
            await lib.enqueue(kind, arg)

    await asyncio.gather(*(producer() for _ in range(GATHER_WIDTH)))


# --------------------------------------------------------------------------- workloads


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 < fraction <= 1)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


async def _timed(lib: Library, concurrency: int, body: Callable[[], Awaitable[float]]) -> float:
    await lib.open(concurrency)
    try:
        gc.collect()
        return await body()
    finally:
        await lib.close()


async def enqueue_one(lib: Library, n: int) -> dict[str, Any]:
    """Tasks/s of enqueueing `n` no-op tasks one at a time, each awaited."""

    async def body() -> float:
        started = time.perf_counter()
        for i in range(n):
            await lib.enqueue("noop", i)
        elapsed = time.perf_counter() - started
        await lib.check_stored(n)
        return n / elapsed

    return {"value": await _timed(lib, 1, body), "n": n}


async def enqueue_gather(lib: Library, n: int) -> dict[str, Any]:
    """Tasks/s of 32 concurrent producers (one asyncio.gather), each awaiting its enqueues."""

    async def body() -> float:
        args = list(range(n))
        started = time.perf_counter()
        await gather_enqueue(lib, "noop", args)
        elapsed = time.perf_counter() - started
        await lib.check_stored(n)
        return n / elapsed

    return {"value": await _timed(lib, 1, body), "n": n, "producers": GATHER_WIDTH}


async def enqueue_bulk(lib: Library, n: int) -> dict[str, Any]:
    """Tasks/s of one call of the library's bulk API with `n` no-op tasks."""

    async def body() -> float:
        args = list(range(n))
        started = time.perf_counter()
        await lib.enqueue_bulk("noop", args)
        elapsed = time.perf_counter() - started
        await lib.check_stored(n)
        return n / elapsed

    return {"value": await _timed(lib, 1, body), "n": n}


async def process(
    lib: Library, n: int, concurrency: int, kind: str, timeout: float
) -> dict[str, Any]:
    """Tasks/s of one worker draining `n` prefilled tasks; checks each ran exactly once."""

    async def body() -> float:
        await lib.fill(kind, list(range(n)))
        probe.reset(n)
        gc.collect()
        started = time.perf_counter()
        await lib.start_worker()
        try:
            async with asyncio.timeout(timeout):
                await probe.done.wait()
        except TimeoutError:
            raise WorkloadError(
                f"{probe.count:,} of {n:,} tasks ran within {timeout:g}s"
            ) from None
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.05)  # a task run twice would show up now
        await lib.stop_worker()
        if probe.count != n:
            raise WorkloadError(f"{probe.count:,} runs for {n:,} tasks")
        return n / elapsed

    return {"value": await _timed(lib, concurrency, body), "n": n, "concurrency": concurrency}


async def latency(lib: Library, n: int, concurrency: int, warmup: int = 20) -> dict[str, Any]:
    """Enqueue -> start times (ms) of `n` tasks added one at a time to an idle worker."""
    samples: list[float] = []

    async def body() -> float:
        probe.reset(1 << 60)
        await lib.start_worker()
        await asyncio.sleep(0.2)  # let the worker settle into its idle wait
        loop = asyncio.get_running_loop()
        for number in range(warmup + n):
            future: asyncio.Future[float] = loop.create_future()
            probe.waiting[number] = future
            before = time.perf_counter()
            await lib.enqueue("stamp", number)
            try:
                async with asyncio.timeout(10 + 2 * (lib.poll_interval or 0)):
                    started = await future
            except TimeoutError:
                raise WorkloadError(f"task {number} did not start within 10s") from None
            if number >= warmup:
                samples.append((started - before) * 1000)
        await lib.stop_worker()
        return 0.0

    await _timed(lib, concurrency, body)
    return {
        "p50": percentile(samples, 0.5),
        "p99": percentile(samples, 0.99),
        "mean": statistics.fmean(samples),
        "max": max(samples),
        "n": n,
    }


async def delayed(
    lib: Library, n: int, concurrency: int, spread: float = 2.0, lead: float = 2.0
) -> dict[str, Any]:
    """Lateness (ms) of `n` tasks due at known times `spread` seconds apart in total."""
    timeout = lead + spread + 30 + 2 * (lib.delay_resolution or lib.poll_interval or 0)

    async def body() -> float:
        probe.reset(n)
        await lib.start_worker()
        base = time.time() + lead
        items = [(base + i * spread / n, base + i * spread / n) for i in range(n)]
        try:
            await lib.enqueue_bulk_at("late", items)
        except NotSupported:
            it = iter(items)

            async def producer() -> None:
                for arg, due in it:
                    await lib.enqueue_at("late", arg, due)

            await asyncio.gather(*(producer() for _ in range(GATHER_WIDTH)))
        if time.time() > base:
            raise WorkloadError("enqueueing the delayed tasks took longer than their lead")
        try:
            async with asyncio.timeout(timeout):
                await probe.done.wait()
        except TimeoutError:
            raise WorkloadError(f"{probe.count:,} of {n:,} ran within {timeout:g}s") from None
        await lib.stop_worker()
        return 0.0

    await _timed(lib, concurrency, body)
    samples = [s * 1000 for s in probe.lateness]
    return {
        "p50": percentile(samples, 0.5),
        "p99": percentile(samples, 0.99),
        "min": min(samples),
        "max": max(samples),
        "n": n,
    }


async def redis_memory(lib: Library, n: int) -> dict[str, Any]:
    """Bytes of Redis memory per queued no-op task (INFO used_memory before and after)."""
    assert lib.url is not None
    client = MiniRedis(lib.url)

    async def body() -> float:
        before = client.used_memory()
        await lib.fill("noop", list(range(n)))
        after = client.used_memory()
        return (after - before) / n

    try:
        return {"value": await _timed(lib, 1, body), "n": n}
    finally:
        client.close()


async def drain_rss(lib: Library, n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """This worker process's RSS (MiB) after it ran `n` tasks another process prefilled."""
    extra: dict[str, float] = {}

    async def body() -> float:
        probe.reset(n)
        extra["rss_before_mib"] = rss_mib()
        await lib.start_worker()
        try:
            async with asyncio.timeout(timeout):
                await probe.done.wait()
        except TimeoutError:
            raise WorkloadError(
                f"{probe.count:,} of {n:,} tasks ran within {timeout:g}s"
            ) from None
        await asyncio.sleep(0.2)  # acks and bookkeeping of the last tasks
        gc.collect()
        rss = rss_mib()
        extra["peak_mib"] = peak_rss_mib()
        await lib.stop_worker()
        return rss

    value = await _timed(lib, concurrency, body)
    return {"value": value, "n": n, **extra}


async def prefill(lib: Library, n: int) -> dict[str, Any]:
    """Enqueue `n` no-op tasks for a later `drain_rss` in another process."""

    async def body() -> float:
        await lib.fill("noop", list(range(n)))
        return float(n)

    return {"value": await _timed(lib, 1, body), "n": n}


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Highest resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- tiny Redis


class MiniRedis:
    """A blocking RESP2 client for the harness's few admin commands (stdlib only)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        if parts.password:
            self.call("AUTH", parts.password)
        db = parts.path.lstrip("/")
        if db:
            self.call("SELECT", db)

    def call(self, *args: Any) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self.file.read(length + 2)
            return data[:-2]
        if kind == b"*":
            length = int(rest)
            return None if length < 0 else [self._read() for _ in range(length)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section).decode()
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: v for k, v in pairs}

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Split `items` into lists of at most `size`."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
