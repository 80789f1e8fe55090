"""Cancelling the worker's own background tasks so that they surely end.

On Python 3.11 a cancel that arrives just as an awaited call completes can be lost (the
`asyncio.wait_for` race fixed in 3.12, which redis-py's client runs into): the task goes
on, e.g. to wait for a task's final state for as long as that takes. Cancelling once and
awaiting the task can therefore hang; `cancel_and_wait` cancels again until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

_RECANCEL_SECONDS = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and return once every one has ended; their outcomes are dropped."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_SECONDS)
    await asyncio.gather(*every, return_exceptions=True)  # retrieve what they raised
