"""Hypothesis throws arbitrary arguments at `add_task` on every broker kind.

Each call either stores a task that reads back as given (JSON's view of it), or raises a
`TypeError` / `ValueError` whose message names the argument at fault, and then nothing
was stored. Any other exception (an `OverflowError`, a `UnicodeEncodeError` from deep in
a driver) fails the test.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, timedelta, timezone
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from task_queue import AbstractBroker, TaskQueueService, TaskStatus
from task_queue.codec import normalize
from tests.conftest import make_broker

pytestmark = pytest.mark.chaos

T = TypeVar("T")

ARGUMENTS = (
    "name",
    "payload",
    "priority",
    "delay_seconds",
    "task_id",
    "max_retries",
    "timeout",
    "metadata",
    "scheduled_at",
)

EXAMPLES = {"memory": 300, "redis-fake": 60, "redis-real": 120}

# Any character, lone surrogates included (Hypothesis leaves them out by default).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
wild_leaf = (
    json_leaf
    | any_text
    | st.floats()
    | st.binary(max_size=4)
    | st.sets(st.integers(), max_size=2)
    | st.datetimes()
    | st.decimals(allow_nan=True)
    | st.complex_numbers(max_magnitude=10)
    | st.just(object())
)
wild_key = (
    any_text | st.integers() | st.none() | st.booleans() | st.floats() | st.tuples(st.integers())
)
wild_value = st.recursive(
    wild_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(wild_key, inner, max_size=3)
    ),
    max_leaves=8,
)
mapping = st.dictionaries(st.text(max_size=6), json_value, max_size=4) | st.dictionaries(
    wild_key, wild_value, max_size=3
)
numbers = (
    st.integers(min_value=-5, max_value=5)
    | st.integers()
    | st.floats()
    | st.decimals(allow_nan=True)
    | st.just(10**400)
    | st.booleans()
)
offsets = st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))

json_object = st.dictionaries(st.text(max_size=6), json_value, max_size=4)


def mostly(
    valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any], weight: int = 3
) -> st.SearchStrategy[Any]:
    """`valid` `weight` times as often as `wild`, so many calls store a task."""
    return st.integers(0, weight).flatmap(lambda n: valid if n else wild)


ARGUMENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload": mostly(st.none() | json_object, mapping | wild_value),
    "priority": mostly(st.integers(-1000, 1000), numbers | st.none() | st.text(max_size=2)),
    "delay_seconds": mostly(
        st.floats(0, 5) | st.integers(0, 5), numbers | st.none() | st.text(max_size=2)
    ),
    "task_id": mostly(
        st.none() | st.text(min_size=1, max_size=40),
        any_text | st.text(min_size=250, max_size=260) | st.integers() | st.binary(max_size=3),
    ),
    "max_retries": mostly(st.integers(0, 10), numbers | st.none()),
    "timeout": mostly(st.none() | st.floats(0.001, 1e6), numbers | st.text(max_size=2)),
    "metadata": mostly(st.none() | json_object, mapping | wild_value),
    "scheduled_at": mostly(
        st.none() | st.datetimes(timezones=st.just(UTC)),
        st.datetimes()
        | st.datetimes(timezones=st.builds(timezone, offsets))
        | st.text(max_size=2),
    ),
}
names = mostly(
    st.just("job"),
    st.just("other") | any_text | st.integers() | st.none() | st.binary(max_size=3),
    weight=8,
)
calls = st.tuples(names, st.fixed_dictionaries({}, optional=ARGUMENT_VALUES))


def is_id(value: Any) -> bool:
    """True for a task id any broker can look up."""
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


class Loop:
    """An event loop the sync Hypothesis test runs every broker call on."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)


@pytest.mark.parametrize("broker_kind", list(EXAMPLES))
def test_add_task_stores_what_it_accepts_and_names_what_it_refuses(broker_kind: str) -> None:
    loop = Loop()
    cleanups: list[Callable[[], Coroutine[Any, Any, Any]]] = []
    broker: AbstractBroker = loop.run(make_broker(broker_kind, cleanups))
    service = TaskQueueService(broker, {"job": lambda task: None})

    async def total() -> int:
        return sum((await broker.count_tasks()).values())

    async def attempt(name: Any, kwargs: dict[str, Any]) -> None:
        before = await total()
        task_id = kwargs.get("task_id")
        existed = await broker.get_task(task_id) if is_id(task_id) else None
        refused: Exception | None = None
        try:
            task = await service.add_task(name, **kwargs)
        except (TypeError, ValueError) as exc:
            refused = exc
        if refused is not None:
            message = f"{type(refused).__name__}: {refused}"
            assert not isinstance(refused, UnicodeError), message
            assert any(argument in str(refused) for argument in ARGUMENTS), message
            assert await total() == before, f"{message}; something was stored"
            return
        stored = await broker.get_task(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
        if existed is not None:  # idempotent: the first task stands
            assert stored.created_at == existed.created_at
            assert await total() == before
            return
        assert await total() == before + 1
        assert (stored.id, stored.name) == (task.id, name)
        assert stored.payload == normalize(kwargs.get("payload") or {})
        assert stored.metadata == normalize(kwargs.get("metadata") or {})
        assert stored.priority == kwargs.get("priority", 0)
        if kwargs.get("max_retries") is not None:
            assert stored.max_retries == kwargs["max_retries"]
        if kwargs.get("timeout") is not None:
            assert math.isclose(stored.timeout or 0, float(kwargs["timeout"]))
        await broker.purge(TaskStatus.PENDING)

    @settings(
        max_examples=EXAMPLES[broker_kind],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(calls)
    def check(call: tuple[Any, dict[str, Any]]) -> None:
        name, kwargs = call
        loop.run(attempt(name, kwargs))

    try:
        check()
    finally:
        for cleanup in reversed(cleanups):
            loop.run(cleanup())
        loop.runner.close()
