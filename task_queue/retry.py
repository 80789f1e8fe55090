"""RetryPolicy: how many times a failing task runs again, and how long it waits first."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    A task that failed its n-th attempt waits a random time between 0 and
    `min(max_delay, base_delay * 2 ** (n - 1))` seconds before it is due again, so
    retries of many tasks that failed together spread out instead of arriving as one
    wave. `max_retries` is the default for tasks that do not set their own; with
    `jitter=False` the wait is the upper bound itself.
    """

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"max_retries must be an int, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (counting from 1)."""
        exponent = min(max(attempt, 1) - 1, 64)
        cap = min(self.max_delay, self.base_delay * 2.0**exponent)
        return random.uniform(0.0, cap) if self.jitter else cap
