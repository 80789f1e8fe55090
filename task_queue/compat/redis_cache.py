"""RedisCacheAdapter: cached results shared by every process, bounded, as JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from ..codec import dumps, loads
from .cache import CacheAdapter, check_ttl

__all__ = ["RedisCacheAdapter"]

_CLEAR_BATCH = 500
_SWEEP_BATCH = 100


class RedisCacheAdapter(CacheAdapter):
    """Cache entries in Redis, shared by every worker and producer process.

    Values are stored as JSON (never pickled) under `{prefix}:v:<key>` with a Redis
    expiry for the TTL. A sorted set `{prefix}:lru` ranks the keys by last use; beyond
    `max_size` keys the least recently used are deleted (None: no bound, Redis expiry
    alone). A second sorted set, `{prefix}:exp`, holds the expiry time of each key set
    with a TTL: expired keys are dropped from both sets before any live one is evicted,
    so only live entries count and neither set grows without bound. Last use and expiry
    times come from `clock` (default `time.time`: keep the clocks of the processes
    sharing a cache in sync). `clear()` deletes the keys that the sets know, so it
    never scans the keyspace.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "task_queue:cache",
        max_size: int | None = 10_000,
        owns_client: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError("prefix must be non-empty and must not contain '{' or '}'")
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ValueError(f"max_size must be an int >= 1 or None, got {max_size!r}")
        self.client = client
        self.prefix = prefix
        self.max_size = max_size
        self._owns_client = owns_client
        self._clock = clock
        tag = f"{{{prefix}}}"  # one hash tag: every key of the cache in one cluster slot
        self._values = f"{tag}:v:"
        self._lru = f"{tag}:lru"
        self._exp = f"{tag}:exp"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisCacheAdapter:
        """Connect to the Redis at `url`; `options` are the constructor's keywords."""
        return cls(Redis.from_url(url), owns_client=True, **options)

    def __repr__(self) -> str:
        return f"RedisCacheAdapter(prefix={self.prefix!r}, max_size={self.max_size})"

    async def get(self, key: str) -> tuple[bool, Any]:
        """See `CacheAdapter.get`; a hit counts as a use for the LRU bound."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self._values + key)
            pipe.zadd(self._lru, {key: self._clock()}, xx=True)
            raw, _ = await pipe.execute()
        if raw is None:
            # Expired (or never set): it must not go on counting towards max_size.
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self._lru, key)
                pipe.zrem(self._exp, key)
                await pipe.execute()
            return False, None
        return True, loads(raw)

    async def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """See `CacheAdapter.set`; raises `PayloadError` for a value that is not JSON."""
        seconds = check_ttl(ttl)
        data = dumps(value, "cached value")
        expiry_ms = None if seconds is None else max(1, int(seconds * 1000))
        now = self._clock()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._values + key, data, px=expiry_ms)
            pipe.zadd(self._lru, {key: now})
            if seconds is None:
                pipe.zrem(self._exp, key)
            else:
                pipe.zadd(self._exp, {key: now + seconds})
            pipe.zrange(self._exp, "-inf", now, byscore=True, offset=0, num=_SWEEP_BATCH)
            pipe.zcard(self._lru)
            *_, expired, size = await pipe.execute()
        size = int(size)
        if expired:
            size -= await self._forget([_text(member) for member in expired])
        if self.max_size is not None and size > self.max_size:
            popped = await self.client.zpopmin(self._lru, size - self.max_size)
            await self._forget([_text(pair[0]) for pair in popped])

    async def delete(self, key: str) -> bool:
        """See `CacheAdapter.delete`."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._values + key)
            pipe.zrem(self._lru, key)
            pipe.zrem(self._exp, key)
            deleted, *_ = await pipe.execute()
        return int(deleted) > 0

    async def clear(self) -> None:
        """See `CacheAdapter.clear`; deletes in batches of known keys."""
        while True:
            popped = await self.client.zpopmin(self._lru, _CLEAR_BATCH)
            if not popped:
                break
            await self._forget([_text(pair[0]) for pair in popped])
        await self.client.delete(self._exp)

    async def close(self) -> None:
        """Close the connection pool when this adapter made it."""
        if self._owns_client:
            await self.client.aclose()

    async def _forget(self, keys: list[str]) -> int:
        """Delete these cache keys' values and index entries; returns how many of them
        the LRU set held."""
        if not keys:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*[self._values + key for key in keys])
            pipe.zrem(self._lru, *keys)
            pipe.zrem(self._exp, *keys)
            _, removed, _ = await pipe.execute()
        return int(removed)


def _text(member: Any) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
