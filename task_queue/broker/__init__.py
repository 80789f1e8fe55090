"""Brokers: where tasks are stored and leased. `RedisBroker` needs the `redis` extra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import AbstractBroker, RenewResult, TaskNote
from .memory import InMemoryBroker

if TYPE_CHECKING:
    from .redis import RedisBroker

__all__ = ["AbstractBroker", "InMemoryBroker", "RedisBroker", "RenewResult", "TaskNote"]


def __getattr__(name: str) -> Any:
    # RedisBroker needs redis-py, an optional extra: import it only when it is asked for.
    if name == "RedisBroker":
        from .redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
