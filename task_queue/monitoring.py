"""Plain data brokers report for operations: live worker processes and finish counts.

No I/O here: `WorkerInfo` describes one registered worker process, `QueueStats` the
tasks of one queue that became final, per minute, over a bounded window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "STATS_RETENTION_MINUTES",
    "MinuteStats",
    "QueueStats",
    "WorkerInfo",
    "minute_start",
]

STATS_RETENTION_MINUTES = 24 * 60
"""How many minutes of finish counts a broker keeps (the current minute included)."""


def minute_start(minute: int) -> datetime:
    """The start, as an aware UTC datetime, of minute number `minute` since the epoch."""
    return datetime.fromtimestamp(minute * 60, UTC)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker process as the registry holds it.

    `worker_id` is the service's id (host:pid:random); `concurrency` its worker slots and
    `active` how many of them were running a task at the last heartbeat. `started_at`
    is when its slots started, `heartbeat_at` the broker's time of the last refresh (set
    by the broker; None before registration). An entry whose heartbeat is older than
    the time-to-live it was registered with is dropped as dead.
    """

    worker_id: str
    host: str
    pid: int
    queue: str
    concurrency: int
    active: int
    started_at: datetime
    heartbeat_at: datetime | None = None

    @property
    def idle(self) -> int:
        """Slots not running a task at the last heartbeat."""
        return max(0, self.concurrency - self.active)

    def to_dict(self) -> dict[str, Any]:
        """Describe the worker with JSON types only (times as POSIX seconds)."""
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "queue": self.queue,
            "concurrency": self.concurrency,
            "active": self.active,
            "started_at": self.started_at.timestamp(),
            "heartbeat_at": None if self.heartbeat_at is None else self.heartbeat_at.timestamp(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerInfo:
        """Rebuild a worker from `to_dict` output; KeyError/TypeError/ValueError if bad."""
        beat = data.get("heartbeat_at")
        return cls(
            worker_id=str(data["worker_id"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            queue=str(data["queue"]),
            concurrency=int(data["concurrency"]),
            active=int(data["active"]),
            started_at=datetime.fromtimestamp(float(data["started_at"]), UTC),
            heartbeat_at=None if beat is None else datetime.fromtimestamp(float(beat), UTC),
        )


@dataclass(frozen=True, slots=True)
class MinuteStats:
    """How many tasks became completed, failed (for good) and cancelled in one minute."""

    minute: datetime
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        """Tasks that ran to an outcome: completed plus failed."""
        return self.completed + self.failed


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Finish counts of one queue, one entry per minute, oldest first.

    The last entry is the minute `at` (the broker's clock when read) falls in, so it is
    partial. Failed attempts that are retried are not counted; a task counts once, in
    the minute it became final.
    """

    at: datetime
    minutes: tuple[MinuteStats, ...]

    @property
    def completed(self) -> int:
        """Tasks completed in the whole window."""
        return sum(m.completed for m in self.minutes)

    @property
    def failed(self) -> int:
        """Tasks failed for good in the whole window."""
        return sum(m.failed for m in self.minutes)

    @property
    def cancelled(self) -> int:
        """Tasks cancelled in the whole window."""
        return sum(m.cancelled for m in self.minutes)

    def throughput(self, last: int | None = None) -> float:
        """Tasks finished (completed + failed) per second over the last `last` minutes.

        Default: the whole window. The current minute counts for the part elapsed.
        """
        count = len(self.minutes) if last is None else min(max(last, 1), len(self.minutes))
        if count == 0:
            return 0.0
        window = self.minutes[-count:]
        elapsed = (count - 1) * 60.0 + max(
            0.0, (self.at - self.minutes[-1].minute).total_seconds()
        )
        return sum(m.finished for m in window) / max(elapsed, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Describe the stats with JSON types only (times as POSIX seconds)."""
        return {
            "at": self.at.timestamp(),
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "throughput_per_second": {
                f"{n}m": self.throughput(n) for n in (1, 5, 15, 60) if n <= len(self.minutes)
            },
            "minutes": [
                {
                    "minute": m.minute.timestamp(),
                    "completed": m.completed,
                    "failed": m.failed,
                    "cancelled": m.cancelled,
                }
                for m in self.minutes
            ],
        }
