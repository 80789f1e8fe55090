"""JSON checks shared by every broker: what cannot be stored is refused naming the field."""

from __future__ import annotations

import pytest

from task_queue import AbstractBroker, PayloadError, Task, TaskError, TaskStatus
from task_queue.codec import dumps, normalize

# A file name that is not UTF-8, as os.listdir() returns it: a lone surrogate.
NAME = "caf\udce9.txt"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"file": NAME}, r"result\['file'\] cannot be encoded as JSON: it holds a lone"),
        ([1, {NAME: 1}], r"result\[1\]\['caf\\udce9.txt'\] .* the key holds a lone"),
        (NAME, "result cannot be encoded as JSON: it holds a lone surrogate"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(value: object, where: str) -> None:
    with pytest.raises(PayloadError, match=where):
        dumps(value, "result")
    with pytest.raises(PayloadError, match=where):
        normalize(value, "result")


def test_text_that_is_valid_unicode_passes() -> None:
    assert normalize({"é": "漢字🙂"}) == {"é": "漢字🙂"}
    assert normalize("é") == "é"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": 1, "ratio": float("nan")}, r"payload\['ratio'\] .*nan is not a finite number"),
        ({"limit": float("-inf")}, r"payload\['limit'\] .*-inf is not a finite number"),
        ({NAME: 1}, r"payload\['caf\\udce9.txt'\] .* the key holds a lone"),
        ({"a": b"bytes"}, r"payload\['a'\] .*object of type bytes"),
    ],
)
def test_a_flat_object_is_checked_like_any_other(value: object, where: str) -> None:
    with pytest.raises(PayloadError, match=where):
        normalize(value, "payload")


def test_normalize_gives_a_fresh_copy_as_json_reads_it_back() -> None:
    flat = {"a": 1, "b": 2.5, "c": "x", "d": None, "e": True}
    copy = normalize(flat)
    assert copy == flat and copy is not flat
    nested = {"list": (1, 2), 3: {"k": [1]}}
    assert normalize(nested) == {"list": [1, 2], "3": {"k": [1]}}


def test_task_errors_keep_lone_surrogates_as_escapes() -> None:
    error = TaskError.from_exception(OSError(f"cannot read {NAME}"), f"trace {NAME}")
    assert error.message == "cannot read caf\\udce9.txt"
    assert error.traceback == "trace caf\\udce9.txt"
    assert dumps({"error": error.message, "trace": error.traceback})


async def test_every_broker_refuses_a_result_it_could_not_store(broker: AbstractBroker) -> None:
    first, second = Task("job"), Task("job")
    await broker.enqueue_many([first, second])
    leased = await broker.dequeue_many(2)
    with pytest.raises(PayloadError, match="result"):
        await broker.mark_complete_many([(t.id, t.token, {"f": NAME}) for t in leased])
    for task in leased:  # nothing was recorded: both are still leased
        stored = await broker.get_task(task.id)
        assert stored is not None and stored.status is TaskStatus.PROCESSING
    assert await broker.mark_failed(first.id, OSError(NAME), token=leased[0].token)
    failed = await broker.get_task(first.id)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.message == "caf\\udce9.txt"
