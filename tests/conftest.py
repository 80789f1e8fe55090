"""Fixtures shared by every test: brokers of each kind, built and cleaned up per test.

`broker_factory(**options)` builds a fresh broker of the kind the test is parametrized
with; `broker` is one with default options. Every broker kind listed in `BROKER_KINDS`
runs the whole conformance suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from task_queue import AbstractBroker, InMemoryBroker

BrokerFactory = Callable[..., Awaitable[AbstractBroker]]

BROKER_KINDS = ["memory"]


async def _make(
    kind: str, cleanups: list[Callable[[], Awaitable[None]]], **options: Any
) -> AbstractBroker:
    if kind == "memory":
        broker = InMemoryBroker(**options)
        cleanups.append(broker.close)
        return broker
    raise ValueError(f"unknown broker kind {kind!r}")


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The kind of broker this test runs against."""
    return str(request.param)


@pytest.fixture
async def broker_factory(broker_kind: str) -> AsyncIterator[BrokerFactory]:
    """Build brokers of the current kind; all are closed and cleaned after the test."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def factory(**options: Any) -> AbstractBroker:
        return await _make(broker_kind, cleanups, **options)

    yield factory
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> AbstractBroker:
    """A fresh broker of the current kind with default options."""
    return await broker_factory()
