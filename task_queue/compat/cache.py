"""The result cache: the adapter interface, an in-memory LRU adapter and cache keys."""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..codec import normalize

__all__ = ["CacheAdapter", "MemoryCacheAdapter", "make_cache_key"]

_KEY_VERSION = 1


class CacheAdapter(ABC):
    """Where cached task results live. Subclass it to keep them anywhere.

    Keys are strings made by `make_cache_key`; values are JSON-compatible results.
    `ttl` is in seconds, None for no expiry.
    """

    @abstractmethod
    async def get(self, key: str) -> tuple[bool, Any]:
        """Return `(True, value)` for a live entry, `(False, None)` otherwise."""

    @abstractmethod
    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl` seconds (None: never)."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the entry; True when there was one."""

    @abstractmethod
    async def clear(self) -> None:
        """Remove every entry."""


class MemoryCacheAdapter(CacheAdapter):
    """Entries in this process: least recently used ones go beyond `max_size`.

    Only live entries count towards `max_size`: expired ones are dropped before any
    live one is evicted. `max_size` None keeps every entry until it expires. `clock`
    gives the time in seconds that TTLs count on (default `time.monotonic`).
    """

    def __init__(
        self, max_size: int | None = 1000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ValueError(f"max_size must be an int >= 1 or None, got {max_size!r}")
        self.max_size = max_size
        self._clock = clock
        # key -> (expiry on the monotonic clock or None, value); the end is the most recent.
        self._entries: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()
        # (expiry, key) of every entry set with a TTL; entries replaced or deleted since
        # leave stale items here, skipped when they come up.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """How many entries are held, expired ones not yet dropped included."""
        return len(self._entries)

    async def get(self, key: str) -> tuple[bool, Any]:
        """See `CacheAdapter.get`; a hit makes the entry the most recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if expires is not None and expires <= self._clock():
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, value

    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """See `CacheAdapter.set`; evicts the least recently used entries over `max_size`."""
        seconds = check_ttl(ttl)
        now = self._clock()
        expires = None if seconds is None else now + seconds
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        if expires is not None:
            heapq.heappush(self._expiries, (expires, key))
        # Expired entries go first, so they never take the place of live ones.
        self._drop_expired(now)
        if self.max_size is not None:
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def _drop_expired(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, key = heapq.heappop(expiries)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires:
                del self._entries[key]
        if len(expiries) > 2 * len(self._entries) + 64:
            # Many entries were replaced or deleted before they expired: rebuild.
            self._expiries = [
                (expires, key)
                for key, (expires, _) in self._entries.items()
                if expires is not None
            ]
            heapq.heapify(self._expiries)

    async def delete(self, key: str) -> bool:
        """See `CacheAdapter.delete`."""
        return self._entries.pop(key, None) is not None

    async def clear(self) -> None:
        """See `CacheAdapter.clear`."""
        self._entries.clear()
        self._expiries.clear()


def check_ttl(ttl: float | None, name: str = "ttl") -> float | None:
    """Return `ttl` when it is None or a finite number of seconds > 0, else raise."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {ttl}")
    return ttl


def make_cache_key(task_type: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The cache key of a call: a SHA-256 of the task type and the JSON of its arguments.

    Equal in every process and every run (no `id()` or `hash()`); argument order of
    keywords does not matter. Raises `PayloadError` (a TypeError) for arguments that
    are not JSON.
    """
    call = {
        "v": _KEY_VERSION,
        "task": task_type,
        "args": normalize(list(args), "args"),
        "kwargs": normalize(dict(kwargs), "kwargs"),
    }
    text = json.dumps(call, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
