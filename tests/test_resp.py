"""The broker's pipelining connection: replies in order, errors typed, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from task_queue import Task, TaskStatus
from task_queue.broker.redis import RedisBroker
from task_queue.broker.resp import FastConnection, pack
from tests.conftest import REDIS_URL, forget, require_real_redis, unique_prefix


def test_pack_encodes_commands_in_resp() -> None:
    assert pack(("SET", "k", 1.5)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"
    assert pack(("GET", "é")) == b"*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    with pytest.raises(redis_errors.DataError):
        pack(("SET", "k", True))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("A", -12, 0, "b"), b"*4\r\n$1\r\nA\r\n$3\r\n-12\r\n$1\r\n0\r\n$1\r\nb\r\n"),
        (("x", "漢字", 7), b"*3\r\n$1\r\nx\r\n$6\r\n\xe6\xbc\xa2\xe5\xad\x97\r\n$1\r\n7\r\n"),
        (("x", b"\xff\x00", "é"), b"*3\r\n$1\r\nx\r\n$2\r\n\xff\x00\r\n$2\r\n\xc3\xa9\r\n"),
        (("", "a\r\nb"), b"*2\r\n$0\r\n\r\n$4\r\na\r\nb\r\n"),
    ],
    ids=["ints", "non-ascii", "bytes", "empty-and-crlf"],
)
def test_pack_counts_bytes_not_characters(args: tuple[Any, ...], expected: bytes) -> None:
    assert pack(args) == expected


def test_pack_refuses_text_that_is_not_valid_unicode() -> None:
    with pytest.raises(UnicodeEncodeError):
        pack(("SET", "k", "caf\udce9"))


@pytest.fixture
async def conn() -> AsyncIterator[FastConnection]:
    await require_real_redis()
    connection = FastConnection(REDIS_URL)
    yield connection
    await connection.close()


async def test_concurrent_calls_get_their_own_replies(conn: FastConnection) -> None:
    key = unique_prefix()
    try:
        replies = await asyncio.gather(*(conn.execute("INCR", key) for _ in range(200)))
        assert sorted(replies) == list(range(1, 201))
        echoed = await asyncio.gather(*(conn.execute("ECHO", str(i)) for i in range(100)))
        assert echoed == [str(i).encode() for i in range(100)]
    finally:
        await conn.execute("DEL", key)


async def test_error_replies_become_redis_py_exceptions(conn: FastConnection) -> None:
    key = unique_prefix()
    try:
        await conn.execute("SET", key, "text")
        with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
            await conn.execute("HGETALL", key)
        with pytest.raises(redis_errors.NoScriptError):
            await conn.execute("EVALSHA", "0" * 40, 0)
        assert await conn.execute("GET", key) == b"text"  # still in step after errors
    finally:
        await conn.execute("DEL", key)


async def test_a_cancelled_call_does_not_shift_later_replies(conn: FastConnection) -> None:
    slow = asyncio.create_task(conn.execute("ECHO", "first"))
    await asyncio.sleep(0)
    slow.cancel()
    assert await conn.execute("ECHO", "second") == b"second"


async def test_reconnects_after_the_server_drops_the_connection(conn: FastConnection) -> None:
    client_id = await conn.execute("CLIENT", "ID")
    other = Redis.from_url(REDIS_URL)
    try:
        await other.client_kill_filter(_id=client_id)
    finally:
        await other.aclose()
    # A call racing the drop fails with ConnectionError; once the drop is seen, the next
    # call opens a new connection by itself.
    try:
        first = await conn.execute("PING")
    except redis_errors.ConnectionError:
        first = await conn.execute("PING")
    assert first == b"PONG"
    assert await conn.execute("CLIENT", "ID") != client_id


async def test_unreachable_server_is_a_connection_error() -> None:
    connection = FastConnection("redis://127.0.0.1:1/0", connect_timeout=1)
    with pytest.raises(redis_errors.ConnectionError):
        await connection.execute("PING")
    await connection.close()


def test_works_under_uvloop() -> None:
    """uvloop's transports are not asyncio.Transport subclasses: nothing may assume so."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[Any, Any]:
        await require_real_redis()
        broker = RedisBroker.from_url(REDIS_URL, prefix=unique_prefix())
        try:
            await broker.enqueue(Task("job"))
            got = await broker.dequeue()
            assert got is not None
            await broker.mark_complete(got.id, "done", token=got.token)
            final = await broker.wait_for(got.id, timeout=5)
            return final.status, final.result
        finally:
            await forget(broker)
            await broker.close()

    assert uvloop.run(scenario()) == (TaskStatus.COMPLETED, "done")
