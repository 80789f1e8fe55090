"""Run a plan of workloads against one library, in this process; print the results as JSON.

The harness starts this script with the Python of the library's own virtualenv:

    python benchmarks/adapters/run.py '<plan as JSON>'

The plan names the adapter module, its variant, the Redis URL, the event loop and the
workloads, e.g. {"adapter": "arq_adapter", "variant": "poll-10ms", "url": "redis://...",
"loop": "recommended", "flush": true, "workloads": [{"name": "enqueue_one", "n": 20000}]}.
The last line of stdout is one JSON object; everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import platform
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import common
from common import Library, MiniRedis, NotSupported, WorkloadError


def _workload(lib: Library, spec: dict[str, Any]) -> Coroutine[Any, Any, dict[str, Any]]:
    name = spec["name"]
    n = int(spec.get("n", 0))
    concurrency = int(spec.get("concurrency", 100))
    timeout = float(spec.get("timeout", 300))
    table: dict[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]]] = {
        "enqueue_one": lambda: common.enqueue_one(lib, n),
        "enqueue_gather": lambda: common.enqueue_gather(lib, n),
        "enqueue_bulk": lambda: common.enqueue_bulk(lib, n),
        "process_noop": lambda: common.process(lib, n, concurrency, "noop", timeout),
        "process_nap": lambda: common.process(lib, n, concurrency, "nap", timeout),
        "latency": lambda: common.latency(lib, n, concurrency),
        "delayed": lambda: common.delayed(lib, n, concurrency),
        "redis_memory": lambda: common.redis_memory(lib, n),
        "prefill": lambda: common.prefill(lib, n),
        "drain_rss": lambda: common.drain_rss(lib, n, concurrency, timeout),
    }
    extra = getattr(lib, "extra_workloads", {})
    if name in extra:
        return extra[name](**{k: v for k, v in spec.items() if k not in ("name", "key")})
    return table[name]()


async def _run(plan: dict[str, Any], lib: Library) -> list[dict[str, Any]]:
    results = []
    flusher = MiniRedis(plan["url"]) if plan.get("flush") and plan.get("url") else None
    for spec in plan["workloads"]:
        entry: dict[str, Any] = {"key": spec.get("key", spec["name"]), "spec": spec}
        if flusher is not None and not spec.get("keep_data"):
            flusher.call("FLUSHDB")
        print(f"  {lib.label}: {entry['key']} ...", file=sys.stderr, flush=True)
        try:
            entry["result"] = await _workload(lib, spec)
        except NotSupported as exc:
            entry["skipped"] = str(exc)
        except WorkloadError as exc:
            entry["error"] = str(exc)
        except (Exception, asyncio.CancelledError) as exc:
            # A library may let a CancelledError of its own tasks escape on shutdown.
            traceback.print_exc()
            entry["error"] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await lib.stop_worker()
            with contextlib.suppress(Exception):
                await lib.close()
        results.append(entry)
    if flusher is not None:
        flusher.close()  # no flush here: a prefill leaves its tasks to the next process
    return results


def main() -> int:
    plan = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    module = importlib.import_module(plan["adapter"])
    lib: Library = module.LIBRARY(plan.get("url"), plan.get("variant"))
    loop = plan.get("loop", "recommended")
    if loop == "recommended":
        loop = lib.recommended_loop
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(_run(plan, lib))
    document = {
        "library": lib.name,
        "label": lib.label,
        "backend": lib.backend,
        "version": lib.version(),
        "loop": loop,
        "python": platform.python_version(),
        "settings": lib.settings(),
        "workloads": results,
    }
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
