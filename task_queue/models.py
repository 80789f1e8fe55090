"""Plain data describing a task and its state: no I/O, no reference to a broker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = ["FINAL_STATES", "Task", "TaskError", "TaskStatus", "new_id", "utcnow"]


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _storable(text: str) -> str:
    """`text` with any lone surrogate written as a backslash escape (valid UTF-8)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def new_id() -> str:
    """A new random task id: 32 hex digits."""
    # 128 random bits as 32 hex digits, like uuid4().hex but about three times cheaper
    # (bulk enqueues make one per task); unguessable, as ids may appear in URLs.
    return os.urandom(16).hex()


class TaskStatus(StrEnum):
    """Where a task is in its life; the values are the strings stored by brokers."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a task never leaves on its own."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task failed: the exception type, its message and the formatted traceback.

    Lone surrogates in the texts (an exception naming a file whose name is not UTF-8)
    are kept as `\\udcxx` escapes, so that every broker can store the error.
    """

    type: str
    message: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        for name in ("type", "message", "traceback"):
            text = getattr(self, name)
            if isinstance(text, str) and not text.isascii():
                object.__setattr__(self, name, _storable(text))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    @classmethod
    def from_exception(cls, exc: BaseException, traceback: str | None = None) -> TaskError:
        """Describe `exc`; `traceback` is the formatted traceback when the caller has one."""
        return cls(type=type(exc).__name__, message=str(exc), traceback=traceback)


@dataclass(slots=True)
class Task:
    """One unit of work: an executor name, a JSON payload and its scheduling and outcome.

    `priority`: lower numbers run first; tasks of equal priority run in the order they
    were enqueued. `scheduled_at`: the earliest time the task may start (aware UTC).
    `attempts` counts the leases granted so far; the task runs at most
    `max_retries + 1` times. `token` is the fencing token of the latest lease: a worker
    presents it when it reports the outcome, so a holder whose lease expired is refused.
    `depends_on` lists the ids of the tasks that must complete before this one may
    start. `context` is a JSON object the task's executor and hooks write (see
    `set_context`); `logs` holds the latest records logged through `get_logger` while
    the task ran, each a dict with time, level, logger and message.
    """

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    id: str = field(default_factory=new_id)
    scheduled_at: datetime = field(default_factory=utcnow)
    created_at: datetime = field(default_factory=utcnow)
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    max_retries: int = 3
    timeout: float | None = None
    result: Any = None
    error: TaskError | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    token: int = 0
    worker_id: str | None = None
    cancel_requested: bool = False
    depends_on: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_attempts(self) -> int:
        """How many times the task may be leased in all: `max_retries + 1`."""
        return self.max_retries + 1

    @property
    def is_final(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status in FINAL_STATES
