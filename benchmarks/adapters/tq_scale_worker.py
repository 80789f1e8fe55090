"""One worker process of the scaling workload (started by task_queue_adapter.py).

    python tq_scale_worker.py REDIS_URL PREFIX CONCURRENCY [asyncio|uvloop]

Connects, prints "ready", starts its slots when it reads "go", and on "stop" shuts down
and prints how many tasks its executor ran.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from task_queue import Task, TaskQueueService
from task_queue.broker.redis import RedisBroker


async def main(url: str, prefix: str, concurrency: int) -> None:
    runs = 0

    async def noop(task: Task) -> None:
        nonlocal runs
        runs += 1

    broker = RedisBroker.from_url(url, prefix=prefix)
    service = TaskQueueService(broker, {"noop": noop}, concurrency=concurrency)
    await broker.get_task("connect")  # open the connection before the clock starts
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
        return
    service.start_workers(concurrency)
    await loop.run_in_executor(None, sys.stdin.readline)
    await service.shutdown(grace=1)
    await broker.close()
    print(runs, flush=True)


if __name__ == "__main__":
    factory = None
    if len(sys.argv) > 4 and sys.argv[4] == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
