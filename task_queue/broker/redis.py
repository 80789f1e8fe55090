"""RedisBroker: tasks in Redis sorted sets, changed only by Lua scripts; many processes.

Every key of a queue shares one hash tag, `{prefix:queue}`, so each script touches one
slot (Redis Cluster works). Times come from Redis `TIME`, one clock for every host. The
scripts live in `lua/`, one per state change, each with a header naming its keys and
arguments; `lua/lib.lua` is put in front of each of them.

Needs the `redis` extra: `pip install 'task-queue[redis]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import BlockingConnectionPool, Redis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisBroker needs redis-py: install the extra with pip install 'task-queue[redis]'"
    ) from exc

try:
    from .resp import FastConnection, Prefix
except ImportError:  # pragma: no cover - hiredis missing: redis-py does all the work
    FastConnection = None  # type: ignore[assignment,misc]

from ..codec import dumps, is_flat, loads, normalize
from ..errors import (
    BrokerConnectionError,
    DecodeError,
    PayloadError,
    TaskNotFoundError,
    TaskStateError,
)
from ..models import Task, TaskError, TaskStatus
from ..monitoring import (
    STATS_RETENTION_MINUTES,
    MinuteStats,
    QueueStats,
    WorkerInfo,
    minute_start,
)
from .base import (
    AbstractBroker,
    RenewResult,
    TaskNote,
    as_task_error,
    check_max_tasks,
    check_not_negative,
    check_priority,
    check_progress,
    check_purgeable,
    check_stats_minutes,
    check_worker_ttl,
)

__all__ = ["RedisBroker", "mask_url"]

logger = logging.getLogger(__name__)


_SCRIPTS = (
    "enqueue",
    "dequeue",
    "complete",
    "fail",
    "cancel",
    "release",
    "renew",
    "requeue",
    "progress",
    "purge",
    "annotate",
)
# Scripts of the worker registry and the stats, run on their own (no lib.lua in front).
_OPS_SCRIPTS = ("workers", "stats")
_TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
_REFUSED = (redis_errors.AuthenticationError, redis_errors.AuthorizationError)
_FINAL_SETS = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}


def mask_url(url: str) -> str:
    """Return `url` with any password (in the user part or the query) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" if user else f":***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_lenient(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _split_ids(message: Any) -> list[str]:
    """Split a final-state notification: ids each written as "<byte length>:<id>"."""
    data = message if isinstance(message, bytes) else str(message).encode()
    ids: list[str] = []
    at = 0
    while at < len(data):
        colon = data.index(b":", at)
        length = int(data[at:colon])
        ids.append(data[colon + 1 : colon + 1 + length].decode(errors="replace"))
        at = colon + 1 + length
    return ids


_ENQUEUE_BATCH = 1000
_BIG = 2**31  # a max_retries at or above this is checked by encoding it, not assumed fine
_SHORT_WAIT = 0.005  # seconds: an idle wait this short sleeps instead of blocking
_LEASE_BATCH = 1000  # most tasks one dequeue or renew script handles

_LEASE_FIELDS = (
    "id",
    "data",
    "status",
    "attempts",
    "max_attempts",
    "token",
    "due",
    "error",
    "progress",
    "cancel",
    "started",
    "context",
)


def _lua(name: str) -> str:
    folder = resources.files(__package__ or "task_queue.broker") / "lua"
    return (folder / f"{name}.lua").read_text(encoding="utf-8")


def _load_script(name: str) -> str:
    """Script `name` for EVALSHA: lib.lua, then the body with this call's keys bound."""
    return f"{_lua('lib')}\nbind(KEYS, ARGV)\n{_lua(name)}"


def _load_library(names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The scripts as one Redis Functions library: its code and each script's function.

    lib.lua's helpers are then made once, when the library loads, instead of at every
    call. The library's name holds a digest of its code, so processes of two versions
    of task_queue can share a server.
    """
    bodies = {name: _lua(name) for name in names}
    digest = hashlib.sha1(
        "\n".join([_lua("lib"), *bodies.values()]).encode(), usedforsecurity=False
    ).hexdigest()[:16]
    functions = {name: f"task_queue_{digest}_{name}" for name in names}
    parts = [f"#!lua name=task_queue_{digest}", _lua("lib")]
    for name, body in bodies.items():
        parts.append(
            f"redis.register_function('{functions[name]}', function(KEYS, ARGV)\n"
            f"bind(KEYS, ARGV)\n{body}\nend)"
        )
    return "\n".join(parts), functions


def _decode_leased(values: Sequence[Any], worker: str | None) -> Task:
    """Build a Task from the LEASE_FIELDS values the dequeue script returns.

    The hot path of every worker: it reads the raw reply directly (int() and float()
    take bytes) instead of going through the general `_decode`.
    """
    (_, data, _, attempts, max_attempts, token, due, error, progress, cancel, started, context) = (
        values
    )
    static = loads(data)
    if not isinstance(static, dict):
        raise DecodeError("invalid task record: data is not a JSON object")
    payload = static.get("payload") or {}
    metadata = static.get("metadata") or {}
    if not isinstance(payload, dict) or not isinstance(metadata, dict):
        raise DecodeError("invalid task record: payload and metadata must be JSON objects")
    timeout = static.get("timeout")
    task_error = None
    if error:
        e = loads(error)
        task_error = TaskError(str(e["type"]), str(e.get("message", "")), e.get("traceback"))
    created = datetime.fromtimestamp(float(static["created_at"]), UTC)
    return Task(
        str(static["name"]),
        payload,
        int(static.get("priority", 0)),
        str(static["id"]),
        datetime.fromtimestamp(int(due) / 1000, UTC) if due else created,
        created,
        TaskStatus.PROCESSING,
        int(attempts),
        int(static.get("max_retries", int(max_attempts) - 1)),
        None if timeout is None else float(timeout),
        None,
        task_error,
        datetime.fromtimestamp(int(started) / 1000, UTC),
        None,
        float(progress or 0),
        metadata,
        int(token),
        worker or None,
        cancel in (b"1", "1"),
        static.get("depends_on") or [],
        _context(loads(context) if context else static.get("context")),
    )


def _context(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError("invalid task record: context is not a JSON object")
    return value


def _logs(text: str) -> list[dict[str, Any]]:
    return [loads(line) for line in text.split("\n")] if text else []


def _as_stored(task: Task, flat: bool = False) -> Task:
    """The new task `task` as the store gives it back.

    A task that is new in every field (the usual case) is returned itself, its payload,
    metadata and context replaced by fresh JSON copies where JSON would not give them
    back unchanged (`flat`: the caller checked that they are flat already); anything
    else gets a fresh PENDING copy.
    """
    if (
        task.status is TaskStatus.PENDING
        and task.attempts == 0
        and task.token == 0
        and task.result is None
        and task.error is None
        and task.started_at is None
        and task.finished_at is None
        and task.worker_id is None
        and not task.progress
        and not task.cancel_requested
        and not task.logs
    ):
        if not flat:
            for field in ("payload", "metadata", "context"):
                value = getattr(task, field)
                if value and not is_flat(value):
                    setattr(task, field, normalize(value))
        return task
    return Task(
        task.name,
        normalize(task.payload),
        task.priority,
        task.id,
        task.scheduled_at,
        task.created_at,
        TaskStatus.PENDING,
        0,
        task.max_retries,
        task.timeout,
        metadata=normalize(task.metadata),
        depends_on=list(task.depends_on),
        context=normalize(task.context),
    )


_STATIC_MIDDLE = (
    ',"name":%s,"priority":%d,"created_at":%s,"max_retries":%d,"timeout":%s,"payload":'
)


_quote = json.encoder.encode_basestring


def _json_text(value: str, where: str) -> str:
    """A str as a JSON string; `PayloadError` naming `where` when it is not valid text."""
    if not isinstance(value, str):
        raise PayloadError(f"{where} must be a str, got {type(value).__name__}", where)
    return dumps(value, where)


def _is_missing_script(exc: Exception) -> bool:
    """NOSCRIPT, or FCALL of a function the server does not have."""
    return isinstance(exc, redis_errors.NoScriptError) or "function not found" in str(exc).lower()


def _is_oom(exc: Exception) -> bool:
    """Redis refused the call: it is out of memory (maxmemory with noeviction)."""
    return isinstance(exc, redis_errors.OutOfMemoryError) or str(exc).startswith("OOM")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's error as seen: nobody awaits a wake-up that only says "go on"."""
    if not future.cancelled():
        future.exception()


def _ms_to_dt(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(float(value)) / 1000, UTC)


class RedisBroker(AbstractBroker):
    """A broker on Redis: any number of producer and worker processes share a queue.

    Build it with `RedisBroker.from_url("redis://...")` or around an existing
    `redis.asyncio.Redis` client. Tasks of queue `queue` live under keys starting with
    `{prefix:queue}`; two apps on one server stay apart by prefix. Idle workers block on
    one Redis connection per process and are woken by enqueues and due times, never by a
    poll interval. Transient connection errors are retried for `retry_seconds` before
    `BrokerConnectionError` is raised.
    """

    def __init__(
        self,
        client: Redis,
        *,
        queue: str = "default",
        prefix: str = "tq",
        lease_seconds: float = 30.0,
        result_ttl: float = 3600.0,
        dead_letter_ttl: float = 7 * 24 * 3600.0,
        maintenance_batch: int = 100,
        max_idle_wait: float = 5.0,
        retry_seconds: float = 30.0,
        url: str | None = None,
        owns_client: bool = False,
    ) -> None:
        if not queue or not prefix:
            raise ValueError("queue and prefix must be non-empty")
        if any(c in queue + prefix for c in "{}"):
            raise ValueError("queue and prefix must not contain '{' or '}'")
        if ":" in queue:
            # prefix "a" + queue "b:c" and prefix "a:b" + queue "c" would share keys
            raise ValueError(f"queue must not contain ':', got {queue!r}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        if not result_ttl > 0 or not dead_letter_ttl > 0:
            raise ValueError("result_ttl and dead_letter_ttl must be > 0")
        if maintenance_batch < 1:
            raise ValueError(f"maintenance_batch must be >= 1, got {maintenance_batch}")
        if not max_idle_wait > 0:
            raise ValueError(f"max_idle_wait must be > 0, got {max_idle_wait}")
        if retry_seconds < 0:
            raise ValueError(f"retry_seconds must be >= 0, got {retry_seconds}")
        self.batches_acks = True
        self.client = client
        self.queue = queue
        self.prefix = prefix
        self.lease_seconds = float(lease_seconds)
        self.result_ttl = float(result_ttl)
        self.dead_letter_ttl = float(dead_letter_ttl)
        self.maintenance_batch = maintenance_batch
        self.max_idle_wait = float(max_idle_wait)
        self.retry_seconds = float(retry_seconds)
        self._url = mask_url(url) if url else self._describe_client(client)
        self._owns_client = owns_client
        tag = f"{{{prefix}:{queue}}}"
        self.base_key = tag
        self._keys = [
            f"{tag}:ready",
            f"{tag}:delayed",
            f"{tag}:inflight",
            f"{tag}:failed",
            f"{tag}:completed",
            f"{tag}:cancelled",
            f"{tag}:seq",
            f"{tag}:wake",
            f"{tag}:waiting",
        ]
        self._task_prefix = f"{tag}:task:"
        self._channel = f"{tag}:final"
        self._common = [
            self._task_prefix,
            self._channel,
            str(max(1, int(self.result_ttl * 1000))),
            str(max(1, int(self.dead_letter_ttl * 1000))),
        ]
        self._sources = {name: _load_script(name) for name in _SCRIPTS}
        self._shas = {
            name: hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest()
            for name, src in self._sources.items()
        }
        self._workers_keys = [f"{tag}:workers", f"{tag}:workers:info"]
        self._stats_prefix = f"{tag}:stats:"  # lib.lua derives the same from the seq key
        self._sources.update({name: _lua(name) for name in _OPS_SCRIPTS})
        self._shas.update(
            {
                name: hashlib.sha1(self._sources[name].encode(), usedforsecurity=False).hexdigest()
                for name in _OPS_SCRIPTS
            }
        )
        self._library, self._functions = _load_library(_SCRIPTS)
        # Whether the scripts run as the functions of a library (FCALL); None until the
        # first call finds out (servers before Redis 7 have no functions).
        self._use_functions: bool | None = None
        self._prefixes: dict[str, tuple[str, Prefix]] = {}
        self._checked = False
        self._outage_logged = False
        self._wake_task: asyncio.Future[Any] | None = None
        self._wake_prefix: Prefix | None = None
        # Our own wake key, next to the shared one: a ZADD to it ends this process's
        # BZPOPMIN early (a due time came, or the caller gave up).
        self._self_wake = f"{tag}:wake:{uuid.uuid4().hex}"
        # While a dequeue waits with its lease queued behind BZPOPMIN: (BZPOPMIN's
        # future, the lease's future).
        self._primed: tuple[asyncio.Future[Any], asyncio.Future[Any]] | None = None
        self._waiting = 0
        self._background: set[asyncio.Future[Any]] = set()
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None
        self._closed = False
        self._fast: FastConnection | None = None
        self._fast_block: FastConnection | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        """Connect to the Redis at `url` (`redis://`, `rediss://` for TLS, `unix://`).

        `options` are RedisBroker's keyword arguments (queue, prefix, lease_seconds, ...);
        a password in the URL is never logged or shown.
        """
        client_options = {
            "max_connections": 64,
            "timeout": 30,
            **options.pop("client_options", {}),
        }
        # A blocking pool makes a burst of callers wait for a connection instead of failing.
        pool = BlockingConnectionPool.from_url(url, **client_options)
        client = Redis.from_pool(pool)
        broker = cls(client, url=url, owns_client=True, **options)
        if FastConnection is not None and FastConnection.supports(url):
            broker._fast = FastConnection(url)
            broker._fast_block = FastConnection(url)  # BZPOPMIN only: it blocks its line
        return broker

    @staticmethod
    def _describe_client(client: Redis) -> str:
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {})
        host, port, db = kwargs.get("host"), kwargs.get("port"), kwargs.get("db", 0)
        if host is None:
            return f"redis (path {kwargs.get('path', '?')}, db {db})"
        return f"redis://{host}:{port}/{db}"

    def __repr__(self) -> str:
        return f"RedisBroker(url={self._url!r}, queue={self.queue!r}, prefix={self.prefix!r})"

    # ----------------------------------------------------------------- plumbing

    async def _retrying(self, operation: Any, what: str) -> Any:
        """Run `operation()` again on transient connection errors, with capped backoff."""
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                result = await operation()
            except _REFUSED as exc:
                raise BrokerConnectionError(
                    f"Redis at {self._url} refused the credentials ({what}): {exc}"
                ) from exc
            except _TRANSIENT as exc:
                if self._closed:
                    raise BrokerConnectionError(f"{self._url}: broker closed") from exc
                if time.monotonic() - started > self.retry_seconds:
                    raise BrokerConnectionError(
                        f"Redis at {self._url} unreachable for {self.retry_seconds:g}s "
                        f"({what}): {exc}"
                    ) from exc
                if not self._outage_logged:
                    self._outage_logged = True
                    logger.warning(
                        "Redis at %s unreachable (%s: %s); retrying", self._url, what, exc
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self._outage_logged:
                self._outage_logged = False
                logger.warning("Redis at %s reachable again", self._url)
            return result

    async def _ensure_checked(self) -> None:
        if self._checked:
            return
        self._checked = True
        await self._check_settings()
        if self._use_functions is None:
            try:
                await self._retrying(self._load_functions, "loading functions")
            except BaseException:
                self._checked = False
                raise

    async def _check_settings(self) -> None:
        """Warn when the server's settings can lose tasks (no AOF, evicting keys)."""
        try:
            aof = await self.client.config_get("appendonly")
            policy = await self.client.config_get("maxmemory-policy")
        except redis_errors.ResponseError:
            logger.info("cannot read the configuration of Redis at %s; not checked", self._url)
            return
        except _TRANSIENT:
            self._checked = False
            return
        aof_value = _text(next(iter(aof.values()), "")) if aof else ""
        policy_value = _text(next(iter(policy.values()), "")) if policy else ""
        if aof_value and aof_value != "yes":
            logger.warning(
                "Redis at %s runs with appendonly=%s: tasks enqueued since the last snapshot "
                "are lost if it restarts; set appendonly yes",
                self._url,
                aof_value,
            )
        if policy_value and policy_value != "noeviction":
            logger.warning(
                "Redis at %s runs with maxmemory-policy=%s: it may evict tasks under memory "
                "pressure; set maxmemory-policy noeviction",
                self._url,
                policy_value,
            )

    async def _load_functions(self) -> None:
        """Load the scripts' library, or find that this server has no functions."""
        try:
            await self.client.function_load(self._library, replace=True)
        except redis_errors.ResponseError as exc:
            if self._use_functions is None:  # an older server, or an ACL without FUNCTION
                logger.info(
                    "Redis at %s cannot load functions (%s); scripts run with EVALSHA",
                    self._url,
                    exc,
                )
                self._use_functions = False
                return
            raise
        self._use_functions = True

    def _prefix(self, name: str, legacy: bool = False) -> Prefix:
        """FCALL or EVALSHA, the script, the keys and the common arguments, packed once.

        `legacy`: EVALSHA even when the library is loaded (see `_script`).
        """
        if self._use_functions and not legacy:
            command, script = "FCALL", self._functions.get(name)
        else:
            command, script = "EVALSHA", None
        if script is None:
            command, script = "EVALSHA", self._shas[name]
        key = f"{name}:legacy" if legacy else name
        cached = self._prefixes.get(key)
        if cached is None or cached[0] != script:
            packed = Prefix(command, script, len(self._keys), *self._keys, *self._common)
            cached = self._prefixes[key] = (script, packed)
        return cached[1]

    @property
    def _priming(self) -> bool:
        """True while a dequeue waits with its lease queued behind BZPOPMIN."""
        return self._primed is not None

    async def _reload(self, name: str, legacy: bool = False) -> None:
        """After NOSCRIPT or a missing function (a restarted server): load it again.

        `legacy`: as a script for EVALSHA even when the library is in use.
        """
        if self._use_functions and name in self._functions and not legacy:
            await self._load_functions()
        else:
            self._shas[name] = _text(await self.client.script_load(self._sources[name]))

    async def _script(self, name: str, *args: Any) -> Any:
        await self._ensure_checked()
        fast = self._fast
        if fast is not None:

            async def run_fast() -> Any:
                try:
                    return await fast.execute_prefixed(self._prefix(name), args)
                except redis_errors.NoScriptError:
                    await self._reload(name)
                    return await fast.execute_prefixed(self._prefix(name), args)
                except redis_errors.ResponseError as exc:
                    if not (_is_oom(exc) and self._use_functions):
                        raise
                # Out of memory, Redis refuses a function whole, but runs a script and
                # refuses only its commands that add data: completing, failing and
                # purging tasks, which free memory, keep working.
                try:
                    return await fast.execute_prefixed(self._prefix(name, legacy=True), args)
                except redis_errors.NoScriptError:
                    await self._reload(name, legacy=True)
                    return await fast.execute_prefixed(self._prefix(name, legacy=True), args)

            return await self._retrying(run_fast, name)

        argv = [*self._common, *args]

        async def call(legacy: bool = False) -> Any:
            if self._use_functions and not legacy:
                return await self.client.fcall(
                    self._functions[name], len(self._keys), *self._keys, *argv
                )
            return await self.client.evalsha(self._shas[name], len(self._keys), *self._keys, *argv)

        async def run() -> Any:
            try:
                return await call()
            except redis_errors.ResponseError as exc:
                if _is_oom(exc) and self._use_functions:
                    legacy = True  # as in run_fast
                elif _is_missing_script(exc):
                    # The server forgot its scripts (a restart, SCRIPT or FUNCTION
                    # FLUSH): load them and run again.
                    legacy = False
                    await self._reload(name)
                else:
                    raise
            try:
                return await call(legacy)
            except redis_errors.NoScriptError:
                await self._reload(name, legacy=True)
                return await call(legacy)

        return await self._retrying(run, name)

    def _task_key(self, task_id: str) -> str:
        return self._task_prefix + task_id

    # ----------------------------------------------------------------- encoding

    @staticmethod
    def _static(task: Task, middle: str | None = None) -> str:
        """The task's unchanging fields as JSON: payload and metadata included.

        `middle` is `_static_middle(task)` when the caller has it already (tasks of a
        bulk call share it).
        """
        if isinstance(task.max_retries, bool) or not isinstance(task.max_retries, int):
            raise TypeError(f"max_retries must be an int, got {task.max_retries!r}")
        task_id = task.id
        extra = ""
        if task.depends_on:
            extra = ',"depends_on":' + dumps(task.depends_on, "depends_on")
        if task.context:
            extra += ',"context":' + dumps(task.context, "context")
        # Formatted, not built as a dict and encoded: the payload is the only part that
        # needs the encoder, and this runs once per task of a bulk call.
        return (
            '{"id":'
            # Generated ids are ASCII: quoted by the C escaper alone.
            + (
                _quote(task_id)
                if type(task_id) is str and task_id.isascii()
                else _json_text(task_id, "id")
            )
            + (middle or RedisBroker._static_middle(task))
            + dumps(task.payload, "payload")
            + (',"metadata":' + dumps(task.metadata, "metadata") if task.metadata else "")
            + extra
            + "}"
        )

    @staticmethod
    def _static_middle(task: Task) -> str:
        """The static JSON between the id and the payload: what tasks of one bulk call
        usually share."""
        name, timeout = task.name, task.timeout
        return _STATIC_MIDDLE % (
            _quote(name) if type(name) is str and name.isascii() else _json_text(name, "name"),
            task.priority,
            repr(task.created_at.timestamp()),
            task.max_retries,
            "null" if timeout is None else dumps(timeout, "timeout"),
        )

    def _decode(self, fields: Mapping[Any, Any] | Sequence[Any]) -> Task:
        """Build a Task from a task hash (an HGETALL dict or flat reply list)."""
        try:
            if isinstance(fields, Mapping):
                h = {_text(k): _text(v) for k, v in fields.items()}
            else:
                items = [_text(x) for x in fields]
                h = dict(zip(items[::2], items[1::2], strict=True))
        except UnicodeDecodeError as exc:
            raise DecodeError(f"task record is not UTF-8: {exc}") from None
        try:
            static = loads(h["data"])
            if not isinstance(static, dict):
                raise DecodeError("task data is not a JSON object")
            status = TaskStatus(h["status"])
            attempts = int(h.get("attempts", "0"))
            max_attempts = int(h.get("max_attempts", "1"))
            error: TaskError | None = None
            raw_error = h.get("error", "")
            if raw_error and status is not TaskStatus.COMPLETED:
                e = loads(raw_error)
                error = TaskError(str(e["type"]), str(e.get("message", "")), e.get("traceback"))
            elif status is TaskStatus.CANCELLED:
                error = TaskError("Cancelled", h.get("reason") or "cancelled on request")
            elif status is TaskStatus.FAILED and "lost" in h:
                holder = h["lost"] or "unknown worker"
                error = TaskError(
                    "LeaseExpired",
                    f"lease expired on attempt {attempts} of {max_attempts} "
                    f"(holder {holder} lost)",
                )
            result = loads(h["result"]) if "result" in h and h["result"] != "" else None
            payload = static.get("payload") or {}
            metadata = static.get("metadata") or {}
            if not isinstance(payload, dict) or not isinstance(metadata, dict):
                raise DecodeError("payload and metadata must be JSON objects")
            due = _ms_to_dt(h.get("due"))
            created = datetime.fromtimestamp(float(static["created_at"]), UTC)
            timeout = static.get("timeout")
            return Task(
                name=str(static["name"]),
                payload=payload,
                priority=int(static.get("priority", 0)),
                id=str(static["id"]),
                scheduled_at=due or created,
                created_at=created,
                status=status,
                attempts=attempts,
                max_retries=int(static.get("max_retries", max_attempts - 1)),
                timeout=None if timeout is None else float(timeout),
                result=result,
                error=error,
                started_at=_ms_to_dt(h.get("started")),
                finished_at=_ms_to_dt(h.get("finished")),
                progress=float(h.get("progress", "0") or 0),
                metadata=metadata,
                token=int(h.get("token", "0")),
                worker_id=(h.get("worker") or None) if status is TaskStatus.PROCESSING else None,
                cancel_requested=h.get("cancel") == "1",
                depends_on=[str(p) for p in static.get("depends_on") or []],
                context=_context(
                    loads(h["context"]) if h.get("context") else static.get("context")
                ),
                logs=_logs(h.get("logs", "")),
            )
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DecodeError(f"invalid task record: {what}") from None

    # ----------------------------------------------------------------- producing

    def _check_all(self, tasks: Sequence[Task]) -> list[str | None]:
        """Check every new task for what the store needs, before any is sent.

        Returns, per task, its static JSON when checking it meant encoding it, or None
        when the task is so plain (ASCII id and name, a flat payload...) that encoding
        it cannot fail: that one is encoded just before its batch is sent, while the
        server stores the batches before it.
        """
        checked: list[str | None] = []
        for task in tasks:
            check_priority(task.priority)
            if task.depends_on:
                task.depends_on = list(dict.fromkeys(task.depends_on))
            created_at, scheduled_at = task.created_at, task.scheduled_at
            if not (type(created_at) is datetime or isinstance(created_at, datetime)):
                raise TypeError(f"created_at must be a datetime, got {created_at!r}")
            if not (type(scheduled_at) is datetime or isinstance(scheduled_at, datetime)):
                raise TypeError(f"scheduled_at must be a datetime, got {scheduled_at!r}")
            task_id, name, timeout, metadata = task.id, task.name, task.timeout, task.metadata
            if (
                type(task_id) is str
                and task_id.isascii()
                and type(name) is str
                and name.isascii()
                and type(task.max_retries) is int
                and 0 <= task.max_retries < _BIG
                and type(created_at) is datetime
                and (timeout is None or (type(timeout) is float and timeout - timeout == 0.0))
                and not task.depends_on
                and not task.context
                and is_flat(task.payload)
                and (not metadata or is_flat(metadata))
            ):
                checked.append(None)
            else:
                checked.append(self._static(task))  # raises naming what cannot be stored
        return checked

    def _encode_batch(self, tasks: Sequence[Task], checked: Sequence[str | None]) -> list[str]:
        """The static JSON of `tasks`, checked by `_check_all` already."""
        encoded = []
        last: Task | None = None
        middle = ""
        for task, data in zip(tasks, checked, strict=True):
            if data is None:
                if not (  # tasks of a bulk call share these: formatted once
                    last is not None
                    and task.created_at is last.created_at
                    and task.name is last.name
                    and task.priority == last.priority
                    and task.max_retries == last.max_retries
                    and task.timeout == last.timeout
                ):
                    middle = self._static_middle(task)
                last = task
                data = self._static(task, middle)
            encoded.append(data)
        return encoded

    @staticmethod
    def _enqueue_args(tasks: Sequence[Task], encoded: Sequence[str]) -> tuple[list[Any], bool]:
        """The enqueue script's arguments for `tasks`, their delays counted from now, and
        whether any task is delayed.

        The script adds each delay to the server's clock when it runs, so the delays are
        computed just before the batch is sent, not before the whole call was encoded.
        Tasks that share their priority, due time and retries and have no parents (a
        typical bulk call) go in the compact layout: those values once, then id and data
        per task.
        """
        now = time.time()
        first = tasks[0]
        due, priority, retries = first.scheduled_at, first.priority, first.max_retries
        if all(
            task.scheduled_at == due
            and task.priority == priority
            and task.max_retries == retries
            and not task.depends_on
            for task in tasks
        ):
            delay_ms = max(0, int((due.timestamp() - now) * 1000))
            args: list[Any] = [len(tasks), "same", priority, delay_ms, retries + 1]
            for task, data in zip(tasks, encoded, strict=True):
                args += (task.id, data)
            return args, delay_ms > 0
        args = [len(tasks), "each"]
        delayed = False
        for task, data in zip(tasks, encoded, strict=True):
            delay_ms = max(0, int((task.scheduled_at.timestamp() - now) * 1000))
            parents = task.depends_on
            args += (task.id, data, task.priority, delay_ms, task.max_retries + 1, len(parents))
            if parents:
                args += parents
            delayed = delayed or delay_ms > 0
        return args, delayed

    async def enqueue(self, task: Task) -> Task:
        """See `AbstractBroker.enqueue`."""
        return (await self.enqueue_many([task]))[0]

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[Task]:
        """See `AbstractBroker.enqueue_many`."""
        if not tasks:
            return []
        # Every task is checked before any is sent, so a bad payload stores nothing.
        checked = self._check_all(tasks)
        # Bounded script runs: at most _ENQUEUE_BATCH tasks each. A connection lost
        # between two batches leaves the first ones stored, and a retry of the call is
        # safe (idempotent ids).
        starts = range(0, len(tasks), _ENQUEUE_BATCH)
        parts = [tasks[i : i + _ENQUEUE_BATCH] for i in starts]
        checks = [checked[i : i + _ENQUEUE_BATCH] for i in starts]
        encoded: list[list[str] | None] = [None] * len(parts)
        with_parents = any(task.depends_on for task in tasks)
        if len(parts) > 1 and with_parents:
            await self._check_parents(tasks)  # a bad parent must fail before any batch
        await self._ensure_checked()
        pending: list[asyncio.Future[Any] | None] = [None] * len(parts)
        # With dependencies, several batches go one after another on the general path: a
        # retried batch must not let a later one, whose tasks may depend on it, run first.
        if self._fast is not None and (len(parts) == 1 or not with_parents):
            with contextlib.suppress(*_TRANSIENT):
                await self._fast.open()  # else every batch takes the retrying path below
            # Written one after another on the one connection without yielding, so the
            # batches run in order; the server stores each while we encode and pack the
            # next ones.
            prefix = self._prefix("enqueue")
            for index, part in enumerate(parts):
                data = encoded[index] = self._encode_batch(part, checks[index])
                args, delayed = self._enqueue_args(part, data)
                earlier = [future for future in pending[:index] if future is not None]
                if delayed and earlier and not all(future.done() for future in earlier):
                    # Queued behind the earlier batches, this one would start late and its
                    # tasks come due late: let the server finish them, then count anew.
                    await asyncio.wait(earlier)
                    args, _ = self._enqueue_args(part, data)
                pending[index] = self._fast.send_now(prefix, args)
        stored = [
            _as_stored(task, check is None) for task, check in zip(tasks, checked, strict=True)
        ]
        flags: list[Any] = []
        for index, (future, part) in enumerate(zip(pending, parts, strict=True)):
            reply = None
            if future is not None:
                try:
                    reply = await future
                except (redis_errors.NoScriptError, *_TRANSIENT):
                    pass
            if reply is None:
                # Not sent, the server forgot the script, or the connection failed: the
                # general path reloads and retries (a rerun of a stored task is a no-op).
                data = encoded[index] or self._encode_batch(part, checks[index])
                encoded[index] = data
                reply = await self._script("enqueue", *self._enqueue_args(part, data)[0])
            if reply and int(reply[0]) == -3:
                child, parent = _text(reply[1]), _text(reply[2])
                raise TaskNotFoundError(
                    parent,
                    f"task {child!r} depends on {parent!r}, which does not exist (or has expired)",
                )
            flags += reply
        if flags.count(1) == len(tasks):  # all stored as new: the usual case
            return stored
        for index, (task, flag) in enumerate(zip(tasks, flags, strict=True)):
            if int(flag) != 1:
                existing = await self.get_task(task.id)
                if existing is None:  # it expired between the script and this read
                    raise TaskNotFoundError(task.id)
                stored[index] = existing
        return stored

    async def _check_parents(self, tasks: Sequence[Task]) -> None:
        """Before a call that takes several script runs: every parent must exist or come
        earlier in the call, so a bad one fails the call before any run stores."""
        ids = {task.id for task in tasks}
        seen: set[str] = set()
        asked: dict[str, str] = {}  # parent (or child) id to read -> child naming it
        ahead: list[tuple[str, str]] = []  # (child, parent later in the call)
        for task in tasks:
            for parent in task.depends_on:
                if parent not in ids:
                    asked.setdefault(parent, task.id)
                elif parent not in seen:
                    ahead.append((task.id, parent))
            seen.add(task.id)
        for child, _ in ahead:
            asked.setdefault(child, child)
        found = {task.id for task in await self._tasks(list(asked))}
        for child, parent in ahead:
            if child not in found:  # an existing child is returned as it is
                raise TaskNotFoundError(
                    parent,
                    f"task {child!r} depends on {parent!r}, which comes after it in the call",
                )
        for parent, child in asked.items():
            if parent != child and parent not in found:
                raise TaskNotFoundError(
                    parent,
                    f"task {child!r} depends on {parent!r}, which does not exist (or has expired)",
                )

    # ----------------------------------------------------------------- consuming

    async def dequeue_many(
        self,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        worker_id: str | None = None,
    ) -> list[Task]:
        """See `AbstractBroker.dequeue_many`."""
        check_max_tasks(max_tasks)
        max_tasks = min(max_tasks, _LEASE_BATCH)  # bounded script runs
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        lease_ms = int(self.lease_seconds * 1000)
        me = asyncio.current_task()
        primed: tuple[int, list[Any]] | None = None
        while True:
            if primed is None:
                if self._closed:
                    raise BrokerConnectionError(f"{self._url}: broker closed")
                wait_ms, raw = await self._lease(max_tasks, lease_ms, worker_id or "")
            else:  # leased already: handed out even if the broker closed meanwhile
                (wait_ms, raw), primed = primed, None
            if me is not None and me.cancelling():
                # Cancelled while the script ran (or a client library such as fakeredis
                # swallowed the cancellation): hand back what was leased, then stop.
                await self._hand_back(raw)
                raise asyncio.CancelledError
            leased: list[Task] = []
            for index, values in enumerate(raw):
                try:
                    task = await self._accept(values, worker_id)
                except asyncio.CancelledError:
                    # Cancelled while failing an undecodable record: nothing leased here
                    # may be left held by a caller that is gone.
                    await self._release_tasks(leased)
                    await self._hand_back(raw[index + 1 :])
                    raise
                if task is not None:
                    leased.append(task)
            if leased:
                return leased
            if raw:
                continue  # everything leased was undecodable and is failed now: go again
            remaining = None if give_up is None else give_up - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            wait = self.max_idle_wait
            if int(wait_ms) >= 0:
                wait = min(wait, int(wait_ms) / 1000)
            if remaining is not None:
                wait = min(wait, remaining)
            primed = await self._wait_and_lease(wait, max_tasks, lease_ms, worker_id or "")

    async def _lease(
        self, max_tasks: int, lease_ms: int, worker: str, request: str | None = None
    ) -> tuple[int, list[Any]]:
        """Run the dequeue script to its end even if our caller is cancelled meanwhile."""
        # A retry after a lost reply sends the same request id and gets the same tasks.
        request = request or uuid.uuid4().hex
        call = asyncio.ensure_future(
            self._script("dequeue", max_tasks, lease_ms, worker, self.maintenance_batch, request)
        )
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            try:
                reply = await call
            except Exception:  # the script failed: it leased nothing
                raise asyncio.CancelledError from None
            await self._hand_back(reply[1])
            raise
        wait_ms, raw, bad, recovered = reply
        self._report_upkeep(bad, recovered)
        return int(wait_ms), list(raw)

    async def _hand_back(self, raw: Sequence[Any]) -> None:
        """Release tasks leased for a caller that is gone, without spending an attempt."""
        pairs: list[Any] = []
        for values in raw:
            fields = dict(zip(_LEASE_FIELDS, values, strict=False))
            pairs += [_text(fields["id"]), _text(fields["token"])]
        if pairs:
            await self._script("release", *pairs)

    async def _release_tasks(self, tasks: Sequence[Task]) -> None:
        pairs: list[Any] = []
        for task in tasks:
            pairs += [task.id, task.token]
        if pairs:
            await self._script("release", *pairs)

    def _report_upkeep(self, bad: Sequence[Any], recovered: Sequence[Any]) -> None:
        for task_id in bad:
            logger.error(
                "task %s: listed in queue %s but its record is missing or not a hash; dropped",
                _text(task_id),
                self.queue,
                extra={"task_id": _text(task_id)},
            )
        for task_id, outcome, holder in recovered:
            tid, what, who = _text(task_id), _text(outcome), _text(holder) or "unknown worker"
            if what == "invalid":
                logger.error(
                    "task %s: its record's attempts, max_attempts or score is not a number; "
                    "failed",
                    tid,
                    extra={"task_id": tid},
                )
                continue
            level = logging.WARNING if what == "ready" else logging.ERROR
            logger.log(
                level,
                "task %s: lease of %s expired; task is %s",
                tid,
                who,
                "ready again" if what == "ready" else what,
                extra={"task_id": tid},
            )

    async def _accept(self, values: Sequence[Any], worker: str | None) -> Task | None:
        """Decode a leased record; an undecodable one is failed, never handed out."""
        try:
            return _decode_leased(values, worker)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, DecodeError):
                reason = str(exc)
            elif isinstance(exc, KeyError):
                reason = f"invalid task record: missing field {exc}"
            else:
                reason = f"invalid task record: {exc}"
            task_id = _text_lenient(values[0]) if values else ""
            logger.error(
                "task %s: undecodable record (%s); failed",
                task_id,
                reason,
                extra={"task_id": task_id},
            )
            error = dumps({"type": "DecodeError", "message": reason, "traceback": None})
            await self._script("fail", task_id, _text_lenient(values[5]), error, "")
            return None

    async def _wait_and_lease(
        self, wait: float, max_tasks: int, lease_ms: int, worker: str
    ) -> tuple[int, list[Any]] | None:
        """Wait up to `wait` seconds for work, and lease it in the same breath if we can.

        On the blocking connection the dequeue script is written right behind BZPOPMIN.
        Redis runs a client's commands in order, so it leases the moment the wait ends
        (an enqueue woke us, or we woke ourselves when `wait` ran out) and its reply
        follows the wake-up without a round trip back to us. Returns that lease's reply,
        or None when only the wait could be done (the caller then leases itself).
        """
        if wait <= 0:
            return None
        if wait < _SHORT_WAIT:
            # A due time this close: waking ourselves would cost more than it saves, and
            # an enqueue meanwhile still finds its wake-up waiting for the next wait.
            await asyncio.sleep(wait)
            return None
        block, fast, current = self._fast_block, self._fast, self._wake_task
        if block is not None and not block.connected and not self._closed:
            with contextlib.suppress(*_TRANSIENT):
                await block.open()
            current = self._wake_task
        if (
            self._closed
            or block is None
            or fast is None
            or not block.connected
            or self._priming
            or (current is not None and not current.done())
        ):
            await self._wait_wake(wait)
            return None
        if self._wake_prefix is None:
            self._wake_prefix = self._wake_command()
        request = uuid.uuid4().hex
        woken = block.send_now(self._wake_prefix, ())
        leasing = block.send_now(
            self._prefix("dequeue"),
            (max_tasks, lease_ms, worker, self.maintenance_batch, request),
        )
        assert woken is not None
        assert leasing is not None
        woken.add_done_callback(_retrieve)
        self._wake_task = woken  # other waiters in this process wake with it
        self._primed = (woken, leasing)
        try:
            try:
                # Redis times blocking calls out in steps of 1/hz seconds (100 ms by
                # default): a due time is kept here and BZPOPMIN is woken for it.
                if wait < self.max_idle_wait:
                    await asyncio.wait({leasing}, timeout=wait)
                else:  # its own timeout ends it; ours is only a safety net
                    await asyncio.wait({leasing}, timeout=wait + 1.0)
                if not leasing.done():
                    await self._end_block(woken, leasing)
            except asyncio.CancelledError:
                try:
                    await self._end_block(woken, leasing)
                    reply = await self._settle(leasing, max_tasks, lease_ms, worker, request)
                    await self._hand_back(reply[1])
                except Exception as exc:  # the caller is gone either way
                    logger.warning(
                        "could not hand back what a cancelled dequeue leased (%r); its "
                        "leases expire and the tasks run again",
                        exc,
                    )
                raise
            return await self._settle(leasing, max_tasks, lease_ms, worker, request)
        finally:
            self._primed = None
            if self._wake_task is woken:
                self._wake_task = None

    def _wake_command(self) -> Prefix:
        return Prefix("BZPOPMIN", self._keys[7], self._self_wake, self.max_idle_wait)

    async def _end_block(self, woken: asyncio.Future[Any], leasing: asyncio.Future[Any]) -> None:
        """Wake our own BZPOPMIN so the lease queued behind it runs now."""
        assert self._fast is not None
        assert self._fast_block is not None
        try:
            await asyncio.gather(
                self._fast.execute("ZADD", self._self_wake, 0, "w"),
                self._fast.execute("PEXPIRE", self._self_wake, 60_000),  # if we die now
            )
            await asyncio.wait({leasing}, timeout=max(1.0, self.max_idle_wait))
            if leasing.done() and not woken.cancelled() and woken.exception() is None:
                popped = woken.result()
                if popped is None or _text(popped[0]) != self._self_wake:
                    # An enqueue (or the timeout) ended the wait first: our wake-up is
                    # still there and would end the next wait at once.
                    await self._fast.execute("DEL", self._self_wake)
        except (redis_errors.RedisError, OSError):
            pass
        if not leasing.done():
            # No answer: drop the connection, so the queued lease can no longer run;
            # _settle then leases again under the same request id.
            await self._fast_block.close()

    async def _settle(
        self,
        leasing: asyncio.Future[Any],
        max_tasks: int,
        lease_ms: int,
        worker: str,
        request: str,
    ) -> tuple[int, list[Any]]:
        """The reply of the lease queued behind BZPOPMIN, or of its rerun.

        Rerun when the script was missing (a restarted server) or the connection failed:
        the same request id gives back the tasks of a run whose reply was lost.
        """
        try:
            reply = await leasing
        except (redis_errors.NoScriptError, *_TRANSIENT) as exc:
            if self._closed:
                raise BrokerConnectionError(f"{self._url}: broker closed") from exc
            return await self._lease(max_tasks, lease_ms, worker, request)
        except redis_errors.ResponseError as exc:
            if not _is_oom(exc):
                raise
            return await self._lease(max_tasks, lease_ms, worker, request)  # see _script
        wait_ms, raw, bad, recovered = reply
        self._report_upkeep(bad, recovered)
        return int(wait_ms), list(raw)

    async def _wait_wake(self, wait: float) -> None:
        """Sleep up to `wait` seconds, or until another process enqueues work."""
        if wait <= 0:
            return
        task = self._wake_task
        if task is None or task.done():
            task = self._send_wake() or asyncio.ensure_future(self._block_on_wake())
            task.add_done_callback(self._wake_done)
            self._wake_task = task
        self._waiting += 1
        try:
            done, _ = await asyncio.wait({task}, timeout=wait)
        finally:
            self._waiting -= 1
        if task in done:
            self._wake_task = None
            if not task.cancelled() and task.exception() is not None:
                # Connection trouble: the next script call retries; don't spin meanwhile.
                await asyncio.sleep(min(wait, 0.1))

    def _send_wake(self) -> asyncio.Future[Any] | None:
        """BZPOPMIN written at once if the blocking connection is open, else None.

        Its reply then wakes us one turn of the event loop sooner than a task would.
        """
        block = self._fast_block
        if block is None:
            return None
        if self._wake_prefix is None:
            self._wake_prefix = self._wake_command()
        return block.send_now(self._wake_prefix, ())

    async def _block_on_wake(self) -> Any:
        if self._fast_block is not None:
            return await self._fast_block.execute(
                "BZPOPMIN", self._keys[7], self._self_wake, self.max_idle_wait
            )
        return await self.client.bzpopmin(self._keys[7], timeout=self.max_idle_wait)

    def _wake_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result() is not None and self._waiting == 0 and not self._closed:
            # We took the wake-up but nobody here waits any more: pass it on.
            rewake = asyncio.ensure_future(self._retrying(self._rewake, "wake"))
            self._background.add(rewake)
            rewake.add_done_callback(self._background.discard)

    async def _rewake(self) -> None:
        await self.client.zadd(self._keys[7], {"w": 0})

    async def renew(self, leases: Mapping[str, int]) -> RenewResult:
        """See `AbstractBroker.renew`; also runs the upkeep of recovery and promotion."""
        upkeep = await self._script("dequeue", 0, 0, "", self.maintenance_batch, "")
        _, _, bad, recovered = upkeep
        self._report_upkeep(bad, recovered)
        if not leases:
            return RenewResult()
        ids = list(leases)
        codes: list[Any] = []
        for start in range(0, len(ids), _LEASE_BATCH):
            args: list[Any] = [int(self.lease_seconds * 1000)]
            for task_id in ids[start : start + _LEASE_BATCH]:
                args.extend((task_id, leases[task_id]))
            codes += await self._script("renew", *args)
        renewed = {i for i, c in zip(ids, codes, strict=True) if int(c) > 0}
        cancels = {i for i, c in zip(ids, codes, strict=True) if int(c) == 2}
        lost = set(ids) - renewed
        return RenewResult(frozenset(renewed), frozenset(lost), frozenset(cancels))

    def _outcome(self, task_id: str, code: int, token: int | None, what: str) -> bool:
        if code == 1:
            return True
        if code == -1:
            if token is None:
                raise TaskNotFoundError(task_id)
            logger.warning(
                "task %s: stale holder (token %s) reported %s on a task that is gone",
                task_id,
                token,
                what,
                extra={"task_id": task_id},
            )
            return False
        if code == -2:
            raise TaskStateError(f"task {task_id} is already final")
        logger.warning(
            "task %s: stale holder (token %s) reported %s; refused",
            task_id,
            token,
            what,
            extra={"task_id": task_id},
        )
        return False

    async def mark_complete(
        self, task_id: str, result: Any = None, *, token: int | None = None
    ) -> bool:
        """See `AbstractBroker.mark_complete`."""
        encoded = dumps(result, "result")
        codes = await self._script("complete", task_id, "" if token is None else token, encoded)
        return self._outcome(task_id, int(codes[0]), token, "completed")

    async def mark_complete_many(self, outcomes: Any) -> list[bool]:
        """See `AbstractBroker.mark_complete_many`: one round trip for all of them."""
        items = list(outcomes)
        if not items:
            return []
        encoded = [(i, "" if t is None else t, dumps(r, "result")) for i, t, r in items]
        args: list[Any] = []
        for task_id, token, value in encoded:
            args.extend((task_id, token, value))
        codes = await self._script("complete", *args)
        return [
            self._outcome(i, int(c), t, "completed")
            for (i, t, _), c in zip(items, codes, strict=True)
        ]

    async def mark_failed(
        self,
        task_id: str,
        error: TaskError | BaseException | str,
        *,
        token: int | None = None,
        retry_in: float | None = None,
    ) -> bool:
        """See `AbstractBroker.mark_failed`."""
        check_not_negative("retry_in", retry_in)
        error = as_task_error(error)
        encoded = dumps(
            {"type": error.type, "message": error.message, "traceback": error.traceback},
            "error",
        )
        retry = "" if retry_in is None else int(retry_in * 1000)
        code = await self._script("fail", task_id, "" if token is None else token, encoded, retry)
        return self._outcome(task_id, int(code), token, "failed")

    async def mark_cancelled(
        self, task_id: str, *, token: int | None = None, reason: str | None = None
    ) -> bool:
        """See `AbstractBroker.mark_cancelled`."""
        code = await self._script(
            "cancel", task_id, "ack", "" if token is None else token, reason or ""
        )
        return self._outcome(task_id, int(code), token, "cancelled")

    async def release(self, task_id: str, *, token: int) -> bool:
        """See `AbstractBroker.release`."""
        return int((await self._script("release", task_id, token))[0]) == 1

    async def set_progress(
        self, task_id: str, progress: float, *, token: int | None = None
    ) -> bool:
        """See `AbstractBroker.set_progress`."""
        check_progress(progress)
        code = await self._script(
            "progress", task_id, "" if token is None else token, repr(float(progress))
        )
        return int(code) == 1

    async def annotate(
        self, notes: Mapping[str, TaskNote], *, max_logs: int = 100
    ) -> dict[str, bool]:
        """See `AbstractBroker.annotate`: one script run for every task noted."""
        check_not_negative("max_logs", max_logs)
        if not notes:
            return {}
        args: list[Any] = [max_logs]
        for task_id, note in notes.items():
            context = "" if note.context is None else dumps(note.context, "context")
            lines = "\n".join(dumps(record, "logs") for record in note.logs)
            args += [task_id, note.token, context, len(note.logs), lines]
        codes = await self._script("annotate", *args)
        return {task_id: int(code) == 1 for task_id, code in zip(notes, codes, strict=True)}

    # ----------------------------------------------------------------- control

    async def cancel(self, task_id: str, reason: str | None = None) -> bool:
        """See `AbstractBroker.cancel`."""
        code = int(await self._script("cancel", task_id, "request", "", reason or ""))
        if code == -1:
            raise TaskNotFoundError(task_id)
        return code == 1

    async def requeue(self, task_id: str, delay_seconds: float = 0.0) -> Task:
        """See `AbstractBroker.requeue`."""
        check_not_negative("delay_seconds", delay_seconds)
        reply = await self._script("requeue", task_id, int(delay_seconds * 1000))
        if isinstance(reply, int):
            if reply == -1:
                raise TaskNotFoundError(task_id)
            raise TaskStateError(f"task {task_id} is not final")
        if reply and isinstance(reply[0], int) and reply[0] == -3:
            raise TaskStateError(
                f"task {task_id} depends on {_text(reply[1])!r}, which {_text(reply[2])}: "
                "requeue that task first"
            )
        return self._decode(reply)

    async def purge(self, status: TaskStatus = TaskStatus.PENDING) -> int:
        """See `AbstractBroker.purge`; deletes in bounded batches."""
        status = check_purgeable(status)
        batch = 500
        total = 0
        while True:
            deleted = int(await self._script("purge", status.value, batch))
            total += deleted
            # Until a run finds nothing: a run can make more tasks final (children whose
            # parents it purged, see purge.lua), so a short batch is not the end.
            if deleted == 0:
                return total

    # ----------------------------------------------------------------- reading

    async def get_task(self, task_id: str) -> Task | None:
        """See `AbstractBroker.get_task`."""
        key = self._task_key(task_id)

        async def read() -> Any:
            if self._fast is not None:
                return await self._fast.execute("HGETALL", key)
            return await self.client.hgetall(key)

        try:
            fields = await self._retrying(read, "get_task")
        except redis_errors.ResponseError as exc:  # WRONGTYPE: not a task hash
            raise DecodeError(f"task {task_id}: key {key} does not hold a task ({exc})") from None
        if not fields:
            return None
        task = self._decode(fields)
        return None if self._expired(task) else task

    def _expired(self, task: Task) -> bool:
        """True for a final task past its retention whose hash was not deleted yet."""
        if task.finished_at is None or not task.is_final:
            return False
        keep = self.dead_letter_ttl if task.status is TaskStatus.FAILED else self.result_ttl
        return task.finished_at.timestamp() + keep <= time.time()

    async def _tasks(self, ids: Sequence[str]) -> list[Task]:
        if not ids:
            return []

        async def read() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hgetall(self._task_key(task_id))
                return await pipe.execute(raise_on_error=False)

        replies = await self._retrying(read, "read tasks")
        tasks = []
        for task_id, fields in zip(ids, replies, strict=True):
            if not fields or isinstance(fields, Exception):
                continue
            try:
                task = self._decode(fields)
                if not self._expired(task):
                    tasks.append(task)
            except DecodeError as exc:
                logger.error(
                    "task %s: undecodable record skipped (%s)",
                    task_id,
                    exc,
                    extra={"task_id": task_id},
                )
        return tasks

    async def list_tasks(
        self, status: TaskStatus | None = None, *, limit: int = 100, newest_first: bool = False
    ) -> list[Task]:
        """See `AbstractBroker.list_tasks`.

        Reads up to `limit` ids from each set of the state(s) asked for, from the end
        `newest_first` asks for; entries of final sets past their retention are skipped.
        """
        check_not_negative("limit", limit)
        if limit == 0:
            return []
        wanted = None if status is None else TaskStatus(status)
        keys = self._status_sets(wanted)
        floors = self._retention_floors()

        async def read() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    floor = floors.get(key)
                    if floor is None:
                        if newest_first:
                            pipe.zrevrange(key, 0, limit - 1)  # ZRANGE ... REV needs 6.2
                        else:
                            pipe.zrange(key, 0, limit - 1)
                    elif newest_first:
                        pipe.zrevrangebyscore(key, "+inf", floor, start=0, num=limit)
                    else:
                        pipe.zrangebyscore(key, floor, "+inf", start=0, num=limit)
                return await pipe.execute()

        groups = await self._retrying(read, "list_tasks")
        ids = list(dict.fromkeys(_text(i) for group in groups for i in group))
        tasks = [t for t in await self._tasks(ids) if wanted is None or t.status is wanted]
        tasks.sort(key=lambda t: t.created_at, reverse=newest_first)
        return tasks[:limit]

    def _retention_floors(self) -> dict[str, int]:
        """Final-state set -> the lowest score (finish time, ms) still inside retention."""
        now_ms = int(time.time() * 1000)
        result_floor = now_ms - int(self.result_ttl * 1000)
        failed, completed, cancelled = self._keys[3:6]
        return {
            completed: result_floor,
            cancelled: result_floor,
            failed: now_ms - int(self.dead_letter_ttl * 1000),
        }

    def _status_sets(self, status: TaskStatus | None) -> list[str]:
        ready, delayed, inflight, failed, completed, cancelled = self._keys[:6]
        by_status = {
            TaskStatus.PENDING: [ready, delayed, self._keys[8]],
            TaskStatus.PROCESSING: [inflight],
            TaskStatus.COMPLETED: [completed],
            TaskStatus.FAILED: [failed],
            TaskStatus.CANCELLED: [cancelled],
        }
        if status is None:
            return [k for keys in by_status.values() for k in keys]
        return by_status[status]

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """See `AbstractBroker.count_tasks`."""
        ready, delayed, inflight, failed, completed, cancelled = self._keys[:6]
        floors = self._retention_floors()
        result_floor, dead_floor = floors[completed], floors[failed]

        async def read() -> Any:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zcard(ready)
                pipe.zcard(delayed)
                pipe.zcard(inflight)
                pipe.zcount(completed, result_floor, "+inf")
                pipe.zcount(failed, dead_floor, "+inf")
                pipe.zcount(cancelled, result_floor, "+inf")
                pipe.zcard(self._keys[8])
                return await pipe.execute()

        r, d, i, c, f, x, w = await self._retrying(read, "count_tasks")
        return {
            TaskStatus.PENDING: int(r) + int(d) + int(w),
            TaskStatus.PROCESSING: int(i),
            TaskStatus.COMPLETED: int(c),
            TaskStatus.FAILED: int(f),
            TaskStatus.CANCELLED: int(x),
        }

    # ----------------------------------------------------------------- waiting for results

    async def wait_for(self, task_id: str, timeout: float | None = None) -> Task:
        """See `AbstractBroker.wait_for`: blocks on a pub/sub notification, no polling."""
        async with asyncio.timeout(timeout):
            await self._ensure_listener()
            while True:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                watchers = self._watchers.setdefault(task_id, [])
                watchers.append(future)
                try:
                    task = await self.get_task(task_id)
                    if task is None:
                        raise TaskNotFoundError(task_id)
                    if task.is_final:
                        return task
                    await future
                finally:
                    if future in watchers:
                        watchers.remove(future)
                    if not watchers and self._watchers.get(task_id) is watchers:
                        del self._watchers[task_id]

    async def _ensure_listener(self) -> None:
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="task-queue-final-listener")
        await self._subscribed.wait()

    async def _listen(self) -> None:
        subscribed = self._subscribed
        assert subscribed is not None
        delay = 0.05
        while not self._closed:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=self.max_idle_wait)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        subscribed.set()
                        delay = 0.05
                        self._wake_watchers(None)  # recheck: we may have missed news
                    elif message["type"] == "message":
                        for task_id in _split_ids(message["data"]):
                            self._wake_watchers(task_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("final-state listener lost its connection: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                subscribed.clear()
                with contextlib.suppress(Exception):
                    close: Any = pubsub.aclose  # typed in some redis-py versions only
                    await close()

    def _wake_watchers(self, task_id: str | None) -> None:
        if task_id is None:
            groups = list(self._watchers.values())
        else:
            groups = [self._watchers.get(task_id, [])]
        for group in groups:
            for future in group:
                if not future.done():
                    future.set_result(None)

    # ----------------------------------------------------------------- operations

    async def _ops_script(self, name: str, keys: Sequence[str], *args: Any) -> Any:
        """Run a standalone script (registry, stats) with its own keys."""

        async def run() -> Any:
            try:
                return await self.client.evalsha(self._shas[name], len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                await self._reload(name)  # a standalone script: never in the library
                return await self.client.evalsha(self._shas[name], len(keys), *keys, *args)

        return await self._retrying(run, name)

    async def register_worker(self, worker: WorkerInfo, ttl: float) -> None:
        """See `AbstractBroker.register_worker`."""
        check_worker_ttl(ttl)
        info = worker.to_dict()
        info.pop("heartbeat_at")
        encoded = dumps(info, "worker")
        ttl_ms = max(1, int(ttl * 1000))
        await self._ops_script(
            "workers", self._workers_keys, "register", worker.worker_id, encoded, ttl_ms
        )

    async def unregister_worker(self, worker_id: str) -> bool:
        """See `AbstractBroker.unregister_worker`."""
        reply = await self._ops_script("workers", self._workers_keys, "unregister", worker_id)
        return int(reply) == 1

    async def list_workers(self) -> list[WorkerInfo]:
        """See `AbstractBroker.list_workers`."""
        reply = await self._ops_script("workers", self._workers_keys, "list")
        workers = []
        for raw_id, raw_value in zip(reply[1::2], reply[2::2], strict=True):
            worker_id = _text_lenient(raw_id)
            try:
                beat, _, data = _text(raw_value).partition(":")
                info = loads(data)
                if not isinstance(info, dict):
                    raise DecodeError("worker entry is not a JSON object")
                info["heartbeat_at"] = int(beat) / 1000
                workers.append(WorkerInfo.from_dict(info))
            except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
                logger.error("worker %s: undecodable registry entry skipped (%s)", worker_id, exc)
        return sorted(workers, key=lambda w: (w.started_at, w.worker_id))

    async def get_stats(self, minutes: int = 60) -> QueueStats:
        """See `AbstractBroker.get_stats`."""
        check_stats_minutes(minutes)
        reply = await self._ops_script("stats", [self._stats_prefix], minutes)
        now_ms = int(reply[0])
        current = now_ms // 60000
        counts = [int(c) for c in reply[1:]]
        rows = tuple(
            MinuteStats(minute_start(current - minutes + 1 + i), *counts[i * 3 : i * 3 + 3])
            for i in range(minutes)
        )
        return QueueStats(datetime.fromtimestamp(now_ms / 1000, UTC), rows)

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Stop waiting calls and close the connection pool when this broker made it."""
        self._closed = True
        primed = self._primed
        if primed is not None and not primed[1].done():
            # A waiting dequeue's lease is queued behind BZPOPMIN: let it run now, so its
            # caller gets what it leases instead of the tasks staying leased to nobody.
            await self._end_block(*primed)
        for task in (self._wake_task, self._listener):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._wake_task = None
        self._listener = None
        self._wake_watchers(None)
        for connection in (self._fast, self._fast_block):
            if connection is not None:
                await connection.close()
        if self._owns_client:
            await self.client.aclose()

    async def delete_all(self) -> int:
        """Delete every key of this queue (tests and tear-down); returns how many.

        Walks the queue's own sets, so it never scans the server's keyspace.
        """
        ids: set[str] = set()
        for key in [*self._keys[:6], self._keys[8]]:
            ids.update(_text(i) for i in await self.client.zrange(key, 0, -1))
        waiting = self._keys[8]
        keys = [self._task_key(i) for i in ids] + [f"{waiting}:{i}" for i in ids]
        keys += self._keys + self._workers_keys + [self._self_wake, f"{self.base_key}:releasing"]
        # Per-minute stats keys of the whole retention (by this host's clock, plus slack).
        current = int(time.time() // 60) + 2
        first = current - STATS_RETENTION_MINUTES - 4
        keys += [f"{self._stats_prefix}{minute}" for minute in range(first, current + 1)]
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += int(await self.client.delete(*keys[start : start + 500]))
        return deleted
