"""RedisBroker against its targets: task_queue alone, Redis on loopback.

    python benchmarks/redis.py [harness options, e.g. --runs 1]

Runs the harness's Redis workloads for task_queue only (one worker process at
concurrency 100, 20,000 no-op tasks per throughput figure) and prints each figure with
its target: processing, enqueue one by one, bulk enqueue, enqueue -> start p50 and p99
with an idle worker, and the lateness of delayed tasks. `make bench` runs the same
workloads for the peers beside it; `make bench-redis` adds scaling and memory.
"""

from __future__ import annotations

import sys

from harness import main

if __name__ == "__main__":
    sys.exit(main(["--libs", "task_queue", "--sections", "redis", *sys.argv[1:]]))
