"""Pausing Python's cycle collector while a large batch of tasks is built."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PAUSE_FROM", "collector_paused"]

PAUSE_FROM = 256
"""Batches of at least this many tasks are built with the cycle collector paused."""


@contextmanager
def collector_paused(count: int) -> Iterator[None]:
    """Pause the cycle collector for a synchronous build of `count` tasks.

    Building a batch makes several containers per task and keeps them all, none in a
    cycle; the collector would walk them again and again as they age, a quarter of a
    large call's time. It is not paused for small batches, nor resumed when someone
    else paused it. The block must not yield to the event loop.
    """
    paused = count >= PAUSE_FROM and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
