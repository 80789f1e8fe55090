"""Redis shut down and restarted, then SIGKILLed and restarted, under a live producer.

The test owns the redis-server (`appendonly yes`, `appendfsync always`): everything Redis
acknowledged is on disk before the reply leaves, so a SIGKILL loses only calls whose
reply never came, and the broker runs those again (enqueue is idempotent on the id, a
dequeue rerun returns the batch of its first run, acks repeat harmlessly). No worker
dies and no lease runs out, so nothing may run twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.chaos.harness import (
    SIZE,
    ChaosRun,
    produce,
    run_timeout,
    wait_until,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

COUNT = max(1500, SIZE // 5)
WORKERS = 3
CONCURRENCY = 20
LEASE = 10.0  # far longer than an outage here: a lease that ran out would rerun a task


@pytest.mark.timeout(run_timeout(COUNT))
async def test_nothing_is_lost_when_redis_restarts_or_is_killed(tmp_path: Path) -> None:
    duration = max(4.0, COUNT / 1500)  # the producer is live for this long
    async with ChaosRun(tmp_path, LEASE, CONCURRENCY) as run:
        for _ in range(WORKERS):
            run.pool.start()
        await run.pool.wait_ready()
        started = time.time()
        production = asyncio.create_task(
            produce(run.producer, run.ledger, COUNT, run.rng, rate=COUNT / duration, batch=20)
        )

        async def produced(share: float) -> bool:
            if production.done():
                production.result()  # a failed producer fails the test here
                return True
            return run.ledger.acked_count >= share * COUNT

        await wait_until(lambda: produced(0.3), 60, "30 % of the tasks to be enqueued")
        graceful = await run.server.restart()
        await wait_until(lambda: produced(0.65), 60, "65 % of the tasks to be enqueued")
        crash = await run.server.crash_and_restart()
        await production

        await run.drained(COUNT)
        codes, state, figures, logs = await run.settle("Redis restart + SIGKILL", started)
        figures.redis_faults = 2
        figures.notes += [
            f"seed {run.seed}",
            f"outage {graceful:.2f}s (restart), {crash:.2f}s (SIGKILL)",
        ]
        figures.record()
    seed = run.seed
    context = f"seed {seed}, {figures}"
    assert figures.tasks == COUNT
    assert state.problems == [], context
    assert figures.lost == 0, context
    assert figures.fencing_violations == 0, context
    assert figures.unexplained_duplicates == 0, context
    if max(graceful, crash) < LEASE:  # else leases ran out meanwhile: reruns are allowed
        assert figures.duplicates == 0, context
        assert figures.recovered_leases == 0, context
    assert codes == [0] * WORKERS, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
