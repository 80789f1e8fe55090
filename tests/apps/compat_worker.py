"""A worker process for the compat tests: `task-queue worker tests.apps.compat_worker:service`.

It imports the task functions by module, so it runs them by their registered names.
"""

from __future__ import annotations

from task_queue.broker.redis import RedisBroker
from task_queue.compat import AsyncTaskWorker
from tests.apps import compat_tasks

worker = AsyncTaskWorker(
    max_workers=4, broker=RedisBroker.from_url(compat_tasks.URL, prefix=compat_tasks.PREFIX)
)
service = worker.service
