"""Machinery of the chaos runs: Redis servers they own, worker processes, the ledger.

The ledger is the oracle, kept outside the failure domain: append-only files on local disk
(tests/chaos/app.py writes the runs, the producer the ids whose `add_task` returned), read
back after the run and compared with what Redis holds. Sizes come from `TQ_CHAOS_TASKS`
(CI: the small default; `make chaos`: 100,000); with `TQ_CHAOS_RESULTS` set, each run
adds its figures to that JSON file for `python -m tests.chaos.report`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from task_queue import TaskQueueService, TaskStatus
from task_queue.broker.redis import RedisBroker
from tests.conftest import REQUIRE_REDIS, unique_prefix

REPO = Path(__file__).resolve().parents[2]

SIZE = int(os.environ.get("TQ_CHAOS_TASKS", "3000"))
"""Tasks of the worker-kill run; the other runs scale from it."""


def run_timeout(tasks: int) -> float:
    """A pytest timeout for a run of `tasks` tasks on a slow, shared machine."""
    return 120 + tasks / 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.05
) -> None:
    """Wait for `check()` to hold, checking again every `every` s; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)


# ------------------------------------------------------------------ Redis servers


class RedisServer:
    """A redis-server the test starts, restarts, kills and stops (its own port and dir).

    Durable by default: `appendonly yes`, `appendfsync always`, no RDB snapshots.
    `password` sets `requirepass`; `tls` is (cert, key, ca) to listen with TLS only.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if REQUIRE_REDIS:
                pytest.fail("redis-server is not installed, and TASK_QUEUE_REQUIRE_REDIS=1")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        auth = f":{quote(password, safe='')}@" if password else ""
        if tls is None:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        else:
            self.url = f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={tls[2]}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        args = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        args += ["--logfile", str(self.workdir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            args += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        return args

    def client(self, **options: Any) -> Redis:
        """A redis-py client of this server (TLS and password included)."""
        return Redis.from_url(self.url, **options)

    async def start(self) -> None:
        """Start the server and wait until it answers (its AOF loaded)."""
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = self.client(socket_connect_timeout=1)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except Exception:
                return False

        try:
            await wait_until(answers, 30, "redis-server to start")
        except BaseException:
            self.stop()
            raise
        finally:
            await client.aclose()

    async def restart(self) -> float:
        """Shut down cleanly (SIGTERM: the AOF is written), start again; the outage in s."""
        return await self._stop_and_start(signal.SIGTERM)

    async def crash_and_restart(self) -> float:
        """SIGKILL the server, start it again on its AOF; the outage in seconds."""
        return await self._stop_and_start(signal.SIGKILL)

    async def kill(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        assert self.proc is not None
        self.proc.kill()
        await asyncio.to_thread(self.proc.wait, 30)

    async def _stop_and_start(self, signum: int) -> float:
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signum)
        await asyncio.to_thread(self.proc.wait, 30)
        await self.start()
        return time.monotonic() - began

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ worker processes


def app_env(url: str, prefix: str, lease: float, ledger: Path) -> dict[str, str]:
    """The environment of a tests.chaos.app worker process."""
    env = dict(os.environ)
    env.update(
        TQ_CHAOS_URL=url,
        TQ_CHAOS_PREFIX=prefix,
        TQ_CHAOS_LEASE=str(lease),
        TQ_CHAOS_LEDGER=str(ledger),
        PYTHONPATH=str(REPO),
    )
    return env


class WorkerPool:
    """`task-queue worker` processes of tests.chaos.app, each logging to its own file."""

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        concurrency: int,
        *,
        log_level: str = "INFO",
        app: str = "tests.chaos.app:make_service",
    ) -> None:
        self.env = env
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.log_level = log_level
        self.app = app
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log_of: dict[int, Path] = {}
        self.killed: dict[int, float] = {}
        """pid -> wall-clock time of its SIGKILL."""
        self._files: list[IO[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """Start one more worker process."""
        path = self.logs / f"worker-{len(self.procs)}.log"
        log = path.open("wb")
        self._files.append(log)
        command = [sys.executable, "-m", "task_queue", "--log-level", self.log_level]
        command += ["worker", self.app, "--concurrency", str(self.concurrency)]
        proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=log)
        self.procs.append(proc)
        self._log_of[proc.pid] = path
        return proc

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once `proc` runs its slots (and so handles SIGTERM)."""
        return b" running " in self._log_of[proc.pid].read_bytes()

    async def wait_ready(self) -> None:
        """Wait until every live worker has started its slots."""

        async def all_ready() -> bool:
            return all(self.ready(p) for p in self.alive())

        await wait_until(all_ready, 60, "the worker processes to start")

    def alive(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes not killed and still running."""
        return [p for p in self.procs if p.pid not in self.killed and p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL `proc`, noting when."""
        self.killed[proc.pid] = time.time()
        proc.kill()

    async def stop(self) -> list[int | None]:
        """SIGTERM every worker not killed; their exit codes (None: had to be killed)."""
        if self.alive():
            await self.wait_ready()  # a SIGTERM while Python starts up just kills
        survivors = self.alive()
        for proc in survivors:
            proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in survivors:
            try:
                codes.append(await asyncio.to_thread(proc.wait, 60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in self._files:
            log.close()
        return codes

    def output(self) -> str:
        """Everything the workers logged."""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log"))
        )

    def lease_losses(self) -> set[tuple[int, str]]:
        """(pid, task id) of every run whose worker, alive, found its lease gone: its
        ack was refused as stale, or its heartbeat said the lease was lost."""
        losses = set()
        for pid, path in self._log_of.items():
            for match in LEASE_LOSS.finditer(path.read_text(errors="replace")):
                losses.add((pid, match.group(1) or match.group(2)))
        return losses


LEASE_LOSS = re.compile(
    r"task (\S+): stale holder .* reported completed; refused"
    r"|task (\S+) \[\S+\]: lease lost while running"
)


async def kill_loop(pool: WorkerPool, rng: random.Random, every: float, ledger: Ledger) -> None:
    """Every ~`every` seconds SIGKILL a random running worker and start a new one.

    The first victim is the first worker seen running several tasks (per the ledger),
    so that even a short run kills a worker in the middle of its work.
    """
    first = True
    while True:
        if first:
            await asyncio.sleep(0.05)
            busy = ledger.running()
            victims = [p for p in pool.alive() if pool.ready(p) and busy.get(p.pid, 0) >= 3]
        else:
            await asyncio.sleep(rng.uniform(0.6, 1.4) * every)
            victims = [p for p in pool.alive() if pool.ready(p)]
        if victims:
            pool.kill(rng.choice(victims))
            pool.start()
            first = False


# ------------------------------------------------------------------ ledger and producer


class Run(NamedTuple):
    """One ledger line of an executor: "start" or "done"."""

    kind: str
    task_id: str
    attempt: int
    pid: int
    at: float


class Ledger:
    """The oracle: runs written by the executors, ids whose `add_task` returned."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        acked = directory / "acked.jsonl"
        self._acked = os.open(acked, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.acked_count = 0

    def add_acked(self, ids: Iterable[str]) -> None:
        """Record ids whose `add_task` (or `add_tasks`) call returned."""
        lines = [json.dumps(i) + "\n" for i in ids]
        os.write(self._acked, "".join(lines).encode())
        self.acked_count += len(lines)

    def acked(self) -> list[str]:
        """Ids whose enqueue call returned, in order."""
        text = (self.directory / "acked.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def runs(self) -> list[Run]:
        """Every run line of every worker process, in time order."""
        runs = []
        for path in self.directory.glob("runs-*.jsonl"):
            for line in path.read_text().splitlines():
                if line:  # a worker killed mid-write leaves at most an unfinished line
                    try:
                        kind, task_id, attempt, pid, at = json.loads(line)
                    except ValueError:
                        continue
                    runs.append(Run(kind, task_id, attempt, pid, at))
        runs.sort(key=lambda r: r.at)
        return runs

    def running(self) -> dict[int, int]:
        """pid -> how many tasks it has started and not finished."""
        open_runs: dict[int, set[tuple[str, int]]] = defaultdict(set)
        for run in self.runs():
            (open_runs[run.pid].add if run.kind == "start" else open_runs[run.pid].discard)(
                (run.task_id, run.attempt)
            )
        return {pid: len(runs) for pid, runs in open_runs.items()}

    def close(self) -> None:
        """Close the producer's file."""
        os.close(self._acked)


def task_spec(rng: random.Random) -> dict[str, Any]:
    """One `work` task: priority 0-9, 10 % delayed up to 2 s, sleeping 0-20 ms."""
    spec: dict[str, Any] = {
        "name": "work",
        "payload": {"ms": round(rng.uniform(0, 20), 2)},
        "priority": rng.randint(0, 9),
    }
    if rng.random() < 0.1:
        spec["delay_seconds"] = round(rng.uniform(0.05, 2.0), 3)
    return spec


async def produce(
    service: TaskQueueService,
    ledger: Ledger,
    count: int,
    rng: random.Random,
    *,
    rate: float | None = None,
    batch: int = 100,
    lanes: int = 4,
) -> None:
    """Enqueue `count` tasks from `lanes` concurrent producers, one call in two by
    `add_task`, the others by `add_tasks` with `batch` tasks; at most `rate` tasks/s
    when given. Only ids whose call returned go to the ledger."""
    started = time.monotonic()
    sent = 0

    async def lane(share: int) -> None:
        nonlocal sent
        done = 0
        while done < share:
            size = min(1 if rng.random() < 0.5 else batch, share - done)
            specs = [task_spec(rng) for _ in range(size)]
            if size == 1:
                ids = [(await service.add_task(**specs[0])).id]
            else:
                ids = [t.id for t in await service.add_tasks(specs)]
            ledger.add_acked(ids)
            done += size
            sent += size
            if rate is not None:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)

    shares = [count // lanes + (1 if i < count % lanes else 0) for i in range(lanes)]
    await asyncio.gather(*(lane(share) for share in shares if share))


# ------------------------------------------------------------------ the state of Redis

STATE_SETS = {
    "ready": "pending",
    "delayed": "pending",
    "waiting": "pending",
    "inflight": "processing",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass
class Census:
    """Which state set holds each task id, and every breach of "exactly one set";
    `outcomes` maps each completed task to its stored result and attempts."""

    where: dict[str, list[str]]
    problems: list[str]
    outcomes: dict[str, tuple[Any, int]] = field(default_factory=dict)

    def ids_in(self, state_set: str) -> set[str]:
        """The ids held by `state_set` alone."""
        return {i for i, sets in self.where.items() if sets == [state_set]}


async def census(client: Redis, base_key: str) -> Census:
    """Check that every task hash of the queue is in exactly one state set, the one its
    `status` names, and that every set member has a task hash."""
    where: dict[str, list[str]] = defaultdict(list)
    for name in STATE_SETS:
        for member in await client.zrange(f"{base_key}:{name}", 0, -1):
            where[member.decode()].append(name)
    task_prefix = f"{base_key}:task:"
    hashes: list[str] = []
    async for key in client.scan_iter(match=task_prefix.replace("[", "\\[") + "*", count=1000):
        hashes.append(key.decode()[len(task_prefix) :])
    statuses: dict[str, str | None] = {}
    outcomes: dict[str, tuple[Any, int]] = {}
    for start in range(0, len(hashes), 1000):
        chunk = hashes[start : start + 1000]
        async with client.pipeline(transaction=False) as pipe:
            for task_id in chunk:
                pipe.hmget(task_prefix + task_id, "status", "result", "attempts")
            for task_id, fields in zip(chunk, await pipe.execute(), strict=True):
                status, result, attempts = fields
                statuses[task_id] = None if status is None else status.decode()
                if status == b"completed":
                    outcomes[task_id] = (json.loads(result or b"null"), int(attempts or 0))
    problems = []
    for task_id, status in statuses.items():
        sets = where.get(task_id, [])
        if len(sets) != 1:
            problems.append(f"task {task_id!r} ({status}) is in {len(sets)} state sets: {sets}")
        elif STATE_SETS[sets[0]] != status:
            problems.append(f"task {task_id!r} is in {sets[0]} but its status is {status}")
    for task_id in where.keys() - statuses.keys():
        problems.append(f"{task_id!r} is in {where[task_id]} but has no task hash")
    return Census(dict(where), problems, outcomes)


# ------------------------------------------------------------------ figures


@dataclass
class Figures:
    """What one chaos run measured; `record()` keeps it for the report."""

    scenario: str
    tasks: int
    kills: int = 0
    redis_faults: int = 0
    lost: int = 0
    duplicates: int = 0
    unexplained_duplicates: int = 0
    fencing_violations: int = 0
    recovered_leases: int = 0
    recovery_p50: float | None = None
    recovery_p99: float | None = None
    throughput: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def record(self) -> None:
        """Add these figures to the file named by TQ_CHAOS_RESULTS, if set."""
        target = os.environ.get("TQ_CHAOS_RESULTS")
        if not target:
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[self.scenario] = {**asdict(self), "size": SIZE, "recorded_at": time.time()}
        path.write_text(json.dumps(results, indent=2) + "\n")


def percentile(values: list[float], fraction: float) -> float | None:
    """The value below which `fraction` of `values` lie (nearest rank); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


RECOVERY_LOG = re.compile(r"lease of .* expired; task is")


def analyse(
    scenario: str,
    acked: list[str],
    runs: list[Run],
    state: Census,
    killed: dict[int, float],
    logs: str,
    started: float,
    lease_losses: set[tuple[int, str]] | None = None,
) -> Figures:
    """Compare the ledger with the final state of Redis.

    lost: acked ids that did not end COMPLETED with a "done" run. The stored result
    names the run it came from (pid, attempt): it must be a run of the ledger and of
    the task's latest lease, else it counts in `fencing_violations`. duplicates: "done"
    runs beyond the first of a task. A run other than the stored one is explained when
    its worker was SIGKILLed after writing it and before the task started again (the
    worker died after the side effect, before its ack landed), or when that worker,
    alive but stalled, found its lease gone and its ack refused (`lease_losses`,
    counted in the notes); `unexplained_duplicates` counts the others. Recovery
    latency: from the SIGKILL of a worker that had started a task to the next start of
    that task.
    """
    lease_losses = lease_losses or set()
    completed = state.ids_in("completed")
    done: dict[str, list[Run]] = defaultdict(list)
    starts: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        (done if run.kind == "done" else starts)[run.task_id].append(run)
    lost = sum(1 for i in acked if i not in completed or not done.get(i))
    slack = 0.05  # seconds: a line written just as the SIGKILL landed

    def explained(task_id: str, run: Run) -> bool:
        later = [s.at for s in starts[task_id] if s.attempt > run.attempt]
        killed_at = killed.get(run.pid)
        return (
            killed_at is not None
            and killed_at >= run.at - slack
            and (not later or killed_at <= min(later) + slack)
        )

    duplicates = unexplained = stalled = violations = 0
    for task_id, finished in done.items():
        duplicates += len(finished) - 1
        others = list(finished)
        result, attempts = state.outcomes.get(task_id, (None, None))
        if isinstance(result, dict) and {"pid", "attempt"} <= result.keys():
            mine = [r for r in others if (r.pid, r.attempt) == (result["pid"], result["attempt"])]
            if not mine or result["attempt"] != attempts:
                violations += 1
            else:
                others.remove(mine[0])
        elif others:
            others.pop()  # outcome unknown: one of the runs is the stored one
        for run in others:
            if explained(task_id, run):
                continue
            if (run.pid, task_id) in lease_losses:
                stalled += 1
            else:
                unexplained += 1
    latencies = []
    for begun in starts.values():
        for run in begun:
            killed_at = killed.get(run.pid)
            if killed_at is None or killed_at < run.at:
                continue
            again = [s.at for s in begun if s.attempt > run.attempt and s.at >= killed_at]
            if again:
                latencies.append(min(again) - killed_at)
    last = max((r.at for r in runs if r.kind == "done"), default=started)
    seconds = max(last - started, 1e-9)
    notes = [f"{stalled} duplicates after a live worker lost its lease"] if stalled else []
    return Figures(
        scenario=scenario,
        tasks=len(acked),
        kills=len(killed),
        lost=lost,
        duplicates=duplicates,
        unexplained_duplicates=unexplained,
        fencing_violations=violations,
        recovered_leases=len(RECOVERY_LOG.findall(logs)),
        recovery_p50=percentile(latencies, 0.50),
        recovery_p99=percentile(latencies, 0.99),
        throughput=len(completed & set(acked)) / seconds,
        seconds=seconds,
        notes=notes,
    )


# ------------------------------------------------------------------ one run


class ChaosRun:
    """The fixtures of one process run: a Redis server of its own, the ledger, a pool of
    worker processes, a producer service and a raw client for the census.

    `async with ChaosRun(...)` starts the server and tears everything down afterwards;
    `settle()` stops the workers and measures what happened. `seed` (from TQ_CHAOS_SEED,
    else random) drives `rng`.
    """

    def __init__(self, tmp_path: Path, lease: float, concurrency: int) -> None:
        self.seed = int(os.environ.get("TQ_CHAOS_SEED", random.randrange(2**32)))
        self.rng = random.Random(self.seed)
        self.lease = lease
        self.server = RedisServer(tmp_path / "redis")
        self.prefix = unique_prefix()
        self.ledger = Ledger(tmp_path / "ledger")
        env = app_env(self.server.url, self.prefix, lease, self.ledger.directory)
        self.pool = WorkerPool(env, tmp_path / "logs", concurrency)
        self.broker = RedisBroker.from_url(
            self.server.url, prefix=self.prefix, lease_seconds=lease
        )
        self.producer = TaskQueueService(self.broker, check_names=False)
        self.client = self.server.client()

    async def __aenter__(self) -> ChaosRun:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.stop()
        await self.client.aclose()
        await self.broker.close()
        self.ledger.close()
        self.server.stop()

    async def drained(self, count: int) -> None:
        """Wait until no task of the queue is pending or processing (all `count` ended)."""

        async def all_final() -> bool:
            counts = await self.broker.count_tasks()
            return counts[TaskStatus.PENDING] == 0 and counts[TaskStatus.PROCESSING] == 0

        await wait_until(all_final, run_timeout(count), f"{count} tasks to finish", 0.1)

    async def settle(
        self, scenario: str, started: float, extra_logs: str = ""
    ) -> tuple[list[int | None], Census, Figures, str]:
        """Stop the workers; return their exit codes, the census, the figures of the run
        and the workers' logs."""
        codes = await self.pool.stop()
        state = await census(self.client, self.broker.base_key)
        logs = self.pool.output()
        figures = analyse(
            scenario,
            self.ledger.acked(),
            self.ledger.runs(),
            state,
            self.pool.killed,
            logs + extra_logs,
            started,
            self.pool.lease_losses(),
        )
        return codes, state, figures, logs
