"""A worker whose event loop is blocked for longer than its lease: fencing refuses it.

The stalled worker cannot renew while its loop is blocked, so its leases run out and
another worker (here: one in the test process) recovers the tasks and runs them again.
When the stalled loop wakes, its executors finish and it reports success with its old
fencing tokens: every one of those acks must be refused, and the outcome stored must be
the second worker's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from task_queue import TaskStatus
from tests.chaos.app import build_service
from tests.chaos.harness import (
    ChaosRun,
    wait_until,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


LEASE = 1.0
STALL = 5.0  # the loop of the first worker is blocked this long: five leases


async def test_a_stalled_worker_cannot_overwrite_the_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ChaosRun(tmp_path, LEASE, 4) as run:
        pool, ledger, broker = run.pool, run.ledger, run.broker
        rescuer = build_service(run.server.url, run.prefix, LEASE, ledger.directory)
        try:
            stalled = pool.start()
            await pool.wait_ready()
            started = time.time()
            # Three tasks that await (they start first: lower priority number), then the
            # one that blocks the loop: the stalled worker holds all four when its loop
            # stops.
            specs = [{"name": "work", "payload": {"ms": 300}} for _ in range(3)]
            specs.append({"name": "stall", "payload": {"stall": STALL}, "priority": 1})
            tasks = await run.producer.add_tasks(specs)
            stall_id = tasks[-1].id
            ledger.add_acked(t.id for t in tasks)

            async def stalling() -> bool:
                return any(r.kind == "start" and r.task_id == stall_id for r in ledger.runs())

            await wait_until(stalling, 30, "the first worker to run the stalling task")
            rescuer.start_workers(4)
            finals = [await broker.wait_for(t.id, timeout=30) for t in tasks]
            stalled_log = pool.logs / "worker-0.log"

            async def stale_ack_refused() -> bool:
                return f"task {stall_id}: stale holder" in stalled_log.read_text()

            await wait_until(stale_ack_refused, 30, "the stalled worker to report its ack")
            await rescuer.shutdown()
            codes, state, figures, logs = await run.settle(
                "event-loop stall", started, caplog.text
            )
            refused = logs.count("stale holder")
            figures.notes += [f"loop blocked {STALL:g}s, lease {LEASE:g}s"]
            figures.notes += [f"{refused} stale acks refused"]
            figures.record()
        finally:
            await rescuer.shutdown()
            await rescuer.broker.close()
    me = os.getpid()
    for final in finals:
        assert final.status is TaskStatus.COMPLETED
        assert final.attempts == 2  # the stalled attempt counts
        assert final.result == {"pid": me, "attempt": 2}  # the rescuer's outcome stands
    done = [r for r in ledger.runs() if r.kind == "done" and r.task_id == stall_id]
    assert sorted((r.pid, r.attempt) for r in done) == sorted([(stalled.pid, 1), (me, 2)])
    assert state.problems == []
    assert figures.lost == 0
    assert figures.fencing_violations == 0
    assert figures.unexplained_duplicates == 0
    assert figures.recovered_leases == 4
    assert codes == [0], logs
    assert "Traceback" not in logs
