"""Worker processes SIGKILLed every ~0.5 s while a live producer feeds them: nothing lost.

Four `task-queue worker` processes run tasks of mixed priorities (10 % delayed, each
sleeping 0-20 ms) from a Redis this test owns (`appendonly yes`, `appendfsync always`). A
killer SIGKILLs a random running worker about every 0.5 s (the first one as soon as a
worker is busy) and starts a new one in its place. The
ledger (append-only files, outside Redis) says which tasks the producer got an answer for
and which runs happened; the final state of Redis must account for each of them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.harness import (
    SIZE,
    ChaosRun,
    Figures,
    kill_loop,
    produce,
    run_timeout,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

WORKERS = 4
CONCURRENCY = 25
KILL_EVERY = 0.5
# A killed worker's tasks wait out their lease: short enough to recover fast, long
# enough (heartbeat every lease / 3) that a busy, shared machine rarely makes a live
# worker lose one. Without kills nothing needs recovering: a long lease rules that out.
LEASE = 3.0
CALM_LEASE = 30.0


async def run_workers(
    tmp_path: Path, scenario: str, count: int, *, kill_every: float | None, lease: float
) -> Figures:
    """Process `count` tasks with WORKERS processes (killed every `kill_every` s)."""
    killer: asyncio.Task[None] | None = None
    async with ChaosRun(tmp_path, lease, CONCURRENCY) as run:
        try:
            for _ in range(WORKERS):
                run.pool.start()
            await run.pool.wait_ready()
            started = time.time()
            if kill_every is not None:
                killer = asyncio.create_task(kill_loop(run.pool, run.rng, kill_every, run.ledger))
            await produce(run.producer, run.ledger, count, run.rng)

            await run.drained(count)
        finally:
            if killer is not None:
                killer.cancel()
                await asyncio.gather(killer, return_exceptions=True)
        codes, state, figures, logs = await run.settle(scenario, started)
        figures.notes += [f"seed {run.seed}", f"lease {lease:g}s"]
        figures.record()
    seed = run.seed
    context = f"seed {seed}, {figures}"
    assert figures.tasks == count
    assert state.problems == [], context
    assert figures.lost == 0, context
    assert figures.fencing_violations == 0, context
    assert figures.unexplained_duplicates == 0, context
    assert codes == [0] * len(codes), logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    return figures


@pytest.mark.timeout(run_timeout(SIZE))
async def test_nothing_is_lost_while_workers_are_killed(tmp_path: Path) -> None:
    figures = await run_workers(tmp_path, "worker kills", SIZE, kill_every=KILL_EVERY, lease=LEASE)
    assert figures.kills >= 1  # the faults did happen, the first to a busy worker
    assert figures.recovered_leases > 0


@pytest.mark.timeout(run_timeout(SIZE // 5))
async def test_without_faults_every_task_runs_exactly_once(tmp_path: Path) -> None:
    count = max(500, SIZE // 5)
    figures = await run_workers(tmp_path, "no faults", count, kill_every=None, lease=CALM_LEASE)
    assert figures.duplicates == 0
    assert figures.recovered_leases == 0
