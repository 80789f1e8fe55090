"""A lean Redis connection for the broker's hot path: RESP2 over asyncio, parsed by hiredis.

Every command of every caller goes out on one connection as soon as it is called and the
replies are matched in order, so concurrent callers are pipelined for free and a call
costs a write and a parse, not a trip through a connection pool. The broker uses it for
its scripts and plain reads when it made its own connection from a URL; pub/sub, blocking
waits and anything else go through redis-py. Errors are redis-py's exception types, so
callers handle both alike.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis import exceptions as redis_errors

__all__ = ["FastConnection", "Prefix", "pack"]


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise redis_errors.DataError("a bool is not a Redis argument; use 0 or 1")
    if isinstance(arg, int | float):
        return repr(arg).encode()
    raise redis_errors.DataError(f"cannot send an argument of type {type(arg).__name__}")


def _bulk(arg: Any) -> bytes:
    # Exact type checks first: the common argument types skip _encode's isinstance chain.
    kind = type(arg)
    if kind is str:
        data = arg.encode()
    elif kind is bytes:
        data = arg
    elif kind is int:
        data = b"%d" % arg
    else:
        data = _encode(arg)
    return b"$%d\r\n%b\r\n" % (len(data), data)


class Prefix:
    """The first arguments of a command, packed once for commands that repeat them.

    A script call sends the same EVALSHA, SHA, keys and fixed arguments every time; only
    the arguments after them change.
    """

    __slots__ = ("count", "data")

    def __init__(self, *args: Any) -> None:
        self.count = len(args)
        self.data = b"".join([_bulk(arg) for arg in args])


class _NotText(Exception):
    """An argument that `pack` must encode as bytes (bytes, a float...)."""


def _bulk_text(arg: Any) -> str:
    """`_bulk` as text, for a str or an int; `_NotText` for the other types."""
    kind = type(arg)
    if kind is str:
        return f"${len(arg.encode())}\r\n{arg}\r\n"
    if kind is int:
        text = str(arg)
        return f"${len(text)}\r\n{text}\r\n"
    raise _NotText(kind)


def pack(args: Sequence[Any], prefix: Prefix | None = None) -> bytes:
    """Encode one command in RESP: the `prefix` arguments (if any), then `args`."""
    try:
        # Written as one text and encoded once: cheaper than encoding argument by
        # argument when they are many (a bulk enqueue sends two per task). The length
        # of an ASCII str is its length in bytes.
        body = "".join(
            [
                f"${len(arg)}\r\n{arg}\r\n"
                if type(arg) is str and arg.isascii()
                else _bulk_text(arg)
                for arg in args
            ]
        ).encode()
    except _NotText:  # bytes, floats...: argument by argument
        body = b"".join([_bulk(arg) for arg in args])
    if prefix is None:
        return b"*%d\r\n%b" % (len(args), body)
    return b"*%d\r\n%b%b" % (prefix.count + len(args), prefix.data, body)


def _error(message: str) -> redis_errors.RedisError:
    if message.startswith("NOSCRIPT") or message.startswith("ERR Function not found"):
        return redis_errors.NoScriptError(message)
    if message.startswith(("WRONGPASS", "NOAUTH", "invalid password")):
        return redis_errors.AuthenticationError(message)
    if message.startswith("NOPERM"):
        return redis_errors.NoPermissionError(message)
    if message.startswith("OOM"):
        return redis_errors.OutOfMemoryError(message)
    if message.startswith("LOADING"):  # a restarted server reading its data: retried
        return redis_errors.BusyLoadingError(message)
    return redis_errors.ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(redis_errors.ConnectionError(f"protocol error from Redis: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            future = waiting.popleft()
            if future.done():  # its caller was cancelled; the reply is simply dropped
                continue
            if isinstance(reply, _ReplyError):
                future.set_exception(_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = redis_errors.ConnectionError(
            f"connection to Redis lost: {exc}" if exc else "connection closed by Redis"
        )
        self._fail(self.lost)

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class _ReplyError(Exception):
    """An error reply, before it is turned into redis-py's exception type."""


class FastConnection:
    """One pipelining connection to the Redis at `url` (redis://, rediss://, unix://)."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path if parts.scheme == "unix" else None
        self._username = unquote(parts.username) if parts.username else None
        password = parts.password if parts.password is not None else query.get("password")
        self._password = unquote(password) if password is not None else None
        db = query.get("db") or (parts.path.lstrip("/") if parts.scheme != "unix" else "")
        self._db = int(db) if db else 0
        self._connect_timeout = connect_timeout
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "rediss":
            self._ssl = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            if query.get("ssl_cert_reqs", "required").lower() in ("none", "optional"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """True for the URL schemes this connection can open."""
        return urlsplit(url).scheme in ("redis", "rediss", "unix")

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._path is not None:
            connecting = loop.create_unix_connection(_Protocol, self._path)
        else:
            connecting = loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, protocol = await connecting
        except (OSError, TimeoutError) as exc:
            raise redis_errors.ConnectionError(f"cannot connect to Redis: {exc}") from exc
        setup: list[tuple[Any, ...]] = []
        if self._password is not None:
            auth = (self._username, self._password) if self._username else (self._password,)
            setup.append(("AUTH", *auth))
        if self._db:
            setup.append(("SELECT", self._db))
        try:
            for command in setup:
                await self._send(protocol, command)
        except BaseException:
            transport.close()
            raise
        return protocol

    def _send(
        self, protocol: _Protocol, args: Sequence[Any], prefix: Prefix | None = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if protocol.transport is None:  # pragma: no cover - connect() returns it connected
            raise redis_errors.ConnectionError("not connected to Redis")
        protocol.transport.write(pack(args, prefix))
        protocol.waiting.append(future)
        return future

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (bytes, ints, lists as RESP2 gives them)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._reconnect()
        return await self._send(protocol, args)

    async def execute_prefixed(self, prefix: Prefix, args: Sequence[Any]) -> Any:
        """Like `execute`, for the command made of `prefix`'s arguments and then `args`."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._reconnect()
        return await self._send(protocol, args, prefix)

    @property
    def connected(self) -> bool:
        """True while the connection is open (commands can be written at once)."""
        protocol = self._protocol
        return protocol is not None and protocol.lost is None

    async def open(self) -> None:
        """Connect now if not connected (ConnectionError when the server is unreachable)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            await self._reconnect()

    def send_now(self, prefix: Prefix, args: Sequence[Any]) -> asyncio.Future[Any] | None:
        """Write the command at once and return the future of its reply.

        Returns None when the connection is not open (the caller then uses
        `execute_prefixed`, which connects). Commands sent one after another this way
        reach the server in that order without the caller giving up the event loop.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return self._send(protocol, args, prefix)

    async def _reconnect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is None or protocol.lost is not None:
                protocol = self._protocol = await self._connect()
            return protocol

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
