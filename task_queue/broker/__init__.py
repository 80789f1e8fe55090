"""Brokers: where tasks are stored and leased. `RedisBroker` needs the `redis` extra."""

from __future__ import annotations

from .base import AbstractBroker, RenewResult
from .memory import InMemoryBroker

__all__ = ["AbstractBroker", "InMemoryBroker", "RenewResult"]
